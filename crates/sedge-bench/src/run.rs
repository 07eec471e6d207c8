//! Runs an experiment: resolves its targets (starting a local node when a
//! sedge target has no gateway), deploys the function folders to sedge
//! targets, runs every load step (warm-up, then the measured run, with the
//! local node's resources sampled), then the cold starts, and records it
//! all in the output directory (see [`crate::record`]).
//!
//! Steps are ordered repetition by repetition, so that a slow drift of the
//! machine spreads over every scenario instead of landing on one. On sedge
//! targets each function is scaled to zero once its steps of a repetition
//! are done, so every step has the node to itself and that function; the
//! warm-up absorbs the worker start that follows.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::error::BenchError;
use crate::experiment::{Experiment, Scenario, TargetKind};
use crate::load::{self, LoadPlan, Stop};
use crate::node::{self, LocalNode};
use crate::outcome::Sample;
use crate::procstat::Sampler;
use crate::record::{Host, RawWriter, RunRecord, ScenarioRecord, StepKind, StepRecord};
use crate::stats::Summary;

/// How often a local node's memory is sampled during a step.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How long a scaled-to-zero function gets to lose its last worker.
const SCALE_DOWN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub out: PathBuf,
    /// Replaces the gateway of every sedge target.
    pub gateway: Option<String>,
    /// `Authorization` values for sedge gateways the bench did not start
    /// itself, by gateway URL (without a trailing '/').
    pub auth: Vec<(String, String)>,
    /// The `sedge` executable, to start a local node with.
    pub sedge_exe: Option<PathBuf>,
}

/// A scenario ready to be loaded.
struct Ready {
    scenario: Scenario,
    record: ScenarioRecord,
    /// Sedge targets: the gateway, for cold starts.
    gateway: Option<String>,
    /// The gateway's `Authorization` value.
    auth: Option<String>,
    /// Runs on the local node, whose resources are sampled.
    local: bool,
}

/// Where results go without `--out`: a new folder under the system's
/// temporary directory, never inside a repository.
pub fn default_out_dir(experiment: &str) -> PathBuf {
    let stamp: String = now_rfc3339().chars().filter(char::is_ascii_alphanumeric).collect();
    std::env::temp_dir().join("sedge-bench").join(format!("{experiment}-{stamp}"))
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Runs the experiment into `opts.out` and returns what was recorded.
/// Progress lines go to `progress` as they happen.
pub async fn run(
    exp: &Experiment,
    opts: &RunOptions,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<RunRecord, BenchError> {
    std::fs::create_dir_all(&opts.out).map_err(BenchError::io(format!("creating {}", opts.out.display())))?;
    if let Ok(text) = std::fs::read(&exp.file) {
        let copy = opts.out.join("experiment.toml");
        std::fs::write(&copy, text).map_err(BenchError::io(format!("writing {}", copy.display())))?;
    }
    let mut local = None;
    let result = run_with(exp, opts, &mut local, progress).await;
    if let Some(node) = local {
        progress("stopping the local node");
        node.stop().await;
    }
    result
}

async fn run_with(
    exp: &Experiment,
    opts: &RunOptions,
    local: &mut Option<LocalNode>,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<RunRecord, BenchError> {
    let settings = &exp.settings;
    let mut record = RunRecord {
        experiment: exp.name.clone(),
        description: exp.description.clone(),
        file: exp.file.display().to_string(),
        quick: exp.quick,
        started: now_rfc3339(),
        finished: None,
        host: Host::this(),
        settings: serde_json::to_value(settings)
            .map_err(|e| BenchError::Results { path: opts.out.clone(), message: e.to_string() })?,
        scenarios: Vec::new(),
        steps: Vec::new(),
        notes: Vec::new(),
        engine: Vec::new(),
    };
    let ready = prepare(exp, opts, local, &mut record, progress).await?;
    record.save(&opts.out)?;
    let mut raw = RawWriter::create(&opts.out)?;

    let mut plan: Vec<(usize, u32, u32)> = Vec::new();
    for rep in 1..=settings.repetitions {
        for (i, _) in ready.iter().enumerate() {
            for &users in &settings.users {
                plan.push((i, users, rep));
            }
        }
    }
    let cold: Vec<usize> = if settings.cold_starts == 0 {
        Vec::new()
    } else {
        (0..ready.len()).filter(|&i| ready[i].gateway.is_some()).collect()
    };
    let total = plan.len() + cold.len() * settings.cold_starts as usize;
    progress(&format!("{} steps ({} scenarios){}", total, ready.len(), estimate(exp, plan.len(), total - plan.len())));
    let local_pid = local.as_ref().map(|n| n.pid);
    let started = Instant::now();
    let mut done = 0usize;

    if !exp.engine.as_ref().is_some_and(|e| e.interleave) {
        engine(exp, "before", &mut record, progress).await;
    }
    // Each scenario is measured alone: idle workers of the functions loaded
    // before it would hold memory and blur the node's resource figures.
    for r in &ready {
        idle(r, &mut record, progress).await;
    }
    for (k, &(i, users, rep)) in plan.iter().enumerate() {
        let r = &ready[i];
        let load_plan = plan_for(exp, r, users, settings.stop());
        if exp.engine.as_ref().is_some_and(|e| e.interleave) {
            // With the node idle, right before the step's warm-up.
            let id = record.steps.len() as u32 + 1;
            engine(exp, &format!("step {id}"), &mut record, progress).await;
            if let Some(last) = record.engine.last_mut().filter(|e| e.when == format!("step {id}")) {
                last.before_step = Some(id);
            }
        }
        if !settings.warmup.is_zero() {
            load::run(&LoadPlan { stop: Stop::After(settings.warmup), ..load_plan.clone() }).await?;
        }
        let sampler = local_pid.filter(|_| r.local).map(|pid| Sampler::start(pid, SAMPLE_EVERY));
        let result = load::run(&load_plan).await?;
        let step = StepRecord {
            phases: None,
            id: record.steps.len() as u32 + 1,
            kind: StepKind::Load,
            scenario: r.record.name.clone(),
            users,
            repetition: rep,
            elapsed_s: result.elapsed.as_secs_f64(),
            resources: sampler.and_then(Sampler::finish),
        };
        done += 1;
        finish_step(&mut record, &mut raw, step, &result.samples, &opts.out)?;
        let summary = Summary::of_run(&result.samples, result.elapsed);
        let id = record.steps.last().map(|s| s.id);
        let share = record
            .engine
            .iter()
            .find(|e| e.before_step.is_some() && e.before_step == id && e.runs_per_s > 0.0)
            .map(|e| format!(", {:.0} % of the engine just before", 100.0 * summary.throughput / e.runs_per_s))
            .unwrap_or_default();
        progress(&format!(
            "[{done:>3}/{total}] {} users={users} rep={rep}/{}: {}{share}{}",
            r.record.name,
            settings.repetitions,
            brief(&summary),
            eta(started.elapsed(), done, total)
        ));
        if plan.get(k + 1).is_none_or(|next| next.0 != i) {
            idle(r, &mut record, progress).await;
        }
        tokio::time::sleep(settings.pause).await;
    }

    for i in cold {
        let r = &ready[i];
        let Some(gateway) = &r.gateway else { continue };
        let mut latencies = Vec::new();
        for n in 1..=settings.cold_starts {
            if let Err(e) =
                node::scale_to_zero(gateway, r.auth.as_deref(), &r.record.function, SCALE_DOWN_TIMEOUT).await
            {
                let note = format!("cold starts of {} stopped: {e}", r.record.name);
                progress(&note);
                record.notes.push(note);
                break;
            }
            let sampler = local_pid.filter(|_| r.local).map(|pid| Sampler::start(pid, SAMPLE_EVERY));
            let result = load::run(&plan_for(exp, r, 1, Stop::Requests(1))).await?;
            // A node too old to say leaves the phases out.
            let phases = node::last_cold_start(gateway, r.auth.as_deref(), &r.record.function).await.ok().flatten();
            let step = StepRecord {
                phases,
                id: record.steps.len() as u32 + 1,
                kind: StepKind::Cold,
                scenario: r.record.name.clone(),
                users: 1,
                repetition: n,
                elapsed_s: result.elapsed.as_secs_f64(),
                resources: sampler.and_then(Sampler::finish),
            };
            done += 1;
            latencies.extend(result.samples.iter().map(|s| {
                let ms = s.latency_us as f64 / 1000.0;
                if s.outcome.is_ok() {
                    format!("{ms:.1}")
                } else {
                    format!("{ms:.1} ({})", s.outcome.as_str())
                }
            }));
            finish_step(&mut record, &mut raw, step, &result.samples, &opts.out)?;
        }
        progress(&format!(
            "[{done:>3}/{total}] {} cold starts (ms): {}{}",
            r.record.name,
            latencies.join(", "),
            eta(started.elapsed(), done, total)
        ));
    }
    engine(exp, "after", &mut record, progress).await;
    record.finished = Some(now_rfc3339());
    record.save(&opts.out)?;
    Ok(record)
}

/// Measures the experiment's engine alone, if it names one; a failure is
/// a note, not the end of the run.
async fn engine(exp: &Experiment, when: &str, record: &mut RunRecord, progress: &mut (dyn FnMut(&str) + Send)) {
    let Some(spec) = exp.engine.clone() else { return };
    let python = std::env::var("SEDGE_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let label = when.to_owned();
    let measured = tokio::task::spawn_blocking(move || crate::engine::measure(&spec, &python, &label)).await;
    match measured {
        Ok(Ok(run)) => {
            progress(&format!(
                "engine alone ({when}): {:.1} runs/s, {} × {} thread(s), run p50 {:.2} ms",
                run.runs_per_s, run.sessions, run.threads, run.p50_ms
            ));
            record.engine.push(run);
        }
        Ok(Err(e)) => record.notes.push(format!("the engine alone was not measured ({when}): {e}")),
        Err(e) => record.notes.push(format!("the engine alone was not measured ({when}): {e}")),
    }
}

/// Scales a sedge scenario's function to zero; a failure is only noted.
async fn idle(r: &Ready, record: &mut RunRecord, progress: &mut (dyn FnMut(&str) + Send)) {
    let Some(gateway) = &r.gateway else { return };
    if let Err(e) = node::scale_to_zero(gateway, r.auth.as_deref(), &r.record.function, SCALE_DOWN_TIMEOUT).await {
        let note = format!("{}: could not scale to zero between scenarios: {e}", r.record.name);
        progress(&note);
        record.notes.push(note);
    }
}

fn finish_step(
    record: &mut RunRecord,
    raw: &mut RawWriter,
    step: StepRecord,
    samples: &[Sample],
    out: &Path,
) -> Result<(), BenchError> {
    raw.step(&step, samples)?;
    record.steps.push(step);
    record.save(out)
}

/// Resolves targets to URLs, starts the local node if one is needed and
/// deploys function folders to sedge targets. A function that fails to
/// deploy is left out of the run, with a note.
async fn prepare(
    exp: &Experiment,
    opts: &RunOptions,
    local: &mut Option<LocalNode>,
    record: &mut RunRecord,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<Vec<Ready>, BenchError> {
    let mut ready = Vec::new();
    let mut deployed: Vec<(String, String, bool)> = Vec::new();
    for scenario in exp.scenarios() {
        let target = &exp.targets[scenario.target];
        let function = &exp.functions[scenario.function];
        let (url, gateway, auth, is_local, kind) = match &target.kind {
            TargetKind::Url { template } => (template.replace("{name}", &function.name), None, None, false, "url"),
            TargetKind::Sedge { gateway } => {
                let (gateway, auth, is_local) = match opts.gateway.clone().or_else(|| gateway.clone()) {
                    Some(g) => {
                        let g = g.trim_end_matches('/').to_owned();
                        let auth = opts.auth.iter().find(|(url, _)| *url == g).map(|(_, a)| a.clone());
                        (g, auth, false)
                    }
                    None => {
                        let (url, auth) = start_local(opts, local, progress).await?;
                        (url, Some(auth), true)
                    }
                };
                (format!("{gateway}/function/{}", function.name), Some(gateway), auth, is_local, "sedge")
            }
        };
        if let (Some(gw), Some(dir)) = (&gateway, &function.dir) {
            let key = (gw.clone(), function.name.clone());
            let ok = match deployed.iter().find(|(g, f, _)| (g, f) == (&key.0, &key.1)) {
                Some((_, _, ok)) => *ok,
                None => {
                    let t0 = Instant::now();
                    let result = match bundle(dir, &function.files) {
                        Ok((spec, archive)) if spec.name.as_str() == function.name => {
                            node::deploy(gw, auth.as_deref(), &function.name, archive).await
                        }
                        Ok((spec, _)) => Err(BenchError::Node(format!(
                            "{}/sedge.toml names the function {:?}, the experiment {:?}",
                            dir.display(),
                            spec.name.as_str(),
                            function.name
                        ))),
                        Err(e) => Err(e),
                    };
                    let ok = match result {
                        Ok(()) => {
                            progress(&format!(
                                "deployed {} to {} in {} ms",
                                function.name,
                                target.name,
                                t0.elapsed().as_millis()
                            ));
                            true
                        }
                        Err(e) => {
                            let note = format!("{} left out: {e}", exp.scenario_name(scenario));
                            progress(&note);
                            record.notes.push(note);
                            false
                        }
                    };
                    deployed.push((key.0, key.1, ok));
                    ok
                }
            };
            if !ok {
                continue;
            }
        }
        let rec = ScenarioRecord {
            name: exp.scenario_name(scenario),
            target: target.name.clone(),
            target_kind: kind.into(),
            function: function.name.clone(),
            url,
            labels: function.labels.clone(),
        };
        record.scenarios.push(rec.clone());
        ready.push(Ready { scenario, record: rec, gateway, auth, local: is_local });
    }
    if ready.is_empty() {
        return Err(BenchError::Node("no scenario is left to run; see the notes above".into()));
    }
    Ok(ready)
}

async fn start_local(
    opts: &RunOptions,
    local: &mut Option<LocalNode>,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(String, String), BenchError> {
    if let Some(node) = local {
        return Ok((node.url.clone(), node.auth.clone()));
    }
    let exe = opts.sedge_exe.as_ref().ok_or_else(|| {
        BenchError::Node("a sedge target has no gateway and no sedge executable was given to start a node".into())
    })?;
    let node = LocalNode::start(exe, &opts.out.join("node.log")).await?;
    progress(&format!("started a local node at {} (pid {}, log in node.log)", node.url, node.pid));
    let found = (node.url.clone(), node.auth.clone());
    *local = Some(node);
    Ok(found)
}

fn plan_for(exp: &Experiment, r: &Ready, users: u32, stop: Stop) -> LoadPlan {
    let f = &exp.functions[r.scenario.function];
    let s = &exp.settings;
    LoadPlan {
        url: r.record.url.clone(),
        method: f.method.clone(),
        headers: f.headers.clone(),
        body: f.payload.clone(),
        users,
        stop,
        rate: if matches!(stop, Stop::Requests(1)) { None } else { s.rate },
        think: s.think,
        timeout: s.timeout,
        expect: f.expect.clone(),
        keep_alive: s.keep_alive,
    }
}

/// "1234 req/s, p50 1.20 ms, p99 5.00 ms, ok 100%".
pub fn brief(s: &Summary) -> String {
    let lat = s
        .latency_ms
        .as_ref()
        .map_or_else(|| "no successes".to_owned(), |l| format!("p50 {:.2} ms, p99 {:.2} ms", l.p50, l.p99));
    let errors = if s.errors.is_empty() { String::new() } else { format!(" [{}]", s.errors_text()) };
    format!("{:.0} req/s, {lat}, ok {:.1}%{errors}", s.throughput, s.success_rate * 100.0)
}

fn eta(elapsed: Duration, done: usize, total: usize) -> String {
    if done == 0 || done >= total {
        return String::new();
    }
    let left = elapsed.mul_f64((total - done) as f64 / done as f64);
    format!(" (eta {})", humantime::format_duration(Duration::from_secs(left.as_secs())))
}

fn estimate(exp: &Experiment, load_steps: usize, cold_steps: usize) -> String {
    let s = &exp.settings;
    let Some(d) = s.duration.filter(|_| s.requests.is_none()) else { return String::new() };
    // A cold start costs a scale-down and a worker start: about a second.
    let secs = load_steps as f64 * (s.warmup + d + s.pause).as_secs_f64() + cold_steps as f64;
    format!(", about {}", humantime::format_duration(Duration::from_secs(secs as u64)))
}

/// The folder's bundle, with `files` added beside its own: the folder is
/// copied to a temporary one first, so the repository is never written.
fn bundle(dir: &Path, files: &[PathBuf]) -> Result<(sedge_core::FunctionSpec, Vec<u8>), BenchError> {
    if files.is_empty() {
        return Ok(sedge_store::pack::pack(dir)?);
    }
    let staged = tempfile::tempdir().map_err(BenchError::io("making a staging folder".to_owned()))?;
    copy_tree(dir, staged.path()).map_err(BenchError::io(format!("copying {}", dir.display())))?;
    for file in files {
        let name = file.file_name().unwrap_or_default();
        std::fs::copy(file, staged.path().join(name)).map_err(BenchError::io(format!("copying {}", file.display())))?;
    }
    Ok(sedge_store::pack::pack(staged.path())?)
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

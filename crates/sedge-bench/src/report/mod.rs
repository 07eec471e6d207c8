//! The report of a run, computed from its output directory alone (`run.json`
//! and `raw.csv`), so `sedge bench report DIR` can regenerate it:
//!
//! - `summary.json`: every step, every (scenario, users) level taken over
//!   its repetitions, and the cold starts;
//! - `summary.md`: the same as tables, linking the charts;
//! - `report.html`: one self-contained page with the tables and the charts
//!   inline;
//! - `charts/*.svg` and `charts/*.png`: response time, p99, throughput and success rate against
//!   users (one chart per workload, one line per language and style, as in
//!   the paper's figures), a latency CDF per scenario (one line per user
//!   count) and every cold start of every scenario.

mod axes;
pub mod charts;
mod html;
mod markdown;
mod table;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::error::BenchError;
use crate::outcome::Sample;
use crate::procstat::Resources;
use crate::record::{self, Host, RunRecord, ScenarioRecord, StepKind};
use crate::stats::{self, Summary};

pub use table::{summary_table, terminal_table};

#[derive(Debug, Clone, Serialize)]
pub struct StepSummary {
    pub id: u32,
    pub kind: StepKind,
    pub scenario: String,
    pub users: u32,
    pub repetition: u32,
    #[serde(flatten)]
    pub summary: Summary,
    pub resources: Option<Resources>,
    /// The highest of the users' own p99 latencies (successful requests),
    /// in milliseconds: a starved caller shows here, not in the step's p99.
    pub worst_user_p99_ms: f64,
}

/// The highest p99 latency of one user's successful requests, in ms.
pub fn worst_user_p99_ms(samples: &[Sample]) -> f64 {
    let mut by_user: HashMap<u32, Vec<u64>> = HashMap::new();
    for s in samples.iter().filter(|s| s.outcome.is_ok()) {
        by_user.entry(s.user).or_default().push(s.latency_us);
    }
    by_user
        .into_values()
        .map(|mut v| {
            v.sort_unstable();
            let at = ((v.len() as f64 - 1.0) * 0.99).round() as usize;
            v.get(at).copied().unwrap_or(0) as f64 / 1000.0
        })
        .fold(0.0, f64::max)
}

/// One scenario at one user count, over all its repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct LevelSummary {
    pub scenario: String,
    pub target: String,
    pub function: String,
    pub workload: String,
    pub language: String,
    pub style: String,
    pub users: u32,
    pub repetitions: u32,
    #[serde(flatten)]
    pub summary: Summary,
    /// Spread of the repetitions' throughputs (sample standard deviation).
    pub throughput_sd: f64,
    /// Mean over the repetitions that have figures.
    pub resources: Option<Resources>,
}

/// Cold starts of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ColdSummary {
    pub scenario: String,
    pub count: u64,
    pub successes: u64,
    /// Each successful cold start, in order.
    pub latencies_ms: Vec<f64>,
    pub mean_ms: Option<f64>,
    pub min_ms: Option<f64>,
    pub median_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub errors: BTreeMap<String, u64>,
    /// Medians of the phases the node reported (process, imports, model,
    /// first answer), and how the workers started; `None` when it said nothing.
    pub phases_ms: Option<[f64; 4]>,
    pub kinds: Vec<String>,
}

/// The phases' names, in the order of [`ColdSummary::phases_ms`].
pub const PHASES: [&str; 4] = ["process", "imports", "model", "first answer"];

/// A chart written beside the report.
#[derive(Debug, Clone, Serialize)]
pub struct ChartFile {
    pub file: String,
    pub title: String,
    #[serde(skip)]
    pub svg: String,
    /// The same chart as PNG, written beside the SVG.
    #[serde(skip)]
    pub png: Vec<u8>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub experiment: String,
    pub description: String,
    pub quick: bool,
    pub started: String,
    pub finished: Option<String>,
    pub host: Host,
    pub settings: serde_json::Value,
    pub notes: Vec<String>,
    pub scenarios: Vec<ScenarioRecord>,
    pub levels: Vec<LevelSummary>,
    pub cold_starts: Vec<ColdSummary>,
    pub steps: Vec<StepSummary>,
    pub charts: Vec<ChartFile>,
    /// The engine alone, measured in the same run.
    pub engine: Vec<crate::engine::EngineRun>,
}

impl Report {
    /// The engine's runs per second, averaged over its measurements.
    pub fn engine_rate(&self) -> Option<f64> {
        let rates: Vec<f64> = self.engine.iter().map(|e| e.runs_per_s).filter(|r| *r > 0.0).collect();
        (!rates.is_empty()).then(|| rates.iter().sum::<f64>() / rates.len() as f64)
    }

    /// With the engine measured before every load step: each scenario at
    /// each user count set against the engine measured just before and just
    /// after its steps, averaged over the repetitions (the lowest share of
    /// one repetition beside it).
    pub fn step_shares(&self) -> Vec<StepShare> {
        let mut out: Vec<StepShare> = Vec::new();
        for s in self.steps.iter().filter(|s| s.kind == StepKind::Load) {
            let Some(i) = self.engine.iter().position(|e| e.before_step == Some(s.id)) else { continue };
            let around: Vec<f64> = self.engine[i..].iter().take(2).map(|e| e.runs_per_s).filter(|r| *r > 0.0).collect();
            if around.is_empty() {
                continue;
            }
            let engine = around.iter().sum::<f64>() / around.len() as f64;
            let alone: Vec<f64> =
                self.engine[i..].iter().take(2).map(|e| e.alone_p50_ms).filter(|c| *c > 0.0).collect();
            let added_ms = if alone.is_empty() {
                0.0
            } else {
                s.summary.latency_ms.as_ref().map_or(0.0, |l| l.p50) - alone.iter().sum::<f64>() / alone.len() as f64
            };
            let share = s.summary.throughput / engine;
            // CPU per answer against CPU per run of the engine: node,
            // workers and the load generator all counted.
            let engine_cpu: Vec<f64> =
                self.engine[i..].iter().take(2).map(|e| e.cpu_ms_per_run).filter(|c| *c > 0.0).collect();
            let cpu_share = match (&s.resources, engine_cpu.is_empty()) {
                (Some(r), false) if s.summary.successes > 0 => {
                    let per_answer =
                        (r.node_cpu_s + r.workers_cpu_s + r.bench_cpu_s) * 1e3 / s.summary.successes as f64;
                    (engine_cpu.iter().sum::<f64>() / engine_cpu.len() as f64) / per_answer
                }
                _ => 0.0,
            };
            // A fair share of the node: each of N users answered within 1.3 × N / throughput.
            let fair_ms =
                if s.summary.throughput > 0.0 { 1300.0 * f64::from(s.users) / s.summary.throughput } else { 0.0 };
            let over = if fair_ms > 0.0 { s.worst_user_p99_ms / fair_ms } else { 0.0 };
            match out.iter_mut().find(|o| o.scenario == s.scenario && o.users == s.users) {
                Some(o) => {
                    o.worst_user_p99_ms = o.worst_user_p99_ms.max(s.worst_user_p99_ms);
                    o.worst_of_fair = o.worst_of_fair.max(over);
                    let n = f64::from(o.repetitions);
                    o.throughput = (o.throughput * n + s.summary.throughput) / (n + 1.0);
                    o.engine = (o.engine * n + engine) / (n + 1.0);
                    o.share = (o.share * n + share) / (n + 1.0);
                    o.cpu_share = (o.cpu_share * n + cpu_share) / (n + 1.0);
                    o.added_ms = (o.added_ms * n + added_ms) / (n + 1.0);
                    o.lowest = o.lowest.min(share);
                    o.repetitions += 1;
                }
                None => out.push(StepShare {
                    scenario: s.scenario.clone(),
                    users: s.users,
                    repetitions: 1,
                    throughput: s.summary.throughput,
                    engine,
                    share,
                    cpu_share,
                    added_ms,
                    lowest: share,
                    worst_user_p99_ms: s.worst_user_p99_ms,
                    worst_of_fair: over,
                }),
            }
        }
        out
    }

    /// Each scenario's best throughput over its user levels, as a share of
    /// the engine's rate: `(scenario, best req/s, users, share)`.
    pub fn engine_shares(&self) -> Vec<(String, f64, u32, f64)> {
        let Some(rate) = self.engine_rate() else { return Vec::new() };
        let mut best: Vec<(String, f64, u32, f64)> = Vec::new();
        for l in &self.levels {
            let t = l.summary.throughput;
            match best.iter_mut().find(|b| b.0 == l.scenario) {
                Some(b) if b.1 >= t => {}
                Some(b) => *b = (l.scenario.clone(), t, l.users, t / rate),
                None => best.push((l.scenario.clone(), t, l.users, t / rate)),
            }
        }
        best
    }
}

/// A scenario at one user count against the engine measured around its
/// steps (interleaved), means over the repetitions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepShare {
    pub scenario: String,
    pub users: u32,
    pub repetitions: u32,
    /// Requests a second served.
    pub throughput: f64,
    /// The engine's runs a second around the steps.
    pub engine: f64,
    /// throughput / engine, the mean of the repetitions' shares.
    pub share: f64,
    /// The engine's CPU time per run over the CPU time per answer (node,
    /// workers and load generator): the work done rather than the share of
    /// the machine got (0 when not measured).
    pub cpu_share: f64,
    /// The step's p50 latency less the p50 of one run of the engine
    /// alone, in ms: what serving adds to a request (at one user).
    pub added_ms: f64,
    /// The lowest share of one repetition.
    pub lowest: f64,
    /// The highest p99 of one user over the repetitions, in ms.
    pub worst_user_p99_ms: f64,
    /// The highest over the repetitions of that p99 against
    /// 1.3 × users / throughput (at most 1 is served fairly).
    pub worst_of_fair: f64,
}

/// Which chart formats to write; SVG always.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Formats {
    pub png: bool,
}

/// Reads a run's directory and writes its report files there, charts as
/// SVG and PNG.
pub fn write(dir: &Path) -> Result<Report, BenchError> {
    write_with(dir, Formats { png: true })
}

pub fn write_with(dir: &Path, formats: Formats) -> Result<Report, BenchError> {
    let run = RunRecord::load(dir)?;
    let raw = record::read_raw(dir)?;
    let report = build(&run, &raw, formats)?;
    let charts_dir = dir.join("charts");
    std::fs::create_dir_all(&charts_dir).map_err(BenchError::io(format!("creating {}", charts_dir.display())))?;
    for chart in &report.charts {
        record::write_atomically(&dir.join(&chart.file), chart.svg.as_bytes())?;
        if formats.png {
            record::write_atomically(&dir.join(&chart.file).with_extension("png"), &chart.png)?;
        }
    }
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| BenchError::Results { path: dir.join("summary.json"), message: e.to_string() })?;
    record::write_atomically(&dir.join("summary.json"), json.as_bytes())?;
    record::write_atomically(&dir.join("summary.md"), markdown::render(&report).as_bytes())?;
    record::write_atomically(&dir.join("report.html"), html::render(&report).as_bytes())?;
    Ok(report)
}

/// Summaries and charts from a run record and its request rows.
pub fn build(run: &RunRecord, raw: &HashMap<u32, Vec<Sample>>, formats: Formats) -> Result<Report, BenchError> {
    let none: Vec<Sample> = Vec::new();
    let rows = |id: u32| raw.get(&id).unwrap_or(&none);
    let steps: Vec<StepSummary> = run
        .steps
        .iter()
        .map(|s| StepSummary {
            id: s.id,
            kind: s.kind,
            scenario: s.scenario.clone(),
            users: s.users,
            repetition: s.repetition,
            summary: Summary::of_run(rows(s.id), Duration::from_secs_f64(s.elapsed_s)),
            resources: s.resources,
            worst_user_p99_ms: worst_user_p99_ms(rows(s.id)),
        })
        .collect();

    let mut levels = Vec::new();
    let mut level_rows: Vec<Vec<&Sample>> = Vec::new();
    for sc in &run.scenarios {
        let mut users: Vec<u32> =
            run.steps.iter().filter(|s| s.kind == StepKind::Load && s.scenario == sc.name).map(|s| s.users).collect();
        users.sort_unstable();
        users.dedup();
        for u in users {
            let reps: Vec<_> = run
                .steps
                .iter()
                .filter(|s| s.kind == StepKind::Load && s.scenario == sc.name && s.users == u)
                .collect();
            let summary =
                Summary::of_runs(reps.iter().map(|s| (rows(s.id).as_slice(), Duration::from_secs_f64(s.elapsed_s))));
            let each: Vec<f64> = reps
                .iter()
                .map(|s| Summary::of_run(rows(s.id), Duration::from_secs_f64(s.elapsed_s)).throughput)
                .collect();
            levels.push(LevelSummary {
                scenario: sc.name.clone(),
                target: sc.target.clone(),
                function: sc.function.clone(),
                workload: workload(sc),
                language: sc.label("language").to_owned(),
                style: sc.label("style").to_owned(),
                users: u,
                repetitions: reps.len() as u32,
                summary,
                throughput_sd: std_dev(&each),
                resources: mean_resources(reps.iter().filter_map(|s| s.resources)),
            });
            level_rows.push(reps.iter().flat_map(|s| rows(s.id).iter()).collect());
        }
    }

    let cold_starts = run
        .scenarios
        .iter()
        .filter_map(|sc| {
            let samples: Vec<&Sample> = run
                .steps
                .iter()
                .filter(|s| s.kind == StepKind::Cold && s.scenario == sc.name)
                .flat_map(|s| rows(s.id).iter())
                .collect();
            let phases: Vec<&crate::record::ColdPhases> = run
                .steps
                .iter()
                .filter(|s| s.kind == StepKind::Cold && s.scenario == sc.name)
                .filter_map(|s| s.phases.as_ref())
                .collect();
            (!samples.is_empty()).then(|| cold_summary(&sc.name, &samples, &phases))
        })
        .collect();

    let mut report = Report {
        experiment: run.experiment.clone(),
        description: run.description.clone(),
        quick: run.quick,
        started: run.started.clone(),
        finished: run.finished.clone(),
        host: run.host.clone(),
        settings: run.settings.clone(),
        notes: run.notes.clone(),
        scenarios: run.scenarios.clone(),
        levels,
        cold_starts,
        steps,
        charts: Vec::new(),
        engine: run.engine.clone(),
    };
    report.charts = make_charts(&report, &level_rows, formats)?;
    Ok(report)
}

/// The `workload` label, or the function's name when it has none.
fn workload(sc: &ScenarioRecord) -> String {
    sc.labels.get("workload").cloned().unwrap_or_else(|| sc.function.clone())
}

fn std_dev(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len() - 1) as f64).sqrt()
}

fn mean_resources(all: impl Iterator<Item = Resources>) -> Option<Resources> {
    let all: Vec<Resources> = all.collect();
    if all.is_empty() {
        return None;
    }
    let n = all.len() as f64;
    let avg = |f: fn(&Resources) -> f64| all.iter().map(f).sum::<f64>() / n;
    Some(Resources {
        node_cpu_s: avg(|r| r.node_cpu_s),
        workers_cpu_s: avg(|r| r.workers_cpu_s),
        node_peak_rss_mib: avg(|r| r.node_peak_rss_mib),
        workers_peak_rss_mib: avg(|r| r.workers_peak_rss_mib),
        workers_peak: all.iter().map(|r| r.workers_peak).max().unwrap_or(0),
        bench_cpu_s: avg(|r| r.bench_cpu_s),
    })
}

fn cold_summary(scenario: &str, samples: &[&Sample], phases: &[&crate::record::ColdPhases]) -> ColdSummary {
    let median_of = |f: fn(&crate::record::ColdPhases) -> f64| {
        let mut v: Vec<f64> = phases.iter().map(|p| f(p)).collect();
        v.sort_by(f64::total_cmp);
        v[(v.len() - 1) / 2]
    };
    let phases_ms = (!phases.is_empty()).then(|| {
        [
            median_of(|p| p.process_ms),
            median_of(|p| p.imports_ms),
            median_of(|p| p.model_ms),
            median_of(|p| p.first_answer_ms),
        ]
    });
    let mut kinds: Vec<String> = phases.iter().map(|p| p.kind.clone()).collect();
    kinds.sort();
    kinds.dedup();
    let latencies_ms: Vec<f64> =
        samples.iter().filter(|s| s.outcome.is_ok()).map(|s| s.latency_us as f64 / 1000.0).collect();
    let mut sorted = latencies_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let mut errors = BTreeMap::new();
    for s in samples.iter().filter(|s| !s.outcome.is_ok()) {
        *errors.entry(s.outcome.as_str().to_owned()).or_insert(0) += 1;
    }
    ColdSummary {
        phases_ms,
        kinds,
        scenario: scenario.to_owned(),
        count: samples.len() as u64,
        successes: latencies_ms.len() as u64,
        mean_ms: (!sorted.is_empty()).then(|| sorted.iter().sum::<f64>() / sorted.len() as f64),
        min_ms: sorted.first().copied(),
        median_ms: (!sorted.is_empty()).then(|| sorted[(sorted.len() - 1) / 2]),
        max_ms: sorted.last().copied(),
        latencies_ms,
        errors,
    }
}

/// A label reduced to what is safe in a file name.
fn slug(text: &str) -> String {
    let s: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let s = s.trim_matches('-').to_owned();
    if s.is_empty() {
        "all".into()
    } else {
        s
    }
}

/// The line a level belongs to in the per-workload charts: language and
/// style, with the target when there are several, and the function when
/// that is still ambiguous.
fn series_names(report: &Report) -> HashMap<String, String> {
    let targets: std::collections::HashSet<&str> = report.levels.iter().map(|l| l.target.as_str()).collect();
    let base = |l: &LevelSummary| {
        let mut name = format!("{} · {}", l.language, l.style);
        if targets.len() > 1 {
            name = format!("{name} @ {}", l.target);
        }
        name
    };
    let mut out = HashMap::new();
    for l in &report.levels {
        let clash =
            report.levels.iter().any(|o| o.workload == l.workload && o.scenario != l.scenario && base(o) == base(l));
        let name = if clash { format!("{} ({})", base(l), l.function) } else { base(l) };
        out.insert(l.scenario.clone(), name);
    }
    out
}

/// A figure drawn for every workload: one value of a level against users.
struct Metric {
    key: &'static str,
    what: &'static str,
    y_desc: &'static str,
    value: fn(&LevelSummary) -> Option<f64>,
    y_range: Option<std::ops::Range<f64>>,
}

fn make_charts(report: &Report, level_rows: &[Vec<&Sample>], formats: Formats) -> Result<Vec<ChartFile>, BenchError> {
    let mut out = Vec::new();
    let names = series_names(report);
    let mut workloads: Vec<&str> = report.levels.iter().map(|l| l.workload.as_str()).collect();
    workloads.dedup();
    let mut seen = std::collections::HashSet::new();
    workloads.retain(|w| seen.insert(*w));

    let metrics = [
        Metric {
            key: "latency",
            what: "mean response time",
            y_desc: "mean response time (ms)",
            value: |l| l.summary.latency_ms.as_ref().map(|x| x.mean),
            y_range: None,
        },
        Metric {
            key: "p99",
            what: "99th percentile response time",
            y_desc: "p99 response time (ms)",
            value: |l| l.summary.latency_ms.as_ref().map(|x| x.p99),
            y_range: None,
        },
        Metric {
            key: "throughput",
            what: "throughput",
            y_desc: "successful requests per second",
            value: |l| Some(l.summary.throughput),
            y_range: None,
        },
        Metric {
            key: "success",
            what: "success rate",
            y_desc: "successful requests (%)",
            value: |l| Some(l.summary.success_rate * 100.0),
            y_range: Some(0.0..105.0),
        },
    ];
    for workload in &workloads {
        for m in &metrics {
            let mut lines: Vec<charts::Line> = Vec::new();
            for l in report.levels.iter().filter(|l| l.workload == *workload) {
                let name = names.get(&l.scenario).cloned().unwrap_or_else(|| l.scenario.clone());
                let Some(y) = (m.value)(l) else { continue };
                match lines.iter_mut().find(|x| x.name == name) {
                    Some(line) => line.points.push((f64::from(l.users), y)),
                    None => lines.push(charts::Line { name, points: vec![(f64::from(l.users), y)] }),
                }
            }
            let title = format!("{workload}: {} vs concurrent users", m.what);
            let spec = charts::Spec {
                title: &title,
                x_desc: "concurrent users",
                y_desc: m.y_desc,
                x_log: false,
                y_range: m.y_range.clone(),
            };
            let file = format!("charts/{}-{}.svg", m.key, slug(workload));
            out.push(chart(file, &title, &spec, charts::Data::Lines(&lines), formats)?);
        }
    }
    for sc in &report.scenarios {
        let lines: Vec<charts::Line> = report
            .levels
            .iter()
            .zip(level_rows)
            .filter(|(l, _)| l.scenario == sc.name)
            .map(|(l, rows)| charts::Line {
                name: users(l.users),
                points: stats::cdf(rows.iter().copied(), 200).into_iter().map(|(x, f)| (x, f * 100.0)).collect(),
            })
            .filter(|l| !l.points.is_empty())
            .collect();
        if lines.is_empty() {
            continue;
        }
        let title = format!("{}: latency CDF", sc.name);
        let spec = charts::Spec {
            title: &title,
            x_desc: "response time (ms, log scale)",
            y_desc: "requests at or below (%)",
            x_log: true,
            y_range: Some(0.0..100.0),
        };
        out.push(chart(
            format!("charts/cdf-{}-{}.svg", slug(&sc.target), slug(&sc.function)),
            &title,
            &spec,
            charts::Data::Lines(&lines),
            formats,
        )?);
    }
    if let Some(c) = cold_chart(&report.cold_starts, formats)? {
        out.push(c);
    }
    if let Some(c) = phases_chart(&report.cold_starts, formats)? {
        out.push(c);
    }
    Ok(out)
}

/// "1 user", "10 users".
fn users(n: u32) -> String {
    if n == 1 {
        "1 user".into()
    } else {
        format!("{n} users")
    }
}

/// Every cold start of every scenario, a row each.
fn cold_chart(cold: &[ColdSummary], formats: Formats) -> Result<Option<ChartFile>, BenchError> {
    let rows: Vec<charts::Strip> = cold
        .iter()
        .filter(|c| !c.latencies_ms.is_empty())
        .map(|c| charts::Strip { name: c.scenario.clone(), values: c.latencies_ms.clone() })
        .collect();
    if rows.is_empty() {
        return Ok(None);
    }
    let most = cold.iter().map(|c| c.count).max().unwrap_or(0);
    let title = format!("cold starts: first request after scale to zero ({most} per scenario)");
    let spec =
        charts::Spec { title: &title, x_desc: "response time (ms, log scale)", y_desc: "", x_log: true, y_range: None };
    chart("charts/cold-starts.svg".into(), &title, &spec, charts::Data::Strips(&rows), formats).map(Some)
}

/// Where each scenario's cold starts went: the median of each phase, end to end.
fn phases_chart(cold: &[ColdSummary], formats: Formats) -> Result<Option<ChartFile>, BenchError> {
    let rows: Vec<charts::Stack> = cold
        .iter()
        .filter_map(|c| {
            let p = c.phases_ms?;
            let name =
                if c.kinds.is_empty() { c.scenario.clone() } else { format!("{} ({})", c.scenario, c.kinds.join("/")) };
            Some(charts::Stack { name, parts: PHASES.iter().zip(p).map(|(n, v)| ((*n).to_owned(), v)).collect() })
        })
        .collect();
    if rows.is_empty() {
        return Ok(None);
    }
    let title = "cold starts by phase: median of each, as the node reported them";
    let spec = charts::Spec { title, x_desc: "ms", y_desc: "", x_log: false, y_range: None };
    chart("charts/cold-start-phases.svg".into(), title, &spec, charts::Data::Stacks(&rows), formats).map(Some)
}

/// Below this many cold starts per scenario, the report says the figures
/// are single samples rather than a distribution.
const FEW_COLD_STARTS: u64 = 5;

/// What the report says about how many cold starts each scenario had.
pub(crate) fn cold_caveat(cold: &[ColdSummary]) -> Option<String> {
    let fewest = cold.iter().map(|c| c.count).min()?;
    (fewest < FEW_COLD_STARTS).then(|| {
        let each = if fewest == 1 { "one cold start".to_owned() } else { format!("as few as {fewest} cold starts") };
        format!(
            "{each} per scenario: single samples, not a distribution (a spare interpreter may or may not have \
             been waiting). Set `cold_starts` to {FEW_COLD_STARTS} or more for figures to compare."
        )
    })
}

fn chart(
    file: String,
    title: &str,
    spec: &charts::Spec<'_>,
    data: charts::Data<'_>,
    formats: Formats,
) -> Result<ChartFile, BenchError> {
    let fail = |message| BenchError::Chart { name: file.clone(), message };
    let svg = charts::svg(spec, data).map_err(fail)?;
    let png = if formats.png { charts::png(spec, data).map_err(fail)? } else { Vec::new() };
    Ok(ChartFile { file, title: title.to_owned(), svg, png })
}

/// Milliseconds for tables: three significant digits or so.
pub(crate) fn fmt_ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cold(scenario: &str, count: u64) -> ColdSummary {
        let latencies_ms: Vec<f64> = (0..count).map(|i| 10.0 + i as f64).collect();
        ColdSummary {
            scenario: scenario.into(),
            count,
            successes: count,
            mean_ms: None,
            min_ms: None,
            median_ms: None,
            max_ms: None,
            latencies_ms,
            errors: BTreeMap::new(),
            phases_ms: None,
            kinds: Vec::new(),
        }
    }

    #[test]
    fn few_cold_starts_are_called_single_samples() {
        let one = cold_caveat(&[cold("a", 1), cold("b", 5)]).expect("a caveat");
        assert!(one.starts_with("one cold start per scenario"), "{one}");
        assert!(cold_caveat(&[cold("a", 3)]).expect("a caveat").starts_with("as few as 3 cold starts"));
        assert_eq!(cold_caveat(&[cold("a", 5), cold("b", 7)]), None);
        assert_eq!(cold_caveat(&[]), None);
    }

    #[test]
    fn the_cold_start_chart_has_a_row_per_scenario_with_samples() {
        let c = cold_chart(&[cold("sedge/a", 5), cold("sedge/b", 0)], Formats { png: false }).expect("draws");
        let c = c.expect("a chart");
        assert_eq!(c.file, "charts/cold-starts.svg");
        assert!(c.svg.contains("sedge/a") && !c.svg.contains("sedge/b"));
        assert!(cold_chart(&[], Formats { png: false }).expect("draws").is_none());
        assert_eq!((users(1), users(10)), ("1 user".to_owned(), "10 users".to_owned()));
    }

    #[test]
    fn a_starved_user_shows_in_the_worst_users_p99() {
        let sample = |user: u32, ms: u64| Sample {
            user,
            send_us: 0,
            latency_us: ms * 1000,
            status: 200,
            bytes: 1,
            outcome: crate::outcome::Outcome::Ok,
        };
        let mut rows: Vec<Sample> = (0..100).map(|i| sample(i % 4, 10)).collect();
        assert_eq!(worst_user_p99_ms(&rows), 10.0);
        // One user of five waits ten times as long every time.
        rows.extend((0..25).map(|_| sample(4, 100)));
        assert_eq!(worst_user_p99_ms(&rows), 100.0);
        assert_eq!(worst_user_p99_ms(&[]), 0.0);
    }

    #[test]
    fn slugs_and_spread() {
        assert_eq!(slug("ML inference"), "ml-inference");
        assert_eq!(slug("!!"), "all");
        assert_eq!(std_dev(&[1.0]), 0.0);
        assert!((std_dev(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]) - 2.138).abs() < 0.01);
    }
}

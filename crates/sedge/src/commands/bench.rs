//! `sedge bench load|run|report|ceiling`: the benchmark (docs/bench.md).
//! The work is in `sedge-bench`; this file parses arguments, builds the
//! tokio runtime and prints.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use sedge_bench::load::{self, LoadPlan, Stop};
use sedge_bench::run::RunOptions;
use sedge_bench::{ceiling, parse_duration, procstat, record, report, run, Experiment, Summary};

/// Measure functions under load: ad hoc, or an experiment with a report.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(clap::Subcommand)]
enum BenchCommand {
    Load(LoadArgs),
    Run(RunArgs),
    Report(ReportArgs),
    Ceiling(CeilingArgs),
    Hangups(HangupArgs),
    Ort(super::bench_ort::OrtArgs),
    /// A trivial HTTP server for `ceiling` (prints its address, serves until killed).
    #[command(hide = true)]
    TrivialServer,
}

/// One load run against a URL, with a summary table (like oha or hey).
#[derive(clap::Args)]
struct LoadArgs {
    /// What to load, e.g. http://127.0.0.1:8080/function/NAME.
    #[arg(value_name = "URL")]
    url: String,
    /// Concurrent users, each with its own keep-alive connection.
    #[arg(short = 'c', long = "users", default_value_t = 10, value_name = "USERS")]
    users: u32,
    /// How long to send requests, e.g. 10s or 1m (default 10s unless -n is given).
    #[arg(long, value_parser = parse_duration, conflicts_with = "requests", value_name = "DURATION")]
    duration: Option<Duration>,
    /// How many requests in all.
    #[arg(short = 'n', long, value_name = "N")]
    requests: Option<u64>,
    /// Open loop: requests per second in all, latency counted from when each was due.
    #[arg(long, value_name = "R")]
    rate: Option<f64>,
    /// Request body: text, or @FILE.
    #[arg(long, short = 'd', value_name = "TEXT|@FILE")]
    data: Option<String>,
    /// Extra header, as K:V (repeatable).
    #[arg(short = 'H', long = "header", value_name = "K:V")]
    headers: Vec<String>,
    /// HTTP method (default: POST with data, GET without).
    #[arg(short = 'm', long, value_name = "METHOD")]
    method: Option<String>,
    /// Per-request timeout.
    #[arg(long, value_parser = parse_duration, default_value = "30s", value_name = "DURATION")]
    timeout: Duration,
    /// Closed loop: pause between an answer and the user's next request.
    #[arg(long, value_parser = parse_duration, default_value = "0s", value_name = "DURATION")]
    think: Duration,
    /// Text a 2xx body must contain to count as a success.
    #[arg(long)]
    expect: Option<String>,
    /// A new connection for every request.
    #[arg(long)]
    no_keepalive: bool,
    /// Also write every request as a CSV row to this file.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
}

/// Run an experiment file and write its report.
///
/// Sedge targets without a gateway of their own run on a node the bench
/// starts for the run; `--gateway URL` aims them at a running node instead.
#[derive(clap::Args)]
struct RunArgs {
    /// The experiment file, e.g. bench/experiments/paper.toml (docs/bench.md).
    experiment: PathBuf,
    /// A running node for the sedge targets that name no gateway; without it the bench starts a node of its own.
    #[arg(long, env = "SEDGE_GATEWAY", value_name = "URL")]
    gateway: Option<String>,
    /// Results folder [default: a new folder under $TMPDIR/sedge-bench]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Fewer users and repetitions, shorter steps (the file's [quick] table).
    #[arg(long)]
    quick: bool,
}

/// Regenerate a run's report from its raw results (run.json, raw.csv).
#[derive(clap::Args)]
struct ReportArgs {
    /// A results folder written by `sedge bench run`.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

/// Measure the load generator's ceiling next to wrk's, on a trivial local server.
#[derive(clap::Args)]
struct CeilingArgs {
    /// Concurrent users, each with its own keep-alive connection.
    #[arg(short = 'c', long = "users", default_value_t = 50, value_name = "USERS")]
    users: u32,
    /// How long each tool loads the server.
    #[arg(long, value_parser = parse_duration, default_value = "5s", value_name = "DURATION")]
    duration: Duration,
    /// Threads for the generator, and for wrk (-t).
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Skip wrk.
    #[arg(long)]
    no_wrk: bool,
}

/// Clients hanging up mid-request beside clients that stay: counts the
/// staying clients' answers and, on a sedge node, the function's restarts.
#[derive(clap::Args)]
struct HangupArgs {
    /// A function's URL, e.g. http://127.0.0.1:8080/function/NAME.
    #[arg(value_name = "URL")]
    url: String,
    /// Request body: text, or @FILE.
    #[arg(long, short = 'd', value_name = "TEXT|@FILE")]
    data: Option<String>,
    /// Rounds of leaving and staying clients.
    #[arg(long, default_value_t = 30)]
    rounds: u32,
    /// Clients per round that hang up (every other one after its whole body).
    #[arg(long, default_value_t = 16)]
    leavers: u32,
    /// Clients per round that wait for their answers.
    #[arg(long, default_value_t = 2)]
    stayers: u32,
    /// A leaver closes its socket after a delay in this range, as MIN..MAX.
    #[arg(long, default_value = "5ms..60ms", value_parser = parse_range, value_name = "MIN..MAX")]
    leave_after: (Duration, Duration),
    /// Calls made one by one after the rounds.
    #[arg(long, default_value_t = 4)]
    steady: u32,
    /// Longest wait for one answer.
    #[arg(long, value_parser = parse_duration, default_value = "60s", value_name = "DURATION")]
    timeout: Duration,
    /// Seed of the schedule, so that a run can be repeated.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn parse_range(text: &str) -> Result<(Duration, Duration), String> {
    let (lo, hi) = text.split_once("..").ok_or_else(|| format!("{text:?} is not a range like 5ms..60ms"))?;
    let (lo, hi) = (parse_duration(lo)?, parse_duration(hi)?);
    if lo > hi {
        return Err(format!("{text:?}: the start is after the end"));
    }
    Ok((lo, hi))
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        BenchCommand::Load(a) => load_command(a),
        BenchCommand::Run(a) => run_command(a),
        BenchCommand::Report(a) => report_command(&a.dir),
        BenchCommand::Ceiling(a) => ceiling_command(a),
        BenchCommand::Hangups(a) => hangups_command(a),
        BenchCommand::Ort(a) => super::bench_ort::ort_command(a),
        BenchCommand::TrivialServer => trivial_server(),
    }
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        b.worker_threads(threads);
    }
    b.enable_all().build().context("starting the async runtime")
}

fn body(data: Option<&str>) -> Result<Vec<u8>> {
    Ok(match data {
        None => Vec::new(),
        Some(d) if d.starts_with('@') => std::fs::read(&d[1..]).with_context(|| format!("cannot read {}", &d[1..]))?,
        Some(d) => d.as_bytes().to_vec(),
    })
}

/// The function's cold starts, when `url` is a function on a sedge node.
async fn cold_starts(url: &str) -> Option<u64> {
    let (base, name) = url.split_once("/function/")?;
    let name = name.split(['/', '?']).next()?;
    let describe = format!("{base}/system/function/{name}");
    let headers: Vec<(String, String)> = crate::credentials::find(base)
        .ok()
        .flatten()
        .map(|p| ("authorization".to_owned(), sedge_store::secrets::admin_basic_auth(&p)))
        .into_iter()
        .collect();
    let answer =
        sedge_bench::http::once(&describe, "GET", &headers, Vec::new().into(), Duration::from_secs(10)).await.ok()?;
    let json: serde_json::Value = serde_json::from_slice(&answer.body).ok()?;
    json["sedge"]["coldStarts"].as_u64()
}

fn hangups_command(a: HangupArgs) -> Result<()> {
    let plan = sedge_bench::hangup::HangupPlan {
        url: a.url.clone(),
        body: body(a.data.as_deref())?.into(),
        rounds: a.rounds,
        leavers: a.leavers,
        stayers: a.stayers,
        leave_after: a.leave_after,
        steady: a.steady,
        timeout: a.timeout,
        seed: a.seed,
    };
    let rt = runtime(0)?;
    let (before, result, after) = rt.block_on(async {
        let before = cold_starts(&a.url).await;
        let result = sedge_bench::hangup::run(&plan).await;
        let after = cold_starts(&a.url).await;
        (before, result, after)
    });
    let r = result?;
    println!("{} rounds, {} clients hung up, {} stayed", a.rounds, r.leavers, r.stayed.total());
    println!("{:<16} {:>6} {:>6} {:>6} {:>8}", "", "2xx", "4xx", "5xx", "no answer");
    for (what, c) in [("staying clients", &r.stayed), ("steady after", &r.steady)] {
        println!("{what:<16} {:>6} {:>6} {:>6} {:>8}", c.ok, c.client_error, c.server_error, c.failed);
    }
    match (before, after) {
        (Some(b), Some(a)) => println!("worker starts during the run: {}", a.saturating_sub(b)),
        _ => println!("worker starts during the run: unknown (not a sedge function URL)"),
    }
    if r.stayed.server_error + r.stayed.failed + r.steady.server_error + r.steady.failed > 0 {
        bail!("clients that stayed got 5xx or no answer");
    }
    Ok(())
}

fn load_command(a: LoadArgs) -> Result<()> {
    let body = body(a.data.as_deref())?;
    let mut headers = Vec::new();
    for h in &a.headers {
        let (k, v) = h.split_once(':').ok_or_else(|| anyhow!("--header {h:?}: expected K:V"))?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let stop = match (a.requests, a.duration) {
        (Some(n), _) => Stop::Requests(n),
        (None, Some(d)) => Stop::After(d),
        (None, None) => Stop::After(Duration::from_secs(10)),
    };
    let plan = LoadPlan {
        url: a.url.clone(),
        method: a.method.unwrap_or_else(|| if body.is_empty() { "GET".into() } else { "POST".into() }),
        headers,
        body: body.into(),
        users: a.users,
        stop,
        rate: a.rate,
        think: a.think,
        timeout: a.timeout,
        expect: a.expect,
        keep_alive: !a.no_keepalive,
    };
    let mode = match plan.rate {
        Some(r) => format!("open loop at {r} req/s"),
        None => "closed loop".into(),
    };
    let until = match stop {
        Stop::Requests(n) => format!("{n} requests"),
        Stop::After(d) => format!("{d:?}"),
    };
    eprintln!("{} users, {mode}, {until}: {} {}", plan.users, plan.method, plan.url);
    let result = runtime(0)?.block_on(load::run(&plan))?;
    if let Some(path) = &a.csv {
        write_csv(path, &result.samples)?;
    }
    print!("{}", report::summary_table(&Summary::of_run(&result.samples, result.elapsed)));
    Ok(())
}

fn write_csv(path: &std::path::Path, samples: &[sedge_bench::Sample]) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    writeln!(out, "user,send_us,latency_us,status,bytes,outcome")?;
    for s in samples {
        writeln!(out, "{},{},{},{},{},{}", s.user, s.send_us, s.latency_us, s.status, s.bytes, s.outcome.as_str())?;
    }
    out.flush().with_context(|| format!("writing {}", path.display()))
}

/// The CLI's credentials for every gateway the experiment names.
fn gateway_credentials(exp: &Experiment, gateway: Option<&str>) -> Result<Vec<(String, String)>> {
    let named = exp.targets.iter().filter_map(|t| match &t.kind {
        sedge_bench::experiment::TargetKind::Sedge { gateway } => gateway.as_deref(),
        sedge_bench::experiment::TargetKind::Url { .. } => None,
    });
    let mut found = Vec::new();
    for g in gateway.into_iter().chain(named) {
        let g = g.trim_end_matches('/').to_owned();
        if let Some(password) = crate::credentials::find(&g)? {
            found.push((g, sedge_store::secrets::admin_basic_auth(&password)));
        }
    }
    Ok(found)
}

fn run_command(a: RunArgs) -> Result<()> {
    let gateway = a.gateway.as_deref();
    let exp = Experiment::load(&a.experiment, a.quick)?;
    let out = a.out.unwrap_or_else(|| run::default_out_dir(&exp.name));
    let opts = RunOptions {
        out: out.clone(),
        gateway: gateway.map(str::to_owned),
        auth: gateway_credentials(&exp, gateway)?,
        sedge_exe: Some(std::env::current_exe().context("finding the sedge executable")?),
    };
    eprintln!("results in {}", out.display());
    let mut progress = |line: &str| eprintln!("{line}");
    let finished = runtime(0)?.block_on(async {
        tokio::select! {
            r = run::run(&exp, &opts, &mut progress) => Some(r),
            () = crate::signals::stop_signal() => None,
        }
    });
    match finished {
        Some(result) => {
            result?;
        }
        None => {
            eprintln!("interrupted; reporting the steps done so far");
            if std::fs::metadata(out.join(record::RAW_FILE)).is_ok() {
                let _ = report::write(&out);
            }
            bail!("interrupted");
        }
    }
    report_command(&out)
}

fn report_command(dir: &std::path::Path) -> Result<()> {
    let r = report::write(dir)?;
    print!("{}", report::terminal_table(&r));
    for note in &r.notes {
        println!("note: {note}");
    }
    println!("report: {}", dir.join("report.html").display());
    Ok(())
}

fn trivial_server() -> Result<()> {
    // One thread: the server's cost stays put while the clients vary.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding 127.0.0.1:0")?;
        println!("listening on http://{}", listener.local_addr()?);
        std::io::stdout().flush()?;
        sedge_bench::trivial::serve(listener).await.context("serving")
    })
}

/// Kills the child when dropped, whatever happened in between.
struct ServerProcess(std::process::Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ceiling_command(a: CeilingArgs) -> Result<()> {
    let exe = std::env::current_exe().context("finding the sedge executable")?;
    // The server runs in a process of its own so that this process's CPU
    // time is the generator's alone.
    let mut child = ServerProcess(
        Command::new(exe)
            .args(["bench", "trivial-server"])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .context("starting the trivial server")?,
    );
    let stdout = child.0.stdout.take().ok_or_else(|| anyhow!("no stdout from the trivial server"))?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).context("reading the trivial server's address")?;
    let base = line.trim().strip_prefix("listening on ").ok_or_else(|| anyhow!("unexpected: {line:?}"))?.to_owned();
    let url = format!("{base}/");
    eprintln!("trivial server at {url}; {} users, {:?} each, {} thread(s)", a.users, a.duration, a.threads);

    let rt = runtime(a.threads as usize)?;
    // A short warm-up so both tools meet a server that has seen traffic.
    rt.block_on(load::run(&LoadPlan::new(url.clone(), a.users, Stop::After(Duration::from_millis(500)))))?;
    let cpu0 = procstat::own_cpu_s();
    let ours = rt.block_on(load::run(&LoadPlan::new(url.clone(), a.users, Stop::After(a.duration))))?;
    let cpu = match (cpu0, procstat::own_cpu_s()) {
        (Some(x), Some(y)) => Some(y - x),
        _ => None,
    };
    let s = Summary::of_run(&ours.samples, ours.elapsed);
    let mut rows = vec![ceiling_row(
        "sedge bench",
        s.count,
        s.throughput,
        s.latency_ms.as_ref().map(|l| (l.p50, l.p90, l.p99)),
        s.count - s.successes,
        cpu,
    )];
    if !a.no_wrk {
        match ceiling::run_wrk(&url, a.users, a.threads, a.duration) {
            Ok(w) => rows.push(ceiling_row(
                "wrk",
                w.requests,
                w.requests_per_s,
                w.p50_ms.zip(w.p90_ms).zip(w.p99_ms).map(|((a, b), c)| (a, b, c)),
                w.errors,
                w.cpu_s,
            )),
            Err(e) => eprintln!("wrk skipped: {e}"),
        }
    }
    println!(
        "{:<12} {:>10} {:>10} {:>8} {:>8} {:>8} {:>7} {:>7} {:>9}",
        "tool", "requests", "req/s", "p50 ms", "p90", "p99", "errors", "CPU s", "CPU µs/req"
    );
    for r in rows {
        println!("{r}");
    }
    Ok(())
}

fn ceiling_row(tool: &str, n: u64, rps: f64, lat: Option<(f64, f64, f64)>, errors: u64, cpu: Option<f64>) -> String {
    let (p50, p90, p99) = lat.map_or(("-".into(), "-".into(), "-".into()), |(a, b, c)| {
        (format!("{a:.3}"), format!("{b:.3}"), format!("{c:.3}"))
    });
    let cpu_s = cpu.map_or_else(|| "-".into(), |c| format!("{c:.2}"));
    let per = cpu.filter(|_| n > 0).map_or_else(|| "-".into(), |c| format!("{:.1}", c * 1e6 / n as f64));
    format!("{tool:<12} {n:>10} {rps:>10.0} {p50:>8} {p90:>8} {p99:>8} {errors:>7} {cpu_s:>7} {per:>9}")
}

//! `sedge bench ort MODEL [--input FILE] [--sessions N] [--threads T] [--shared]`:
//! the engine alone — ONNX Runtime sessions run back to back on this
//! machine, no HTTP, no queue — so an end-to-end figure can be stated as a
//! fraction of what the engine itself does. An experiment's `[engine]`
//! table measures the same within a run (`sedge-bench/src/engine.rs`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use sedge_bench::engine::{measure, EngineSpec};

/// ONNX Runtime alone on a model: runs per second and run times.
#[derive(clap::Args)]
pub struct OrtArgs {
    /// The .onnx file.
    #[arg(value_name = "MODEL")]
    model: PathBuf,
    /// Raw little-endian input for a one-input model (e.g.
    /// models/samples/chelsea-224.f32); zeros of the declared shape without it.
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Sessions run side by side, each by its own thread (default: one per core).
    #[arg(long)]
    sessions: Option<usize>,
    /// Intra-op threads per session.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// One session run by all the threads (as the node serves a model),
    /// not a session each.
    #[arg(long)]
    shared: bool,
    /// How long to run, after one warm-up run per session.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s", value_name = "DURATION")]
    duration: Duration,
    /// The Python whose onnxruntime package holds the library (unless ORT_DYLIB_PATH says).
    #[arg(long, env = "SEDGE_PYTHON", default_value = "python3")]
    python: String,
}

pub fn ort_command(a: OrtArgs) -> Result<()> {
    let sessions = a.sessions.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let spec = EngineSpec {
        model: a.model.clone(),
        input: a.input,
        sessions,
        threads: a.threads.max(1),
        shared: a.shared,
        duration: a.duration,
        interleave: false,
    };
    let run = measure(&spec, &a.python, "now").map_err(anyhow::Error::msg)?;
    let sessions =
        if a.shared { format!("one session run by {}", run.sessions) } else { format!("{} session(s)", run.sessions) };
    println!("model {}: {sessions} × {} thread(s), {:?}", a.model.display(), run.threads, a.duration);
    println!(
        "runs {}  runs/s {:.1}  run ms p50 {:.2}  p99 {:.2}  cpu ms/run {:.2}",
        run.runs, run.runs_per_s, run.p50_ms, run.p99_ms, run.cpu_ms_per_run
    );
    Ok(())
}

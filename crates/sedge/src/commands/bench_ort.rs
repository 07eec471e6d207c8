//! `sedge bench ort MODEL [--input FILE] [--sessions N] [--threads T]`:
//! the engine alone — ONNX Runtime sessions run back to back on this
//! machine, no HTTP, no queue — so an end-to-end figure can be stated as a
//! fraction of what the engine itself does, measured in the same run.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sedge_onnx::tensor::{Data, Tensor};
use sedge_onnx::Model;

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
    /// How long to run, after one warm-up run per session.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s", value_name = "DURATION")]
    duration: Duration,
    /// The Python whose onnxruntime package holds the library (unless ORT_DYLIB_PATH says).
    #[arg(long, env = "SEDGE_PYTHON", default_value = "python3")]
    python: String,
}

pub fn ort_command(a: OrtArgs) -> Result<()> {
    let sessions = a.sessions.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let model = Arc::new(Model::load(&a.model, &a.python, sessions, a.threads)?);
    let inputs = inputs(&model, a.input.as_deref())?;
    for i in 0..sessions {
        model.run(i, &inputs).map_err(anyhow::Error::msg).context("the warm-up run")?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..sessions)
        .map(|i| {
            let (model, inputs, stop) = (model.clone(), inputs.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut times = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if model.run(i, &inputs).is_err() {
                        break;
                    }
                    times.push(t.elapsed());
                }
                times
            })
        })
        .collect();
    std::thread::sleep(a.duration);
    stop.store(true, Ordering::Relaxed);
    let mut times: Vec<Duration> = Vec::new();
    for w in workers {
        times.extend(w.join().map_err(|_| anyhow::anyhow!("a session's thread panicked"))?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    times.sort();
    let at =
        |q: f64| times.get(((times.len() as f64 - 1.0) * q).round() as usize).map_or(0.0, |d| d.as_secs_f64() * 1e3);
    println!("model {}: {sessions} session(s) × {} thread(s), {:.1} s", a.model.display(), a.threads, elapsed);
    println!(
        "runs {}  runs/s {:.1}  run ms p50 {:.2}  p90 {:.2}  p99 {:.2}",
        times.len(),
        times.len() as f64 / elapsed,
        at(0.5),
        at(0.9),
        at(0.99)
    );
    Ok(())
}

fn inputs(model: &Model, file: Option<&std::path::Path>) -> Result<Vec<Tensor>> {
    let zeros = |info: &sedge_onnx::tensor::TensorInfo| -> Result<Tensor> {
        let shape: Vec<usize> = info.shape.iter().map(|d| usize::try_from(*d).unwrap_or(1).max(1)).collect();
        let n: usize = shape.iter().product();
        let bytes = vec![0u8; n * info.dtype.size()];
        let data = Data::from_le_bytes(info.dtype, &bytes).map_err(anyhow::Error::msg)?;
        Tensor::new(info.name.clone(), shape, data).map_err(anyhow::Error::msg)
    };
    match (file, model.inputs.as_slice()) {
        (None, declared) => declared.iter().map(zeros).collect(),
        (Some(path), [info]) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let shape: Vec<usize> = info.shape.iter().map(|d| usize::try_from(*d).unwrap_or(1).max(1)).collect();
            let data = Data::from_le_bytes(info.dtype, &bytes).map_err(anyhow::Error::msg)?;
            let t = Tensor::new(info.name.clone(), shape, data).map_err(anyhow::Error::msg).with_context(|| {
                format!("{} does not hold one {} input {}", path.display(), info.dtype.name(), info.shape_text())
            })?;
            Ok(vec![t])
        }
        (Some(_), declared) => anyhow::bail!("--input is for a model with one input; this one has {}", declared.len()),
    }
}

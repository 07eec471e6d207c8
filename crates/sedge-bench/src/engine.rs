//! The inference engine alone — ONNX Runtime sessions run back to back on
//! this machine, no HTTP, no queue — measured in the same run as the load
//! steps (before and after them), so the report states what sedge serves
//! end to end as a share of what the engine itself does.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sedge_onnx::tensor::{Data, Tensor, TensorInfo};
use sedge_onnx::Model;
use serde::{Deserialize, Serialize};

/// What to measure: an experiment's `[engine]` table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineSpec {
    pub model: PathBuf,
    /// Raw little-endian input for a one-input model; zeros without it.
    pub input: Option<PathBuf>,
    /// Runs side by side, each by its own thread.
    pub sessions: usize,
    pub threads: usize,
    /// All runs on one session (as the node serves a model) rather than a
    /// session each.
    pub shared: bool,
    #[serde(serialize_with = "crate::experiment::as_ms::serialize")]
    pub duration: Duration,
    /// Measured before every load step too, not only before and after
    /// them all: each step is then set against the engine measured just
    /// before and just after it, which holds on a machine whose other load
    /// comes and goes.
    pub interleave: bool,
}

/// One measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineRun {
    /// `before` or `after` the load steps, or `step N`.
    pub when: String,
    /// The load step this measurement was made just before (interleaved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_step: Option<u32>,
    pub sessions: usize,
    pub threads: usize,
    pub runs: u64,
    pub runs_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU time a run took, all threads of the measuring process (which
    /// does nothing else meanwhile), in ms: what a run costs however busy
    /// the machine is.
    #[serde(default)]
    pub cpu_ms_per_run: f64,
    /// p50 of a run with no other run beside it (one runner, before the
    /// others start), in ms: what one user's request cannot beat.
    #[serde(default)]
    pub alone_p50_ms: f64,
}

/// Runs timed one at a time for [`EngineRun::alone_p50_ms`].
const ALONE_RUNS: usize = 25;

/// Runs the model's sessions back to back for `spec.duration`. Blocking.
pub fn measure(spec: &EngineSpec, python: &str, when: &str) -> Result<EngineRun, String> {
    let load = if spec.shared { Model::load } else { Model::load_separate };
    let model = Arc::new(load(&spec.model, python, spec.sessions, spec.threads).map_err(|e| e.to_string())?);
    let inputs = inputs(&model, spec.input.as_deref())?;
    for i in 0..spec.sessions {
        model.run(i, &inputs).map_err(|e| format!("the warm-up run: {e}"))?;
    }
    let mut alone: Vec<Duration> = Vec::with_capacity(ALONE_RUNS);
    for _ in 0..ALONE_RUNS {
        let t = Instant::now();
        model.run(0, &inputs).map_err(|e| format!("a run alone: {e}"))?;
        alone.push(t.elapsed());
    }
    alone.sort();
    let stop = Arc::new(AtomicBool::new(false));
    let cpu_before = crate::procstat::own_cpu_s();
    let start = Instant::now();
    let threads: Vec<_> = (0..spec.sessions)
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
    std::thread::sleep(spec.duration);
    stop.store(true, Ordering::Relaxed);
    let mut times = Vec::new();
    for t in threads {
        times.extend(t.join().map_err(|_| "a session's thread panicked".to_owned())?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_before.zip(crate::procstat::own_cpu_s()).map_or(0.0, |(a, b)| b - a);
    times.sort();
    let at =
        |q: f64| times.get(((times.len() as f64 - 1.0) * q).round() as usize).map_or(0.0, |d| d.as_secs_f64() * 1e3);
    Ok(EngineRun {
        when: when.to_owned(),
        before_step: None,
        sessions: spec.sessions,
        threads: spec.threads,
        runs: times.len() as u64,
        runs_per_s: times.len() as f64 / elapsed,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        alone_p50_ms: alone[ALONE_RUNS / 2].as_secs_f64() * 1e3,
        cpu_ms_per_run: if times.is_empty() { 0.0 } else { cpu * 1e3 / times.len() as f64 },
    })
}

fn shape_of(info: &TensorInfo) -> Vec<usize> {
    info.shape.iter().map(|d| usize::try_from(*d).unwrap_or(1).max(1)).collect()
}

fn inputs(model: &Model, file: Option<&Path>) -> Result<Vec<Tensor>, String> {
    match (file, model.inputs.as_slice()) {
        (None, declared) => declared
            .iter()
            .map(|info| {
                let shape = shape_of(info);
                let bytes = vec![0u8; shape.iter().product::<usize>() * info.dtype.size()];
                Tensor::new(info.name.clone(), shape, Data::from_le_bytes(info.dtype, &bytes)?)
            })
            .collect(),
        (Some(path), [info]) => {
            let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            let data = Data::from_le_bytes(info.dtype, &bytes)?;
            let t = Tensor::new(info.name.clone(), shape_of(info), data).map_err(|e| {
                format!("{} does not hold one {} input {}: {e}", path.display(), info.dtype.name(), info.shape_text())
            })?;
            Ok(vec![t])
        }
        (Some(_), declared) => {
            Err(format!("an input file is for a model with one input; this one has {}", declared.len()))
        }
    }
}

//! The node's CPU and memory budgets, shared by every pool: each pool tells
//! it what its policy wants and how many workers it has, and is told how
//! many it may have (`sedge_scaler::budget` decides, from plain values).
//!
//! The cores counted are the node's less those its in-process models hold
//! (`sedge_onnx::cores`, the same count the onnx engine reserves from), so
//! models and CPU-bound workers together stay within the machine.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use sedge_core::{FunctionSpec, RuntimeKind};
use sedge_scaler::budget::{cpu_grants, memory_allows, CpuClaim};

/// What a worker with no `[limits] memory` is counted as using.
pub const DEFAULT_WORKER_MEMORY: u64 = 128 * 1024 * 1024;

/// Packages whose presence in a function's requirements make a
/// `concurrency = 1` function CPU-bound by default: they run numeric work
/// on the calling thread.
const ML_PACKAGES: [&str; 14] = [
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-node",
    "onnxruntime-web",
    "torch",
    "tensorflow",
    "tflite-runtime",
    "@tensorflow/tfjs-node",
    "scikit-learn",
    "keras",
    "jax",
    "xgboost",
    "lightgbm",
    "transformers",
];

/// Cores a busy worker of `spec` (bundle at `bundle`) keeps busy, if it is
/// CPU-bound: as `[scale] cpu` says, or one core for a `concurrency = 1`
/// function that calls the node's models or whose requirements name an ML
/// package. Models served in the node hold their cores themselves.
pub fn cpu_per_worker(spec: &FunctionSpec, bundle: &Path) -> Option<f64> {
    if spec.runtime == RuntimeKind::Onnx {
        return None;
    }
    match spec.scale.cpu_millis {
        Some(0) => None,
        Some(m) => Some(f64::from(m) / 1000.0),
        None if spec.scale.concurrency == 1 && (!spec.models.is_empty() || names_ml_package(bundle)) => Some(1.0),
        None => None,
    }
}

/// Heavy, commonly used Python modules a function's requirements.txt names,
/// which a spare started for it may import ahead (`crate::spares`).
pub fn heavy_modules(bundle: &Path) -> Vec<String> {
    let names = requirement_names(bundle);
    ["numpy", "onnxruntime"].iter().filter(|m| names.iter().any(|n| n == *m)).map(|m| (*m).to_owned()).collect()
}

fn requirement_names(bundle: &Path) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(text) = std::fs::read_to_string(bundle.join("requirements.txt")) {
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let end = line
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
                .unwrap_or(line.len());
            names.push(line[..end].to_ascii_lowercase().replace('_', "-"));
        }
    }
    names
}

fn names_ml_package(bundle: &Path) -> bool {
    let mut names = requirement_names(bundle);
    if let Ok(text) = std::fs::read_to_string(bundle.join("package.json")) {
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) {
            if let Some(deps) = json.get("dependencies").and_then(|d| d.as_object()) {
                names.extend(deps.keys().cloned());
            }
        }
    }
    names.iter().any(|n| ML_PACKAGES.contains(&n.as_str()))
}

/// One pool's entry.
#[derive(Debug, Clone, Copy)]
struct Entry {
    cpu: Option<f64>,
    memory_each: u64,
    want: u32,
    workers: u32,
}

/// What a pool may have, and what held it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub workers: u32,
    /// The pool counts against the CPU budget.
    pub cpu_bound: bool,
    pub cpu_limited: bool,
    pub memory_limited: bool,
}

/// The node's budgets and every pool's claim on them.
#[derive(Debug)]
pub struct NodeBudget {
    cores: usize,
    memory: Option<u64>,
    #[cfg(feature = "onnx")]
    models: sedge_onnx::cores::Cores,
    entries: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
}

impl Default for NodeBudget {
    /// The machine's cores, memory unbounded (tests, embedded uses).
    fn default() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()), None)
    }
}

impl NodeBudget {
    pub fn new(cores: usize, memory: Option<u64>) -> Self {
        Self {
            cores: cores.max(1),
            memory,
            #[cfg(feature = "onnx")]
            models: sedge_onnx::cores::Cores::new(cores.max(1)),
            entries: Mutex::default(),
            next: AtomicU64::new(1),
        }
    }

    /// The machine's cores; memory as given (`serve --memory`) or, unset,
    /// the machine's physical memory, so workers never count past it.
    pub fn of_machine(memory: Option<u64>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores, memory.or_else(physical_memory))
    }

    pub fn cores(&self) -> usize {
        self.cores
    }

    pub fn memory(&self) -> Option<u64> {
        self.memory
    }

    /// The cores the onnx engine reserves its models' threads from.
    #[cfg(feature = "onnx")]
    pub fn model_cores(&self) -> sedge_onnx::cores::Cores {
        self.models.clone()
    }

    fn held_by_models(&self) -> usize {
        #[cfg(feature = "onnx")]
        return self.models.held();
        #[cfg(not(feature = "onnx"))]
        0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new pool's key.
    pub fn join(&self, cpu: Option<f64>, memory_each: u64) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(key, Entry { cpu, memory_each, want: 0, workers: 0 });
        key
    }

    /// A pool that has stopped.
    pub fn leave(&self, key: u64) {
        self.lock().remove(&key);
    }

    /// Records how many workers pool `key` has now.
    pub fn report(&self, key: u64, want: u32, workers: u32) {
        if let Some(e) = self.lock().get_mut(&key) {
            e.want = want;
            e.workers = workers;
        }
    }

    /// Records that pool `key` wants `want` workers and has `workers`
    /// (ready or starting), and says how many it may have.
    pub fn grant(&self, key: u64, want: u32, workers: u32) -> Grant {
        let mut entries = self.lock();
        let Some(me) = entries.get_mut(&key) else {
            return Grant { workers: want, cpu_bound: false, cpu_limited: false, memory_limited: false };
        };
        me.want = want;
        me.workers = workers;
        let me = *me;
        let mut cap = want;
        let mut cpu_limited = false;
        if let Some(cpu) = me.cpu {
            let free = self.cores.saturating_sub(self.held_by_models()) as f64;
            let mut keys: Vec<u64> = entries.iter().filter(|(_, e)| e.cpu.is_some()).map(|(k, _)| *k).collect();
            keys.sort_unstable();
            let claims: Vec<CpuClaim> =
                keys.iter().map(|k| CpuClaim { want: entries[k].want, cpu: entries[k].cpu.unwrap_or(cpu) }).collect();
            let grants = cpu_grants(free, &claims);
            let mine = keys.iter().position(|k| *k == key).map_or(want, |i| grants[i]);
            cpu_limited = mine < cap;
            cap = cap.min(mine);
        }
        let mut memory_limited = false;
        if self.memory.is_some() && cap > workers {
            let used: u64 = entries
                .iter()
                .filter(|(k, _)| **k != key)
                .map(|(_, e)| u64::from(e.workers).saturating_mul(e.memory_each))
                .sum();
            let mut fits = workers;
            while fits < cap && memory_allows(self.memory, used + u64::from(fits) * me.memory_each, me.memory_each) {
                fits += 1;
            }
            memory_limited = fits < cap;
            cap = fits;
        }
        Grant { workers: cap, cpu_bound: me.cpu.is_some(), cpu_limited, memory_limited }
    }
}

/// MemTotal from /proc/meminfo.
fn physical_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_cpu_bound_pools_share_two_cores() {
        let b = NodeBudget::new(2, None);
        let (x, y) = (b.join(Some(1.0), 1), b.join(Some(1.0), 1));
        assert_eq!(b.grant(x, 4, 0).workers, 2, "alone, it gets both cores");
        let g = b.grant(y, 4, 0);
        assert_eq!((g.workers, g.cpu_limited), (1, true));
        assert_eq!(b.grant(x, 4, 2).workers, 1, "x gives a core back");
        b.leave(y);
        assert_eq!(b.grant(x, 4, 1).workers, 2);
    }

    #[test]
    fn pools_not_cpu_bound_are_not_held() {
        let b = NodeBudget::new(2, None);
        let x = b.join(None, 1);
        assert_eq!(b.grant(x, 8, 0), Grant { workers: 8, cpu_bound: false, cpu_limited: false, memory_limited: false });
    }

    #[cfg(feature = "onnx")]
    #[test]
    fn cores_held_by_models_are_not_given_to_workers() {
        let b = NodeBudget::new(4, None);
        let (_plan, _held) = b.model_cores().reserve(Some(1), Some(2));
        let x = b.join(Some(1.0), 1);
        assert_eq!(b.grant(x, 4, 0).workers, 2);
    }

    #[test]
    fn memory_counts_every_pool_s_workers() {
        let b = NodeBudget::new(2, Some(1000));
        let (x, y) = (b.join(None, 300), b.join(None, 300));
        assert_eq!(b.grant(x, 2, 0).workers, 2);
        b.grant(x, 2, 2);
        let g = b.grant(y, 3, 0);
        assert_eq!((g.workers, g.memory_limited), (1, true));
        let g = b.grant(y, 3, 1);
        assert_eq!((g.workers, g.memory_limited), (1, true));
    }

    #[test]
    fn ml_requirements_make_a_one_at_a_time_function_cpu_bound() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let spec = |extra: &str| {
            FunctionSpec::parse(
                "sedge.toml",
                &format!("name = \"f\"\nruntime = \"python\"\nhandler = \"h.h\"\n{extra}"),
            )
            .expect("valid")
        };
        assert_eq!(cpu_per_worker(&spec(""), dir.path()), None);
        std::fs::write(dir.path().join("requirements.txt"), "numpy\nonnxruntime==1.20 # inference\n").expect("written");
        assert_eq!(cpu_per_worker(&spec(""), dir.path()), Some(1.0));
        assert_eq!(heavy_modules(dir.path()), ["numpy", "onnxruntime"]);
        assert_eq!(cpu_per_worker(&spec("[scale]\nconcurrency = 4\n"), dir.path()), None);
        assert_eq!(cpu_per_worker(&spec("[scale]\ncpu = 0\n"), dir.path()), None);
        assert_eq!(cpu_per_worker(&spec("[scale]\ncpu = 0.5\nconcurrency = 4\n"), dir.path()), Some(0.5));
    }
}

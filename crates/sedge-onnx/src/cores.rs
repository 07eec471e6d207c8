//! The node's cores shared by its models: each loaded model holds
//! `instances × threads` of them (runs side by side on its one session,
//! each with its intra-op threads), so all models together never run more
//! inference threads than there are cores (past that they only slow each
//! other down). A manifest may ask for more explicitly; it is told what it
//! got.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Runs side by side (on the model's one session) and intra-op threads per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub instances: usize,
    pub threads: usize,
}

impl Plan {
    pub fn cores(self) -> usize {
        self.instances * self.threads
    }
}

/// Chooses a plan with `free` of `total` cores left: what the manifest asks
/// for is honoured as given; unset, a single-thread runner per free core.
/// Under load the gateway and the clients share those cores, and
/// intra-op threads then wait on each other: on EfficientNet-Lite0 with 2
/// cores, 2 × 1 served 24 % more than 1 × 2 at 16 users (bench/batching.sh),
/// though 1 × 2 runs one request faster alone (`instances = 1` in `[model]`
/// chooses that). Runners share one session, so more of them cost no
/// further copy of the weights: two cost about 48 MiB on EfficientNet-Lite0
/// where two sessions cost about 69, at the same runs a second
/// (bench/ort-session-memory.py).
pub fn plan(instances: Option<u32>, threads: Option<u32>, free: usize, total: usize) -> Plan {
    let room = free.max(1);
    let as_usize = |v: u32| usize::try_from(v).unwrap_or(usize::MAX).max(1);
    match (instances.map(as_usize), threads.map(as_usize)) {
        (Some(i), Some(t)) => Plan { instances: i, threads: t },
        (Some(i), None) => Plan { instances: i, threads: (room / i).max(1) },
        (None, Some(t)) => Plan { instances: (room / t).max(1), threads: t },
        (None, None) => Plan { instances: room.min(total.max(1)), threads: 1 },
    }
}

/// The node's cores and how many each loaded model holds, by the name of
/// the function that serves it.
#[derive(Debug, Clone)]
pub struct Cores {
    total: usize,
    held: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Cores {
    pub fn new(total: usize) -> Self {
        Self { total: total.max(1), held: Arc::default() }
    }

    /// All the machine's cores (or those this process may use).
    pub fn of_machine() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    pub fn total(&self) -> usize {
        self.total
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, usize>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a plan for model `name` that asked for `instances` and
    /// `threads`; the cores go back when the guard is dropped (the model
    /// unloaded).
    pub fn reserve(&self, name: &str, instances: Option<u32>, threads: Option<u32>) -> (Plan, Held) {
        let mut held = self.lock();
        let free = self.total.saturating_sub(held.values().sum());
        let chosen = plan(instances, threads, free, self.total);
        *held.entry(name.to_owned()).or_default() += chosen.cores();
        (chosen, Held { name: name.to_owned(), cores: chosen.cores(), held: self.held.clone() })
    }

    /// Cores all loaded models hold.
    pub fn held(&self) -> usize {
        self.lock().values().sum()
    }

    /// Cores held by the loaded models other than `these`: a function that
    /// calls a model runs its inference on that model's cores, so those
    /// are its own work, not another's that it must leave room for.
    pub fn held_except(&self, these: &[String]) -> usize {
        self.lock().iter().filter(|(name, _)| !these.contains(name)).map(|(_, cores)| cores).sum()
    }
}

/// Cores a loaded model holds.
#[derive(Debug)]
pub struct Held {
    name: String,
    cores: usize,
    held: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cores) = held.get_mut(&self.name) {
            *cores = cores.saturating_sub(self.cores);
            if *cores == 0 {
                held.remove(&self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_a_model_takes_a_single_thread_session_per_free_core() {
        assert_eq!(plan(None, None, 2, 2), Plan { instances: 2, threads: 1 });
        assert_eq!(plan(None, Some(2), 4, 4), Plan { instances: 2, threads: 2 });
        assert_eq!(plan(Some(1), None, 4, 4), Plan { instances: 1, threads: 4 });
        assert_eq!(plan(Some(3), Some(3), 1, 2), Plan { instances: 3, threads: 3 }, "asked for is given");
    }

    #[test]
    fn models_share_the_cores_and_give_them_back() {
        let cores = Cores::new(2);
        let (first, held_first) = cores.reserve("a", None, None);
        assert_eq!(first, Plan { instances: 2, threads: 1 });
        // Nothing left: the next model still gets one session of one thread.
        let (second, held_second) = cores.reserve("b", None, None);
        assert_eq!(second, Plan { instances: 1, threads: 1 });
        assert_eq!(cores.held(), 3);
        assert_eq!(cores.held_except(&["a".to_owned()]), 1, "a caller of a is not held back by a's own cores");
        drop(held_first);
        drop(held_second);
        assert_eq!(cores.held(), 0);
        assert_eq!(cores.reserve("a", None, None).0.instances, 2);
    }
}

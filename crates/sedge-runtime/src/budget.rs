//! The node's CPU and memory budgets, shared by every pool: each pool tells
//! it what its policy wants and how many workers it has, and is told how
//! many it may have (`sedge_scaler::budget` decides, from plain values).
//!
//! The cores counted are the node's less those its in-process models hold
//! (`sedge_onnx::cores`, the same count the onnx engine reserves from), so
//! models and CPU-bound workers together stay within the machine.
//!
//! The memory counted is every process the node starts for functions: each
//! pool's workers (at their `[limits] memory`, the most the kernel lets one
//! use) and, through a [`MemoryHold`] each, the zygotes, their standbys and
//! the spares. Those are held at the function's limit while they start
//! (the most they can take before they are up) and then at what they were
//! measured to use once up (PSS), since they serve nothing and so do not
//! grow. What does not fit is not started, or something ranking lower is
//! given up for it (`sedge_scaler::budget::make_room`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sedge_core::{FunctionSpec, RuntimeKind};
use sedge_scaler::budget::{cpu_grants, make_room, CpuClaim, Held};

pub use sedge_scaler::budget::Holder;

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
#[derive(Debug, Clone)]
struct Entry {
    function: String,
    cpu: Option<f64>,
    /// The node's models its workers call.
    calls: Vec<String>,
    memory_each: u64,
    want: u32,
    workers: u32,
}

/// Stops a process kept ahead (or a zygote) to give its memory back.
pub type GiveUp = Box<dyn FnOnce() + Send>;

/// A process that is not a pool's worker, holding a part of the budget.
struct Extra {
    holder: Holder,
    function: Option<String>,
    bytes: u64,
    /// Workers that need it to stay (a zygote's forked workers).
    pins: Arc<AtomicUsize>,
    /// Set once it is up: how to stop it. Until then it is not expendable.
    give_up: Option<GiveUp>,
    /// Starts waiting for it to become their worker ([`NodeBudget::claim`]).
    claims: u32,
}

impl Extra {
    fn held(&self) -> Held {
        // Claimed, it is counted in the worker it is to become (its pool
        // counts that worker from the start), and kept for it.
        let claimed = self.claims > 0;
        let expendable = !claimed && self.give_up.is_some() && self.pins.load(Ordering::Acquire) == 0;
        Held { holder: self.holder, bytes: if claimed { 0 } else { self.bytes }, expendable }
    }
}

#[derive(Default)]
struct Ledger {
    pools: HashMap<u64, Entry>,
    extras: HashMap<u64, Extra>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("pools", &self.pools).field("extras", &self.extras.len()).finish()
    }
}

impl Ledger {
    /// Everything held, as plain parts (each pool's workers as one), with
    /// the key of each extra (`None` for a pool's workers).
    fn parts(&self) -> (Vec<Held>, Vec<Option<u64>>) {
        let mut parts = Vec::new();
        let mut keys = Vec::new();
        for e in self.pools.values() {
            parts.push(Held {
                holder: Holder::Worker,
                bytes: u64::from(e.workers).saturating_mul(e.memory_each),
                expendable: false,
            });
            keys.push(None);
        }
        let mut extra_keys: Vec<u64> = self.extras.keys().copied().collect();
        extra_keys.sort_unstable();
        for k in extra_keys {
            parts.push(self.extras[&k].held());
            keys.push(Some(k));
        }
        (parts, keys)
    }

    /// Takes the extras at `given` (indices into `keys`) out of the
    /// ledger, returning how to stop them, to be run once it is unlocked.
    fn give_up(&mut self, keys: &[Option<u64>], given: &[usize]) -> Vec<GiveUp> {
        given.iter().filter_map(|&i| keys[i]).filter_map(|k| self.extras.remove(&k)).filter_map(|e| e.give_up).collect()
    }
}

/// What the node's memory budget holds, by kind of process: node-wide and
/// for one function.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemoryUse {
    pub budget: Option<u64>,
    pub node: BTreeMap<&'static str, u64>,
    pub function: BTreeMap<&'static str, u64>,
}

impl MemoryUse {
    pub fn held(&self) -> u64 {
        self.node.values().sum()
    }
}

/// A zygote's, standby's or spare's part of the node's memory budget,
/// given back when dropped (with the process it is kept beside).
pub struct MemoryHold {
    budget: Arc<NodeBudget>,
    key: u64,
    pins: Arc<AtomicUsize>,
}

impl std::fmt::Debug for MemoryHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryHold").field("key", &self.key).finish()
    }
}

impl MemoryHold {
    /// Which hold it is, for its give-up to find its process.
    pub fn id(&self) -> u64 {
        self.key
    }

    /// Its process is up and was measured at `bytes` (`None`: it could not
    /// be measured, so it keeps what it held while starting); `give_up`
    /// stops it when a process ranking higher needs the room.
    pub fn settle(&self, bytes: Option<u64>, give_up: GiveUp) {
        if let Some(e) = self.budget.lock().extras.get_mut(&self.key) {
            e.bytes = bytes.unwrap_or(e.bytes);
            e.give_up = Some(give_up);
        }
    }

    /// Keeps it from being given up while the pin lives (a worker forked
    /// from the zygote it holds for); `None` once it has been given up.
    /// Taken under the ledger's lock, where it is given up, so no pin is
    /// had on a hold a worker's grant has just given away.
    pub fn pin(&self) -> Option<HoldPin> {
        let ledger = self.budget.lock();
        ledger.extras.contains_key(&self.key).then(|| {
            self.pins.fetch_add(1, Ordering::AcqRel);
            HoldPin(self.pins.clone())
        })
    }
}

impl Drop for MemoryHold {
    fn drop(&mut self) {
        self.budget.lock().extras.remove(&self.key);
    }
}

/// See [`MemoryHold::pin`].
#[derive(Debug)]
pub struct HoldPin(Arc<AtomicUsize>);

/// See [`NodeBudget::claim`].
pub struct Claim {
    budget: Arc<NodeBudget>,
    hold: u64,
}

impl Claim {
    /// The hold claimed.
    pub fn hold(&self) -> u64 {
        self.hold
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(e) = self.budget.lock().extras.get_mut(&self.hold) {
            e.claims = e.claims.saturating_sub(1);
        }
    }
}

impl Drop for HoldPin {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
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
    entries: Mutex<Ledger>,
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

    /// Cores held by the node's models other than those in `calls`.
    fn held_by_models(&self, calls: &[String]) -> usize {
        #[cfg(feature = "onnx")]
        return self.models.held_except(calls);
        #[cfg(not(feature = "onnx"))]
        {
            let _ = calls;
            0
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new pool's key, for a pool of `function` whose workers each
    /// count as `memory_each`.
    pub fn join(&self, function: &str, cpu: Option<f64>, memory_each: u64) -> u64 {
        self.join_calling(function, cpu, memory_each, Vec::new())
    }

    /// [`Self::join`] for a pool whose workers call the node's models
    /// `calls`: the cores those models hold are not counted against its
    /// workers, since the inference they wait for is theirs.
    pub fn join_calling(&self, function: &str, cpu: Option<f64>, memory_each: u64, calls: Vec<String>) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let entry = Entry { function: function.to_owned(), cpu, calls, memory_each, want: 0, workers: 0 };
        self.lock().pools.insert(key, entry);
        key
    }

    /// A pool that has stopped.
    pub fn leave(&self, key: u64) {
        self.lock().pools.remove(&key);
    }

    /// Records how many workers pool `key` has now.
    pub fn report(&self, key: u64, want: u32, workers: u32) {
        if let Some(e) = self.lock().pools.get_mut(&key) {
            e.want = want;
            e.workers = workers;
        }
    }

    /// A part of the budget for a process about to start (`holder`, for
    /// `function`; `None` for a spare any function may take), `bytes` until
    /// it settles. `None` when it does not fit even after giving up what
    /// ranks below it: it is then not started.
    pub fn hold(self: &Arc<Self>, holder: Holder, function: Option<&str>, bytes: u64) -> Option<MemoryHold> {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let pins = Arc::new(AtomicUsize::new(0));
        let stops = {
            let mut ledger = self.lock();
            let (parts, keys) = ledger.parts();
            let given = make_room(self.memory, &parts, bytes, holder)?;
            let stops = ledger.give_up(&keys, &given);
            let function = function.map(str::to_owned);
            let extra = Extra { holder, function, bytes, pins: pins.clone(), give_up: None, claims: 0 };
            ledger.extras.insert(key, extra);
            stops
        };
        for stop in stops {
            stop();
        }
        Some(MemoryHold { budget: self.clone(), key, pins })
    }

    /// A start waits for the process holding `hold` (a spare still
    /// starting) to become its worker, which its pool counts already:
    /// until the claim is dropped, the hold counts nothing and is not
    /// given up, so that one process is not counted twice.
    pub fn claim(self: &Arc<Self>, hold: u64) -> Claim {
        if let Some(e) = self.lock().extras.get_mut(&hold) {
            e.claims += 1;
        }
        Claim { budget: self.clone(), hold }
    }

    /// What is held, by kind, on the node and for `function`.
    pub fn memory_use(&self, function: &str) -> MemoryUse {
        let ledger = self.lock();
        let mut node: BTreeMap<&'static str, u64> = Holder::ALL.iter().map(|h| (h.as_str(), 0)).collect();
        let mut mine = node.clone();
        let mut add = |holder: Holder, of: Option<&str>, bytes: u64| {
            *node.entry(holder.as_str()).or_default() += bytes;
            if of == Some(function) {
                *mine.entry(holder.as_str()).or_default() += bytes;
            }
        };
        for e in ledger.pools.values() {
            add(Holder::Worker, Some(&e.function), u64::from(e.workers).saturating_mul(e.memory_each));
        }
        for e in ledger.extras.values() {
            add(e.holder, e.function.as_deref(), e.held().bytes);
        }
        MemoryUse { budget: self.memory, node, function: mine }
    }

    /// Records that pool `key` wants `want` workers and has `workers`
    /// (ready or starting), and says how many it may have. Room for a new
    /// worker may be made by giving up spares, standbys and zygotes.
    pub fn grant(&self, key: u64, want: u32, workers: u32) -> Grant {
        let mut stops = Vec::new();
        let grant = {
            let mut ledger = self.lock();
            let Some(me) = ledger.pools.get_mut(&key) else {
                return Grant { workers: want, cpu_bound: false, cpu_limited: false, memory_limited: false };
            };
            me.want = want;
            me.workers = workers;
            let (cpu, memory_each) = (me.cpu, me.memory_each);
            let held_by_others = if cpu.is_some() { self.held_by_models(&me.calls) } else { 0 };
            let mut cap = want;
            let mut cpu_limited = false;
            if let Some(cpu) = cpu {
                let entries = &ledger.pools;
                let free = self.cores.saturating_sub(held_by_others) as f64;
                let mut keys: Vec<u64> = entries.iter().filter(|(_, e)| e.cpu.is_some()).map(|(k, _)| *k).collect();
                keys.sort_unstable();
                let claims: Vec<CpuClaim> = keys
                    .iter()
                    .map(|k| CpuClaim { want: entries[k].want, cpu: entries[k].cpu.unwrap_or(cpu) })
                    .collect();
                let grants = cpu_grants(free, &claims);
                let mine = keys.iter().position(|k| *k == key).map_or(want, |i| grants[i]);
                cpu_limited = mine < cap;
                cap = cap.min(mine);
            }
            let mut memory_limited = false;
            if self.memory.is_some() && cap > workers {
                let (mut parts, keys) = ledger.parts();
                let mut given = Vec::new();
                let mut fits = workers;
                while fits < cap {
                    let Some(more) = make_room(self.memory, &parts, memory_each, Holder::Worker) else { break };
                    for &i in &more {
                        parts[i].bytes = 0;
                        parts[i].expendable = false;
                    }
                    given.extend(more);
                    parts.push(Held { holder: Holder::Worker, bytes: memory_each, expendable: false });
                    fits += 1;
                }
                stops = ledger.give_up(&keys, &given);
                memory_limited = fits < cap;
                cap = fits;
            }
            Grant { workers: cap, cpu_bound: cpu.is_some(), cpu_limited, memory_limited }
        };
        for stop in stops {
            stop();
        }
        grant
    }
}

/// MemTotal from /proc/meminfo.
fn physical_memory() -> Option<u64> {
    crate::group::kib_line(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemTotal:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_cpu_bound_pools_share_two_cores() {
        let b = NodeBudget::new(2, None);
        let (x, y) = (b.join("x", Some(1.0), 1), b.join("y", Some(1.0), 1));
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
        let x = b.join("x", None, 1);
        assert_eq!(b.grant(x, 8, 0), Grant { workers: 8, cpu_bound: false, cpu_limited: false, memory_limited: false });
    }

    #[cfg(feature = "onnx")]
    #[test]
    fn cores_held_by_models_are_not_given_to_workers() {
        let b = NodeBudget::new(4, None);
        let (_plan, _held) = b.model_cores().reserve("m", Some(1), Some(2));
        let x = b.join("x", Some(1.0), 1);
        assert_eq!(b.grant(x, 4, 0).workers, 2);
    }

    #[cfg(feature = "onnx")]
    #[test]
    fn a_caller_of_a_model_is_not_held_back_by_that_models_cores() {
        // The model holds both cores; its caller's workers wait on it.
        let b = NodeBudget::new(2, None);
        let (_plan, _held) = b.model_cores().reserve("effnet", None, None);
        let caller = b.join_calling("caller", Some(0.5), 1, vec!["effnet".to_owned()]);
        assert_eq!(b.grant(caller, 4, 0).workers, 4);
        // Another function, calling no model, is still held back by it.
        let other = b.join("other", Some(0.5), 1);
        assert_eq!(b.grant(other, 4, 0).workers, 1);
    }

    #[test]
    fn memory_counts_every_pool_s_workers() {
        let b = NodeBudget::new(2, Some(1000));
        let (x, y) = (b.join("x", None, 300), b.join("y", None, 300));
        assert_eq!(b.grant(x, 2, 0).workers, 2);
        b.grant(x, 2, 2);
        let g = b.grant(y, 3, 0);
        assert_eq!((g.workers, g.memory_limited), (1, true));
        let g = b.grant(y, 3, 1);
        assert_eq!((g.workers, g.memory_limited), (1, true));
    }

    const MIB: u64 = 1024 * 1024;

    /// A give-up that records it ran.
    fn recorder(ran: &Arc<Mutex<Vec<&'static str>>>, name: &'static str) -> GiveUp {
        let ran = ran.clone();
        Box::new(move || ran.lock().expect("not poisoned").push(name))
    }

    #[test]
    fn zygotes_standbys_and_spares_count_and_give_way_to_workers() {
        let b = Arc::new(NodeBudget::new(2, Some(300 * MIB)));
        let ran = Arc::new(Mutex::new(Vec::new()));
        let f = b.join("f", None, 128 * MIB);
        assert_eq!(b.grant(f, 1, 0).workers, 1);
        b.report(f, 1, 1);
        // A zygote is held at the worker's limit while it starts, then at its size.
        let zygote = b.hold(Holder::Zygote, Some("f"), 128 * MIB).expect("256 of 300 MiB");
        assert!(b.hold(Holder::Spare, None, 128 * MIB).is_none(), "a spare does not fit beside them");
        zygote.settle(Some(40 * MIB), recorder(&ran, "zygote"));
        let standby = b.hold(Holder::Standby, Some("f"), 128 * MIB).expect("296 of 300 MiB");
        standby.settle(Some(20 * MIB), recorder(&ran, "standby"));
        let spare = b.hold(Holder::Spare, None, 100 * MIB).expect("288 of 300 MiB");
        spare.settle(Some(10 * MIB), recorder(&ran, "spare"));
        let used = b.memory_use("f");
        assert_eq!(used.held(), (128 + 40 + 20 + 10) * MIB);
        assert_eq!(used.function["zygote"], 40 * MIB);
        assert_eq!(used.node["spare"], 10 * MIB);
        assert_eq!(used.function["spare"], 0, "a spare of no function yet");
        // A second worker (128) needs 26 MiB more than is free: the spare
        // and then the standby go, the zygote stays.
        let pin = zygote.pin().expect("not given up");
        let g = b.grant(f, 2, 1);
        assert_eq!((g.workers, g.memory_limited), (2, false));
        assert_eq!(*ran.lock().expect("not poisoned"), ["spare", "standby"]);
        b.report(f, 2, 2);
        // A third would need the zygote, which a forked worker pins.
        let g = b.grant(f, 3, 2);
        assert_eq!((g.workers, g.memory_limited), (2, true));
        drop(pin);
        // Unpinned, it is given up for a worker, and not for what ranks lower.
        let g = b.grant(f, 3, 2);
        assert_eq!((g.workers, g.memory_limited), (2, true), "256 + 128 is past 300 with or without it");
        let g = b.grant(f, 2, 1);
        assert_eq!(g.workers, 2);
        b.report(f, 1, 1);
        assert!(b.hold(Holder::Standby, Some("f"), 200 * MIB).is_none());
        assert_eq!(*ran.lock().expect("not poisoned"), ["spare", "standby"]);
        drop((standby, spare));
        assert_eq!(b.memory_use("f").held(), (128 + 40) * MIB, "the given-up stay away, the rest is given back");
        drop(zygote);
        assert_eq!(b.memory_use("f").held(), 128 * MIB);
    }

    #[test]
    fn a_spare_a_start_waits_for_is_counted_once_in_that_start_s_worker() {
        let b = Arc::new(NodeBudget::new(2, Some(300 * MIB)));
        let ran = Arc::new(Mutex::new(Vec::new()));
        let (f, g) = (b.join("f", None, 128 * MIB), b.join("g", None, 128 * MIB));
        let spare = b.hold(Holder::Spare, Some("f"), 128 * MIB).expect("fits");
        // f's start is counted at once and waits for the spare to become its worker.
        b.report(f, 1, 1);
        let claim = b.claim(spare.id());
        assert_eq!(b.memory_use("f").held(), 128 * MIB, "one process, counted once");
        let standby = b.hold(Holder::Standby, Some("g"), 128 * MIB).expect("256 of 300 MiB, not 384");
        standby.settle(Some(50 * MIB), recorder(&ran, "standby"));
        // Up while still claimed, the spare frees nothing and is kept for f.
        spare.settle(Some(10 * MIB), recorder(&ran, "spare"));
        let grant = b.grant(g, 1, 0);
        assert_eq!((grant.workers, grant.memory_limited), (1, false));
        assert_eq!(*ran.lock().expect("not poisoned"), ["standby"]);
        b.report(g, 1, 1);
        // A start that stops waiting gives it back its part.
        drop(claim);
        assert_eq!(b.memory_use("f").held(), (256 + 10) * MIB);
        drop((spare, standby));
    }

    #[test]
    fn a_zygote_is_given_up_before_a_worker_is_refused() {
        let b = Arc::new(NodeBudget::new(2, Some(300 * MIB)));
        let ran = Arc::new(Mutex::new(Vec::new()));
        let (f, g) = (b.join("f", None, 128 * MIB), b.join("g", None, 128 * MIB));
        b.report(f, 1, 1);
        let zygote = b.hold(Holder::Zygote, Some("f"), 128 * MIB).expect("fits");
        zygote.settle(Some(60 * MIB), recorder(&ran, "zygote of f"));
        let grant = b.grant(g, 1, 0);
        assert_eq!((grant.workers, grant.memory_limited), (1, false));
        assert_eq!(*ran.lock().expect("not poisoned"), ["zygote of f"]);
        assert_eq!(b.memory_use("f").function["zygote"], 0);
        assert!(zygote.pin().is_none(), "nothing forks from a zygote given up");
        drop(zygote);
    }

    #[test]
    fn unbounded_memory_holds_everything() {
        let b = Arc::new(NodeBudget::new(2, None));
        let hold = b.hold(Holder::Spare, None, u64::MAX / 2).expect("no budget to pass");
        assert_eq!(b.memory_use("f").node["spare"], u64::MAX / 2);
        drop(hold);
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

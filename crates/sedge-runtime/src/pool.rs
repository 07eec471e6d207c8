//! One function's workers: starts them, hands their free capacity to
//! requests in arrival order, queues (boundedly) what cannot be served yet,
//! replaces workers that crash or time out, and resizes itself by the
//! `sedge-scaler` policy.
//!
//! All state sits behind one short-held lock that is never held across an
//! await; slow work (starting and stopping workers) runs in spawned tasks.
//!
//! Workers come from the function's [`Engine`]; whatever the engine, the
//! pool enforces the same policy: the call's deadline (504, the worker
//! killed), the answer's size (`max_answer`, 502) and the start timeout
//! ([`crate::engine::start_timeout`]; a start past it is dropped and counts
//! as failed).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use sedge_core::figures::ModelFigures;
use sedge_core::{FunctionSpec, Invocation, InvokeError, Reply};
use sedge_scaler::{Autoscaler, LoadWindow, Pin, ScaleConfig};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::budget::{Holder, NodeBudget, DEFAULT_WORKER_MEMORY};
use crate::engine::{
    self, Engine, ExitNotice, LogSink, RawTensor, StartContext, StartPhases, Version, Worker, WorkerCounters,
};
use crate::logs::FunctionLogs;
use crate::WorkerFiles;

/// After a worker fails to start, requests fail fast with that error for
/// this long instead of starting a doomed worker each.
const START_BACKOFF: Duration = Duration::from_secs(2);
/// How long past its start timeout an engine has to say why its worker is
/// not ready (quoting its output, say) before the pool drops the start.
const START_REPORT_GRACE: Duration = Duration::from_secs(1);

struct Slot {
    id: u64,
    worker: Arc<dyn Worker>,
    busy: u32,
    /// Where its start went, until its first call takes it.
    phases: Option<StartPhases>,
}

struct Waiter {
    tx: oneshot::Sender<Result<Lease, InvokeError>>,
    /// Counted among the waits for the CPU (or memory) budget already.
    counted_cpu: bool,
    counted_memory: bool,
}

struct State {
    slots: Vec<Slot>,
    starting: u32,
    waiters: VecDeque<Waiter>,
    in_flight: u32,
    window: LoadWindow,
    scaler: Autoscaler,
    /// What the policy last wanted, before the node's budgets.
    desired: u32,
    /// Whether the CPU (or memory) budget last held the pool below it.
    cpu_limited: bool,
    memory_limited: bool,
    /// Busy workers the CPU budget allows (CPU-bound pools only).
    busy_cap: Option<u32>,
    pin: Pin,
    last_start_error: Option<(Instant, String)>,
    closed: bool,
    /// Requests admitted whose bodies are still arriving.
    admitted: u32,
}

/// What belongs to a function rather than to one deployed version of it.
#[derive(Debug, Default)]
pub struct FunctionShared {
    pub logs: Arc<FunctionLogs>,
    pub cold_starts: AtomicU64,
    /// Cold starts that took a spare interpreter instead of starting one.
    pub spare_starts: Arc<AtomicU64>,
    pub invocations: AtomicU64,
    /// Workers the kernel killed for going past `[limits] memory`.
    pub oom_kills: Arc<AtomicU64>,
    /// Requests that queued while the node's CPU budget held the pool
    /// below what its policy wanted.
    pub cpu_waits: AtomicU64,
    /// The same, held by the node's memory budget.
    pub memory_waits: AtomicU64,
    /// Where its cold starts went.
    pub cold: ColdStarts,
    /// What its model did, for a model served in the node (runtime = "onnx").
    pub model: Arc<ModelFigures>,
}

impl FunctionShared {
    /// The counters its engines add to.
    pub fn counters(&self) -> WorkerCounters {
        WorkerCounters {
            oom_kills: self.oom_kills.clone(),
            spare_starts: self.spare_starts.clone(),
            model: self.model.clone(),
        }
    }
}

/// Counters and gauges the gateway exports.
#[derive(Debug, Clone, Default)]
pub struct PoolStats {
    pub ready: u32,
    pub starting: u32,
    pub busy: u32,
    pub queued: u32,
    /// Workers the scaling policy wants, before the node's budgets.
    pub desired: u32,
    pub cold_starts: u64,
    pub invocations: u64,
}

pub struct Pool {
    version: Version,
    engine: Arc<dyn Engine>,
    shared: Arc<FunctionShared>,
    origin: Instant,
    next_worker: AtomicU64,
    state: Mutex<State>,
    /// Told whenever a call ends or a queued caller leaves, for [`Pool::drain`].
    changed: Notify,
    me: Weak<Pool>,
    budget: Arc<NodeBudget>,
    /// This pool's key in the budget.
    budget_key: u64,
    /// Cores a busy worker keeps busy, if CPU-bound.
    cpu: Option<f64>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.budget.leave(self.budget_key);
    }
}

/// A request admitted to a function (see [`Pool::admit`]) whose body may
/// still be arriving. Dropping it gives the place back.
pub struct Admission {
    pool: Arc<Pool>,
}

impl Admission {
    /// Runs the request, now that its body is here.
    pub async fn invoke(self, inv: Invocation) -> Result<Reply, InvokeError> {
        let pool = self.pool.clone();
        drop(self);
        pool.run_admitted(inv).await
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut st = self.pool.lock();
        st.admitted = st.admitted.saturating_sub(1);
    }
}

/// One unit of a worker's capacity, held for one invocation. Dropping it
/// gives the capacity back (or retires the worker if it died).
pub struct Lease {
    pool: Arc<Pool>,
    id: u64,
    worker: Arc<dyn Worker>,
    armed: bool,
    /// Set on a worker's first call: its start, to report with the answer.
    first: Option<StartPhases>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.armed {
            self.pool.release(self.id, &self.worker);
        }
    }
}

impl Lease {
    /// Reports the worker's cold start with its first answer.
    fn first_answered(&self, began: Instant) {
        if let Some(phases) = self.first {
            self.pool.shared.cold.record(ColdStart::new(phases, began.elapsed()));
        }
    }

    /// Runs the invocation; a timeout kills the worker so it never serves
    /// again, and an answer past `max_answer` is refused.
    pub async fn call(&self, inv: &Invocation, deadline: Instant) -> Result<Reply, InvokeError> {
        let began = Instant::now();
        match tokio::time::timeout_at(deadline, self.worker.call(inv, deadline)).await {
            Ok(Ok(reply)) => {
                self.first_answered(began);
                self.pool.within_cap(reply)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                self.worker.timed_out();
                Err(self.pool.timeout_error())
            }
        }
    }
}

impl Lease {
    /// Runs tensors through a model worker, with the same deadline and
    /// answer cap as [`Self::call`].
    pub async fn infer(&self, inputs: Vec<RawTensor>, deadline: Instant) -> Result<Vec<RawTensor>, InvokeError> {
        let began = Instant::now();
        match tokio::time::timeout_at(deadline, self.worker.infer(inputs, deadline)).await {
            Ok(Ok(outputs)) => {
                self.first_answered(began);
                let limit = self.pool.spec().limits.max_answer;
                let size: u64 = outputs.iter().map(|t| t.data.len() as u64).sum();
                if size > limit {
                    return Err(InvokeError::AnswerTooLarge { function: self.pool.name(), size: Some(size), limit });
                }
                Ok(outputs)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                self.worker.timed_out();
                Err(self.pool.timeout_error())
            }
        }
    }
}

/// A caller waiting in the queue; its leaving (answered or not) may be
/// what a drain waits for.
struct Queued<'a>(&'a Notify);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.notify_waiters();
    }
}

impl Pool {
    /// A pool for one version of a function (`spec`, reading `files`),
    /// whose workers `engine` starts.
    pub fn new(
        spec: FunctionSpec,
        files: WorkerFiles,
        engine: Arc<dyn Engine>,
        shared: Arc<FunctionShared>,
    ) -> Arc<Self> {
        Self::within(spec, files, engine, shared, Arc::default(), None)
    }

    /// A pool whose workers count against the node's `budget`, each
    /// keeping `cpu` cores busy if it is CPU-bound.
    pub fn within(
        spec: FunctionSpec,
        files: WorkerFiles,
        engine: Arc<dyn Engine>,
        shared: Arc<FunctionShared>,
        budget: Arc<NodeBudget>,
        cpu: Option<f64>,
    ) -> Arc<Self> {
        let calls = spec.models.iter().map(|m| m.as_str().to_owned()).collect();
        let budget_key =
            budget.join_calling(spec.name.as_str(), cpu, spec.limits.memory.unwrap_or(DEFAULT_WORKER_MEMORY), calls);
        Arc::new_cyclic(|me| Self {
            budget,
            budget_key,
            cpu,
            state: Mutex::new(State {
                slots: Vec::new(),
                starting: 0,
                waiters: VecDeque::new(),
                in_flight: 0,
                window: LoadWindow::new(Duration::from_secs(1)),
                scaler: Autoscaler::default(),
                desired: 0,
                cpu_limited: false,
                memory_limited: false,
                busy_cap: None,
                pin: Pin::Auto,
                last_start_error: None,
                closed: false,
                admitted: 0,
            }),
            version: Version { spec: Arc::new(spec), files, counters: shared.counters() },
            engine,
            shared,
            origin: Instant::now(),
            next_worker: AtomicU64::new(1),
            changed: Notify::new(),
            me: me.clone(),
        })
    }

    /// What this version's workers are made from.
    pub(crate) fn version(&self) -> &Version {
        &self.version
    }

    pub(crate) fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Cores a busy worker counts against the node's CPU budget, if it is
    /// CPU-bound (`[scale] cpu`, or the default for ML functions).
    pub fn cpu(&self) -> Option<f64> {
        self.cpu
    }

    /// What this version's workers read besides the node's own files.
    pub fn files(&self) -> &WorkerFiles {
        &self.version.files
    }

    /// The folder of this version's installed dependencies, if any.
    pub fn deps(&self) -> Option<&PathBuf> {
        self.version.files.deps.as_ref()
    }

    pub fn spec(&self) -> &FunctionSpec {
        &self.version.spec
    }

    pub fn dir(&self) -> &PathBuf {
        &self.version.files.bundle
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn name(&self) -> String {
        self.spec().name.to_string()
    }

    /// The one answer-size check every engine's answers pass.
    fn within_cap(&self, reply: Reply) -> Result<Reply, InvokeError> {
        let limit = self.spec().limits.max_answer;
        let size = reply.body.len() as u64;
        if size > limit {
            return Err(InvokeError::AnswerTooLarge { function: self.name(), size: Some(size), limit });
        }
        Ok(reply)
    }

    fn timeout_error(&self) -> InvokeError {
        InvokeError::Timeout {
            function: self.name(),
            timeout_ms: u64::try_from(self.spec().limits.timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn scale_config(&self) -> ScaleConfig {
        let s = &self.spec().scale;
        let mut cfg = ScaleConfig::new(s.min, s.max, s.concurrency, s.idle);
        cfg.target = f64::from(s.target);
        cfg
    }

    pub fn stats(&self) -> PoolStats {
        let st = self.lock();
        PoolStats {
            ready: st.slots.len() as u32,
            starting: st.starting,
            busy: st.slots.iter().filter(|s| s.busy > 0).count() as u32,
            queued: st.waiters.len() as u32,
            desired: st.desired,
            cold_starts: self.shared.cold_starts.load(Ordering::Relaxed),
            invocations: self.shared.invocations.load(Ordering::Relaxed),
        }
    }

    /// Requests admitted, queued or running now, and how many it can run at
    /// once at its largest (`[scale] max` × `concurrency`): a cluster node
    /// with no room left sends calls elsewhere.
    pub fn load(&self) -> (u32, u32) {
        let st = self.lock();
        (Self::inflight(&st), self.capacity())
    }

    fn inflight(st: &State) -> u32 {
        let running: u32 = st.slots.iter().map(|s| s.busy).sum();
        running.saturating_add(st.waiters.len() as u32).saturating_add(st.admitted)
    }

    fn capacity(&self) -> u32 {
        self.spec().scale.max.saturating_mul(self.spec().scale.concurrency)
    }

    /// As [`Pool::admit`], but only while the requests admitted, queued or
    /// running stay under what the pool can run at once at its largest:
    /// a cluster node takes a call for another only when it has room for
    /// it, checked and taken in one step, so calls arriving together cannot
    /// all pass the check and then queue here.
    pub fn admit_within_capacity(&self) -> Result<Admission, InvokeError> {
        self.admit_unless(|pool, st| Self::inflight(st) >= pool.capacity())
    }

    /// Takes a place for a request before its body is read, so a request
    /// that could neither run nor queue is refused without reading a byte.
    /// Counts admitted requests with those queued against the capacity that
    /// is free or starting plus the queue.
    pub fn admit(&self) -> Result<Admission, InvokeError> {
        self.admit_unless(|pool, st| {
            let conc = pool.spec().scale.concurrency;
            let free: u32 = st.slots.iter().filter(|s| s.worker.is_alive()).map(|s| conc.saturating_sub(s.busy)).sum();
            let room = free.saturating_add(st.starting.saturating_mul(conc)).saturating_add(pool.spec().limits.queue);
            st.waiters.len() as u32 + st.admitted >= room
        })
    }

    /// Takes a place unless `full` says there is none, both under the
    /// pool's lock (so no other taker slips between them), once waiters
    /// that went away are forgotten.
    fn admit_unless(&self, full: impl FnOnce(&Self, &State) -> bool) -> Result<Admission, InvokeError> {
        let pool = self.me.upgrade().ok_or_else(|| InvokeError::ShuttingDown(self.name()))?;
        let mut st = self.lock();
        if st.closed {
            return Err(InvokeError::ShuttingDown(self.name()));
        }
        st.waiters.retain(|w| !w.tx.is_closed());
        if full(self, &st) {
            return Err(InvokeError::QueueFull { function: self.name(), limit: self.spec().limits.queue });
        }
        st.admitted += 1;
        Ok(Admission { pool })
    }

    /// Runs one invocation: waits for capacity (queueing boundedly), calls a
    /// worker, all within the function's timeout.
    pub async fn invoke(&self, inv: Invocation) -> Result<Reply, InvokeError> {
        self.admit()?.invoke(inv).await
    }

    async fn run_admitted(self: Arc<Self>, inv: Invocation) -> Result<Reply, InvokeError> {
        {
            let limit = self.spec().limits.max_body;
            if inv.body.len() as u64 > limit {
                return Err(InvokeError::PayloadTooLarge { function: self.name(), size: inv.body.len() as u64, limit });
            }
            self.shared.invocations.fetch_add(1, Ordering::Relaxed);
            let deadline = Instant::now() + self.spec().limits.timeout;
            // Waiting for capacity may be abandoned: a waiter that went away is skipped.
            let lease = match tokio::time::timeout_at(deadline, self.acquire()).await {
                Ok(lease) => lease?,
                Err(_) => return Err(self.timeout_error()),
            };
            // Once a worker has the request, it runs to its end in a task of
            // its own even if the caller goes away: the lease (the worker's
            // capacity) comes back only when the worker is really done with
            // it, and nothing is ever left half-written to a worker.
            let call = tokio::spawn(async move { lease.call(&inv, deadline).await });
            match call.await {
                Ok(r) => r,
                Err(e) => {
                    Err(InvokeError::Failed { function: self.name(), message: format!("invocation task ended: {e}") })
                }
            }
        }
    }

    /// Runs tensors through the model this pool serves (a function calling
    /// it), admitted and queued like any call, by `deadline` (the caller's)
    /// or within the function's timeout, whichever comes first: a model's
    /// queue drops a request whose caller can no longer use the answer.
    pub async fn infer(
        self: &Arc<Self>,
        inputs: Vec<RawTensor>,
        deadline: Instant,
    ) -> Result<Vec<RawTensor>, InvokeError> {
        drop(self.admit()?);
        let size: u64 = inputs.iter().map(|t| t.data.len() as u64).sum();
        let limit = self.spec().limits.max_body;
        if size > limit {
            return Err(InvokeError::PayloadTooLarge { function: self.name(), size, limit });
        }
        self.shared.invocations.fetch_add(1, Ordering::Relaxed);
        let deadline = deadline.min(Instant::now() + self.spec().limits.timeout);
        let lease = match tokio::time::timeout_at(deadline, self.acquire()).await {
            Ok(lease) => lease?,
            Err(_) => return Err(self.timeout_error()),
        };
        // Unlike a call to a process, a model call is safe to drop midway
        // (the model drops a queued request, or discards a run's answer):
        // when the calling worker goes, its call and capacity go with it
        // at once instead of waiting in the model for their deadline.
        lease.infer(inputs, deadline).await
    }

    /// Capacity on a ready worker, now or when one frees up or starts.
    pub async fn acquire(&self) -> Result<Lease, InvokeError> {
        let _queued = Queued(&self.changed);
        let rx = {
            let mut st = self.lock();
            if st.closed {
                return Err(InvokeError::ShuttingDown(self.name()));
            }
            if let Some(lease) = self.take_free(&mut st) {
                return Ok(lease);
            }
            st.waiters.retain(|w| !w.tx.is_closed());
            if st.waiters.len() >= self.spec().limits.queue as usize {
                return Err(InvokeError::QueueFull { function: self.name(), limit: self.spec().limits.queue });
            }
            if let Some((at, msg)) = &st.last_start_error {
                if at.elapsed() < START_BACKOFF && st.slots.is_empty() && st.starting == 0 {
                    return Err(InvokeError::StartFailed { function: self.name(), message: msg.clone() });
                }
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.push_back(Waiter { tx, counted_cpu: false, counted_memory: false });
            self.rescale(&mut st);
            rx
        };
        rx.await.unwrap_or_else(|_| Err(InvokeError::ShuttingDown(self.name())))
    }

    /// Takes a unit of capacity on the least-busy ready worker, if any.
    fn take_free(&self, st: &mut State) -> Option<Lease> {
        let pool = self.me.upgrade()?;
        let conc = self.spec().scale.concurrency;
        // A CPU-bound pool keeps no more workers busy than its cores, even
        // while it has more (a share given back takes effect at once).
        let at_cap = st.busy_cap.is_some_and(|cap| st.slots.iter().filter(|s| s.busy > 0).count() as u32 >= cap);
        let slot = st
            .slots
            .iter_mut()
            .filter(|s| s.busy < conc && s.worker.is_alive() && (!at_cap || s.busy > 0))
            .min_by_key(|s| s.busy)?;
        let (id, worker) = (slot.id, slot.worker.clone());
        Some(self.lease_on(pool, id, worker, st))
    }

    fn lease_on(&self, pool: Arc<Pool>, id: u64, worker: Arc<dyn Worker>, st: &mut State) -> Lease {
        let mut first = None;
        if let Some(slot) = st.slots.iter_mut().find(|s| s.id == id) {
            slot.busy += 1;
            first = slot.phases.take();
        }
        st.in_flight += 1;
        let demand = st.in_flight + st.waiters.len() as u32;
        st.window.record(self.origin.elapsed(), demand);
        Lease { pool, id, worker, armed: true, first }
    }

    /// Gives free capacity to waiters, oldest first.
    fn hand_out(&self, st: &mut State) {
        while let Some(w) = st.waiters.pop_front() {
            if w.tx.is_closed() {
                continue;
            }
            let Some(lease) = self.take_free(st) else {
                st.waiters.push_front(w);
                return;
            };
            if let Err(Ok(mut back)) = w.tx.send(Ok(lease)) {
                // The waiter gave up between the check and the send: undo
                // here, under the lock, instead of in Drop (which locks).
                back.armed = false;
                self.undo_take(st, back.id);
                if let Some(slot) = st.slots.iter_mut().find(|s| s.id == back.id) {
                    slot.phases = back.first.take();
                }
            }
        }
    }

    fn undo_take(&self, st: &mut State, id: u64) {
        if let Some(slot) = st.slots.iter_mut().find(|s| s.id == id) {
            slot.busy = slot.busy.saturating_sub(1);
        }
        st.in_flight = st.in_flight.saturating_sub(1);
    }

    fn release(&self, id: u64, worker: &Arc<dyn Worker>) {
        {
            let mut st = self.lock();
            self.undo_take(&mut st, id);
            if !worker.is_alive() {
                st.slots.retain(|s| s.id != id);
            }
            self.hand_out(&mut st);
            if !st.waiters.is_empty() || !worker.is_alive() {
                self.rescale(&mut st);
            }
        }
        self.changed.notify_waiters();
    }

    /// Starts or stops workers to match the policy's desired count, within
    /// what the node's CPU and memory budgets grant.
    fn rescale(&self, st: &mut State) {
        if st.closed {
            return;
        }
        let now = self.origin.elapsed();
        let demand = st.in_flight + st.waiters.len() as u32;
        st.window.record(now, demand);
        let live = st.slots.len() as u32 + st.starting;
        let decision = st.scaler.decide(&self.scale_config(), st.pin, &st.window, now, live);
        st.desired = decision.desired;
        let grant = self.budget.grant(self.budget_key, decision.desired, live);
        st.cpu_limited = grant.cpu_limited;
        st.memory_limited = grant.memory_limited;
        st.busy_cap = grant.cpu_bound.then_some(grant.workers.max(1));
        self.count_waits(st);
        // The memory budget never takes workers away, it only stops new ones.
        let desired = if grant.memory_limited { grant.workers.max(live.min(decision.desired)) } else { grant.workers };
        if desired > live {
            let backing_off = st.last_start_error.as_ref().is_some_and(|(at, _)| at.elapsed() < START_BACKOFF);
            if backing_off && st.waiters.is_empty() {
                return;
            }
            for _ in live..desired {
                self.start_worker(st);
            }
        } else if desired < live {
            let mut surplus = live - desired;
            // Only idle workers go; busy ones finish first and are
            // reconsidered on a later tick.
            while surplus > 0 {
                let Some(i) = st.slots.iter().rposition(|s| s.busy == 0) else { break };
                let slot = st.slots.remove(i);
                stop(slot.worker);
                surplus -= 1;
            }
        }
        if live == 0 && desired == 0 && grant.memory_limited && !st.waiters.is_empty() {
            self.refuse_for_memory(st);
        }
        self.report(st);
    }

    /// Counts each waiting request once per budget that holds the pool back.
    fn count_waits(&self, st: &mut State) {
        let (cpu, memory) = (st.cpu_limited, st.memory_limited);
        if !cpu && !memory {
            return;
        }
        for w in &mut st.waiters {
            if cpu && !w.counted_cpu {
                w.counted_cpu = true;
                self.shared.cpu_waits.fetch_add(1, Ordering::Relaxed);
            }
            if memory && !w.counted_memory {
                w.counted_memory = true;
                self.shared.memory_waits.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Tells the budget how many workers this pool now has.
    fn report(&self, st: &State) {
        self.budget.report(self.budget_key, st.desired, st.slots.len() as u32 + st.starting);
    }

    /// No worker can start within the node's memory budget: those waiting
    /// are told so now rather than at their timeout.
    fn refuse_for_memory(&self, st: &mut State) {
        let each = self.spec().limits.memory.unwrap_or(DEFAULT_WORKER_MEMORY);
        let mib = sedge_core::invocation::mebibytes;
        let held = self.budget.memory_use(self.spec().name.as_str()).node;
        let by: Vec<String> = Holder::ALL
            .iter()
            .filter_map(|h| held.get(h.as_str()).filter(|b| **b > 0).map(|b| format!("{}s {}", h.as_str(), mib(*b))))
            .collect();
        let by =
            if by.is_empty() { "nothing else holds any of it".to_owned() } else { format!("held: {}", by.join(", ")) };
        let message = format!(
            "the node's memory budget ({}) has no room for another worker of {}; {by} (serve --memory sets the budget)",
            self.budget.memory().map_or_else(|| "unbounded".to_owned(), mib),
            mib(each),
        );
        for w in st.waiters.drain(..) {
            let _ = w.tx.send(Err(InvokeError::StartFailed { function: self.name(), message: message.clone() }));
        }
    }

    fn start_worker(&self, st: &mut State) {
        let Some(pool) = self.me.upgrade() else { return };
        st.starting += 1;
        tokio::spawn(async move {
            let result = pool.launch().await;
            pool.on_started(result);
        });
    }

    /// Starts one worker through the engine, within the start timeout.
    async fn launch(&self) -> Result<(u64, Arc<dyn Worker>), String> {
        let id = self.next_worker.fetch_add(1, Ordering::Relaxed);
        let name = self.spec().name.to_string();
        let instance = format!("{name}-{id}");
        let within = engine::start_timeout(self.spec());
        let ready_by = Instant::now() + within;
        let me = self.me.clone();
        let ctx = StartContext {
            version: self.version.clone(),
            log: LogSink::new(name, instance.clone(), self.shared.logs.clone()),
            instance,
            ready_by,
            start_timeout: within,
            exited: ExitNotice::new(move || {
                if let Some(pool) = me.upgrade() {
                    pool.on_worker_exit(id);
                }
            }),
        };
        // Dropping the start ends what it had begun (the contract asks it).
        match tokio::time::timeout_at(ready_by + START_REPORT_GRACE, self.engine.start(ctx)).await {
            Ok(started) => started.map(|worker| (id, worker)),
            Err(_) => Err(format!("worker was not ready within {}s", within.as_secs())),
        }
    }

    fn on_started(&self, result: Result<(u64, Arc<dyn Worker>), String>) {
        let mut st = self.lock();
        st.starting = st.starting.saturating_sub(1);
        match result {
            Ok((id, worker)) => {
                if st.closed {
                    stop(worker);
                    return;
                }
                self.shared.cold_starts.fetch_add(1, Ordering::Relaxed);
                st.last_start_error = None;
                let phases = worker.start_phases();
                st.slots.push(Slot { id, worker, busy: 0, phases });
                self.hand_out(&mut st);
                self.report(&st);
            }
            Err(message) => {
                tracing::warn!(function = %self.spec().name, "worker failed to start: {message}");
                self.shared.logs.push(self.spec().name.as_str(), "sedge", format!("worker failed to start: {message}"));
                st.last_start_error = Some((Instant::now(), message.clone()));
                self.report(&st);
                if st.slots.is_empty() && st.starting == 0 {
                    for w in st.waiters.drain(..) {
                        let _ = w
                            .tx
                            .send(Err(InvokeError::StartFailed { function: self.name(), message: message.clone() }));
                    }
                }
            }
        }
    }

    fn on_worker_exit(&self, id: u64) {
        let mut st = self.lock();
        let before = st.slots.len();
        st.slots.retain(|s| s.id != id || s.busy > 0);
        if st.slots.len() != before {
            self.shared.logs.push(
                self.spec().name.as_str(),
                "sedge",
                format!("worker {}-{id} exited; replacing it as needed", self.spec().name),
            );
        }
        self.rescale(&mut st);
    }

    /// The periodic policy step: shrink after idle, hold `min`, forget old load.
    pub fn tick(&self) {
        let mut st = self.lock();
        let now = self.origin.elapsed();
        st.window.forget_before(now.saturating_sub(self.spec().scale.idle + Duration::from_secs(1)));
        self.rescale(&mut st);
    }

    /// `scale --replicas N`: N workers held from now on; 0 stops every idle
    /// worker now and lets requests wake the function again.
    pub fn set_replicas(&self, n: u32) {
        let mut st = self.lock();
        if n == 0 {
            st.pin = Pin::Auto;
            st.window.clear();
            // Its panic too: the load it remembers is what was just dropped.
            st.scaler = Autoscaler::default();
        } else {
            st.pin = Pin::Exactly(n);
        }
        self.rescale(&mut st);
    }

    /// Starts a worker now and waits until it is ready, so a deploy can
    /// report a module that does not load. The worker stays for `idle`.
    pub async fn warm(&self) -> Result<(), InvokeError> {
        {
            let mut st = self.lock();
            if !st.slots.is_empty() {
                return Ok(());
            }
            let now = self.origin.elapsed();
            st.window.record(now, 1);
            st.starting += 1;
            // Counted at once, so that what its start makes (a zygote, the
            // next spare) finds it in the memory budget.
            self.report(&st);
        }
        let Some(pool) = self.me.upgrade() else { return Err(InvokeError::ShuttingDown(self.name())) };
        // In a task of its own, so that a caller that stops waiting cannot
        // leave the start counted forever.
        let start = tokio::spawn(async move {
            let result = pool.launch().await;
            let outcome = result.as_ref().map(|_| ()).map_err(Clone::clone);
            pool.on_started(result);
            outcome
        });
        let message = match start.await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(message)) => message,
            Err(e) => format!("the start task ended: {e}"),
        };
        Err(InvokeError::StartFailed { function: self.name(), message })
    }

    /// Stops taking requests, lets those in flight or queued finish (up to
    /// `grace`), then stops every worker.
    pub async fn drain(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        loop {
            // Asked before looking, so a change in between is not missed.
            let changed = self.changed.notified();
            let done = {
                let st = self.lock();
                st.in_flight == 0 && st.waiters.iter().all(|w| w.tx.is_closed())
            };
            if done || tokio::time::timeout_at(deadline, changed).await.is_err() {
                break;
            }
        }
        let mut st = self.lock();
        st.closed = true;
        for w in st.waiters.drain(..) {
            let _ = w.tx.send(Err(InvokeError::ShuttingDown(self.name())));
        }
        for slot in st.slots.drain(..) {
            stop(slot.worker);
        }
        self.budget.leave(self.budget_key);
    }
}

/// Stops a worker taken out of the pool (under the pool's lock, so no new
/// lease on it can appear).
fn stop(worker: Arc<dyn Worker>) {
    if Arc::strong_count(&worker) == 1 {
        worker.stop();
    } else {
        // Someone still holds a lease on it: kill, the holder sees a crash.
        worker.kill();
    }
}

mod cold;
#[cfg(test)]
mod tests;

pub use cold::{ColdStart, ColdStarts};

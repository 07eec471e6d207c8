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

use sedge_core::{FunctionSpec, Invocation, InvokeError, Reply};
use sedge_scaler::{desired_workers, LoadWindow, Pin, ScaleConfig};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::engine::{self, Engine, ExitNotice, LogSink, RawTensor, StartContext, Version, Worker, WorkerCounters};
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
}

struct Waiter {
    tx: oneshot::Sender<Result<Lease, InvokeError>>,
}

struct State {
    slots: Vec<Slot>,
    starting: u32,
    waiters: VecDeque<Waiter>,
    in_flight: u32,
    window: LoadWindow,
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
}

impl FunctionShared {
    /// The counters its engines add to.
    pub fn counters(&self) -> WorkerCounters {
        WorkerCounters { oom_kills: self.oom_kills.clone(), spare_starts: self.spare_starts.clone() }
    }
}

/// Counters and gauges the gateway exports.
#[derive(Debug, Clone, Default)]
pub struct PoolStats {
    pub ready: u32,
    pub starting: u32,
    pub busy: u32,
    pub queued: u32,
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
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.armed {
            self.pool.release(self.id, &self.worker);
        }
    }
}

impl Lease {
    /// Runs the invocation; a timeout kills the worker so it never serves
    /// again, and an answer past `max_answer` is refused.
    pub async fn call(&self, inv: &Invocation, deadline: Instant) -> Result<Reply, InvokeError> {
        match tokio::time::timeout_at(deadline, self.worker.call(inv, deadline)).await {
            Ok(Ok(reply)) => self.pool.within_cap(reply),
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
        match tokio::time::timeout_at(deadline, self.worker.infer(inputs, deadline)).await {
            Ok(Ok(outputs)) => {
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
        Arc::new_cyclic(|me| Self {
            state: Mutex::new(State {
                slots: Vec::new(),
                starting: 0,
                waiters: VecDeque::new(),
                in_flight: 0,
                window: LoadWindow::new(Duration::from_secs(1)),
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
        ScaleConfig { min: s.min, max: s.max, concurrency: s.concurrency, idle: s.idle }
    }

    pub fn stats(&self) -> PoolStats {
        let st = self.lock();
        PoolStats {
            ready: st.slots.len() as u32,
            starting: st.starting,
            busy: st.slots.iter().filter(|s| s.busy > 0).count() as u32,
            queued: st.waiters.len() as u32,
            cold_starts: self.shared.cold_starts.load(Ordering::Relaxed),
            invocations: self.shared.invocations.load(Ordering::Relaxed),
        }
    }

    /// Takes a place for a request before its body is read, so a request
    /// that could neither run nor queue is refused without reading a byte.
    /// Counts admitted requests with those queued against the capacity that
    /// is free or starting plus the queue.
    pub fn admit(&self) -> Result<Admission, InvokeError> {
        let pool = self.me.upgrade().ok_or_else(|| InvokeError::ShuttingDown(self.name()))?;
        let mut st = self.lock();
        if st.closed {
            return Err(InvokeError::ShuttingDown(self.name()));
        }
        st.waiters.retain(|w| !w.tx.is_closed());
        let conc = self.spec().scale.concurrency;
        let free: u32 = st.slots.iter().filter(|s| s.worker.is_alive()).map(|s| conc.saturating_sub(s.busy)).sum();
        let room = free.saturating_add(st.starting.saturating_mul(conc)).saturating_add(self.spec().limits.queue);
        if st.waiters.len() as u32 + st.admitted >= room {
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
            st.waiters.push_back(Waiter { tx });
            self.rescale(&mut st);
            rx
        };
        rx.await.unwrap_or_else(|_| Err(InvokeError::ShuttingDown(self.name())))
    }

    /// Takes a unit of capacity on the least-busy ready worker, if any.
    fn take_free(&self, st: &mut State) -> Option<Lease> {
        let pool = self.me.upgrade()?;
        let conc = self.spec().scale.concurrency;
        let slot = st.slots.iter_mut().filter(|s| s.busy < conc && s.worker.is_alive()).min_by_key(|s| s.busy)?;
        slot.busy += 1;
        let (id, worker) = (slot.id, slot.worker.clone());
        st.in_flight += 1;
        let demand = st.in_flight + st.waiters.len() as u32;
        st.window.record(self.origin.elapsed(), demand);
        Some(Lease { pool, id, worker, armed: true })
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

    /// Starts or stops workers to match the policy's desired count.
    fn rescale(&self, st: &mut State) {
        if st.closed {
            return;
        }
        let now = self.origin.elapsed();
        let demand = st.in_flight + st.waiters.len() as u32;
        st.window.record(now, demand);
        let desired = desired_workers(&self.scale_config(), st.pin, &st.window, now);
        let live = st.slots.len() as u32 + st.starting;
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
                st.slots.push(Slot { id, worker, busy: 0 });
                self.hand_out(&mut st);
            }
            Err(message) => {
                tracing::warn!(function = %self.spec().name, "worker failed to start: {message}");
                self.shared.logs.push(self.spec().name.as_str(), "sedge", format!("worker failed to start: {message}"));
                st.last_start_error = Some((Instant::now(), message.clone()));
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

#[cfg(test)]
mod tests;

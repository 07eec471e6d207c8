//! One function's workers: starts them, hands their free capacity to
//! requests in arrival order, queues (boundedly) what cannot be served yet,
//! replaces workers that crash or time out, and resizes itself by the
//! `sedge-scaler` policy.
//!
//! All state sits behind one short-held lock that is never held across an
//! await; slow work (starting and stopping processes) runs in spawned tasks.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use sedge_core::{FunctionSpec, Invocation, InvokeError, Reply, RuntimeKind};
use sedge_scaler::{desired_workers, LoadWindow, Pin, ScaleConfig};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::exec::ExecWorker;
use crate::http::HttpWorker;
use crate::logs::FunctionLogs;
use crate::process::{Launch, ProcessWorker, Spare, SpareTarget};
use crate::spares::Spares;
use crate::{RuntimeConfig, WorkerFiles};

/// After a worker fails to start, requests fail fast with that error for
/// this long instead of starting a doomed worker each.
const START_BACKOFF: Duration = Duration::from_secs(2);

enum Engine {
    Process(ProcessWorker),
    Exec(Box<ExecWorker>),
    Http(HttpWorker),
}

struct Worker {
    id: u64,
    engine: Engine,
}

impl Worker {
    fn is_alive(&self) -> bool {
        match &self.engine {
            Engine::Process(p) => p.is_alive(),
            Engine::Http(h) => h.is_alive(),
            Engine::Exec(_) => true,
        }
    }

    fn kill(&self) {
        match &self.engine {
            Engine::Process(p) => p.kill(),
            Engine::Http(h) => h.kill(),
            Engine::Exec(_) => {}
        }
    }
}

struct Slot {
    worker: Arc<Worker>,
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
    pub logs: FunctionLogs,
    pub cold_starts: AtomicU64,
    /// Cold starts that took a spare interpreter instead of starting one.
    pub spare_starts: AtomicU64,
    pub invocations: AtomicU64,
    /// Workers the kernel killed for going past `[limits] memory`.
    pub oom_kills: Arc<AtomicU64>,
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
    spec: FunctionSpec,
    dir: PathBuf,
    deps: Option<PathBuf>,
    config: Arc<RuntimeConfig>,
    spares: Arc<Spares>,
    shared: Arc<FunctionShared>,
    origin: Instant,
    next_worker: AtomicU64,
    state: Mutex<State>,
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
    worker: Arc<Worker>,
    armed: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.armed {
            self.pool.release(&self.worker);
        }
    }
}

impl Lease {
    /// Runs the invocation; a timeout kills the worker so it never serves again.
    pub async fn call(&self, inv: &Invocation, deadline: Instant) -> Result<Reply, InvokeError> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        let run = async {
            match &self.worker.engine {
                Engine::Process(p) => p.call(inv, timeout).await,
                Engine::Exec(e) => e.call(inv).await,
                Engine::Http(h) => h.call(inv).await,
            }
        };
        match tokio::time::timeout_at(deadline, run).await {
            Ok(r) => r,
            Err(_) => {
                self.worker.kill();
                Err(self.pool.timeout_error())
            }
        }
    }
}

impl Pool {
    pub fn new(
        spec: FunctionSpec,
        dir: PathBuf,
        deps: Option<PathBuf>,
        config: Arc<RuntimeConfig>,
        spares: Arc<Spares>,
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
            spec,
            dir,
            deps,
            config,
            spares,
            shared,
            origin: Instant::now(),
            next_worker: AtomicU64::new(1),
            me: me.clone(),
        })
    }

    /// What a spare for this version is started with, when spares are per function.
    pub(crate) fn spare_target(&self) -> SpareTarget {
        SpareTarget { limits: self.spec.limits.clone(), files: self.files(), oom_kills: self.shared.oom_kills.clone() }
    }

    /// What this version's workers read besides the node's own files.
    pub fn files(&self) -> WorkerFiles {
        WorkerFiles { bundle: self.dir.clone(), secrets: self.config.secrets_of(&self.spec), deps: self.deps.clone() }
    }

    /// The folder of this version's installed dependencies, if any.
    pub fn deps(&self) -> Option<&PathBuf> {
        self.deps.as_ref()
    }

    pub fn spec(&self) -> &FunctionSpec {
        &self.spec
    }

    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn name(&self) -> String {
        self.spec.name.to_string()
    }

    fn timeout_error(&self) -> InvokeError {
        InvokeError::Timeout {
            function: self.name(),
            timeout_ms: u64::try_from(self.spec.limits.timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn scale_config(&self) -> ScaleConfig {
        let s = &self.spec.scale;
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
        let conc = self.spec.scale.concurrency;
        let free: u32 = st.slots.iter().filter(|s| s.worker.is_alive()).map(|s| conc.saturating_sub(s.busy)).sum();
        let room = free.saturating_add(st.starting.saturating_mul(conc)).saturating_add(self.spec.limits.queue);
        if st.waiters.len() as u32 + st.admitted >= room {
            return Err(InvokeError::QueueFull { function: self.name(), limit: self.spec.limits.queue });
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
            let limit = self.spec.limits.max_body;
            if inv.body.len() as u64 > limit {
                return Err(InvokeError::PayloadTooLarge { function: self.name(), size: inv.body.len() as u64, limit });
            }
            self.shared.invocations.fetch_add(1, Ordering::Relaxed);
            let deadline = Instant::now() + self.spec.limits.timeout;
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

    /// Capacity on a ready worker, now or when one frees up or starts.
    pub async fn acquire(&self) -> Result<Lease, InvokeError> {
        let rx = {
            let mut st = self.lock();
            if st.closed {
                return Err(InvokeError::ShuttingDown(self.name()));
            }
            if let Some(lease) = self.take_free(&mut st) {
                return Ok(lease);
            }
            st.waiters.retain(|w| !w.tx.is_closed());
            if st.waiters.len() >= self.spec.limits.queue as usize {
                return Err(InvokeError::QueueFull { function: self.name(), limit: self.spec.limits.queue });
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
        let conc = self.spec.scale.concurrency;
        let slot = st.slots.iter_mut().filter(|s| s.busy < conc && s.worker.is_alive()).min_by_key(|s| s.busy)?;
        slot.busy += 1;
        let worker = slot.worker.clone();
        st.in_flight += 1;
        let demand = st.in_flight + st.waiters.len() as u32;
        st.window.record(self.origin.elapsed(), demand);
        Some(Lease { pool, worker, armed: true })
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
                self.undo_take(st, &back.worker);
            }
        }
    }

    fn undo_take(&self, st: &mut State, worker: &Arc<Worker>) {
        if let Some(slot) = st.slots.iter_mut().find(|s| Arc::ptr_eq(&s.worker, worker)) {
            slot.busy = slot.busy.saturating_sub(1);
        }
        st.in_flight = st.in_flight.saturating_sub(1);
    }

    fn release(&self, worker: &Arc<Worker>) {
        let mut st = self.lock();
        self.undo_take(&mut st, worker);
        if !worker.is_alive() {
            st.slots.retain(|s| !Arc::ptr_eq(&s.worker, worker));
        }
        self.hand_out(&mut st);
        if !st.waiters.is_empty() || !worker.is_alive() {
            self.rescale(&mut st);
        }
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

    async fn launch(&self) -> Result<Worker, String> {
        let id = self.next_worker.fetch_add(1, Ordering::Relaxed);
        let instance = format!("{}-{id}", self.spec.name);
        let program = match self.spec.runtime {
            RuntimeKind::Python => self.config.python.as_str(),
            RuntimeKind::Node => self.config.node.as_str(),
            RuntimeKind::Exec => {
                let exec = ExecWorker::new(
                    self.spec.clone(),
                    self.files(),
                    instance,
                    self.shared.clone(),
                    self.config.clone(),
                )?;
                return Ok(Worker { id, engine: Engine::Exec(Box::new(exec)) });
            }
            RuntimeKind::Http => {
                let me = self.me.clone();
                let on_exit = Box::new(move || {
                    if let Some(pool) = me.upgrade() {
                        pool.on_worker_exit(id);
                    }
                });
                let http =
                    HttpWorker::start(&self.spec, &self.files(), instance, self.shared.clone(), &self.config, on_exit)
                        .await?;
                return Ok(Worker { id, engine: Engine::Http(http) });
            }
        };
        let shim = self.config.shim(self.spec.runtime);
        let me = self.me.clone();
        let files = self.files();
        let launch = Launch {
            program,
            shim: &shim,
            files: &files,
            instance,
            shared: self.shared.clone(),
            config: &self.config,
            on_exit: Box::new(move || {
                if let Some(pool) = me.upgrade() {
                    pool.on_worker_exit(id);
                }
            }),
        };
        let spare = if Spare::suits(&self.spec) {
            self.spares.take(self.spec.runtime, &self.spare_target()).await
        } else {
            None
        };
        let spare = spare.and_then(|mut s| s.is_alive().then_some(s));
        let process = match spare {
            Some(spare) => {
                let worker = spare.assign(&self.spec, launch).await?;
                self.shared.spare_starts.fetch_add(1, Ordering::Relaxed);
                worker
            }
            None => ProcessWorker::start(&self.spec, launch).await?,
        };
        Ok(Worker { id, engine: Engine::Process(process) })
    }

    fn on_started(&self, result: Result<Worker, String>) {
        let mut st = self.lock();
        st.starting = st.starting.saturating_sub(1);
        match result {
            Ok(worker) => {
                let worker = Arc::new(worker);
                if st.closed {
                    stop(worker);
                    return;
                }
                self.shared.cold_starts.fetch_add(1, Ordering::Relaxed);
                st.last_start_error = None;
                st.slots.push(Slot { worker, busy: 0 });
                self.hand_out(&mut st);
            }
            Err(message) => {
                tracing::warn!(function = %self.spec.name, "worker failed to start: {message}");
                self.shared.logs.push(self.spec.name.as_str(), "sedge", format!("worker failed to start: {message}"));
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
        st.slots.retain(|s| s.worker.id != id || s.busy > 0);
        if st.slots.len() != before {
            self.shared.logs.push(
                self.spec.name.as_str(),
                "sedge",
                format!("worker {}-{id} exited; replacing it as needed", self.spec.name),
            );
        }
        self.rescale(&mut st);
    }

    /// The periodic policy step: shrink after idle, hold `min`, forget old load.
    pub fn tick(&self) {
        let mut st = self.lock();
        let now = self.origin.elapsed();
        st.window.forget_before(now.saturating_sub(self.spec.scale.idle + Duration::from_secs(1)));
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
        let result = self.launch().await;
        let outcome = result
            .as_ref()
            .map(|_| ())
            .map_err(|message| InvokeError::StartFailed { function: self.name(), message: message.clone() });
        self.on_started(result);
        outcome
    }

    /// Stops taking requests, lets those in flight or queued finish (up to
    /// `grace`), then stops every worker.
    pub async fn drain(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        loop {
            let done = {
                let st = self.lock();
                st.in_flight == 0 && st.waiters.iter().all(|w| w.tx.is_closed())
            };
            if done || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
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

fn stop(worker: Arc<Worker>) {
    match Arc::try_unwrap(worker) {
        Ok(Worker { engine: Engine::Process(p), .. }) => Arc::new(p).stop(),
        Ok(Worker { engine: Engine::Http(h), .. }) => h.kill(),
        Ok(_) => {}
        // Someone still holds a lease on it: kill, the holder sees a crash.
        Err(shared) => shared.kill(),
    }
}

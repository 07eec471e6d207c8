//! Durable asynchronous calls: what `/async-function/NAME` and
//! `/system/tasks` accept is stored in SQLite and synced before the caller
//! hears "accepted", then run through the function's normal pool, retried
//! by its `[async]` policy, and its result kept and posted to the caller's
//! callback URL.
//!
//! - [`policy`] (pure): after an attempt, done, retry after a jittered
//!   exponential back-off, or give up (the dead-letter list).
//! - [`retention`] (pure): which finished results go.
//! - [`store`]: the calls in `DATA/calls.db`.
//! - [`Queue`] (this module): group-committed submission, the dispatcher
//!   (bounded per function, arrival order), callbacks and retention loops.
//! - [`callback`]: the POST of a result, with OpenFaaS's headers.
//!
//! Neighbours: `sedge-runtime` runs the calls (its pools), `sedge-gateway`
//! takes them in over HTTP and lists them under `/system/calls`.

pub mod callback;
pub mod disk;
pub mod policy;
pub mod retention;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sedge_core::InvokeError;
use sedge_runtime::Runtime;
use tokio::sync::{oneshot, Notify};

use policy::{Backoff, Next};
pub use retention::Retention;
use store::Finish;
pub use store::{
    Accepted, Call, CallKind, CallState, CallStore, CallbackState, Counts, Filter, NewCall, Request, StoreError,
};

/// The file of the call store, in the node's data directory.
pub const FILE: &str = "calls.db";

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the node's disk has {available} bytes free, too little to accept a call of {size} bytes safely \
         (it keeps {reserve} bytes in reserve); try again later"
    )]
    DiskFull { available: u64, size: u64, reserve: u64 },
    #[error("the node is stopping")]
    Stopping,
    /// More submissions wait for the disk than the writer keeps in line.
    #[error("the node is storing as many calls as it can; try again shortly")]
    Busy,
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub retention: Retention,
    /// Free bytes the data directory's disk must keep after a call is stored.
    pub reserve: u64,
    pub backoff: Backoff,
    pub callback_backoff: Backoff,
    /// Deliveries of one callback before it is given up.
    pub callback_attempts: u32,
    pub callback_timeout: Duration,
    /// Callbacks posted at once, all functions together.
    pub callback_concurrency: usize,
    /// Seeds the jitter (tests); from the OS otherwise.
    pub seed: Option<u64>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            retention: Retention::default(),
            reserve: 64 * 1024 * 1024,
            backoff: Backoff::CALLS,
            callback_backoff: Backoff { base: Duration::from_secs(1), cap: Duration::from_secs(60) },
            callback_attempts: 10,
            callback_timeout: Duration::from_secs(10),
            callback_concurrency: 32,
            seed: None,
        }
    }
}

/// Counters the store does not keep, by function.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub retries: HashMap<String, u64>,
    pub dead_lettered: HashMap<String, u64>,
    pub callbacks_failed: HashMap<String, u64>,
}

/// One submission waiting for the group commit.
struct Job {
    calls: Vec<NewCall>,
    reply: oneshot::Sender<Result<Vec<Result<Accepted, StoreError>>, StoreError>>,
}

pub struct Queue {
    store: Arc<CallStore>,
    runtime: Arc<Runtime>,
    config: QueueConfig,
    dir: PathBuf,
    jobs: std::sync::mpsc::SyncSender<Job>,
    wake: Arc<Notify>,
    wake_callbacks: Notify,
    running: Mutex<HashMap<String, u32>>,
    /// Functions that may have queued calls. Added to after a commit that
    /// queues one, removed (under the lock) only once the store has none.
    pending: Arc<Mutex<HashSet<String>>>,
    delivering: Mutex<HashSet<String>>,
    totals: Mutex<Totals>,
    /// The last count of calls by state, and when it was taken: scrapes
    /// (which anyone may send) share one query a second.
    counted: Mutex<Option<(Instant, Vec<Counts>)>>,
    rng: Mutex<fastrand::Rng>,
    stopping: AtomicBool,
    client: callback::HttpClient,
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Queue {
    /// Opens the call store in `dir` and puts calls a stopped node left
    /// running back in the queue. It accepts calls at once; they run once
    /// [`Queue::start`] is called.
    pub fn open(runtime: Arc<Runtime>, dir: &Path, config: QueueConfig) -> Result<Arc<Self>, QueueError> {
        let store = Arc::new(CallStore::open(&dir.join(FILE))?);
        let requeued = store.requeue_running()?;
        if requeued > 0 {
            tracing::info!("{requeued} calls were running when the node stopped; they run again");
        }
        let pending: Arc<Mutex<HashSet<String>>> =
            Arc::new(Mutex::new(store.queued_functions()?.into_iter().collect()));
        let wake = Arc::new(Notify::new());
        let rng = config.seed.map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(4096);
        let writer = Writer { store: store.clone(), pending: pending.clone(), wake: wake.clone() };
        std::thread::Builder::new()
            .name("sedge-calls-writer".into())
            .spawn(move || group_commit(&writer, &rx))
            .map_err(|source| StoreError::Io { path: dir.to_owned(), source })?;
        let queue = Arc::new(Self {
            store,
            runtime,
            config,
            dir: dir.to_owned(),
            jobs,
            wake,
            wake_callbacks: Notify::new(),
            running: Mutex::default(),
            pending,
            delivering: Mutex::default(),
            totals: Mutex::default(),
            counted: Mutex::default(),
            rng: Mutex::new(rng),
            stopping: AtomicBool::new(false),
            client: callback::client(),
        });
        Ok(queue)
    }

    /// Starts the dispatcher, the callbacks and the retention sweep. The
    /// runtime's functions should be restored first, so queued calls find
    /// their pools.
    pub fn start(self: &Arc<Self>) {
        tokio::spawn(self.clone().dispatch_loop());
        tokio::spawn(self.clone().callback_loop());
        tokio::spawn(self.clone().retention_loop());
    }

    pub fn store(&self) -> &Arc<CallStore> {
        &self.store
    }

    /// Stops starting calls; those running finish or are left for the
    /// next start to run again.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Stores `calls` durably (on disk, synced) and queues them. Each gets
    /// its id, or its refusal (an id used by another function). Refused as
    /// a whole when the disk is nearly full or the store cannot write.
    pub async fn submit(&self, calls: Vec<NewCall>) -> Result<Vec<Result<Accepted, StoreError>>, QueueError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(QueueError::Stopping);
        }
        let size: u64 = calls.iter().map(|c| c.request.body.len() as u64 + 1024).sum();
        let dir = self.dir.clone();
        let available = tokio::task::spawn_blocking(move || disk::available(&dir))
            .await
            .map_err(|e| StoreError::Io { path: self.dir.clone(), source: std::io::Error::other(e) })?
            .map_err(|source| StoreError::Io { path: self.dir.clone(), source })?;
        if !disk::has_room(available, size, self.config.reserve) {
            return Err(QueueError::DiskFull { available, size, reserve: self.config.reserve });
        }
        let (reply, rx) = oneshot::channel();
        // Never blocks a runtime thread: a full line is the caller's 503.
        self.jobs.try_send(Job { calls, reply }).map_err(|e| match e {
            std::sync::mpsc::TrySendError::Full(_) => QueueError::Busy,
            std::sync::mpsc::TrySendError::Disconnected(_) => QueueError::Stopping,
        })?;
        // Dropped by a caller that hangs up: the commit goes ahead and the
        // calls run; a client that retries with its id or key is deduplicated.
        // The writer queues the calls for the dispatcher itself, so this
        // holds even when no one is left to read the answer.
        Ok(rx.await.map_err(|_| QueueError::Stopping)??)
    }

    /// Calls per function and state (blocking: call it off the runtime's
    /// threads), at most a second old.
    pub fn counts(&self) -> Result<Vec<Counts>, StoreError> {
        let mut counted = lock(&self.counted);
        if let Some((at, counts)) = counted.as_ref() {
            if at.elapsed() < Duration::from_secs(1) {
                return Ok(counts.clone());
            }
        }
        let counts = self.store.counts()?;
        *counted = Some((Instant::now(), counts.clone()));
        Ok(counts)
    }

    pub fn totals(&self) -> Totals {
        lock(&self.totals).clone()
    }

    fn count(&self, which: fn(&mut Totals) -> &mut HashMap<String, u64>, function: &str) {
        let mut t = lock(&self.totals);
        *which(&mut t).entry(function.to_owned()).or_default() += 1;
    }

    /// Queues a finished call again (`sedge calls retry`).
    pub fn retry(&self, id: &str) -> Result<(), StoreError> {
        self.store.retry(id, now_ms())?;
        if let Some(call) = self.store.get(id)? {
            lock(&self.pending).insert(call.function);
        }
        self.wake.notify_one();
        Ok(())
    }

    async fn dispatch_loop(self: Arc<Self>) {
        loop {
            let next = if self.stopping.load(Ordering::SeqCst) { None } else { self.dispatch_due().await };
            let wait = next.map_or(Duration::from_secs(30), |at| {
                Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)).min(Duration::from_secs(30))
            });
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Starts every due call there is room for; returns when the next
    /// queued call not yet due is due.
    async fn dispatch_due(self: &Arc<Self>) -> Option<i64> {
        let functions: Vec<String> = lock(&self.pending).iter().cloned().collect();
        let rooms: Vec<(String, u32)> = functions
            .into_iter()
            .map(|function| {
                let room = match self.runtime.get(&function) {
                    Some(pool) => {
                        let spec = pool.spec();
                        let limit =
                            spec.async_calls.concurrency_for(spec.scale.max.saturating_mul(spec.scale.concurrency));
                        limit.saturating_sub(lock(&self.running).get(&function).copied().unwrap_or(0))
                    }
                    // Claimed anyway, to be dead-lettered with the reason.
                    None => 64,
                };
                (function, room)
            })
            .collect();
        let me = self.clone();
        let (claimed, next) = match tokio::task::spawn_blocking(move || me.claim_due(rooms)).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::error!("claiming queued calls: {e}");
                return Some(now_ms() + 1000);
            }
            Err(_) => return Some(now_ms() + 1000),
        };
        for call in claimed {
            *lock(&self.running).entry(call.function.clone()).or_default() += 1;
            tokio::spawn(self.clone().run(call));
        }
        next
    }

    /// Claims up to each function's room of its due calls, in arrival
    /// order; drops functions left with no queued call from the set.
    fn claim_due(&self, rooms: Vec<(String, u32)>) -> Result<(Vec<Call>, Option<i64>), StoreError> {
        let now = now_ms();
        let mut claimed = Vec::new();
        let mut next: Option<i64> = None;
        for (function, room) in rooms {
            let got = if room > 0 { self.store.claim(&function, room, now)? } else { Vec::new() };
            let exhausted = room > 0 && (got.len() as u32) < room;
            claimed.extend(got);
            let due = self.store.next_due(&function, now)?;
            next = match (next, due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if exhausted && due.is_none() {
                let mut pending = lock(&self.pending);
                if !self.store.has_queued(&function)? {
                    pending.remove(&function);
                }
            }
        }
        Ok((claimed, next))
    }

    /// One attempt of `call`, recorded.
    async fn run(self: Arc<Self>, call: Call) {
        let function = call.function.clone();
        let finish = self.attempt(&call).await;
        if let Some(finish) = finish {
            self.record(&call, finish).await;
        }
        if let Some(n) = lock(&self.running).get_mut(&function) {
            *n = n.saturating_sub(1);
        }
        self.wake.notify_one();
    }

    /// Runs `call` once; `None` when the node is stopping and the call goes
    /// back to the queue uncounted.
    async fn attempt(&self, call: &Call) -> Option<Finish> {
        let Some(pool) = self.runtime.get(&call.function) else {
            let message = format!("function {} is not deployed", call.function);
            return Some(failed(404, message, 0));
        };
        let spec = pool.spec().async_calls.clone();
        let age = Duration::from_millis(u64::try_from(now_ms() - call.queued_ms).unwrap_or(0));
        if let Some(reason) = policy::expired(&spec, age) {
            return Some(failed(410, reason, 0));
        }
        let inv = call.request.clone();
        let started = Instant::now();
        let result = match pool.admit() {
            Ok(admission) => admission.invoke(inv).await,
            Err(e) => Err(e),
        };
        let took = duration_ms(started.elapsed());
        if matches!(result, Err(InvokeError::ShuttingDown(_))) && self.stopping.load(Ordering::SeqCst) {
            let store = self.store.clone();
            let id = call.id.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.release(&id)).await {
                tracing::warn!("putting call {} back in the queue: {e}; it runs at the next start", call.id);
            }
            return None;
        }
        let policy::Outcome { attempt, headers, body, error: error_text } = policy::Outcome::of(result);
        let next = {
            let mut rng = lock(&self.rng);
            policy::after_attempt(&spec, &attempt, call.attempts, age, &self.config.backoff, &mut rng)
        };
        Some(match next {
            Next::Done => Finish::Final { status: attempt.status, headers, body, error: None, duration_ms: took },
            Next::Retry { after } => {
                self.count(|t| &mut t.retries, &call.function);
                let error = error_text.unwrap_or_else(|| format!("answered {}", attempt.status));
                Finish::Retry { not_before_ms: now_ms() + duration_ms(after), status: attempt.status, error }
            }
            Next::GiveUp { reason } => {
                let error = match error_text {
                    Some(e) => format!("{e}; {reason}"),
                    None => format!("answered {}; {reason}", attempt.status),
                };
                Finish::Final { status: attempt.status, headers, body, error: Some(error), duration_ms: took }
            }
        })
    }

    /// Writes the outcome, trying again while the store cannot (a full
    /// disk, say): until it is written the call stays running, and a
    /// restart runs it again.
    async fn record(&self, call: &Call, finish: Finish) {
        let dead = matches!(&finish, Finish::Final { error: Some(_), .. });
        let again = matches!(&finish, Finish::Retry { .. });
        let last = matches!(&finish, Finish::Final { .. });
        let finish = Arc::new(finish);
        for wait in 0..60u64 {
            let store = self.store.clone();
            let (id, f) = (call.id.clone(), finish.clone());
            match tokio::task::spawn_blocking(move || store.finish(&id, &f, now_ms())).await {
                Ok(Ok(())) => {
                    if again {
                        lock(&self.pending).insert(call.function.clone());
                    }
                    if dead {
                        self.count(|t| &mut t.dead_lettered, &call.function);
                    }
                    if last && call.callback_url.is_some() {
                        self.wake_callbacks.notify_one();
                    }
                    return;
                }
                Ok(Err(e)) => tracing::warn!("recording the end of call {}: {e}; trying again", call.id),
                Err(e) => tracing::warn!("recording the end of call {}: {e}; trying again", call.id),
            }
            tokio::time::sleep(Duration::from_secs(1 + wait.min(9))).await;
        }
        tracing::error!("call {} could not be recorded; it runs again at the next start", call.id);
    }

    async fn callback_loop(self: Arc<Self>) {
        loop {
            let next = self.deliver_due().await;
            let wait = next.map_or(Duration::from_secs(30), |at| {
                Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)).min(Duration::from_secs(30))
            });
            tokio::select! {
                _ = self.wake_callbacks.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn deliver_due(self: &Arc<Self>) -> Option<i64> {
        let busy: Vec<String> = lock(&self.delivering).iter().cloned().collect();
        let room = self.config.callback_concurrency.saturating_sub(busy.len()) as u32;
        if room > 0 {
            let store = self.store.clone();
            let skip = busy.clone();
            match tokio::task::spawn_blocking(move || store.due_callbacks(now_ms(), room, &skip)).await {
                Ok(Ok(due)) => {
                    for call in due {
                        lock(&self.delivering).insert(call.id.clone());
                        tokio::spawn(self.clone().deliver(call));
                    }
                }
                Ok(Err(e)) => tracing::error!("reading the pending callbacks: {e}"),
                Err(_) => {}
            }
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.next_callback(now_ms())).await {
            Ok(Ok(next)) => next,
            _ => Some(now_ms() + 1000),
        }
    }

    async fn deliver(self: Arc<Self>, call: Call) {
        let outcome = callback::deliver(&self.client, &call, self.config.callback_timeout).await;
        let tries = call.callback_attempts + 1;
        let (delivered, retry_at, error) = match &outcome {
            Ok(()) => (true, None, None),
            Err(e) if tries < self.config.callback_attempts => {
                let after = self.config.callback_backoff.delay(tries, &mut lock(&self.rng));
                (false, Some(now_ms() + duration_ms(after)), Some(e.clone()))
            }
            Err(e) => {
                tracing::warn!("callback of call {} given up after {tries} attempts: {e}", call.id);
                self.count(|t| &mut t.callbacks_failed, &call.function);
                (false, None, Some(e.clone()))
            }
        };
        let store = self.store.clone();
        let id = call.id.clone();
        match tokio::task::spawn_blocking(move || store.callback_attempt(&id, delivered, retry_at, error.as_deref()))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("recording the callback of call {}: {e}", call.id),
            Err(e) => tracing::warn!("recording the callback of call {}: {e}", call.id),
        }
        lock(&self.delivering).remove(&call.id);
        self.wake_callbacks.notify_one();
    }

    async fn retention_loop(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.config.retention.sweep_every());
        loop {
            every.tick().await;
            let store = self.store.clone();
            let r = self.config.retention;
            match tokio::task::spawn_blocking(move || store.apply_retention(&r, now_ms())).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::debug!("removed {n} finished calls past their retention"),
                Ok(Err(e)) => tracing::warn!("removing finished calls: {e}"),
                Err(_) => {}
            }
        }
    }
}

fn failed(status: u16, message: String, duration_ms: i64) -> Finish {
    let (headers, body) = policy::error_answer(&message);
    Finish::Final { status, headers, body, error: Some(message), duration_ms }
}

/// What the writer thread holds: the store, and the dispatcher's set of
/// functions with queued calls and its wake-up, which it updates after
/// each commit.
struct Writer {
    store: Arc<CallStore>,
    pending: Arc<Mutex<HashSet<String>>>,
    wake: Arc<Notify>,
}

/// The writer thread: every submission waiting when it is free goes into
/// one transaction, so one sync to disk covers many calls.
fn group_commit(writer: &Writer, rx: &std::sync::mpsc::Receiver<Job>) {
    let store = &writer.store;
    const MOST: usize = 512;
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let mut n = jobs[0].calls.len();
        while n < MOST {
            match rx.try_recv() {
                Ok(job) => {
                    n += job.calls.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let all: Vec<NewCall> = jobs.iter().flat_map(|j| j.calls.iter().cloned()).collect();
        match store.insert(&all, now_ms()) {
            Ok(results) => {
                // Before anyone hears "accepted": a caller that has gone
                // away by now must not leave its call unseen.
                lock(&writer.pending).extend(all.iter().map(|c| c.function.clone()));
                writer.wake.notify_one();
                let mut results = results.into_iter();
                for job in jobs {
                    let mine: Vec<_> = results.by_ref().take(job.calls.len()).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                tracing::error!("storing {n} submitted calls: {e}");
                for job in jobs {
                    let _ = job.reply.send(Err(e.again()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn call(key: Option<&str>, body: &'static str) -> NewCall {
        NewCall {
            function: "f".into(),
            kind: CallKind::Http,
            id: None,
            key: key.map(str::to_owned),
            request: Request {
                method: "POST".into(),
                path: "/".into(),
                body: Bytes::from_static(body.as_bytes()),
                ..Request::default()
            },
            callback_url: None,
        }
    }

    #[test]
    fn a_group_commit_answers_each_submission_with_its_own_calls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(CallStore::open(&dir.path().join(FILE)).expect("open"));
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(16);
        let mut replies = Vec::new();
        // Queued before the writer starts, so they share one transaction.
        for calls in [vec![call(Some("k"), "a"), call(None, "b")], vec![call(Some("k"), "c")], vec![call(None, "d")]] {
            let (reply, rx) = oneshot::channel();
            tx.send(Job { calls, reply }).expect("send");
            replies.push(rx);
        }
        drop(tx);
        let writer = Writer { store: store.clone(), pending: Arc::default(), wake: Arc::default() };
        let pending = writer.pending.clone();
        std::thread::spawn(move || group_commit(&writer, &rx)).join().expect("writer");
        assert!(lock(&pending).contains("f"), "the dispatcher learns of the calls from the writer");
        let answers: Vec<Vec<Accepted>> = replies
            .into_iter()
            .map(|rx| {
                rx.blocking_recv()
                    .expect("answered")
                    .expect("stored")
                    .into_iter()
                    .map(|a| a.expect("accepted"))
                    .collect()
            })
            .collect();
        assert_eq!(answers.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1, 1]);
        assert!(answers[1][0].duplicate, "the same key in the same commit is one call");
        assert_eq!(answers[1][0].id, answers[0][0].id);
        let stored = store.list(&Filter::default()).expect("list");
        let bodies: Vec<&[u8]> = stored.iter().rev().map(|c| c.request.body.as_ref()).collect();
        assert_eq!(bodies, [&b"a"[..], b"b", b"d"]);
    }
}

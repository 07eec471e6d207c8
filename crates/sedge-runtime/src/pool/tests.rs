//! The pool, run in-process on paused time with a scripted engine: a real
//! [`Engine`] whose workers start and answer as each test's script says
//! (a delay, an answer, a crash, a start that fails or never finishes).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::Mutex;

use bytes::Bytes;
use sedge_core::{FunctionSpec, Invocation, InvokeError, Reply};

use super::*;
use crate::budget::NodeBudget;
use crate::engine::{BoxFuture, Engine, RawTensor, StartContext, Worker};

/// How a scripted start goes.
#[derive(Clone, Copy)]
enum Start {
    Ready,
    Fail(&'static str),
    /// Never becomes ready.
    Hang,
}

/// How a scripted call goes: after `after`, an answer or a crash.
#[derive(Clone)]
enum Answer {
    Reply {
        after: Duration,
        body: &'static str,
    },
    Crash {
        after: Duration,
    },
    /// Answers, then the worker goes by itself (as a process that exits).
    ReplyThenExit,
}

fn reply(after_secs: u64, body: &'static str) -> Answer {
    Answer::Reply { after: Duration::from_secs(after_secs), body }
}

/// What the engine is told to do, and what happened to its workers.
#[derive(Default)]
struct Script {
    /// Next starts, in order; once used up, starts succeed.
    starts: Mutex<VecDeque<Start>>,
    /// Next answers, in order, whichever worker calls; then `ok` at once.
    answers: Mutex<VecDeque<Answer>>,
    attempts: AtomicU32,
    /// Starts dropped before they finished.
    abandoned: AtomicU32,
    killed: Mutex<Vec<String>>,
    stopped: Mutex<Vec<String>>,
    /// Model calls that never answer, and how many of them were dropped.
    infers: AtomicU32,
    infers_dropped: AtomicU32,
}

impl Script {
    fn with(starts: &[Start], answers: &[Answer]) -> Arc<Self> {
        let script = Self::default();
        held(&script.starts).extend(starts.iter().copied());
        held(&script.answers).extend(answers.iter().cloned());
        Arc::new(script)
    }

    fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::SeqCst)
    }

    fn killed(&self) -> Vec<String> {
        held(&self.killed).clone()
    }

    fn stopped(&self) -> Vec<String> {
        held(&self.stopped).clone()
    }
}

fn held<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct ScriptedEngine(Arc<Script>);

/// Counts a start as abandoned unless it is defused first.
struct Abandoned(Option<Arc<Script>>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some(script) = self.0.take() {
            script.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Engine for ScriptedEngine {
    fn start(&self, ctx: StartContext) -> BoxFuture<'static, Result<Arc<dyn Worker>, String>> {
        let script = self.0.clone();
        Box::pin(async move {
            script.attempts.fetch_add(1, Ordering::SeqCst);
            let step = held(&script.starts).pop_front().unwrap_or(Start::Ready);
            let mut abandoned = Abandoned(Some(script.clone()));
            match step {
                Start::Ready => {}
                Start::Fail(message) => {
                    abandoned.0 = None;
                    return Err(message.to_owned());
                }
                Start::Hang => std::future::pending::<()>().await,
            }
            abandoned.0 = None;
            let worker = ScriptedWorker {
                name: ctx.instance,
                script,
                alive: Arc::new(AtomicBool::new(true)),
                exited: Mutex::new(Some(ctx.exited)),
            };
            Ok(Arc::new(worker) as Arc<dyn Worker>)
        })
    }
}

struct ScriptedWorker {
    name: String,
    script: Arc<Script>,
    alive: Arc<AtomicBool>,
    exited: Mutex<Option<ExitNotice>>,
}

impl Worker for ScriptedWorker {
    fn call<'a>(&'a self, _inv: &'a Invocation, _deadline: Instant) -> BoxFuture<'a, Result<Reply, InvokeError>> {
        Box::pin(async move {
            let answer = held(&self.script.answers).pop_front().unwrap_or(reply(0, "ok"));
            match answer {
                Answer::Reply { after, body } => {
                    tokio::time::sleep(after).await;
                    Ok(Reply { status: 200, headers: Vec::new(), body: Bytes::from_static(body.as_bytes()) })
                }
                Answer::Crash { after } => {
                    tokio::time::sleep(after).await;
                    self.alive.store(false, Ordering::SeqCst);
                    if let Some(exited) = held(&self.exited).take() {
                        exited.notify();
                    }
                    Err(InvokeError::Crashed { function: "f".into(), status: "scripted crash".into() })
                }
                Answer::ReplyThenExit => {
                    let reply = Reply { status: 200, headers: Vec::new(), body: Bytes::from_static(b"bye") };
                    // A moment after its answer, as a process would.
                    let (alive, exited) = (self.alive.clone(), held(&self.exited).take());
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        alive.store(false, Ordering::SeqCst);
                        if let Some(exited) = exited {
                            exited.notify();
                        }
                    });
                    Ok(reply)
                }
            }
        })
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    fn kill(&self) {
        self.alive.store(false, Ordering::SeqCst);
        held(&self.script.killed).push(self.name.clone());
    }

    fn stop(self: Arc<Self>) {
        self.alive.store(false, Ordering::SeqCst);
        held(&self.script.stopped).push(self.name.clone());
    }

    /// A model call that waits for ever, counted when dropped.
    fn infer<'a>(
        &'a self,
        _inputs: Vec<RawTensor>,
        _deadline: Instant,
    ) -> BoxFuture<'a, Result<Vec<RawTensor>, InvokeError>> {
        self.script.infers.fetch_add(1, Ordering::SeqCst);
        let dropped = Counted(self.script.clone());
        Box::pin(async move {
            let _dropped = dropped;
            std::future::pending().await
        })
    }
}

/// Counts a model call as dropped when it goes.
struct Counted(Arc<Script>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.infers_dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// A pool for function `f` with manifest lines `extra`, run by `script`.
fn pool(extra: &str, script: &Arc<Script>) -> Arc<Pool> {
    let text = format!("name = \"f\"\nruntime = \"exec\"\nhandler = \"run\"\n{extra}");
    let spec = FunctionSpec::parse("sedge.toml", &text).expect("a valid manifest");
    let files = WorkerFiles { bundle: PathBuf::from("/nonexistent"), secrets: None, deps: None };
    Pool::new(spec, files, Arc::new(ScriptedEngine(script.clone())), Arc::default())
}

fn inv() -> Invocation {
    Invocation {
        method: "POST".into(),
        path: "/".into(),
        query: String::new(),
        headers: Vec::new(),
        body: Bytes::new(),
    }
}

/// Lets every task run until all wait on time (paused time moves on only then).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

fn call(pool: &Arc<Pool>) -> tokio::task::JoinHandle<Result<Reply, InvokeError>> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.invoke(inv()).await })
}

fn body(r: Result<Reply, InvokeError>) -> String {
    match r {
        Ok(reply) => String::from_utf8_lossy(&reply.body).into_owned(),
        Err(e) => panic!("expected an answer, got {e}"),
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_full_queue_answers_429() {
    let script = Script::with(&[], &[reply(10, "first"), reply(0, "second")]);
    let pool = pool("[limits]\nqueue = 1\n[scale]\nmax = 1\n", &script);
    let first = call(&pool);
    settle().await;
    let second = call(&pool);
    settle().await;
    assert_eq!(pool.stats().queued, 1);
    match pool.invoke(inv()).await {
        Err(InvokeError::QueueFull { limit: 1, .. }) => {}
        other => panic!("expected QueueFull, got {:?}", other.map(|r| r.status)),
    }
    assert_eq!(body(first.await.expect("the task ends")), "first");
    assert_eq!(body(second.await.expect("the task ends")), "second");
    assert_eq!(script.attempts(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn admitting_within_capacity_takes_no_more_places_than_the_pool_runs_at_its_largest() {
    let script = Script::with(&[], &[reply(10, "first")]);
    let pool = pool("[limits]\nqueue = 8\n[scale]\nmax = 1\nconcurrency = 2\n", &script);
    // Two takers at once, before either has run: the second of the check
    // and the taking cannot slip between them.
    let one = pool.admit_within_capacity().expect("room for one");
    let two = pool.admit_within_capacity().expect("room for two");
    assert!(matches!(pool.admit_within_capacity(), Err(InvokeError::QueueFull { .. })));
    // The queue would still take one: admit() counts it, this does not.
    assert!(pool.admit().is_ok());
    drop(two);
    let three = pool.admit_within_capacity().expect("a place given back is free again");
    drop((one, three));
    assert_eq!(pool.load().0, 0, "every place came back");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn after_a_failed_start_requests_fail_fast_until_the_backoff_ends() {
    let script = Script::with(&[Start::Fail("no module named handler")], &[]);
    let pool = pool("", &script);
    for _ in 0..2 {
        match pool.invoke(inv()).await {
            Err(InvokeError::StartFailed { message, .. }) => assert_eq!(message, "no module named handler"),
            other => panic!("expected StartFailed, got {:?}", other.map(|r| r.status)),
        }
    }
    assert_eq!(script.attempts(), 1, "the second request started no doomed worker");
    assert!(pool.shared.logs.tail(10).iter().any(|l| l.text.contains("no module named handler")));
    tokio::time::sleep(START_BACKOFF).await;
    assert_eq!(body(pool.invoke(inv()).await), "ok");
    assert_eq!(script.attempts(), 2);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_call_past_its_deadline_answers_504_and_its_worker_is_killed() {
    let script = Script::with(&[], &[reply(5, "late")]);
    let pool = pool("[limits]\ntimeout = \"1s\"\n", &script);
    match pool.invoke(inv()).await {
        Err(InvokeError::Timeout { timeout_ms: 1000, .. }) => {}
        other => panic!("expected Timeout, got {:?}", other.map(|r| r.status)),
    }
    assert_eq!(script.killed(), ["f-1"]);
    // The killed worker never serves again: the next call gets a new one.
    assert_eq!(body(pool.invoke(inv()).await), "ok");
    assert_eq!(script.attempts(), 2);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_crash_answers_502_and_the_worker_is_replaced() {
    let script = Script::with(&[], &[Answer::Crash { after: Duration::from_millis(10) }]);
    let pool = pool("", &script);
    match pool.invoke(inv()).await {
        Err(InvokeError::Crashed { .. }) => {}
        other => panic!("expected Crashed, got {:?}", other.map(|r| r.status)),
    }
    assert_eq!(body(pool.invoke(inv()).await), "ok");
    assert_eq!(script.attempts(), 2);
    assert_eq!(pool.stats().ready, 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_worker_that_goes_by_itself_is_replaced_to_hold_min() {
    let script = Script::with(&[], &[Answer::ReplyThenExit]);
    let pool = pool("[scale]\nmin = 1\n", &script);
    pool.tick();
    settle().await;
    assert_eq!(body(pool.invoke(inv()).await), "bye");
    // No request and no tick: its exit notice alone makes the pool act.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(script.attempts(), 2);
    assert_eq!(pool.stats().ready, 1);
    assert!(pool.shared.logs.tail(10).iter().any(|l| l.text.contains("worker f-1 exited")));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn drain_finishes_accepted_work_then_stops_the_workers() {
    let script = Script::with(&[], &[reply(3, "done")]);
    let pool = pool("", &script);
    let accepted = call(&pool);
    settle().await;
    let began = Instant::now();
    let grace = Duration::from_secs(30);
    let drain = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.drain(grace).await })
    };
    settle().await;
    assert!(!drain.is_finished(), "drain waits for the call in flight");
    assert_eq!(body(accepted.await.expect("the task ends")), "done");
    drain.await.expect("the task ends");
    assert!(began.elapsed() < grace, "drain ended when the work did, not at the end of its grace");
    assert_eq!(script.stopped(), ["f-1"]);
    assert!(script.killed().is_empty(), "an idle worker is stopped, not killed");
    match pool.invoke(inv()).await {
        Err(InvokeError::ShuttingDown(_)) => {}
        other => panic!("expected ShuttingDown, got {:?}", other.map(|r| r.status)),
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn drain_gives_up_on_work_past_its_grace() {
    let script = Script::with(&[], &[reply(60, "never")]);
    let pool = pool("[limits]\ntimeout = \"2m\"\n", &script);
    let accepted = call(&pool);
    settle().await;
    pool.drain(Duration::from_secs(5)).await;
    // Still leased, so killed rather than stopped: its caller sees a crash.
    assert_eq!(script.killed(), ["f-1"]);
    accepted.abort();
}

/// Ticks once a second (as the node does) until `ready` workers remain;
/// how long that took.
async fn tick_until(pool: &Pool, ready: u32, limit: Duration) -> Duration {
    let began = Instant::now();
    while pool.stats().ready != ready {
        assert!(began.elapsed() < limit, "still {} workers after {limit:?}", pool.stats().ready);
        tokio::time::sleep(Duration::from_secs(1)).await;
        pool.tick();
    }
    began.elapsed()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_idle_pool_shrinks_to_zero_after_idle_and_wakes_on_demand() {
    let script: Arc<Script> = Arc::default();
    let pool = pool("[scale]\nmin = 0\nidle = \"5s\"\n", &script);
    assert_eq!(body(pool.invoke(inv()).await), "ok");
    assert_eq!(pool.stats().ready, 1);
    let took = tick_until(&pool, 0, Duration::from_secs(30)).await;
    assert!(took >= Duration::from_secs(5), "shrank after {took:?}, before idle");
    assert_eq!(script.stopped(), ["f-1"]);
    // At zero, a request waits for a new worker rather than failing.
    assert_eq!(body(pool.invoke(inv()).await), "ok");
    assert_eq!(script.attempts(), 2);
    assert_eq!(pool.stats().cold_starts, 2);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pool_grown_by_load_shrinks_back_to_min() {
    let script = Script::with(&[], &[reply(2, "a"), reply(2, "b")]);
    let pool = pool("[scale]\nmin = 1\nmax = 3\nidle = \"5s\"\n", &script);
    pool.tick();
    settle().await;
    assert_eq!(pool.stats().ready, 1, "min is held from the start");
    let (a, b) = (call(&pool), call(&pool));
    settle().await;
    assert_eq!(pool.stats().ready, 2);
    assert_eq!(
        (body(a.await.expect("the task ends")), body(b.await.expect("the task ends"))),
        ("a".into(), "b".into())
    );
    let took = tick_until(&pool, 1, Duration::from_secs(30)).await;
    assert!(took >= Duration::from_secs(3), "shrank after {took:?}, before idle");
    assert_eq!(script.stopped().len(), 1);
    // It stays at min however long it idles.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        pool.tick();
    }
    assert_eq!(pool.stats().ready, 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_queued_request_starts_another_worker_at_once() {
    let script = Script::with(&[], &[reply(10, "slow"), reply(0, "fast")]);
    let pool = pool("[scale]\nmax = 2\n", &script);
    let slow = call(&pool);
    settle().await;
    let began = Instant::now();
    assert_eq!(body(pool.invoke(inv()).await), "fast");
    assert!(began.elapsed() < Duration::from_secs(10), "served by a second worker, not after the first");
    assert_eq!(script.attempts(), 2);
    assert!(!slow.is_finished());
    assert_eq!(body(slow.await.expect("the task ends")), "slow");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_answer_past_max_answer_is_refused_and_the_worker_kept() {
    let script = Script::with(&[], &[reply(0, "123456789"), reply(0, "12345678")]);
    let pool = pool("[limits]\nmax_answer = \"8B\"\n", &script);
    match pool.invoke(inv()).await {
        Err(InvokeError::AnswerTooLarge { size: Some(9), limit: 8, .. }) => {}
        other => panic!("expected AnswerTooLarge, got {:?}", other.map(|r| r.status)),
    }
    assert_eq!(body(pool.invoke(inv()).await), "12345678");
    assert_eq!(script.attempts(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_start_past_the_start_timeout_is_dropped_and_fails() {
    let script = Script::with(&[Start::Hang], &[]);
    let pool = pool("[limits]\ntimeout = \"30s\"\n", &script);
    match pool.warm().await {
        Err(InvokeError::StartFailed { message, .. }) => {
            assert_eq!(message, "worker was not ready within 30s")
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    assert_eq!(script.abandoned.load(Ordering::SeqCst), 1, "the hung start was dropped");
    let stats = pool.stats();
    assert_eq!((stats.starting, stats.ready), (0, 0));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_waiter_gets_the_start_failure_of_a_start_that_timed_out() {
    let script = Script::with(&[Start::Hang], &[]);
    // A call's timeout past the longest start timeout (120 s).
    let pool = pool("[limits]\ntimeout = \"5m\"\n", &script);
    match pool.invoke(inv()).await {
        Err(InvokeError::StartFailed { message, .. }) => assert_eq!(message, "worker was not ready within 120s"),
        other => panic!("expected StartFailed, got {:?}", other.map(|r| r.status)),
    }
}

#[test]
fn the_start_timeout_follows_the_function_s_timeout_within_bounds() {
    let spec = |timeout: &str| {
        let text = format!("name = \"f\"\nruntime = \"exec\"\nhandler = \"run\"\n[limits]\ntimeout = \"{timeout}\"\n");
        FunctionSpec::parse("sedge.toml", &text).expect("a valid manifest")
    };
    assert_eq!(engine::start_timeout(&spec("1s")), Duration::from_secs(10));
    assert_eq!(engine::start_timeout(&spec("45s")), Duration::from_secs(45));
    assert_eq!(engine::start_timeout(&spec("1h")), Duration::from_secs(120));
}

fn pool_within(extra: &str, script: &Arc<Script>, budget: &Arc<NodeBudget>, cpu: Option<f64>) -> Arc<Pool> {
    let (name, extra) = match extra.strip_prefix("name = \"g\"\n") {
        Some(rest) => ("g", rest),
        None => ("f", extra),
    };
    let text = format!("name = \"{name}\"\nruntime = \"exec\"\nhandler = \"run\"\n{extra}");
    let spec = FunctionSpec::parse("sedge.toml", &text).expect("a valid manifest");
    let files = WorkerFiles { bundle: PathBuf::from("/nonexistent"), secrets: None, deps: None };
    Pool::within(spec, files, Arc::new(ScriptedEngine(script.clone())), Arc::default(), budget.clone(), cpu)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_cpu_bound_pool_never_has_more_workers_than_the_node_has_cores() {
    let script = Script::with(&[], &[reply(5, "a"), reply(5, "b"), reply(5, "c"), reply(5, "d")]);
    let budget = Arc::new(NodeBudget::new(2, None));
    let pool = pool_within("[scale]\nmax = 4\n", &script, &budget, Some(1.0));
    let calls: Vec<_> = (0..4).map(|_| call(&pool)).collect();
    for _ in 0..4 {
        settle().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        pool.tick();
    }
    let stats = pool.stats();
    assert_eq!((stats.ready, stats.busy), (2, 2), "two cores, two busy workers");
    assert_eq!(stats.desired, 4, "the policy wanted more");
    assert!(pool.shared.cpu_waits.load(Ordering::Relaxed) >= 2);
    for c in calls {
        assert!(!body(c.await.expect("the task ends")).is_empty());
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn cpu_bound_functions_share_the_cores_fairly() {
    let budget = Arc::new(NodeBudget::new(2, None));
    let slow = || Script::with(&[], &[reply(20, "x"), reply(20, "x"), reply(20, "x")]);
    let (sa, sb) = (slow(), slow());
    let a = pool_within("[scale]\nmax = 4\n", &sa, &budget, Some(1.0));
    let _a_calls: Vec<_> = (0..3).map(|_| call(&a)).collect();
    for _ in 0..3 {
        settle().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        a.tick();
    }
    assert_eq!(a.stats().ready, 2);
    let b = pool_within("[scale]\nmax = 4\n", &sb, &budget, Some(1.0));
    let _b_calls: Vec<_> = (0..3).map(|_| call(&b)).collect();
    settle().await;
    assert_eq!(b.stats().ready + b.stats().starting, 1, "b gets its one core's worth");
    // a's calls already running finish (a call is never cut short); from
    // then on the two share the cores: never more than two busy.
    tokio::time::sleep(Duration::from_secs(21)).await;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        a.tick();
        b.tick();
        settle().await;
        let (ra, rb) = (a.stats().busy, b.stats().busy);
        assert!(ra + rb <= 2, "busy workers past the cores: {ra} + {rb}");
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn no_worker_starts_past_the_node_s_memory_budget() {
    let budget = Arc::new(NodeBudget::new(8, Some(300 * 1024 * 1024)));
    let sa = Script::with(&[], &[reply(10, "a"), reply(10, "a")]);
    let a = pool_within("[limits]\nmemory = \"128MiB\"\n[scale]\nmax = 4\n", &sa, &budget, None);
    let a_calls: Vec<_> = (0..3).map(|_| call(&a)).collect();
    for _ in 0..3 {
        settle().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        a.tick();
    }
    assert_eq!(a.stats().ready, 2, "two of 128 MiB fit in 300 MiB, a third does not");
    assert!(a.shared.memory_waits.load(Ordering::Relaxed) >= 1);
    // Another function at zero is told at once, naming the budget.
    let b = pool_within("name = \"g\"\n[limits]\nmemory = \"64MiB\"\n", &Script::default().into(), &budget, None);
    match b.invoke(inv()).await {
        Err(InvokeError::StartFailed { message, .. }) => {
            assert!(message.contains("memory budget (300 MiB)"), "{message}")
        }
        other => panic!("expected a start failure, got {other:?}"),
    }
    drop(a_calls);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn scaling_to_zero_right_after_a_request_stops_the_worker_at_once() {
    let script: Arc<Script> = Arc::default();
    let pool = pool("[scale]\nmax = 2\n", &script);
    assert_eq!(body(pool.invoke(inv()).await), "ok");
    pool.set_replicas(0);
    settle().await;
    assert_eq!(pool.stats().ready, 0, "the panic that the request began does not hold it");
    assert_eq!(script.stopped(), ["f-1"]);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_model_call_whose_caller_goes_ends_at_once_and_gives_its_capacity_back() {
    let script = Script::with(&[], &[]);
    let pool = pool("[limits]\ntimeout = \"60s\"\n[scale]\nmin = 1\n", &script);
    let far = Instant::now() + Duration::from_secs(60);
    let caller = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.infer(Vec::new(), far).await })
    };
    settle().await;
    assert_eq!(script.infers.load(Ordering::SeqCst), 1);
    assert_eq!(pool.stats().busy, 1);
    // The calling worker goes (its reader's tasks are aborted).
    caller.abort();
    settle().await;
    assert_eq!(script.infers_dropped.load(Ordering::SeqCst), 1, "the model call is dropped, not left to its deadline");
    assert_eq!(pool.stats().busy, 0);
    assert!(script.killed().is_empty(), "the model itself serves on");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_model_call_past_its_deadline_is_dropped_and_the_model_kept() {
    let script = Script::with(&[], &[]);
    let pool = pool("[limits]\ntimeout = \"60s\"\n", &script);
    let soon = Instant::now() + Duration::from_secs(2);
    match pool.infer(Vec::new(), soon).await {
        Err(InvokeError::Timeout { .. }) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert_eq!(script.infers_dropped.load(Ordering::SeqCst), 1);
    assert_eq!(pool.stats().busy, 0);
}

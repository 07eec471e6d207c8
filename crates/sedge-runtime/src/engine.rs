//! The engine contract: what the pool asks of every kind of worker, and
//! nothing more. An engine starts workers for one runtime kind; a worker
//! answers calls with a deadline, says whether it is alive, and can be
//! killed or stopped. Engines may be processes (python, node, exec, http)
//! or live in the node itself: nothing here assumes a pid or a pipe.
//!
//! The pool, not the engine, is the guarantee for the policy every kind
//! shares: the deadline of a call (504, and the worker killed), the size of
//! an answer (`[limits] max_answer`, 502) and the time a worker may take to
//! become ready ([`start_timeout`]). Engines may refuse earlier (a reader
//! that stops at `max_answer` instead of buffering more), never later.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sedge_core::figures::ModelFigures;
use sedge_core::{FunctionSpec, Invocation, InvokeError, Reply};
use tokio::time::Instant;

pub use crate::logs::LogSink;
use crate::WorkerFiles;

/// A boxed future, so that [`Worker`] and [`Engine`] stay object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Shortest time a worker is given to become ready: loading a module is
/// slow on a small board even for a function with a short timeout.
pub const MIN_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest: a start that takes longer is stuck, not slow.
pub const MAX_START_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a worker of `spec` may take to become ready: the function's
/// timeout, bounded to [`MIN_START_TIMEOUT`]..=[`MAX_START_TIMEOUT`].
pub fn start_timeout(spec: &FunctionSpec) -> Duration {
    spec.limits.timeout.clamp(MIN_START_TIMEOUT, MAX_START_TIMEOUT)
}

/// One started worker of one function version.
pub trait Worker: Send + Sync {
    /// Runs one invocation. The pool stops waiting at `deadline` (the
    /// future is dropped and the worker killed), so an engine needs no
    /// timer of its own; it may pass the deadline on to its worker.
    /// Dropping the future must leave the worker usable or dead, never
    /// half-way through a request that the next call would see.
    fn call<'a>(&'a self, inv: &'a Invocation, deadline: Instant) -> BoxFuture<'a, Result<Reply, InvokeError>>;

    /// Whether it can take calls. A worker that is not alive is retired.
    fn is_alive(&self) -> bool;

    /// Ends it at once; calls in flight fail.
    fn kill(&self);

    /// A call ran past its deadline (its caller has had 504). A worker
    /// that runs one call at a time cannot be trusted to be between calls,
    /// so by default it is killed; one that keeps many callers apart (an
    /// in-process model whose late runs are simply discarded) stays.
    fn timed_out(&self) {
        self.kill();
    }

    /// Ends it gently, once no call holds it: the pool calls this when it
    /// shrinks or drains.
    fn stop(self: Arc<Self>);

    /// Where this worker's start went, if its engine knows: the pool adds
    /// the first answer and reports the whole (`sedge_cold_start_seconds`).
    fn start_phases(&self) -> Option<StartPhases> {
        None
    }

    /// Runs tensors through the model this worker serves (a function's
    /// code calling `sedge.infer`). Same deadline rules as [`Self::call`].
    /// Only workers that are models answer; the others refuse. The future
    /// must be safe to drop at any await: the pool drops it when the
    /// calling function's worker goes.
    fn infer<'a>(
        &'a self,
        inputs: Vec<RawTensor>,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Vec<RawTensor>, InvokeError>> {
        let _ = (inputs, deadline);
        Box::pin(async { Err(InvokeError::Failed { function: String::new(), message: "not a model".to_owned() }) })
    }
}

/// How a worker came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartKind {
    /// A process of its own, from the interpreter's start.
    Fresh,
    /// A spare interpreter that was waiting, told to load the function.
    Spare,
    /// Forked from the function's template process (its zygote).
    Zygote,
    /// A model loaded in the node.
    Model,
}

impl StartKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::Spare => "spare",
            Self::Zygote => "zygote",
            Self::Model => "model",
        }
    }
}

/// Where a worker's start went, up to its being ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartPhases {
    pub kind: StartKind,
    /// Starting the process and the shim (or taking a spare, or forking).
    pub process: std::time::Duration,
    /// Importing the function's module, model loads excluded.
    pub imports: std::time::Duration,
    /// Loading models.
    pub model: std::time::Duration,
}

/// A tensor on its way between a function's worker and a model: what the
/// worker protocol carries, raw little-endian bytes and their description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTensor {
    /// Empty for a model's only input, when the caller left it out.
    pub name: String,
    /// As the Open Inference Protocol names it: `FP32`, `INT64`, ...
    pub datatype: String,
    pub shape: Vec<u64>,
    pub data: Bytes,
}

/// Starts workers of one runtime kind.
pub trait Engine: Send + Sync {
    /// Starts one worker and resolves once it is ready to take calls.
    /// The pool drops this future a moment after `ctx.ready_by`: dropping
    /// it must end whatever it had started.
    fn start(&self, ctx: StartContext) -> BoxFuture<'static, Result<Arc<dyn Worker>, String>>;

    /// A version's pool was made: the engine may get ahead of its first
    /// start (a spare interpreter, say).
    fn prepare(&self, _version: &Version) {}

    /// The version whose bundle is `bundle` will start no more workers,
    /// and its folder is about to go.
    fn retire(&self, _bundle: &Path) {}

    /// The node is stopping: start nothing more, drop what is kept ahead.
    fn close(&self) {}

    /// The node's models, given once the runtime is built, for engines
    /// whose workers call them.
    fn attach(&self, _models: crate::models::Models) {}
}

/// What a worker of one function version is made from.
#[derive(Clone)]
pub struct Version {
    pub spec: Arc<FunctionSpec>,
    pub files: WorkerFiles,
    pub counters: WorkerCounters,
}

/// The function's counters an engine adds to.
#[derive(Debug, Clone, Default)]
pub struct WorkerCounters {
    /// Workers the kernel killed for going past `[limits] memory`.
    pub oom_kills: Arc<AtomicU64>,
    /// Starts that took a worker kept ahead (a spare) instead of a fresh one.
    pub spare_starts: Arc<AtomicU64>,
    /// A model served in the node: its queue waits and runs.
    pub model: Arc<ModelFigures>,
}

/// Everything one start is given.
pub struct StartContext {
    pub version: Version,
    /// The worker's name in logs, e.g. `hello-3`.
    pub instance: String,
    /// Where the worker's output goes.
    pub log: LogSink,
    /// When the worker must be ready; the pool cuts the start off shortly
    /// after, so an engine that notices first can say why (with output).
    pub ready_by: Instant,
    /// The whole start timeout, for messages.
    pub start_timeout: Duration,
    /// To be given once the worker has gone by itself (exited, crashed).
    pub exited: ExitNotice,
}

/// Tells the pool a worker has gone without being asked to, so it is
/// replaced at once rather than found dead by the next call.
pub struct ExitNotice(Box<dyn FnOnce() + Send>);

impl ExitNotice {
    pub fn new(f: impl FnOnce() + Send + 'static) -> Self {
        Self(Box::new(f))
    }

    pub fn notify(self) {
        (self.0)();
    }
}

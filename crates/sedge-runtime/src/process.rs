//! A long-lived language worker (python or node): one process running the
//! runtime shim, which loads the user's module once and then answers framed
//! invocations. Several invocations may be in flight at once; answers are
//! matched to callers by id.
//!
//! Frames travel on a socket of their own (the worker's descriptor
//! [`CHANNEL_FD`]), never on stdin/stdout, so nothing the user's code prints
//! or its children write can be read as framing; stdout and stderr go to
//! the function's log. One writer task per worker writes whole frames in
//! order: a caller that goes away can never leave half a frame behind for
//! the next one to be read into. The reader decodes with a cap on answer
//! bodies ([`sedge_protocol::Decoder`]), so a worker cannot make the node
//! buffer more than the function's `max_answer`.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use command_fds::{CommandFdExt, FdMapping};
use sedge_core::{FunctionSpec, Invocation, InvokeError, Reply};
use sedge_protocol::{encode_head, Decoded, Decoder, Header, MAX_BODY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot};

use tokio::time::Instant;

use crate::engine::{BoxFuture, ExitNotice, LogSink, StartKind, StartPhases, Worker};
use crate::group::ProcessGroup;
use crate::logs::{self, LogTarget, RecentLines};
use crate::models::Models;
use crate::sandbox::WorkerCgroup;
use crate::RuntimeConfig;

/// Request bodies up to this size are copied behind the frame head and sent
/// in one write; larger ones are written separately rather than copied.
const COALESCE: usize = 64 * 1024;
/// The worker's descriptor for the frame socket (also in `SEDGE_CHANNEL_FD`).
pub const CHANNEL_FD: i32 = 3;

mod model_calls;
pub(crate) mod zygote;

use model_calls::ModelCalls;

/// An invocation sent to the worker and not yet answered.
struct Call {
    tx: oneshot::Sender<Result<Reply, InvokeError>>,
    /// Also bounds the models it calls.
    deadline: Instant,
}

type Pending = Arc<Mutex<HashMap<u64, Call>>>;

/// What a worker needs to start, beyond its spec.
pub struct Launch<'a> {
    pub program: &'a str,
    pub shim: &'a Path,
    pub files: &'a crate::WorkerFiles,
    pub log: LogSink,
    pub oom_kills: Arc<AtomicU64>,
    pub config: &'a RuntimeConfig,
    /// When the user's module must have loaded.
    pub ready: Ready,
    /// Given once when the process has gone, whatever the reason.
    pub exited: ExitNotice,
    /// The node's models, which the function may call.
    pub models: Option<Models>,
}

/// When a starting worker must be ready, and the timeout that says, for
/// the message.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    pub by: Instant,
    pub within: Duration,
}

/// One frame on its way to a worker.
struct Outgoing {
    head: Vec<u8>,
    body: Bytes,
}

pub struct ProcessWorker {
    function: String,
    /// The writer task's queue; `None` once the worker has been asked to stop.
    frames: Mutex<Option<mpsc::UnboundedSender<Outgoing>>>,
    pending: Pending,
    next_id: AtomicU64,
    alive: Arc<AtomicBool>,
    group: Arc<ProcessGroup>,
    phases: StartPhases,
    /// The zygote it was forked from, kept while it lives: under the
    /// sandbox the zygote leads its pid namespace, and its end would end
    /// the worker too (a version retired keeps serving what it accepted).
    _zygote: Option<(Arc<zygote::Zygote>, crate::budget::HoldPin)>,
}

/// How long reading a process's size may take: a `/proc/PID/smaps_rollup`
/// read waits for the process's memory map, which a process stuck in the
/// kernel may hold. Past it the process stays held at its limit.
const MEASURE_WITHIN: Duration = Duration::from_secs(2);

/// How long a spare may take to say it is up, its imports ahead included
/// (on a busy node). One that never does would hold its part of the memory
/// budget, and keep the cold starts waiting for it waiting, for good.
const SPARE_START: Duration = Duration::from_secs(120);

/// A shim process whose channel is set up and whose output is being
/// logged, before its first frame.
struct Spawned {
    child: Proc,
    group: Arc<ProcessGroup>,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    decoder: Decoder,
    recent: Arc<RecentLines>,
    target: Arc<LogTarget>,
    /// The memory limit, named when the kernel kills the worker for it.
    memory: Option<u64>,
}

impl Spawned {
    fn spawn(
        (mut cmd, cgroup): (tokio::process::Command, Option<WorkerCgroup>),
        program: &str,
        target: Arc<LogTarget>,
        config: &RuntimeConfig,
        memory: Option<u64>,
    ) -> Result<Self, String> {
        let (ours, theirs) = channel_pair().map_err(|e| format!("cannot make a worker channel: {e}"))?;
        cmd.fd_mappings(vec![FdMapping { parent_fd: OwnedFd::from(theirs), child_fd: CHANNEL_FD }])
            .map_err(|e| format!("cannot pass the worker channel: {e}"))?;
        cmd.env("SEDGE_CHANNEL_FD", CHANNEL_FD.to_string());
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let (mut child, group) =
            config.groups.spawn_in(&mut cmd, cgroup).map_err(|e| format!("cannot run {program}: {e}"))?;
        // The child's end must close here, or the worker's exit would never
        // be seen as the end of the channel.
        drop(cmd);
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err("worker pipes were not set up".to_owned());
        };
        let channel = ours
            .set_nonblocking(true)
            .and_then(|()| UnixStream::from_std(ours))
            .map_err(|e| format!("cannot use the worker channel: {e}"))?;
        let (reader, writer) = channel.into_split();
        let recent = Arc::new(RecentLines::default());
        logs::pump(stdout, target.clone(), recent.clone());
        logs::pump(stderr, target.clone(), recent.clone());
        Ok(Self {
            child: Proc::Child(child),
            group: Arc::new(group),
            reader,
            writer,
            decoder: Decoder::default(),
            recent,
            target,
            memory,
        })
    }

    /// What its processes use now (PSS), read on a blocking thread (it
    /// walks `/proc`); `None` past [`MEASURE_WITHIN`]. It owns what it
    /// reads, so it may be awaited once the process is where it can be taken.
    fn measure(&self) -> impl std::future::Future<Output = Option<u64>> + Send + 'static {
        let group = self.group.clone();
        async move {
            let read = tokio::task::spawn_blocking(move || group.pss());
            tokio::time::timeout(MEASURE_WITHIN, read).await.ok().and_then(Result::ok).flatten()
        }
    }

    /// The first frame the shim sends by `ready.by`, or why there is none.
    async fn first_frame(&mut self, ready: Ready) -> Result<Header, String> {
        let read = read_decoded(&mut self.reader, &mut self.decoder);
        match tokio::time::timeout_at(ready.by, read).await {
            Ok(Ok(Some(Decoded::Frame(frame)))) => Ok(frame.header),
            Ok(Ok(Some(Decoded::Oversized { header, .. }))) => Ok(header),
            Ok(Ok(None)) => Err("worker exited before it was ready".to_owned()),
            Ok(Err(e)) => Err(format!("worker sent a bad frame: {e}")),
            Err(_) => {
                // Stuck, not on its way out: end it now, so the report (with
                // its output) comes before the pool gives up on the start.
                self.group.kill_now();
                Err(format!("worker was not ready within {}s", ready.within.as_secs()))
            }
        }
    }

    /// Ends a process that failed to start and says how, quoting its output.
    async fn failed(self, why: String) -> String {
        let status = reap(self.child, &self.group).await;
        let mut msg = match self.memory.filter(|_| self.group.oom_killed()) {
            Some(limit) => format!("{why}: {}", crate::group::oom_message(limit)),
            None => format!("{why} ({status})"),
        };
        let tail = self.recent.joined();
        if !tail.is_empty() {
            msg.push_str(&format!("; output: {tail}"));
        }
        msg
    }

    /// Waits for the user's module to load, then serves.
    async fn finish(
        mut self,
        spec: &FunctionSpec,
        ready: Ready,
        exited: ExitNotice,
        models: Option<Models>,
        (began, kind): (Instant, StartKind),
    ) -> Result<ProcessWorker, String> {
        let first = self.first_frame(ready).await;
        self.finish_with(first, spec, exited, models, (began, kind)).await
    }

    /// As [`Self::finish`], the first frame read already (a forked standby's).
    async fn finish_with(
        mut self,
        first: Result<Header, String>,
        spec: &FunctionSpec,
        exited: ExitNotice,
        models: Option<Models>,
        (began, kind): (Instant, StartKind),
    ) -> Result<ProcessWorker, String> {
        let (mut imports_us, mut model_us) = (None, None);
        let why = match first {
            Ok(Header::Ready { imports_us: i, model_us: m }) => {
                (imports_us, model_us) = (i, m);
                None
            }
            Ok(Header::LoadError { error }) => Some(format!("loading {} failed: {error}", spec.handler)),
            Ok(other) => Some(format!("worker spoke out of turn: {other:?}")),
            Err(e) => Some(e),
        };
        if let Some(why) = why {
            return Err(self.failed(why).await);
        }
        let function = spec.name.to_string();
        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (tx, rx) = mpsc::unbounded_channel();
        let calls = ModelCalls::new(models, &spec.models, tx.downgrade(), pending.clone());
        tokio::spawn(write_frames(rx, self.writer, alive.clone(), self.group.clone()));
        let max_answer = u32::try_from(spec.limits.max_answer).unwrap_or(MAX_BODY);
        self.decoder.set_max_body(max_answer);
        tokio::spawn(read_answers(
            Answers {
                reader: self.reader,
                decoder: self.decoder,
                max_answer: spec.limits.max_answer,
                memory: spec.limits.memory,
            },
            function.clone(),
            (pending.clone(), calls),
            alive.clone(),
            (self.child, self.group.clone()),
            exited,
        ));
        let (imports, model) =
            (Duration::from_micros(imports_us.unwrap_or(0)), Duration::from_micros(model_us.unwrap_or(0)));
        let total = began.elapsed();
        let phases = StartPhases { kind, process: total.saturating_sub(imports + model), imports, model };
        Ok(ProcessWorker {
            function,
            frames: Mutex::new(Some(tx)),
            pending,
            next_id: AtomicU64::new(1),
            alive,
            group: self.group,
            phases,
            _zygote: None,
        })
    }
}

/// What one end of a worker's channel may have in flight: a 602 KB tensor
/// passes in one write and about one read, where the kernel's default
/// (208 KiB) cut it into three of each, every one a wake-up of the other
/// side. The kernel caps it at `net.core.wmem_max`.
const CHANNEL_BUFFER: usize = 1024 * 1024;

/// A worker's channel: a socket pair whose send buffers fit a large frame.
pub(crate) fn channel_pair() -> std::io::Result<(std::os::unix::net::UnixStream, std::os::unix::net::UnixStream)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    for end in [&ours, &theirs] {
        // Only fewer, larger copies are lost without it.
        if let Err(e) = nix::sys::socket::setsockopt(end, nix::sys::socket::sockopt::SndBuf, &CHANNEL_BUFFER) {
            tracing::debug!("a worker channel keeps the default send buffer: {e}");
        }
    }
    Ok((ours, theirs))
}

/// What the shim is told about its function through the environment.
pub fn function_env(spec: &FunctionSpec) -> BTreeMap<String, String> {
    let mut env = spec.env.clone();
    env.insert("SEDGE_FUNCTION".into(), spec.name.to_string());
    env.insert("SEDGE_STYLE".into(), spec.style.as_str().into());
    env.insert("SEDGE_CONCURRENCY".into(), spec.scale.concurrency.to_string());
    env.insert("SEDGE_TIMEOUT".into(), spec.limits.timeout.as_secs().max(1).to_string());
    env.insert("SEDGE_MEMORY_LIMIT".into(), spec.limits.memory.map(|m| m.to_string()).unwrap_or_default());
    env.insert("SEDGE_MAX_ANSWER".into(), spec.limits.max_answer.to_string());
    let models: Vec<&str> = spec.models.iter().map(|m| m.as_str()).collect();
    env.insert("SEDGE_MODELS".into(), models.join(","));
    env
}

/// The function a sandboxed spare is started for.
#[derive(Debug, Clone)]
pub struct SpareTarget {
    /// Named in the node's memory budget.
    pub function: String,
    /// Modules the spare imports ahead (the function's requirements name them).
    pub preload: Vec<String>,
    pub limits: sedge_core::Limits,
    /// Bound into the spare's view.
    pub files: crate::WorkerFiles,
    pub oom_kills: Arc<AtomicU64>,
}

/// A shim started ahead of need (`--spare`): the interpreter's start-up is
/// already paid when a function needs a worker, which then only loads the
/// user's module.
pub struct Spare {
    spawned: Spawned,
    /// Its part of the node's memory budget, until it becomes a worker.
    hold: Option<crate::budget::MemoryHold>,
}

impl Spare {
    /// Starts a spare; `target` is the one function it may serve, when
    /// workers are sandboxed (a sandbox holds one function's bundle).
    pub async fn start(
        program: &str,
        shim: &Path,
        config: &RuntimeConfig,
        target: Option<&SpareTarget>,
    ) -> Result<Self, String> {
        let (mut cmd, cgroup) = match target {
            Some(t) => config.command(program, &t.limits, &t.files, t.oom_kills.clone())?,
            None => (tokio::process::Command::new(program), None),
        };
        cmd.arg(shim).arg("--spare").env("PYTHONUNBUFFERED", "1");
        if let Some(t) = target.filter(|t| !t.preload.is_empty()) {
            cmd.env("SEDGE_PRELOAD", t.preload.join(","));
        }
        let memory = target.and_then(|t| t.limits.memory);
        let mut spawned = Spawned::spawn((cmd, cgroup), program, Arc::new(LogTarget::default()), config, memory)?;
        let ready = Ready { by: Instant::now() + SPARE_START, within: SPARE_START };
        match spawned.first_frame(ready).await {
            Ok(Header::Spare) => Ok(Self { spawned, hold: None }),
            Ok(other) => Err(spawned.failed(format!("spare worker spoke out of turn: {other:?}")).await),
            Err(e) => Err(spawned.failed(e).await),
        }
    }

    /// Whether a spare can become a worker of `spec`: variables that the
    /// interpreter itself reads at start-up (PYTHONPATH, NODE_OPTIONS, ...)
    /// would come too late, so such functions start a process of their own.
    pub fn suits(spec: &FunctionSpec) -> bool {
        !spec
            .env
            .keys()
            .any(|k| k.starts_with("PYTHON") || k.starts_with("NODE") || k.starts_with("UV_") || k.starts_with("LD_"))
    }

    /// Keeps `hold` (its part of the node's memory budget) while it waits.
    pub fn keep(&mut self, hold: Option<crate::budget::MemoryHold>) {
        self.hold = hold;
    }

    /// The part of the node's memory budget it holds while it waits.
    pub fn hold(&self) -> Option<&crate::budget::MemoryHold> {
        self.hold.as_ref()
    }

    /// What it uses now (PSS), see [`Spawned::measure`].
    pub fn measure(&self) -> impl std::future::Future<Output = Option<u64>> + Send + 'static {
        self.spawned.measure()
    }

    /// Whether the process is still there to be assigned.
    pub fn is_alive(&mut self) -> bool {
        match &mut self.spawned.child {
            Proc::Child(child) => matches!(child.try_wait(), Ok(None)),
            Proc::Forked(pid) => forked_alive(*pid),
        }
    }

    /// Makes the spare a worker of `spec`, running in its bundle folder.
    pub async fn assign(mut self, spec: &FunctionSpec, launch: Launch<'_>) -> Result<ProcessWorker, String> {
        let began = Instant::now();
        // A worker now: the pool counts it.
        drop(self.hold.take());
        self.spawned.target.set(launch.log);
        let mut env = function_env(spec);
        // A spare was started before it knew its function (or, sandboxed,
        // for it): the places of its secrets and dependencies come with the
        // function's variables.
        env.extend(launch.config.files_env(launch.files));
        let dir = &launch.files.bundle;
        let load = Header::Load { dir: dir.to_string_lossy().into_owned(), handler: spec.handler.clone(), env };
        let frame = encode_head(&load, 0).map_err(|e| e.to_string())?;
        // Dropped mid-write, the spare is dropped too (and killed): no one
        // else ever reads this channel.
        if let Err(e) = self.spawned.writer.write_all(&frame).await {
            return Err(self.spawned.failed(format!("spare worker is gone: {e}")).await);
        }
        self.spawned.finish(spec, launch.ready, launch.exited, launch.models, (began, StartKind::Spare)).await
    }
}

impl ProcessWorker {
    /// Starts a fresh process and waits until the user's module has loaded.
    pub async fn start(spec: &FunctionSpec, launch: Launch<'_>) -> Result<Self, String> {
        let began = Instant::now();
        let (mut cmd, cgroup) = launch.config.command(launch.program, &spec.limits, launch.files, launch.oom_kills)?;
        let dir = &launch.files.bundle;
        cmd.arg(launch.shim).arg(dir).arg(&spec.handler).current_dir(dir).envs(function_env(spec));
        cmd.env("PYTHONUNBUFFERED", "1");
        let target = Arc::new(LogTarget::new(launch.log));
        Spawned::spawn((cmd, cgroup), launch.program, target, launch.config, spec.limits.memory)?
            .finish(spec, launch.ready, launch.exited, launch.models, (began, StartKind::Fresh))
            .await
    }

    /// Sends one invocation and waits for its answer. Cancel-safe: once the
    /// frame is queued it is written whole by the writer task; if this
    /// future is dropped, the answer is discarded by id when it comes.
    async fn invoke(&self, inv: &Invocation, deadline: Instant) -> Result<Reply, InvokeError> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let header = Header::Invoke {
            id,
            method: inv.method.clone(),
            path: inv.path.clone(),
            query: inv.query.clone(),
            headers: inv.headers.clone(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let head = encode_head(&header, inv.body.len())
            .map_err(|e| InvokeError::Failed { function: self.function.clone(), message: e.to_string() })?;
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, Call { tx, deadline });
        let _forget = Forget { pending: &self.pending, id };
        let queued = match lock(&self.frames).as_ref() {
            Some(frames) => frames.send(Outgoing { head, body: inv.body.clone() }).is_ok(),
            None => false,
        };
        if !queued {
            return Err(self.crashed());
        }
        rx.await.unwrap_or_else(|_| Err(self.crashed()))
    }

    fn crashed(&self) -> InvokeError {
        InvokeError::Crashed { function: self.function.clone(), status: "worker channel closed".to_owned() }
    }
}

impl Worker for ProcessWorker {
    fn call<'a>(&'a self, inv: &'a Invocation, deadline: Instant) -> BoxFuture<'a, Result<Reply, InvokeError>> {
        Box::pin(self.invoke(inv, deadline))
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    fn start_phases(&self) -> Option<StartPhases> {
        Some(self.phases)
    }

    /// Kills the process (and all it started) at once; its reader then
    /// fails any call in flight.
    fn kill(&self) {
        self.alive.store(false, Ordering::Release);
        self.group.kill_now();
    }

    /// Asks the worker to finish: closing its channel makes the shim exit,
    /// and a worker that lingers is killed.
    fn stop(self: Arc<Self>) {
        self.alive.store(false, Ordering::Release);
        // The writer task finishes what is queued, then closes the channel.
        drop(lock(&self.frames).take());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            self.kill();
        });
    }
}

/// Forgets a call's answer slot when its caller goes away; an answer that
/// still comes is then dropped by id.
struct Forget<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A worker's process: a child of the node's, or forked by a zygote (whose
/// child it is: the zygote reaps it, the node only watches its pid).
enum Proc {
    Child(Child),
    Forked(u32),
}

fn forked_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else { return false };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

/// As [`reap`], for a forked worker: its exit status is its zygote's to
/// read, so only its going is seen.
async fn reap_forked(pid: u32, group: &ProcessGroup) -> String {
    let deadline = Instant::now() + Duration::from_secs(1);
    while forked_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = if forked_alive(pid) { "killed after its channel closed" } else { "exited" };
    group.kill();
    status.to_owned()
}

/// Waits briefly for a process that is on its way out, then kills it (and
/// whatever is left in its group), and says how it ended.
async fn reap(child: Proc, group: &ProcessGroup) -> String {
    let mut child = match child {
        Proc::Child(child) => child,
        Proc::Forked(pid) => return reap_forked(pid, group).await,
    };
    let status = match tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
        Ok(r) => r,
        Err(_) => {
            group.kill_now();
            child.wait().await
        }
    };
    group.kill();
    match status {
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    }
}

/// Reads until the decoder has something; `Ok(None)` at a clean end of stream.
async fn read_decoded(reader: &mut OwnedReadHalf, decoder: &mut Decoder) -> Result<Option<Decoded>, String> {
    loop {
        if let Some(d) = decoder.decode().map_err(|e| e.to_string())? {
            return Ok(Some(d));
        }
        match reader.read_buf(decoder.buffer()).await {
            Ok(0) if decoder.is_empty() => return Ok(None),
            Ok(0) => return Err("channel closed inside a frame".to_owned()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The one place frames are written to a worker: each whole, in order.
async fn write_frames(
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    mut writer: OwnedWriteHalf,
    alive: Arc<AtomicBool>,
    group: Arc<ProcessGroup>,
) {
    while let Some(Outgoing { head, body }) = rx.recv().await {
        let written = if body.len() <= COALESCE {
            // One write, one wake-up of the worker, for the common small request.
            let mut frame = head;
            frame.extend_from_slice(&body);
            writer.write_all(&frame).await
        } else {
            match writer.write_all(&head).await {
                Ok(()) => writer.write_all(&body).await,
                Err(e) => Err(e),
            }
        };
        if written.is_err() {
            // The worker is gone or broken: its reader fails what is in flight.
            alive.store(false, Ordering::Release);
            group.kill_now();
            return;
        }
    }
    // Asked to stop: end of input is the shim's cue to exit.
    let _ = writer.shutdown().await;
}

struct Answers {
    reader: OwnedReadHalf,
    decoder: Decoder,
    max_answer: u64,
    memory: Option<u64>,
}

async fn read_answers(
    answers: Answers,
    function: String,
    (pending, mut calls): (Pending, ModelCalls),
    alive: Arc<AtomicBool>,
    (child, group): (Proc, Arc<ProcessGroup>),
    exited: ExitNotice,
) {
    let Answers { mut reader, mut decoder, max_answer, memory } = answers;
    let answer = |id: u64, result: Result<Reply, InvokeError>| {
        if let Some(call) = lock(&pending).remove(&id) {
            let _ = call.tx.send(result);
        }
    };
    let why = loop {
        match read_decoded(&mut reader, &mut decoder).await {
            Ok(Some(Decoded::Frame(frame))) => match frame.header {
                Header::Response { id, status, headers } => answer(id, Ok(Reply { status, headers, body: frame.body })),
                Header::Error { id, answer_size: Some(size), .. } => answer(
                    id,
                    Err(InvokeError::AnswerTooLarge {
                        function: function.clone(),
                        size: Some(size),
                        limit: max_answer,
                    }),
                ),
                Header::Error { id, error, .. } => {
                    answer(id, Err(InvokeError::Failed { function: function.clone(), message: error }))
                }
                Header::Infer { id, call, model, inputs, image } => {
                    calls.start(model_calls::Request::read(id, call, model, inputs, image, frame.body))
                }
                other => break format!("protocol violation: unexpected {other:?}"),
            },
            Ok(Some(Decoded::Oversized { header, body_len })) => match header {
                // The body is skipped as it arrives; the worker stays.
                Header::Response { id, .. } => answer(
                    id,
                    Err(InvokeError::AnswerTooLarge {
                        function: function.clone(),
                        size: Some(u64::from(body_len)),
                        limit: max_answer,
                    }),
                ),
                Header::Error { id, error, .. } => {
                    answer(id, Err(InvokeError::Failed { function: function.clone(), message: error }))
                }
                Header::Infer { id, .. } => calls.refuse(
                    id,
                    format!("inputs of {body_len} bytes are over the function's max_answer of {max_answer} bytes"),
                ),
                other => break format!("protocol violation: unexpected {other:?}"),
            },
            Ok(None) => break String::new(),
            Err(e) => break format!("protocol violation: {e}"),
        }
    };
    alive.store(false, Ordering::Release);
    // The worker is gone: its model calls have no one to answer.
    drop(calls);
    let status = reap(child, &group).await;
    let status = if why.is_empty() { status } else { format!("{why}; {status}") };
    let oom = memory.filter(|_| group.oom_killed());
    for (_, Call { tx, .. }) in lock(&pending).drain() {
        let error = match oom {
            Some(limit) => InvokeError::OutOfMemory { function: function.clone(), limit },
            None => InvokeError::Crashed { function: function.clone(), status: status.clone() },
        };
        let _ = tx.send(Err(error));
    }
    exited.notify();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_spare_that_never_says_it_is_up_is_given_up() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let config = RuntimeConfig::install_shims(dir.path(), "sh".into(), "node".into(), true).expect("shims");
        let shim = dir.path().join("silent.sh");
        std::fs::write(&shim, "exec sleep 1000\n").expect("a script");
        let groups = config.groups.clone();
        let start = tokio::spawn(async move { Spare::start("sh", &shim, &config, None).await.err() });
        // Past its bound on the paused clock, then real time for its end.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        tokio::time::advance(SPARE_START + Duration::from_secs(1)).await;
        tokio::time::resume();
        let given_up = tokio::time::timeout(Duration::from_secs(10), start).await;
        let e = given_up.expect("given up past its bound").expect("the start ran").expect("no spare");
        assert!(e.contains("not ready within 120s"), "{e}");
        let ended = tokio::time::timeout(Duration::from_secs(5), groups.all_ended()).await;
        assert!(ended.is_ok(), "its process is ended with it");
    }
}

//! A long-lived language worker (python or node): one process running the
//! runtime shim, which loads the user's module once and then answers framed
//! invocations on its pipes. Several invocations may be in flight at once;
//! answers are matched to callers by id.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sedge_core::{FunctionSpec, Invocation, InvokeError, Reply};
use sedge_protocol::{encode_head, parse_header, parse_prefix, Header, PREFIX_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::oneshot;

use crate::logs::{self, LogTarget, RecentLines};
use crate::pool::FunctionShared;

/// How long a worker may take to load the user's module.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Request bodies up to this size are copied behind the frame head and sent
/// in one write; larger ones are written separately rather than copied.
const COALESCE: usize = 64 * 1024;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Reply, InvokeError>>>>>;

/// What a worker needs to start, beyond its spec.
pub struct Launch<'a> {
    pub program: &'a str,
    pub shim: &'a Path,
    pub dir: &'a Path,
    pub instance: String,
    /// The function's log and counters.
    pub shared: Arc<FunctionShared>,
    /// Called once when the process has gone, whatever the reason.
    pub on_exit: Box<dyn FnOnce() + Send>,
}

pub struct ProcessWorker {
    function: String,
    /// `None` once the worker has been asked to stop.
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    pending: Pending,
    next_id: AtomicU64,
    alive: Arc<AtomicBool>,
    child: Arc<Mutex<Option<Child>>>,
}

/// A shim process whose pipes are set up and whose output is being logged,
/// before its first frame.
struct Spawned {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    recent: Arc<RecentLines>,
    target: Arc<LogTarget>,
}

impl Spawned {
    fn spawn(mut cmd: Command, program: &str, target: Arc<LogTarget>) -> Result<Self, String> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("cannot run {program}: {e}"))?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err("worker pipes were not set up".to_owned());
        };
        let recent = Arc::new(RecentLines::default());
        logs::pump(stderr, target.clone(), recent.clone());
        // Buffered: a frame's prefix, header and body usually arrive in one read.
        let stdout = BufReader::with_capacity(64 * 1024, stdout);
        Ok(Self { child, stdin, stdout, recent, target })
    }

    /// The first frame the shim sends, or why there is none.
    async fn first_frame(&mut self) -> Result<Header, String> {
        match tokio::time::timeout(START_TIMEOUT, read_frame(&mut self.stdout)).await {
            Ok(Ok(Some((header, _)))) => Ok(header),
            Ok(Ok(None)) => Err("worker exited before it was ready".to_owned()),
            Ok(Err(e)) => Err(format!("worker sent a bad frame: {e}")),
            Err(_) => Err(format!("worker was not ready within {}s", START_TIMEOUT.as_secs())),
        }
    }

    /// Ends a process that failed to start and says how, quoting its stderr.
    async fn failed(self, why: String) -> String {
        let mut msg = format!("{why} ({})", reap(self.child).await);
        let tail = self.recent.joined();
        if !tail.is_empty() {
            msg.push_str(&format!("; stderr: {tail}"));
        }
        msg
    }

    /// Waits for the user's module to load, then serves.
    async fn finish(mut self, spec: &FunctionSpec, on_exit: Box<dyn FnOnce() + Send>) -> Result<ProcessWorker, String> {
        let why = match self.first_frame().await {
            Ok(Header::Ready) => None,
            Ok(Header::LoadError { error }) => Some(format!("loading {} failed: {error}", spec.handler)),
            Ok(other) => Some(format!("worker spoke out of turn: {other:?}")),
            Err(e) => Some(e),
        };
        if let Some(why) = why {
            return Err(self.failed(why).await);
        }
        let function = spec.name.to_string();
        let child = Arc::new(Mutex::new(Some(self.child)));
        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        tokio::spawn(read_answers(
            self.stdout,
            function.clone(),
            pending.clone(),
            alive.clone(),
            child.clone(),
            on_exit,
        ));
        Ok(ProcessWorker {
            function,
            stdin: tokio::sync::Mutex::new(Some(self.stdin)),
            pending,
            next_id: AtomicU64::new(1),
            alive,
            child,
        })
    }
}

/// What the shim is told about its function through the environment.
pub fn function_env(spec: &FunctionSpec) -> BTreeMap<String, String> {
    let mut env = spec.env.clone();
    env.insert("SEDGE_FUNCTION".into(), spec.name.to_string());
    env.insert("SEDGE_STYLE".into(), spec.style.as_str().into());
    env.insert("SEDGE_CONCURRENCY".into(), spec.scale.concurrency.to_string());
    env.insert("SEDGE_TIMEOUT".into(), spec.limits.timeout.as_secs().max(1).to_string());
    env.insert("SEDGE_MEMORY_LIMIT".into(), spec.limits.memory.map(|m| m.to_string()).unwrap_or_default());
    env
}

/// A shim started ahead of need (`--spare`): the interpreter's start-up is
/// already paid when a function needs a worker, which then only loads the
/// user's module.
pub struct Spare {
    spawned: Spawned,
}

impl Spare {
    pub async fn start(program: &str, shim: &Path) -> Result<Self, String> {
        let mut cmd = Command::new(program);
        cmd.arg(shim).arg("--spare").env("PYTHONUNBUFFERED", "1");
        let mut spawned = Spawned::spawn(cmd, program, Arc::new(LogTarget::default()))?;
        match spawned.first_frame().await {
            Ok(Header::Spare) => Ok(Self { spawned }),
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

    /// Whether the process is still there to be assigned.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.spawned.child.try_wait(), Ok(None))
    }

    /// Makes the spare a worker of `spec`, running in `launch.dir`.
    pub async fn assign(mut self, spec: &FunctionSpec, launch: Launch<'_>) -> Result<ProcessWorker, String> {
        self.spawned.target.set(spec.name.to_string(), launch.instance, launch.shared);
        let load = Header::Load {
            dir: launch.dir.to_string_lossy().into_owned(),
            handler: spec.handler.clone(),
            env: function_env(spec),
        };
        let frame = encode_head(&load, 0).map_err(|e| e.to_string())?;
        if let Err(e) = self.spawned.stdin.write_all(&frame).await {
            return Err(self.spawned.failed(format!("spare worker is gone: {e}")).await);
        }
        self.spawned.finish(spec, launch.on_exit).await
    }
}

impl ProcessWorker {
    /// Starts a fresh process and waits until the user's module has loaded.
    pub async fn start(spec: &FunctionSpec, launch: Launch<'_>) -> Result<Self, String> {
        let mut cmd = Command::new(launch.program);
        cmd.arg(launch.shim).arg(launch.dir).arg(&spec.handler).current_dir(launch.dir).envs(function_env(spec));
        cmd.env("PYTHONUNBUFFERED", "1");
        let target = Arc::new(LogTarget::new(spec.name.to_string(), launch.instance, launch.shared));
        Spawned::spawn(cmd, launch.program, target)?.finish(spec, launch.on_exit).await
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    pub async fn call(&self, inv: &Invocation, timeout: Duration) -> Result<Reply, InvokeError> {
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
        lock(&self.pending).insert(id, tx);
        let written = {
            let mut guard = self.stdin.lock().await;
            let Some(stdin) = guard.as_mut() else {
                lock(&self.pending).remove(&id);
                return Err(self.crashed());
            };
            if inv.body.len() <= COALESCE {
                // One write, one wake-up of the worker, for the common small request.
                let mut frame = head;
                frame.extend_from_slice(&inv.body);
                stdin.write_all(&frame).await
            } else {
                match stdin.write_all(&head).await {
                    Ok(()) => stdin.write_all(&inv.body).await,
                    Err(e) => Err(e),
                }
            }
        };
        if written.is_err() {
            lock(&self.pending).remove(&id);
            self.kill();
            return Err(self.crashed());
        }
        rx.await.unwrap_or_else(|_| Err(self.crashed()))
    }

    fn crashed(&self) -> InvokeError {
        InvokeError::Crashed { function: self.function.clone(), status: "worker pipe closed".to_owned() }
    }

    /// Kills the process at once; its reader then fails any call in flight.
    pub fn kill(&self) {
        self.alive.store(false, Ordering::Release);
        if let Some(child) = lock(&self.child).as_mut() {
            let _ = child.start_kill();
        }
    }

    /// Asks the worker to finish: closing its stdin makes the shim exit, and
    /// a worker that lingers is killed.
    pub fn stop(self: Arc<Self>) {
        tokio::spawn(async move {
            self.alive.store(false, Ordering::Release);
            // Dropping the pipe is what the shim sees as end of input.
            drop(self.stdin.lock().await.take());
            tokio::time::sleep(Duration::from_secs(2)).await;
            self.kill();
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits briefly for a process that is on its way out, then kills it, and
/// says how it ended.
async fn reap(mut child: Child) -> String {
    let status = match tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
        Ok(r) => r,
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await
        }
    };
    match status {
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    }
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<(Header, Bytes)>, String> {
    let mut prefix = [0u8; PREFIX_LEN];
    match r.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let lengths = parse_prefix(prefix).map_err(|e| e.to_string())?;
    let mut header = vec![0u8; lengths.header as usize];
    r.read_exact(&mut header).await.map_err(|e| e.to_string())?;
    let mut body = vec![0u8; lengths.body as usize];
    r.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    let header = parse_header(&header).map_err(|e| e.to_string())?;
    Ok(Some((header, body.into())))
}

async fn read_answers(
    stdout: BufReader<ChildStdout>,
    function: String,
    pending: Pending,
    alive: Arc<AtomicBool>,
    child: Arc<Mutex<Option<Child>>>,
    on_exit: Box<dyn FnOnce() + Send>,
) {
    let mut stdout = stdout;
    let why = loop {
        match read_frame(&mut stdout).await {
            Ok(Some((Header::Response { id, status, headers }, body))) => {
                if let Some(tx) = lock(&pending).remove(&id) {
                    let _ = tx.send(Ok(Reply { status, headers, body }));
                }
            }
            Ok(Some((Header::Error { id, error, .. }, _))) => {
                if let Some(tx) = lock(&pending).remove(&id) {
                    let _ = tx.send(Err(InvokeError::Failed { function: function.clone(), message: error }));
                }
            }
            Ok(Some((other, _))) => break format!("protocol violation: unexpected {other:?}"),
            Ok(None) => break String::new(),
            Err(e) => break format!("protocol violation: {e}"),
        }
    };
    alive.store(false, Ordering::Release);
    let taken = lock(&child).take();
    let status = match taken {
        Some(c) => reap(c).await,
        None => "killed".to_owned(),
    };
    let status = if why.is_empty() { status } else { format!("{why}; {status}") };
    for (_, tx) in lock(&pending).drain() {
        let _ = tx.send(Err(InvokeError::Crashed { function: function.clone(), status: status.clone() }));
    }
    on_exit();
}

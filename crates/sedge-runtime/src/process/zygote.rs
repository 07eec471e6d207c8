//! A function's zygote: a Python shim that loaded the function's module
//! (and its model) and serves nothing, forking a worker whenever the pool
//! needs one. The worker skips the imports and shares the zygote's pages
//! copy-on-write.
//!
//! Each fork is asked for with a `fork` frame carrying the worker's own
//! channel socket and its stdout and stderr pipes (SCM_RIGHTS), so every
//! worker speaks on a channel of its own and logs under its own name, as a
//! fresh one does. The worker leads a process group of its own; under the
//! sandbox it is moved into a cgroup of its own, with the function's
//! limits, before it is handed any request (its host pid is the process in
//! the zygote's cgroup whose pid in the zygote's namespace the zygote
//! reported).
//!
//! One worker is kept forked ahead of demand, its *standby*: forked with
//! `warm`, it runs the module's models once on its own pages (copying what
//! their runs write, which it shared with the zygote) and is moved into its
//! own cgroup, both before any pool needs it. The next pool that needs a
//! worker takes it, and another standby is made in the background; a start
//! that finds none forks at once, as before.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use sedge_core::FunctionSpec;
use sedge_protocol::{encode_head, Decoded, Decoder, Header};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::time::Instant;

use super::{forked_alive, function_env, read_decoded, Launch, Proc, ProcessWorker, Ready, Spawned};
use crate::budget::{GiveUp, Holder, MemoryHold, DEFAULT_WORKER_MEMORY};
use crate::engine::{LogSink, StartKind};
use crate::logs::{self, LogTarget, RecentLines};
use crate::sandbox::WorkerCgroup;
use crate::RuntimeConfig;

/// Libraries' thread pools a zygote is started with at one thread, unless
/// the function's env says otherwise: threads do not survive a fork, and a
/// CPU-bound worker is given one core anyway (docs/scaling.md).
const ONE_THREAD: [&str; 4] = ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"];

/// How long a standby may take to warm up: it runs only on idle cores.
const STANDBY_READY: std::time::Duration = std::time::Duration::from_secs(600);

/// How a zygote's start ended.
pub enum Started {
    Ready(Box<Zygote>),
    /// The module left threads or sockets behind: workers start fresh.
    Unforkable(String),
}

pub struct Zygote {
    /// The zygote's process and channel; `None` once it has failed.
    spawned: tokio::sync::Mutex<Option<Spawned>>,
    broken: AtomicBool,
    /// The next worker's cgroup, made ahead: making one (a folder and its
    /// limits in every controller) is much of a sandboxed fork's time.
    next_cgroup: std::sync::Mutex<Option<WorkerCgroup>>,
    /// What its standbys are forked with.
    recipe: Recipe,
    /// A worker forked ahead of demand, warmed up and ready.
    standby: std::sync::Mutex<Option<Standby>>,
    /// A standby is being made.
    preparing: AtomicBool,
    /// Its part of the node's memory budget, and what it used once loaded.
    hold: MemoryHold,
    measured: Option<u64>,
}

/// What the zygote needs to fork a standby on its own.
pub struct Recipe {
    pub spec: Arc<FunctionSpec>,
    pub config: Arc<RuntimeConfig>,
    pub oom_kills: Arc<std::sync::atomic::AtomicU64>,
    /// Where a standby's output goes until a pool takes it.
    pub log: LogSink,
}

/// A forked worker that has said `ready`, waiting for a pool.
struct Standby {
    spawned: Spawned,
    ready: Header,
    /// Its part of the node's memory budget, until a pool takes it.
    hold: MemoryHold,
}

/// Why forking a process failed: before anything was started, or after.
enum Failure {
    Before(String),
    After(String),
}

/// Why a fork gave no worker.
pub enum ForkError<'a> {
    /// Nothing was started: the launch may be used for a fresh process.
    Before(String, Launch<'a>),
    /// The forked worker failed to become ready.
    After(String),
}

impl Zygote {
    /// Starts the zygote of `spec` (as a fresh worker would start, with
    /// SEDGE_ZYGOTE=1), and waits until its module has loaded by `ready`.
    /// `hold` is its part of the node's memory budget ([`Self::settle`]).
    pub async fn start(
        spec: &FunctionSpec,
        launch: Launch<'_>,
        recipe: Recipe,
        hold: MemoryHold,
    ) -> Result<Started, String> {
        let (log, ready) = (launch.log, launch.ready);
        let (mut cmd, cgroup) =
            launch.config.command(launch.program, &spec.limits, launch.files, launch.oom_kills.clone())?;
        let dir = &launch.files.bundle;
        cmd.arg(launch.shim).arg(dir).arg(&spec.handler).current_dir(dir).envs(function_env(spec));
        cmd.env("PYTHONUNBUFFERED", "1").env("SEDGE_ZYGOTE", "1");
        for var in ONE_THREAD {
            if !spec.env.contains_key(var) {
                cmd.env(var, "1");
            }
        }
        let target = Arc::new(LogTarget::new(log));
        let mut spawned = Spawned::spawn((cmd, cgroup), launch.program, target, launch.config, spec.limits.memory)?;
        match spawned.first_frame(ready).await {
            Ok(Header::Zygote { .. }) => {}
            Ok(Header::Unforkable { reason }) => {
                let _ = spawned.failed(String::new()).await;
                return Ok(Started::Unforkable(reason));
            }
            Ok(Header::LoadError { error }) => {
                return Err(spawned.failed(format!("loading {} failed: {error}", spec.handler)).await)
            }
            Ok(other) => return Err(spawned.failed(format!("zygote spoke out of turn: {other:?}")).await),
            Err(e) => return Err(spawned.failed(e).await),
        }
        let measured = spawned.measure().await;
        Ok(Started::Ready(Box::new(Self {
            spawned: tokio::sync::Mutex::new(Some(spawned)),
            broken: AtomicBool::new(false),
            next_cgroup: std::sync::Mutex::new(None),
            recipe,
            standby: std::sync::Mutex::new(None),
            preparing: AtomicBool::new(false),
            hold,
            measured,
        })))
    }

    /// Its hold settles at what it used once loaded, given up by
    /// `give_up`: called once it is where `give_up` finds it.
    pub fn settle(&self, give_up: GiveUp) {
        self.hold.settle(self.measured, give_up);
    }

    /// Which part of the node's memory budget it holds.
    pub fn hold_id(&self) -> u64 {
        self.hold.id()
    }

    pub fn is_alive(&self) -> bool {
        !self.broken.load(Ordering::Acquire)
    }

    fn break_down(&self, spawned: &mut Option<Spawned>) {
        self.broken.store(true, Ordering::Release);
        // Dropping it kills its process group.
        *spawned = None;
    }

    /// A worker of `spec` named `instance`, ready to serve: the standby if
    /// one is waiting, else forked now. Either way a standby is then made
    /// for the next start.
    pub async fn fork<'a>(
        self: &Arc<Self>,
        spec: &FunctionSpec,
        launch: Launch<'a>,
        instance: &str,
    ) -> Result<ProcessWorker, ForkError<'a>> {
        let began = Instant::now();
        // Pinned before anything is forked: a zygote given up for its
        // room while a fork is on its way would live on, uncounted, in
        // the worker it forked. One given up already forks nothing.
        let Some(pin) = self.hold.pin() else {
            return Err(ForkError::Before("the node's memory budget gave its zygote up".to_owned(), launch));
        };
        let (spawned, ready) = match self.take_standby() {
            Some(Standby { spawned, ready, hold }) => {
                // A worker now: the pool counts it.
                drop(hold);
                spawned.target.set(launch.log.clone());
                (spawned, Ok(ready))
            }
            None => {
                let forked = self
                    .fork_process(spec, launch.config, &launch.oom_kills, launch.log.clone(), instance, false)
                    .await;
                let mut spawned = match forked {
                    Ok(s) => s,
                    Err(Failure::Before(e)) => return Err(ForkError::Before(e, launch)),
                    Err(Failure::After(e)) => return Err(ForkError::After(e)),
                };
                let ready = spawned.first_frame(launch.ready).await;
                (spawned, ready)
            }
        };
        let mut worker = spawned
            .finish_with(ready, spec, launch.exited, launch.models, (began, StartKind::Zygote))
            .await
            .map_err(ForkError::After)?;
        self.prepare_standby();
        worker._zygote = Some((self.clone(), pin));
        Ok(worker)
    }

    /// The standby, if one is waiting and still alive.
    fn take_standby(&self) -> Option<Standby> {
        if !self.is_alive() {
            return None;
        }
        let standby = self.standby.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        match &standby.spawned.child {
            Proc::Forked(pid) if forked_alive(*pid) => Some(standby),
            // Gone meanwhile (dropping it ends what is left): fork now.
            _ => None,
        }
    }

    /// Forks a standby in the background, unless one is waiting or on its
    /// way, or the node's memory budget has no room for it (a standby
    /// never displaces anything: it is only work done ahead).
    pub fn prepare_standby(self: &Arc<Self>) {
        if !self.is_alive() || self.preparing.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.standby.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            self.preparing.store(false, Ordering::Release);
            return;
        }
        let (spec, log) = (self.recipe.spec.clone(), self.recipe.log.clone());
        // Held at the function's limit until it has warmed up.
        let limit = spec.limits.memory.unwrap_or(DEFAULT_WORKER_MEMORY);
        let Some(hold) = self.recipe.config.budget.hold(Holder::Standby, Some(spec.name.as_str()), limit) else {
            self.preparing.store(false, Ordering::Release);
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            let name = format!("{}-standby", spec.name);
            let forked =
                me.fork_process(&spec, &me.recipe.config, &me.recipe.oom_kills, log.clone(), &name, true).await;
            // Its warm-up runs only on cores nothing else wants, so on a
            // busy node it may take long; the zygote is not held meanwhile
            // (the standby ends with it).
            let zygote = Arc::downgrade(&me);
            drop(me);
            let made = match forked {
                Ok(mut spawned) => {
                    let ready = Ready { by: Instant::now() + STANDBY_READY, within: STANDBY_READY };
                    match spawned.first_frame(ready).await {
                        Ok(header @ Header::Ready { .. }) => Ok(Standby { spawned, ready: header, hold }),
                        Ok(other) => Err(spawned.failed(format!("it spoke out of turn: {other:?}")).await),
                        Err(e) => Err(spawned.failed(e).await),
                    }
                }
                Err(Failure::Before(e) | Failure::After(e)) => Err(e),
            };
            let Some(me) = zygote.upgrade() else { return };
            let measure = match made {
                Ok(standby) if me.is_alive() => {
                    let measure = (standby.spawned.measure(), standby.hold.id());
                    *me.standby.lock().unwrap_or_else(|p| p.into_inner()) = Some(standby);
                    Some(measure)
                }
                Ok(_) => None,
                Err(e) => {
                    log.line(format!("forking a worker ahead failed: {e}"));
                    None
                }
            };
            me.preparing.store(false, Ordering::Release);
            drop(me);
            // Measured once it can be taken, so that no start waits for the
            // walk of `/proc`; settled if it is still waiting (where its
            // give-up finds it).
            let Some((measure, hold)) = measure else { return };
            let bytes = measure.await;
            let Some(me) = zygote.upgrade() else { return };
            let waiting = me.standby.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(standby) = waiting.as_ref().filter(|s| s.hold.id() == hold) {
                standby.hold.settle(bytes, give_up_standby(zygote.clone(), hold));
            }
        });
    }

    /// Forks a process of `spec`, moved into a cgroup of its own under the
    /// sandbox, its output going to `log`; its first frame is not read yet.
    async fn fork_process(
        self: &Arc<Self>,
        spec: &FunctionSpec,
        config: &RuntimeConfig,
        oom_kills: &Arc<std::sync::atomic::AtomicU64>,
        log: LogSink,
        instance: &str,
        warm: bool,
    ) -> Result<Spawned, Failure> {
        let mut guard = self.spawned.lock().await;
        let Some(zygote) = guard.as_mut() else {
            return Err(Failure::Before("the zygote is gone".to_owned()));
        };
        let made = (|| -> io::Result<_> {
            let (ours, theirs) = super::channel_pair()?;
            let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            Ok((ours, theirs, (out_r, out_w), (err_r, err_w)))
        })();
        let (ours, theirs, (out_r, out_w), (err_r, err_w)) = match made {
            Ok(m) => m,
            Err(e) => return Err(Failure::Before(format!("cannot make a forked worker's channel: {e}"))),
        };
        let head = match encode_head(&Header::Fork { instance: instance.to_owned(), warm }, 0) {
            Ok(h) => h,
            Err(e) => return Err(Failure::Before(e.to_string())),
        };
        let sent =
            send_with_fds(&mut zygote.writer, &head, &[theirs.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()]).await;
        // The worker's ends are its own now (or nobody's).
        drop((theirs, out_w, err_w));
        if let Err(e) = sent {
            self.break_down(&mut guard);
            return Err(Failure::Before(format!("the zygote is gone: {e}")));
        }
        let within = crate::engine::start_timeout(spec);
        let reply = tokio::time::timeout(within, read_decoded(&mut zygote.reader, &mut zygote.decoder)).await;
        let pid = match reply {
            Ok(Ok(Some(Decoded::Frame(frame)))) => match frame.header {
                Header::Forked { pid } => pid,
                other => {
                    self.break_down(&mut guard);
                    return Err(Failure::Before(format!("the zygote spoke out of turn: {other:?}")));
                }
            },
            Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
                self.break_down(&mut guard);
                return Err(Failure::Before("the zygote did not fork".to_owned()));
            }
        };
        let host_pid = match zygote.group.cgroup() {
            Some(own) => match procs_of(own).into_iter().find(|p| pid_in_namespace(*p) == Some(pid)) {
                Some(host) => host,
                None => {
                    return Err(Failure::After("cannot find the forked worker among its zygote's processes".to_owned()))
                }
            },
            None => pid,
        };
        drop(guard);
        let ahead = self.next_cgroup.lock().unwrap_or_else(|p| p.into_inner()).take();
        let cgroup = match own_cgroup(spec, config, oom_kills, host_pid, ahead).await {
            Ok(c) => c,
            Err(e) => {
                kill_group(host_pid);
                return Err(Failure::After(e));
            }
        };
        let group = config.groups.adopt(i32::try_from(host_pid).unwrap_or(0), cgroup);
        let stream = match ours.set_nonblocking(true).and_then(|()| UnixStream::from_std(ours)) {
            Ok(s) => s,
            Err(e) => return Err(Failure::After(format!("cannot use the forked worker's channel: {e}"))),
        };
        let (reader, writer) = stream.into_split();
        let target = Arc::new(LogTarget::new(log));
        let recent = Arc::new(RecentLines::default());
        for fd in [out_r, err_r] {
            match output_pipe(fd) {
                Ok(pipe) => {
                    logs::pump(pipe, target.clone(), recent.clone());
                }
                Err(e) => return Err(Failure::After(format!("cannot read the forked worker's output: {e}"))),
            }
        }
        if let Some(sandbox) = config.sandbox.clone() {
            // Made once this one is in its own, not beside it (both would
            // take the kernel's cgroup locks).
            self.make_next_cgroup((sandbox, spec.limits.clone(), oom_kills.clone()));
        }
        Ok(Spawned {
            child: Proc::Forked(host_pid),
            group: Arc::new(group),
            reader,
            writer,
            decoder: Decoder::default(),
            recent,
            target,
            memory: spec.limits.memory,
        })
    }
}

/// Stops the standby of `zygote` holding `hold` when the budget needs its room.
fn give_up_standby(zygote: std::sync::Weak<Zygote>, hold: u64) -> GiveUp {
    Box::new(move || {
        let Some(zygote) = zygote.upgrade() else { return };
        let mut standby = zygote.standby.lock().unwrap_or_else(|p| p.into_inner());
        if standby.as_ref().is_some_and(|s| s.hold.id() == hold) {
            let gone = standby.take();
            drop(standby);
            // Dropping it ends its process and gives its hold back.
            drop(gone);
        }
    })
}

impl Zygote {
    /// Makes the next worker's cgroup in the background.
    fn make_next_cgroup(
        self: &Arc<Self>,
        (sandbox, limits, oom_kills): (
            Arc<crate::sandbox::Sandbox>,
            sedge_core::Limits,
            Arc<std::sync::atomic::AtomicU64>,
        ),
    ) {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Ok(Some(cgroup)) = sandbox.cgroup(&limits, oom_kills) {
                // One made meanwhile by a fork that found none is dropped (removed).
                *me.next_cgroup.lock().unwrap_or_else(|p| p.into_inner()) = Some(cgroup);
            }
        });
    }
}

/// Under the sandbox, a cgroup of the worker's own with the function's
/// limits (`ahead`, when one was made in advance), the worker moved into it.
/// On a thread of its own: a move waits for the kernel's cgroup locks
/// (~10 ms here), which would stall every request on this thread.
async fn own_cgroup(
    spec: &FunctionSpec,
    config: &RuntimeConfig,
    oom_kills: &Arc<std::sync::atomic::AtomicU64>,
    pid: u32,
    ahead: Option<WorkerCgroup>,
) -> Result<Option<WorkerCgroup>, String> {
    let Some(sandbox) = config.sandbox.clone() else { return Ok(None) };
    let (limits, oom_kills) = (spec.limits.clone(), oom_kills.clone());
    let moved = tokio::task::spawn_blocking(move || {
        let cgroup = match ahead {
            Some(c) => c,
            None => match sandbox.cgroup(&limits, oom_kills)? {
                Some(c) => c,
                None => return Ok(None),
            },
        };
        for procs in cgroup.procs_files() {
            std::fs::write(&procs, pid.to_string())
                .map_err(|e| format!("moving the forked worker into {}: {e}", procs.display()))?;
        }
        Ok(Some(cgroup))
    });
    moved.await.unwrap_or_else(|e| Err(format!("moving the forked worker into its cgroup: {e}")))
}

fn kill_group(pid: u32) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGKILL);
    }
}

/// The pid the process `host` has in its own (innermost) pid namespace.
fn pid_in_namespace(host: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{host}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// The processes in a cgroup (its first controller's view).
fn procs_of(cgroup: &WorkerCgroup) -> Vec<u32> {
    let Some(file) = cgroup.procs_files().into_iter().next() else { return Vec::new() };
    std::fs::read_to_string(file).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn output_pipe(fd: OwnedFd) -> io::Result<tokio::net::unix::pipe::Receiver> {
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
}

/// Writes `bytes` with `fds` attached to their first byte.
async fn send_with_fds(writer: &mut OwnedWriteHalf, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let sent = loop {
        let stream: &UnixStream = writer.as_ref();
        stream.writable().await?;
        let tried = stream.try_io(Interest::WRITABLE, || {
            let iov = [IoSlice::new(bytes)];
            let cmsg = [ControlMessage::ScmRights(fds)];
            sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).map_err(io::Error::from)
        });
        match tried {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    // The descriptors went with the first byte; the rest is plain.
    writer.write_all(&bytes[sent..]).await
}

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
//! limits, before it is handed any request (its pid there is found in the
//! zygote's cgroup, the one process in it that was not there before).
//! Forks are one at a time per zygote.

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

use super::{function_env, read_decoded, Launch, Proc, ProcessWorker, Spawned};
use crate::engine::StartKind;
use crate::logs::{self, LogTarget, RecentLines};
use crate::sandbox::WorkerCgroup;

/// Libraries' thread pools a zygote is started with at one thread, unless
/// the function's env says otherwise: threads do not survive a fork, and a
/// CPU-bound worker is given one core anyway (docs/scaling.md).
const ONE_THREAD: [&str; 4] = ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"];

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
    /// Host pids in the zygote's own cgroup once it was up (its launcher
    /// and itself), when sandboxed.
    known: Vec<u32>,
    /// The next worker's cgroup, made ahead: making one (a folder and its
    /// limits in every controller) is most of a sandboxed fork's time.
    next_cgroup: std::sync::Mutex<Option<WorkerCgroup>>,
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
    pub async fn start(spec: &FunctionSpec, launch: Launch<'_>) -> Result<Started, String> {
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
        match spawned.first_frame(Some(ready)).await {
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
        let known = spawned.group.cgroup().map(procs_of).unwrap_or_default();
        Ok(Started::Ready(Box::new(Self {
            spawned: tokio::sync::Mutex::new(Some(spawned)),
            broken: AtomicBool::new(false),
            known,
            next_cgroup: std::sync::Mutex::new(None),
        })))
    }

    pub fn is_alive(&self) -> bool {
        !self.broken.load(Ordering::Acquire)
    }

    fn break_down(&self, spawned: &mut Option<Spawned>) {
        self.broken.store(true, Ordering::Release);
        // Dropping it kills its process group.
        *spawned = None;
    }

    /// Forks a worker of `spec` named `instance`, ready to serve.
    pub async fn fork<'a>(
        self: &Arc<Self>,
        spec: &FunctionSpec,
        launch: Launch<'a>,
        instance: &str,
    ) -> Result<ProcessWorker, ForkError<'a>> {
        let began = Instant::now();
        let mut guard = self.spawned.lock().await;
        let Some(zygote) = guard.as_mut() else {
            return Err(ForkError::Before("the zygote is gone".to_owned(), launch));
        };
        let made = (|| -> io::Result<_> {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
            let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            Ok((ours, theirs, (out_r, out_w), (err_r, err_w)))
        })();
        let (ours, theirs, (out_r, out_w), (err_r, err_w)) = match made {
            Ok(m) => m,
            Err(e) => return Err(ForkError::Before(format!("cannot make a forked worker's channel: {e}"), launch)),
        };
        let head = match encode_head(&Header::Fork { instance: instance.to_owned() }, 0) {
            Ok(h) => h,
            Err(e) => return Err(ForkError::Before(e.to_string(), launch)),
        };
        let sent =
            send_with_fds(&mut zygote.writer, &head, &[theirs.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()]).await;
        // The worker's ends are its own now (or nobody's).
        drop((theirs, out_w, err_w));
        if let Err(e) = sent {
            self.break_down(&mut guard);
            return Err(ForkError::Before(format!("the zygote is gone: {e}"), launch));
        }
        let reply =
            tokio::time::timeout_at(launch.ready.by, read_decoded(&mut zygote.reader, &mut zygote.decoder)).await;
        let pid = match reply {
            Ok(Ok(Some(Decoded::Frame(frame)))) => match frame.header {
                Header::Forked { pid } => pid,
                other => {
                    self.break_down(&mut guard);
                    return Err(ForkError::Before(format!("the zygote spoke out of turn: {other:?}"), launch));
                }
            },
            Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
                self.break_down(&mut guard);
                return Err(ForkError::Before("the zygote did not fork".to_owned(), launch));
            }
        };
        let host_pid = match zygote.group.cgroup() {
            Some(own) => {
                let new: Vec<u32> = procs_of(own).into_iter().filter(|p| !self.known.contains(p)).collect();
                match new.as_slice() {
                    [one] => *one,
                    _ => {
                        // Cannot tell which process is the worker: end them.
                        for p in new {
                            kill_group(p);
                        }
                        return Err(ForkError::After(
                            "cannot tell the forked worker among its zygote's processes".to_owned(),
                        ));
                    }
                }
            }
            None => pid,
        };
        drop(guard);
        let ahead = self.next_cgroup.lock().unwrap_or_else(|p| p.into_inner()).take();
        let cgroup = match own_cgroup(spec, &launch, host_pid, ahead) {
            Ok(c) => c,
            Err(e) => {
                kill_group(host_pid);
                return Err(ForkError::After(e));
            }
        };
        let group = launch.config.groups.adopt(i32::try_from(host_pid).unwrap_or(0), cgroup);
        let stream = match ours.set_nonblocking(true).and_then(|()| UnixStream::from_std(ours)) {
            Ok(s) => s,
            Err(e) => return Err(ForkError::After(format!("cannot use the forked worker's channel: {e}"))),
        };
        let (reader, writer) = stream.into_split();
        let target = Arc::new(LogTarget::new(launch.log.clone()));
        let recent = Arc::new(RecentLines::default());
        for fd in [out_r, err_r] {
            match output_pipe(fd) {
                Ok(pipe) => {
                    logs::pump(pipe, target.clone(), recent.clone());
                }
                Err(e) => return Err(ForkError::After(format!("cannot read the forked worker's output: {e}"))),
            }
        }
        let spawned = Spawned {
            child: Proc::Forked(host_pid),
            group: Arc::new(group),
            reader,
            writer,
            decoder: Decoder::default(),
            recent,
            target,
            memory: spec.limits.memory,
        };
        // Made once this worker is up, not beside its start (both would
        // take the kernel's cgroup locks).
        let next = launch.config.sandbox.clone().map(|s| (s, spec.limits.clone(), launch.oom_kills.clone()));
        let mut worker = spawned
            .finish(spec, launch.ready, launch.exited, launch.models, (began, StartKind::Zygote))
            .await
            .map_err(ForkError::After)?;
        if let Some(next) = next {
            self.make_next_cgroup(next);
        }
        worker._zygote = Some(self.clone());
        Ok(worker)
    }
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
fn own_cgroup(
    spec: &FunctionSpec,
    launch: &Launch<'_>,
    pid: u32,
    ahead: Option<WorkerCgroup>,
) -> Result<Option<WorkerCgroup>, String> {
    let Some(sandbox) = &launch.config.sandbox else { return Ok(None) };
    let cgroup = match ahead {
        Some(c) => c,
        None => match sandbox.cgroup(&spec.limits, launch.oom_kills.clone())? {
            Some(c) => c,
            None => return Ok(None),
        },
    };
    for procs in cgroup.procs_files() {
        std::fs::write(&procs, pid.to_string())
            .map_err(|e| format!("moving the forked worker into {}: {e}", procs.display()))?;
    }
    Ok(Some(cgroup))
}

fn kill_group(pid: u32) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGKILL);
    }
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

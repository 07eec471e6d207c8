//! The launcher every sandboxed worker starts through (`sedge
//! __sandbox-exec PLAN PROGRAM ARGS...`, the node's own binary run again):
//! it applies a [`LaunchPlan`] with plain system calls, then becomes or
//! starts the worker. Two stages, because a new pid namespace takes effect
//! only for the caller's children:
//!
//! 1. outer (root, the node's namespaces): joins the worker's cgroups, so
//!    every later process is counted; unshares mount and pid namespaces;
//!    makes the file system view (empty file systems over the data
//!    directory, `/tmp` and anything the worker must not see, the bundle
//!    and the runtime's files bound back read-only); starts stage 2 and
//!    passes its exit on.
//! 2. inner (pid 1 of the new namespace): mounts a `/proc` of that
//!    namespace, sets rlimits, drops to the sandbox user with no
//!    supplementary groups and no way to regain privileges, and execs the
//!    worker's program.
//!
//! Anything that fails ends the launcher with [`LAUNCH_FAILED`] and a line
//! on stderr, which the node quotes as the worker's start failure.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{raise, Signal};
use nix::sys::stat::Mode;
use nix::unistd::{execvp, setgid, setgroups, setuid, Gid, Uid};
use serde::{Deserialize, Serialize};

/// The hidden subcommand of the node's binary that runs the launcher.
pub const SUBCOMMAND: &str = "__sandbox-exec";
const INNER: &str = "--inner";
/// Exit status of a launcher that could not set the sandbox up.
pub const LAUNCH_FAILED: i32 = 125;

/// What the launcher applies before the worker runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LaunchPlan {
    pub cgroup_procs: Vec<PathBuf>,
    pub rlimit_as: Option<u64>,
    pub rlimit_nproc: Option<u64>,
    /// (uid, gid) to run as; `None` keeps the node's.
    pub user: Option<(u32, u32)>,
    /// New mount and pid namespaces with this view; `None`: the node's own.
    pub view: Option<View>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct View {
    /// Replaced by empty file systems, in order (outer first).
    pub covers: Vec<Cover>,
    /// Bound back read-only at the same place, after the covers.
    pub read_only: Vec<PathBuf>,
    /// The worker's working directory, entered once the view is made.
    pub cwd: PathBuf,
    /// The function's secrets folder, bound read-only at [`SECRETS_AT`].
    #[serde(default)]
    pub secrets: Option<PathBuf>,
}

/// Where a sandboxed worker finds its secrets: OpenFaaS's path, so code
/// written for it reads them unchanged.
pub const SECRETS_AT: &str = "/var/openfaas/secrets";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cover {
    pub path: PathBuf,
    /// The empty directory's mode: 0o755 to pass through, 0o1777 for a
    /// temporary directory the worker may write.
    pub mode: u32,
    pub size: u64,
}

/// Runs the launcher with the arguments after the subcommand; returns only
/// to exit with the status it gives.
pub fn main(args: Vec<OsString>) -> i32 {
    let inner = args.first().is_some_and(|a| a == INNER);
    let args = if inner { &args[1..] } else { &args[..] };
    let result = match args.split_first() {
        Some((plan, command)) if !command.is_empty() => {
            serde_json::from_slice::<LaunchPlan>(plan.as_bytes()).map_err(|e| format!("bad plan: {e}")).and_then(
                |plan| if inner { run_inner(&plan, command) } else { run_outer(&plan, args[0].clone(), command) },
            )
        }
        _ => Err(format!("usage: sedge {SUBCOMMAND} PLAN PROGRAM [ARGS...]")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sandbox: {e}");
            LAUNCH_FAILED
        }
    }
}

/// Ends this process when its parent does: a node killed outright (no
/// chance to stop its workers) takes its workers with it.
fn die_with_parent() -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
    // The parent may have gone before the setting took.
    if nix::unistd::getppid().as_raw() == 1 {
        return Err("the node is gone".to_owned());
    }
    Ok(())
}

fn run_outer(plan: &LaunchPlan, plan_arg: OsString, command: &[OsString]) -> Result<i32, String> {
    die_with_parent()?;
    let me = std::process::id().to_string();
    for procs in &plan.cgroup_procs {
        std::fs::write(procs, &me).map_err(|e| format!("joining {}: {e}", procs.display()))?;
    }
    let Some(view) = &plan.view else {
        // No namespaces: nothing needs a second stage.
        return run_inner(plan, command);
    };
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID).map_err(|e| format!("unshare: {e}"))?;
    make_view(view)?;
    // /proc/self/exe reaches this binary even where its path is now covered.
    let mut child = std::process::Command::new("/proc/self/exe")
        .arg(SUBCOMMAND)
        .arg(INNER)
        .arg(plan_arg)
        .args(command)
        .spawn()
        .map_err(|e| format!("starting the worker's namespace: {e}"))?;
    let status = child.wait().map_err(|e| format!("waiting for the worker: {e}"))?;
    if let Some(code) = status.code() {
        return Ok(code);
    }
    // Die the same way, so the node sees the worker's real end (a kill
    // for memory is a SIGKILL).
    let sig = status.signal().unwrap_or(Signal::SIGKILL as i32);
    if let Ok(signal) = Signal::try_from(sig) {
        let _ = raise(signal);
    }
    Ok(128 + sig)
}

fn make_view(view: &View) -> Result<(), String> {
    let none: Option<&str> = None;
    // Nothing mounted here may leak back to the node's namespace.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|e| format!("making / private: {e}"))?;
    // Held open before anything is covered: covers may hide their paths.
    let sources: Vec<(OwnedFd, &Path)> = view
        .read_only
        .iter()
        .map(|p| {
            let fd = open(p.as_path(), OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(|e| format!("opening {}: {e}", p.display()))?;
            Ok((fd, p.as_path()))
        })
        .collect::<Result<_, String>>()?;
    let secrets = match &view.secrets {
        Some(p) => Some(
            open(p.as_path(), OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_DIRECTORY, Mode::empty())
                .map_err(|e| format!("opening {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    for cover in &view.covers {
        std::fs::create_dir_all(&cover.path).map_err(|e| format!("making {}: {e}", cover.path.display()))?;
        let options = format!("mode={:o},size={}", cover.mode, cover.size.max(4096));
        mount(Some("tmpfs"), cover.path.as_path(), Some("tmpfs"), hardened, Some(options.as_str()))
            .map_err(|e| format!("covering {}: {e}", cover.path.display()))?;
    }
    for (fd, path) in &sources {
        if std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).is_ok_and(|m| m.is_dir()) {
            std::fs::create_dir_all(path).map_err(|e| format!("making {}: {e}", path.display()))?;
        } else if !path.exists() {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("making {}: {e}", parent.display()))?;
            }
            std::fs::write(path, b"").map_err(|e| format!("making {}: {e}", path.display()))?;
        }
        let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
        mount(Some(source.as_str()), *path, none, MsFlags::MS_BIND | MsFlags::MS_REC, none)
            .map_err(|e| format!("binding {}: {e}", path.display()))?;
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | hardened;
        mount(none, *path, none, ro, none).map_err(|e| format!("making {} read-only: {e}", path.display()))?;
    }
    if let Some(fd) = &secrets {
        // An empty tmpfs at the secrets' parent, so the mount point is made
        // there and not on the host's disk.
        let at = Path::new(SECRETS_AT);
        let parent = at.parent().unwrap_or(Path::new("/var"));
        std::fs::create_dir_all(parent).map_err(|e| format!("making {}: {e}", parent.display()))?;
        mount(Some("tmpfs"), parent, Some("tmpfs"), hardened, Some("mode=755,size=65536"))
            .map_err(|e| format!("covering {}: {e}", parent.display()))?;
        std::fs::create_dir_all(at).map_err(|e| format!("making {SECRETS_AT}: {e}"))?;
        let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
        mount(Some(source.as_str()), at, none, MsFlags::MS_BIND, none)
            .map_err(|e| format!("binding {SECRETS_AT}: {e}"))?;
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | hardened | MsFlags::MS_NOEXEC;
        mount(none, at, none, ro, none).map_err(|e| format!("making {SECRETS_AT} read-only: {e}"))?;
    }
    // The old working directory may be a covered one: enter it anew.
    std::env::set_current_dir(&view.cwd).map_err(|e| format!("entering {}: {e}", view.cwd.display()))
}

fn run_inner(plan: &LaunchPlan, command: &[OsString]) -> Result<i32, String> {
    if plan.view.is_some() {
        let none: Option<&str> = None;
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        // This namespace's own /proc: the node's processes are not in it.
        mount(Some("proc"), "/proc", Some("proc"), flags, none).map_err(|e| format!("mounting /proc: {e}"))?;
    }
    if let Some(bytes) = plan.rlimit_as {
        setrlimit(Resource::RLIMIT_AS, bytes, bytes).map_err(|e| format!("RLIMIT_AS: {e}"))?;
    }
    if let Some(n) = plan.rlimit_nproc {
        setrlimit(Resource::RLIMIT_NPROC, n, n).map_err(|e| format!("RLIMIT_NPROC: {e}"))?;
    }
    if let Some((uid, gid)) = plan.user {
        setgroups(&[]).map_err(|e| format!("dropping groups: {e}"))?;
        setgid(Gid::from_raw(gid)).map_err(|e| format!("setgid {gid}: {e}"))?;
        setuid(Uid::from_raw(uid)).map_err(|e| format!("setuid {uid}: {e}"))?;
    }
    // setuid programs (su, sudo) cannot give the worker back what it lost.
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    // Set after the user change, which clears it. As pid 1 of its
    // namespace, the worker takes all it started along when it goes.
    if plan.view.is_some() {
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
    }
    let argv: Vec<CString> = command
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| "an argument holds a NUL byte".to_owned()))
        .collect::<Result<_, _>>()?;
    let err = match argv.first() {
        Some(program) => execvp(program, &argv).err(),
        None => None,
    };
    Err(format!("cannot run {:?}: {}", command[0], err.map_or_else(|| "no program".to_owned(), |e| e.to_string())))
}

/// The launcher's command line for `program`, under the node's binary.
pub fn command(launcher: &Path, plan: &LaunchPlan, program: &str) -> Result<tokio::process::Command, String> {
    let json = serde_json::to_string(plan).map_err(|e| format!("encoding the sandbox plan: {e}"))?;
    let mut cmd = tokio::process::Command::new(launcher);
    cmd.arg(SUBCOMMAND).arg(json).arg(program);
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_survives_the_command_line() {
        let plan = LaunchPlan {
            cgroup_procs: vec!["/sys/fs/cgroup/pids/sedge-1/w1/cgroup.procs".into()],
            rlimit_as: None,
            rlimit_nproc: Some(64),
            user: Some((999, 995)),
            view: Some(View {
                covers: vec![Cover { path: "/tmp".into(), mode: 0o1777, size: 1 << 20 }],
                read_only: vec!["/data/bundles/b".into()],
                cwd: "/data/bundles/b".into(),
                secrets: Some("/data/secrets/mounts/f".into()),
            }),
        };
        let cmd = command(Path::new("/bin/sedge"), &plan, "python3").expect("command");
        let args: Vec<OsString> = cmd.as_std().get_args().map(OsString::from).collect();
        assert_eq!(args[0], SUBCOMMAND);
        assert_eq!(args[2], "python3");
        let back: LaunchPlan = serde_json::from_slice(args[1].as_bytes()).expect("plan");
        assert_eq!(back.user, Some((999, 995)));
        assert_eq!(back.view.map(|v| v.covers[0].mode), Some(0o1777));
    }

    #[test]
    fn a_bad_plan_or_no_program_fails_without_running_anything() {
        assert_eq!(main(vec!["{not json".into(), "true".into()]), LAUNCH_FAILED);
        assert_eq!(main(vec!["{}".into()]), LAUNCH_FAILED);
        assert_eq!(main(vec![INNER.into()]), LAUNCH_FAILED);
    }
}

//! Workers run sandboxed: as an unprivileged user, in mount and pid
//! namespaces of their own, with their bundle read-only, a private `/tmp`,
//! no view of the data directory, and cgroup (or rlimit) limits from the
//! manifest's `[limits]`.
//!
//! # Layout
//! - `policy`: what to apply, from the limits and the host's support (pure).
//! - `cgroup`: finding, making, reading and removing cgroups.
//! - `launch`: the launcher the worker starts through, which applies it.
//! - this file: what the node found at start ([`Sandbox`]) and the
//!   per-worker command.

mod cgroup;
pub mod launch;
mod policy;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use sedge_core::Limits;
use serde_json::{json, Value};
use tokio::process::Command;

use cgroup::CgroupHost;
pub use cgroup::WorkerCgroup;
use launch::{Cover, LaunchPlan, View};

use crate::WorkerFiles;
use policy::{plan_limits, CgroupVersion, DirMode, Enforcement};

/// How long the start-up check of an interpreter may take.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The dedicated user workers run as when the node is root.
pub const USER_NAME: &str = "sedge-fn";
/// nobody/nogroup, when the dedicated user cannot be made.
const FALLBACK_ID: u32 = 65534;
/// Size of a worker's `/tmp` when the manifest sets no memory limit (with
/// one, the limit bounds it: tmpfs pages count as the worker's memory).
const DEFAULT_TMP_SIZE: u64 = 256 * 1024 * 1024;
/// Where workers may write, each its own empty copy.
const PRIVATE_TMP: [&str; 3] = ["/tmp", "/var/tmp", "/dev/shm"];
/// The node's variables a worker still gets (the rest may hold the node's
/// own configuration or credentials).
const KEPT_ENV: [&str; 6] = ["PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM"];

#[derive(Debug, Clone)]
struct SandboxUser {
    name: String,
    uid: u32,
    gid: u32,
}

/// What the node found at start-up and applies to every worker.
#[derive(Debug)]
pub struct Sandbox {
    launcher: PathBuf,
    user: Option<SandboxUser>,
    cgroups: Option<CgroupHost>,
    data_dir: PathBuf,
    /// Directories replaced in workers' views (besides the private tmp ones).
    covers: Vec<PathBuf>,
    /// Bound back read-only: the shims, interpreters under covered places.
    read_only: Vec<PathBuf>,
    /// Problems found at start that will make workers fail.
    warnings: Vec<String>,
}

/// What the sandbox needs to know about the node.
pub struct SandboxSetup<'a> {
    pub data_dir: &'a Path,
    pub shim_dir: &'a Path,
    /// Interpreters (python, node) as the node will start them.
    pub interpreters: &'a [&'a str],
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl Sandbox {
    /// Looks at the host (user, cgroups, paths) and decides what workers get.
    pub fn new(setup: &SandboxSetup<'_>) -> Result<Self, String> {
        let launcher = std::env::current_exe().map_err(|e| format!("cannot find the node's own binary: {e}"))?;
        let user = is_root().then(sandbox_user);
        let cgroups = match CgroupHost::detect() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("no cgroup can hold workers ({e}); limits fall back to rlimits");
                None
            }
        };
        let data_dir = setup.data_dir.canonicalize().unwrap_or_else(|_| setup.data_dir.to_owned());
        let mut sandbox = Self {
            launcher,
            user,
            cgroups,
            data_dir: data_dir.clone(),
            covers: vec![data_dir.clone()],
            read_only: vec![setup.shim_dir.canonicalize().unwrap_or_else(|_| setup.shim_dir.to_owned())],
            warnings: Vec::new(),
        };
        if let Some(user) = sandbox.user.clone() {
            sandbox.reach(&data_dir, &user, false);
            for program in setup.interpreters {
                sandbox.reach_interpreter(program, &user);
            }
        }
        Ok(sandbox)
    }

    /// Makes `path` reachable by the sandbox user: a closed directory above
    /// it is replaced in workers' views by a passable one, and (for `bind`)
    /// what holds `path` bound back read-only: the whole folder just inside
    /// the closed directory, since version managers (pyenv, nvm, asdf) keep
    /// their shims, tools and every installed version together there.
    fn reach(&mut self, path: &Path, user: &SandboxUser, bind: bool) {
        let blocked = policy::first_blocked(path, (user.uid, user.gid), dir_mode);
        let mut exposed = path.to_owned();
        if let Some(dir) = &blocked {
            if let Some(first) = path.strip_prefix(dir).ok().and_then(|rest| rest.components().next()) {
                exposed = dir.join(first);
            }
            tracing::info!(
                "{} is under {}, which {} cannot enter: workers see {} read-only in an otherwise empty {}",
                path.display(),
                dir.display(),
                user.name,
                exposed.display(),
                dir.display()
            );
        }
        let covered = blocked.is_some() || self.is_covered(path);
        if let Some(dir) = blocked {
            self.covers.push(dir);
        }
        if bind && covered && !self.read_only.iter().any(|p| exposed.starts_with(p)) {
            self.read_only.push(exposed);
        }
    }

    fn is_covered(&self, path: &Path) -> bool {
        self.covers.iter().any(|c| path.starts_with(c)) || PRIVATE_TMP.iter().any(|t| path.starts_with(t))
    }

    /// An interpreter and its installation (the folder above its `bin`),
    /// both as named and as its links resolve.
    fn reach_interpreter(&mut self, program: &str, user: &SandboxUser) {
        let named = if program.contains('/') { Some(PathBuf::from(program)) } else { which(program) };
        let Some(named) = named else { return };
        let real = named.canonicalize().unwrap_or_else(|_| named.clone());
        for path in [&named, &real] {
            let bin = path.parent().unwrap_or(path);
            let mut install = bin.parent().unwrap_or(bin);
            // Never bind back over a place workers must get empty (their
            // private /tmp, the data directory): take the folder itself.
            let hides = |p: &Path| p.starts_with(install);
            if PRIVATE_TMP.iter().map(Path::new).any(hides) || self.covers.iter().any(|c| hides(c)) {
                install = bin;
            }
            self.reach(install, user, true);
        }
        match std::fs::metadata(&real) {
            Ok(m) if m.permissions().mode() & 0o001 != 0 || m.uid() == user.uid => {}
            Ok(_) => self.warnings.push(format!(
                "{} is not executable by {} (uid {}): its functions will fail to start",
                real.display(),
                user.name,
                user.uid
            )),
            Err(e) => self.warnings.push(format!("{}: {e}", real.display())),
        }
    }

    /// Starts `program` once with `args` the way workers start (same user,
    /// namespaces and view), so that an interpreter the sandbox user cannot
    /// run is reported when the node starts rather than at the first call.
    pub async fn check(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let limits = Limits {
            timeout: CHECK_TIMEOUT,
            max_body: 0,
            max_answer: 0,
            memory: None,
            queue: 0,
            pids: sedge_core::manifest::DEFAULT_PIDS,
            cpu_millis: None,
        };
        let dir = self.read_only.first().cloned().unwrap_or_else(|| PathBuf::from("/"));
        let files = WorkerFiles { bundle: dir.clone(), secrets: None, deps: None };
        let mut cmd = self.command_in(program, &limits, &files, None)?;
        cmd.args(args).current_dir(&dir).stdin(std::process::Stdio::null()).kill_on_drop(true);
        let out = match tokio::time::timeout(CHECK_TIMEOUT, cmd.output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(format!("cannot start the launcher: {e}")),
            Err(_) => return Err(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
        };
        if out.status.success() {
            return Ok(());
        }
        let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        Err(format!("{}{}", out.status, if said.is_empty() { String::new() } else { format!(": {said}") }))
    }

    /// One line for the node's log saying what isolation is in force.
    pub fn summary(&self) -> String {
        let user = match &self.user {
            Some(u) => format!("as {} (uid {}, gid {}) in new mount and pid namespaces", u.name, u.uid, u.gid),
            None => "as the node's own user, in the node's namespaces (not root: no user or namespace \
                     isolation)"
                .to_owned(),
        };
        let limits = match &self.cgroups {
            Some(c) => format!(
                "limits by cgroup {} (memory{}{})",
                version_name(Some(c.caps.version)),
                if c.caps.pids { ", pids" } else { "" },
                if c.caps.cpu { ", cpu" } else { "" }
            ),
            None => "limits by rlimit only (RLIMIT_AS for memory, RLIMIT_NPROC for pids; cpu unlimited)".to_owned(),
        };
        let mut line = format!("workers run sandboxed {user}; {limits}");
        for w in &self.warnings {
            line.push_str("; WARNING: ");
            line.push_str(w);
        }
        line
    }

    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// What `describe` shows about a function with `limits`.
    pub fn isolation(&self, limits: &Limits) -> Value {
        let plan = plan_limits(limits, self.cgroups.as_ref().map(|c| c.caps));
        let by = |e: Option<Enforcement>| e.map(|e| serde_json::to_value(e).unwrap_or(Value::Null));
        json!({
            "sandboxed": true,
            "user": self.user.as_ref().map(|u| u.name.clone()),
            "uid": self.user.as_ref().map(|u| u.uid),
            "namespaces": if self.user.is_some() { json!(["mount", "pid"]) } else { json!([]) },
            "cgroup": version_name(self.cgroups.as_ref().map(|c| c.caps.version)),
            "memory": limits.memory,
            "memoryBy": by(plan.memory),
            "pids": limits.pids,
            "pidsBy": by(plan.pids),
            "cpu": limits.cpu_millis.map(|m| f64::from(m) / 1000.0),
            "cpuBy": by(plan.cpu),
            "bundle": if self.user.is_some() { "read-only" } else { "as stored" },
            "dataDirectory": if self.user.is_some() { "hidden" } else { "visible" },
        })
    }

    /// The command that starts `program` as a worker of a function with
    /// `limits` whose bundle is `bundle`, and the cgroup it will join.
    pub(crate) fn command(
        &self,
        program: &str,
        limits: &Limits,
        files: &WorkerFiles,
        oom_kills: Arc<AtomicU64>,
    ) -> Result<(Command, Option<WorkerCgroup>), String> {
        let cgroup = self.cgroup(limits, oom_kills)?;
        let cmd = self.command_in(program, limits, files, cgroup.as_ref())?;
        Ok((cmd, cgroup))
    }

    /// A new cgroup with `limits` applied, if cgroups are in use.
    pub(crate) fn cgroup(&self, limits: &Limits, oom_kills: Arc<AtomicU64>) -> Result<Option<WorkerCgroup>, String> {
        let Some(host) = &self.cgroups else { return Ok(None) };
        let plan = plan_limits(limits, Some(host.caps));
        host.create(&plan.writes, oom_kills).map(Some).map_err(|e| format!("cannot make the worker's cgroup: {e}"))
    }

    /// The command that starts `program` in `cgroup` (made by [`Self::cgroup`]).
    pub(crate) fn command_in(
        &self,
        program: &str,
        limits: &Limits,
        files: &WorkerFiles,
        cgroup: Option<&WorkerCgroup>,
    ) -> Result<Command, String> {
        let plan = plan_limits(limits, self.cgroups.as_ref().map(|c| c.caps));
        let user = self.user.as_ref().map(|u| (u.uid, u.gid));
        let nproc =
            plan.rlimit_nproc.map(|n| n + processes_of(user.map_or_else(|| nix::unistd::getuid().as_raw(), |u| u.0)));
        let view = self.user.as_ref().map(|_| self.view(limits, files));
        let launch = LaunchPlan {
            cgroup_procs: cgroup.map(WorkerCgroup::procs_files).unwrap_or_default(),
            rlimit_as: plan.rlimit_as,
            rlimit_nproc: nproc,
            user,
            view,
        };
        let mut cmd = launch::command(&self.launcher, &launch, program)?;
        if self.user.is_some() {
            cmd.env_clear();
            for key in KEPT_ENV {
                if let Some(v) = std::env::var_os(key) {
                    cmd.env(key, v);
                }
            }
            cmd.env("HOME", "/tmp").env("TMPDIR", "/tmp");
        }
        Ok(cmd)
    }

    fn view(&self, limits: &Limits, files: &WorkerFiles) -> View {
        let tmp_size = limits.memory.unwrap_or(DEFAULT_TMP_SIZE);
        let mut covers: Vec<PathBuf> = self.covers.clone();
        covers.extend(PRIVATE_TMP.iter().map(PathBuf::from).filter(|p| p.is_dir()));
        let covers = policy::order_covers(covers)
            .into_iter()
            .map(|path| {
                let tmp = PRIVATE_TMP.iter().any(|t| path == Path::new(t));
                // Passable-only covers hold nothing but the directories made in them.
                let (mode, size) = if tmp { (0o1777, tmp_size) } else { (0o755, 1024 * 1024) };
                Cover { path, mode, size }
            })
            .collect();
        let bundle = files.bundle.canonicalize().unwrap_or_else(|_| files.bundle.clone());
        let mut read_only = self.read_only.clone();
        read_only.push(bundle.clone());
        read_only.extend(files.deps.iter().map(|d| d.canonicalize().unwrap_or_else(|_| d.clone())));
        View { covers, read_only, cwd: bundle, secrets: files.secrets.clone() }
    }

    /// The group of the user workers run as, when the node drops to one:
    /// files workers must read (their secrets) are given to it.
    pub fn worker_gid(&self) -> Option<u32> {
        self.user.as_ref().map(|u| u.gid)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Removes the node's cgroups (at stop).
    pub fn close(&self) {
        if let Some(c) = &self.cgroups {
            c.remove();
        }
    }
}

fn version_name(v: Option<CgroupVersion>) -> &'static str {
    match v {
        Some(CgroupVersion::V1) => "v1",
        Some(CgroupVersion::V2) => "v2",
        None => "none",
    }
}

fn dir_mode(p: &Path) -> Option<DirMode> {
    let m = std::fs::metadata(p).ok()?;
    Some(DirMode { uid: m.uid(), gid: m.gid(), mode: m.permissions().mode() })
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// Processes `uid` has now: RLIMIT_NPROC counts them all, so the fallback
/// limit is the function's allowance on top of them.
fn processes_of(uid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter(|e| e.metadata().is_ok_and(|m| m.uid() == uid))
        .count() as u64
}

/// The dedicated user, made if absent (`useradd --system`), else nobody.
fn sandbox_user() -> SandboxUser {
    if let Some(u) = lookup(USER_NAME) {
        return u;
    }
    let made = std::process::Command::new("useradd")
        .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER_NAME])
        .output();
    match made {
        Ok(o) if o.status.success() => {
            tracing::info!("made the system user {USER_NAME} for workers");
        }
        Ok(o) => tracing::warn!(
            "useradd {USER_NAME} failed ({}): workers run as nobody",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => tracing::warn!("cannot run useradd ({e}): workers run as nobody"),
    }
    lookup(USER_NAME).or_else(|| lookup("nobody")).unwrap_or(SandboxUser {
        name: "nobody".into(),
        uid: FALLBACK_ID,
        gid: FALLBACK_ID,
    })
}

fn lookup(name: &str) -> Option<SandboxUser> {
    let u = nix::unistd::User::from_name(name).ok()??;
    Some(SandboxUser { name: u.name, uid: u.uid.as_raw(), gid: u.gid.as_raw() })
}

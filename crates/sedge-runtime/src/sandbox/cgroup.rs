//! The cgroups that hold workers: one parent group per node (`sedge-PID`,
//! under the node's own cgroup), one child per worker process, removed once
//! the worker is gone. v2 where it has the memory controller, else v1
//! (separate hierarchies per controller), else none.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::policy::{CgroupCaps, CgroupVersion, CgroupWrite, Controller};

/// The node's parent group(s) for workers.
#[derive(Debug)]
pub struct CgroupHost {
    pub caps: CgroupCaps,
    /// v2: one directory for every controller; v1: one per hierarchy.
    parents: HashMap<Controller, PathBuf>,
    next: AtomicU64,
}

/// One mount of a cgroup file system, from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    pub v2: bool,
    pub root: String,
    pub mount_point: PathBuf,
    /// v1: the controllers this hierarchy carries.
    pub controllers: Vec<String>,
}

/// The cgroup mounts listed in a mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let _source = right.next()?;
            let options = right.next().unwrap_or("");
            let (root, mount_point) = (left.get(3)?, left.get(4)?);
            let v2 = match fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            let controllers = if v2 { Vec::new() } else { options.split(',').map(str::to_owned).collect() };
            Some(CgroupMount { v2, root: (*root).to_owned(), mount_point: PathBuf::from(mount_point), controllers })
        })
        .collect()
}

/// `/proc/self/cgroup`: the hierarchy's controllers (empty for v2) → path.
pub fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let ctrls = parts.next()?;
            let path = parts.next()?;
            let ctrls = if ctrls.is_empty() { Vec::new() } else { ctrls.split(',').map(str::to_owned).collect() };
            Some((ctrls, path.to_owned()))
        })
        .collect()
}

/// The directory of the node's own group in a mount.
fn own_dir(mount: &CgroupMount, path: &str) -> PathBuf {
    let rel = path.strip_prefix(mount.root.as_str()).unwrap_or(path).trim_start_matches('/');
    mount.mount_point.join(rel)
}

fn controller_name(c: Controller) -> &'static str {
    match c {
        Controller::Memory => "memory",
        Controller::Pids => "pids",
        Controller::Cpu => "cpu",
    }
}

impl CgroupHost {
    /// Finds and prepares the node's parent group; `None` (with the reason)
    /// when no memory controller can be used.
    pub fn detect() -> Result<Self, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("mountinfo: {e}"))?;
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
        let mounts = parse_mountinfo(&mountinfo);
        let own = parse_proc_cgroup(&own);
        let name = format!("sedge-{}", std::process::id());
        let v2_err = match Self::detect_v2(&mounts, &own, &name) {
            Ok(host) => return Ok(host),
            Err(e) => e,
        };
        Self::detect_v1(&mounts, &own, &name).map_err(|v1_err| format!("cgroup v2: {v2_err}; cgroup v1: {v1_err}"))
    }

    fn detect_v2(mounts: &[CgroupMount], own: &[(Vec<String>, String)], name: &str) -> Result<Self, String> {
        let mount = mounts.iter().find(|m| m.v2).ok_or("not mounted")?;
        let path = own.iter().find(|(c, _)| c.is_empty()).map(|(_, p)| p.as_str()).ok_or("no v2 path")?;
        let dir = own_dir(mount, path);
        let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| available.split_whitespace().any(|a| a == c);
        if !has("memory") {
            return Err(format!("no memory controller in {}", dir.display()));
        }
        let wanted: Vec<&str> = ["memory", "pids", "cpu"].into_iter().filter(|c| has(c)).collect();
        // A group holding processes cannot hand controllers down (v2's "no
        // internal processes" rule): move the node into a leaf of its own first.
        if !enable(&dir, &wanted).contains(&"memory") {
            let leaf = dir.join(format!("{name}-node"));
            mkdir(&leaf).map_err(|e| format!("creating {}: {e}", leaf.display()))?;
            std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string())
                .map_err(|e| format!("moving the node into {}: {e}", leaf.display()))?;
            if !enable(&dir, &wanted).contains(&"memory") {
                return Err(format!("cannot enable the memory controller in {}", dir.display()));
            }
        }
        remove_stale(&dir);
        let parent = dir.join(name);
        mkdir(&parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
        let enabled = enable(&parent, &wanted);
        if !enabled.contains(&"memory") {
            return Err(format!("cannot enable the memory controller in {}", parent.display()));
        }
        let caps = CgroupCaps {
            version: CgroupVersion::V2,
            memory: true,
            swap: parent.join("memory.swap.max").exists(),
            pids: enabled.contains(&"pids"),
            cpu: enabled.contains(&"cpu"),
        };
        let parents =
            [Controller::Memory, Controller::Pids, Controller::Cpu].into_iter().map(|c| (c, parent.clone())).collect();
        Ok(Self { caps, parents, next: AtomicU64::new(1) })
    }

    fn detect_v1(mounts: &[CgroupMount], own: &[(Vec<String>, String)], name: &str) -> Result<Self, String> {
        let mut parents = HashMap::new();
        for c in [Controller::Memory, Controller::Pids, Controller::Cpu] {
            let cname = controller_name(c);
            let Some(mount) = mounts.iter().find(|m| !m.v2 && m.controllers.iter().any(|x| x == cname)) else {
                continue;
            };
            let path = own.iter().find(|(cs, _)| cs.iter().any(|x| x == cname)).map_or("/", |(_, p)| p.as_str());
            let own = own_dir(mount, path);
            remove_stale(&own);
            let parent = own.join(name);
            match mkdir(&parent) {
                Ok(()) => {
                    parents.insert(c, parent);
                }
                Err(e) if c == Controller::Memory => return Err(format!("creating {}: {e}", parent.display())),
                Err(e) => tracing::warn!("cannot use the v1 {cname} controller: creating {}: {e}", parent.display()),
            }
        }
        let memory = parents.get(&Controller::Memory).ok_or("no memory hierarchy mounted")?;
        let caps = CgroupCaps {
            version: CgroupVersion::V1,
            memory: true,
            swap: memory.join("memory.memsw.limit_in_bytes").exists(),
            pids: parents.contains_key(&Controller::Pids),
            cpu: parents.contains_key(&Controller::Cpu),
        };
        Ok(Self { caps, parents, next: AtomicU64::new(1) })
    }

    /// A new group for one worker with `writes` applied; `oom_kills` counts
    /// the worker if the kernel killed it for memory.
    pub fn create(&self, writes: &[CgroupWrite], oom_kills: Arc<AtomicU64>) -> io::Result<WorkerCgroup> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut group = WorkerCgroup {
            version: self.caps.version,
            dirs: Vec::new(),
            memory: None,
            oom_kills,
            finished: AtomicBool::new(false),
            oom: AtomicBool::new(false),
            reported: AtomicU64::new(0),
        };
        for (c, parent) in &self.parents {
            let dir = parent.join(format!("w{n}"));
            if !dirs.contains(&dir) {
                mkdir(&dir)?;
                dirs.push(dir.clone());
                group.dirs.push(dir.clone());
            }
            if *c == Controller::Memory {
                group.memory = Some(dir);
            }
        }
        for w in writes {
            let Some(parent) = self.parents.get(&w.controller) else { continue };
            let file = parent.join(format!("w{n}")).join(w.file);
            std::fs::write(&file, &w.value)
                .map_err(|e| io::Error::new(e.kind(), format!("writing {} to {}: {e}", w.value, file.display())))?;
        }
        Ok(group)
    }

    /// Removes the node's parent groups at stop, giving the workers' own
    /// groups (removed in the background) a moment to go first.
    pub fn remove(&self) {
        for _ in 0..100 {
            let left = self.parents.values().filter(|d| d.exists() && std::fs::remove_dir(d).is_err()).count();
            if left == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::warn!("could not remove the node's cgroups {:?}", self.parents.values().collect::<Vec<_>>());
    }
}

/// Removes the groups of nodes that are gone (killed before they could
/// clean up) from `dir`, ending any worker still in them.
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("sedge-")) else { continue };
        let (digits, node_leaf) = match rest.strip_suffix("-node") {
            Some(d) => (d, true),
            None => (rest, false),
        };
        let Ok(pid) = digits.parse::<u32>() else { continue };
        let own = pid == std::process::id();
        if node_leaf {
            // Where a v2 node moved itself: empty once that node is gone;
            // this node's own may hold it right now.
            if !own && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir(entry.path());
            }
            continue;
        }
        // This node has made no group yet, so one named with its own pid
        // was left by an earlier process with the same pid (a container's
        // pid 1 restarted): stale too, or its workers' counters would be
        // taken for this node's.
        if !own && Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let parent = entry.path();
        let workers: Vec<PathBuf> = std::fs::read_dir(&parent)
            .map(|es| es.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir()).collect())
            .unwrap_or_default();
        for w in &workers {
            for pid in std::fs::read_to_string(w.join("cgroup.procs")).unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        for _ in 0..50 {
            let busy = workers.iter().filter(|w| w.exists() && std::fs::remove_dir(w).is_err()).count();
            if busy == 0 && std::fs::remove_dir(&parent).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Hands each of `controllers` down to `dir`'s children, one at a time so
/// that one refused (cpu, with real-time threads about) costs only itself;
/// says which are on.
fn enable<'a>(dir: &Path, controllers: &[&'a str]) -> Vec<&'a str> {
    let file = dir.join("cgroup.subtree_control");
    let on = std::fs::read_to_string(&file).unwrap_or_default();
    controllers
        .iter()
        .copied()
        .filter(|c| on.split_whitespace().any(|x| x == *c) || std::fs::write(&file, format!("+{c}")).is_ok())
        .collect()
}

fn mkdir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    }
}

/// One worker's group (in each v1 hierarchy, or the one v2 group).
#[derive(Debug)]
pub struct WorkerCgroup {
    version: CgroupVersion,
    dirs: Vec<PathBuf>,
    memory: Option<PathBuf>,
    oom_kills: Arc<AtomicU64>,
    finished: AtomicBool,
    oom: AtomicBool,
    /// OOM kills already reported (by [`Self::take_oom_kill`]).
    reported: AtomicU64,
}

impl WorkerCgroup {
    /// For a group that outlives its processes (an `exec` function's runs):
    /// whether the kernel killed for memory since the last call, counting
    /// it once if so.
    pub fn take_oom_kill(&self) -> bool {
        let now = self.oom_kill_count();
        let before = self.reported.swap(now, Ordering::AcqRel);
        let new = now > before;
        if new {
            self.oom_kills.fetch_add(1, Ordering::Relaxed);
        }
        new
    }

    /// The files a process writes its pid into to join every part of the group.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// OOM kills the kernel has counted in the group's memory controller.
    fn oom_kill_count(&self) -> u64 {
        let Some(dir) = &self.memory else { return 0 };
        let file = match self.version {
            CgroupVersion::V1 => "memory.oom_control",
            CgroupVersion::V2 => "memory.events",
        };
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        text.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok())).unwrap_or(0)
    }

    /// Whether the kernel has killed a process of this worker for memory.
    pub fn oom_killed(&self) -> bool {
        self.oom.load(Ordering::Acquire) || self.oom_kill_count() > 0
    }

    /// Signals every process in the group, including any that left the
    /// worker's process group.
    pub fn kill_all(&self) -> bool {
        let mut any = false;
        for dir in &self.dirs {
            let text = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                any = true;
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        any
    }

    /// Once the worker is gone: notes an OOM kill, ends what is left and
    /// removes the group (in the background: the kernel frees a group only
    /// once its last process is reaped).
    pub fn finish(&self) {
        if self.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        let count = self.oom_kill_count();
        if count > 0 {
            self.oom.store(true, Ordering::Release);
        }
        if count > self.reported.load(Ordering::Acquire) {
            self.oom_kills.fetch_add(1, Ordering::Relaxed);
        }
        let dirs = self.dirs.clone();
        let me = WorkerCgroup {
            version: self.version,
            dirs: dirs.clone(),
            memory: None,
            oom_kills: self.oom_kills.clone(),
            finished: AtomicBool::new(true),
            oom: AtomicBool::new(false),
            reported: AtomicU64::new(0),
        };
        std::thread::spawn(move || {
            for _ in 0..500 {
                me.kill_all();
                if dirs.iter().all(|d| !d.exists() || std::fs::remove_dir(d).is_ok()) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            tracing::warn!("could not remove worker cgroups {dirs:?}");
        });
    }
}

impl Drop for WorkerCgroup {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
24 29 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
30 24 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
31 24 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
32 24 0:28 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
33 29 8:1 / / rw - ext4 /dev/vda rw";

    #[test]
    fn mountinfo_yields_cgroup_mounts_only() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].controllers, ["rw", "memory"]);
        assert_eq!(m[1].mount_point, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert!(m[2].v2);
    }

    #[test]
    fn own_group_is_found_under_its_mount() {
        let own = parse_proc_cgroup("4:memory:/job/42\n2:cpu,cpuacct:/\n0::/user.slice/x.service\n");
        assert_eq!(own[0], (vec!["memory".to_owned()], "/job/42".to_owned()));
        assert_eq!(own[2].0, Vec::<String>::new());
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(own_dir(&mounts[0], "/job/42"), PathBuf::from("/sys/fs/cgroup/memory/job/42"));
        assert_eq!(own_dir(&mounts[2], "/"), PathBuf::from("/sys/fs/cgroup/unified"));
        // A mount of a sub-tree (a container's view) strips its root.
        let sub = CgroupMount { root: "/job".into(), ..mounts[0].clone() };
        assert_eq!(own_dir(&sub, "/job/42"), PathBuf::from("/sys/fs/cgroup/memory/42"));
    }

    #[test]
    fn v2_makes_the_node_s_group_hands_controllers_down_and_writes_limits() {
        // A stand-in v2 tree: plain files where the kernel has its own.
        let root = tempfile::tempdir().expect("tempdir");
        let own = root.path().join("system.slice/sedge.service");
        std::fs::create_dir_all(&own).expect("mkdir");
        std::fs::write(own.join("cgroup.controllers"), "cpuset cpu io memory pids\n").expect("write");
        let mounts = vec![CgroupMount {
            v2: true,
            root: "/".into(),
            mount_point: root.path().to_owned(),
            controllers: Vec::new(),
        }];
        let paths = parse_proc_cgroup("0::/system.slice/sedge.service\n");
        let host = CgroupHost::detect_v2(&mounts, &paths, "sedge-7").expect("v2 host");
        assert_eq!(host.caps.version, CgroupVersion::V2);
        assert!(host.caps.memory && host.caps.pids && host.caps.cpu);
        let parent = own.join("sedge-7");
        assert!(parent.is_dir());
        assert!(std::fs::read_to_string(parent.join("cgroup.subtree_control")).expect("enabled").starts_with('+'));
        let limits = sedge_core::Limits {
            timeout: Duration::from_secs(1),
            max_body: 1,
            max_answer: 1,
            memory: Some(1 << 26),
            queue: 1,
            pids: 64,
            cpu_millis: Some(250),
        };
        let plan = super::super::policy::plan_limits(&limits, Some(host.caps));
        let group = host.create(&plan.writes, Arc::default()).expect("worker group");
        let w = parent.join("w1");
        assert_eq!(group.procs_files(), [w.join("cgroup.procs")], "one group for every controller");
        assert_eq!(std::fs::read_to_string(w.join("memory.max")).expect("memory.max"), "67108864");
        assert_eq!(std::fs::read_to_string(w.join("pids.max")).expect("pids.max"), "64");
        assert_eq!(std::fs::read_to_string(w.join("cpu.max")).expect("cpu.max"), "25000 100000");
        std::fs::write(w.join("memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").expect("write");
        assert!(group.oom_killed());
    }
}

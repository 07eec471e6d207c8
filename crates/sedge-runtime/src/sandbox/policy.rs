//! What to apply to a worker, given its manifest's `[limits]` and what the
//! host supports. Pure: no files are read or written here, so every choice
//! is unit-tested; `cgroup.rs` and `launch.rs` carry the choices out.

use std::path::{Path, PathBuf};

use sedge_core::Limits;
use serde::Serialize;

/// The cgroup period the CPU quota is expressed in (the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    V1,
    V2,
}

/// Which cgroup controllers the node can use for its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupCaps {
    pub version: CgroupVersion,
    pub memory: bool,
    /// v1's memory+swap limit (`memory.memsw.*`) or v2's `memory.swap.max`.
    pub swap: bool,
    pub pids: bool,
    pub cpu: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Controller {
    Memory,
    Pids,
    Cpu,
}

/// How one limit is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    Cgroup,
    /// A per-process resource limit: weaker (address space rather than
    /// memory in use; processes counted per user, not per worker).
    Rlimit,
    None,
}

/// A value written into one of the worker's cgroup files, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupWrite {
    pub controller: Controller,
    pub file: &'static str,
    pub value: String,
}

/// Everything decided about one worker's limits.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LimitPlan {
    pub writes: Vec<CgroupWrite>,
    pub rlimit_as: Option<u64>,
    pub rlimit_nproc: Option<u64>,
    pub memory: Option<Enforcement>,
    pub pids: Option<Enforcement>,
    pub cpu: Option<Enforcement>,
}

fn write(controller: Controller, file: &'static str, value: impl ToString) -> CgroupWrite {
    CgroupWrite { controller, file, value: value.to_string() }
}

/// The limits to apply, by cgroup where `caps` allows, else by rlimit
/// (memory, pids), else not at all (cpu has no rlimit equivalent).
pub fn plan_limits(limits: &Limits, caps: Option<CgroupCaps>) -> LimitPlan {
    let mut plan = LimitPlan::default();
    let v1 = caps.map(|c| c.version) == Some(CgroupVersion::V1);
    if let Some(bytes) = limits.memory {
        match caps.filter(|c| c.memory) {
            Some(c) => {
                if v1 {
                    // memsw must stay at or above the plain limit, so it goes second.
                    plan.writes.push(write(Controller::Memory, "memory.limit_in_bytes", bytes));
                    if c.swap {
                        plan.writes.push(write(Controller::Memory, "memory.memsw.limit_in_bytes", bytes));
                    }
                } else {
                    plan.writes.push(write(Controller::Memory, "memory.max", bytes));
                    if c.swap {
                        plan.writes.push(write(Controller::Memory, "memory.swap.max", 0));
                    }
                    // One OOM kill ends the whole worker, not a random child.
                    plan.writes.push(write(Controller::Memory, "memory.oom.group", 1));
                }
                plan.memory = Some(Enforcement::Cgroup);
            }
            None => {
                plan.rlimit_as = Some(bytes);
                plan.memory = Some(Enforcement::Rlimit);
            }
        }
    }
    if caps.is_some_and(|c| c.pids) {
        plan.writes.push(write(Controller::Pids, "pids.max", limits.pids));
        plan.pids = Some(Enforcement::Cgroup);
    } else {
        plan.rlimit_nproc = Some(u64::from(limits.pids));
        plan.pids = Some(Enforcement::Rlimit);
    }
    if let Some(millis) = limits.cpu_millis {
        let quota = u64::from(millis) * CPU_PERIOD_US / 1000;
        match caps.filter(|c| c.cpu) {
            Some(_) if v1 => {
                plan.writes.push(write(Controller::Cpu, "cpu.cfs_period_us", CPU_PERIOD_US));
                plan.writes.push(write(Controller::Cpu, "cpu.cfs_quota_us", quota));
                plan.cpu = Some(Enforcement::Cgroup);
            }
            Some(_) => {
                plan.writes.push(write(Controller::Cpu, "cpu.max", format!("{quota} {CPU_PERIOD_US}")));
                plan.cpu = Some(Enforcement::Cgroup);
            }
            None => plan.cpu = Some(Enforcement::None),
        }
    }
    plan
}

/// Owner, group and permission bits of a directory.
#[derive(Debug, Clone, Copy)]
pub struct DirMode {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// Whether `who` (uid, gid) may pass through a directory (search permission).
pub fn can_enter(dir: DirMode, who: (u32, u32)) -> bool {
    let bit = if dir.uid == who.0 {
        0o100
    } else if dir.gid == who.1 {
        0o010
    } else {
        0o001
    };
    dir.mode & bit != 0
}

/// The outermost directory above `path` that `who` cannot pass through:
/// workers reach `path` only if that directory is replaced in their view.
/// Directories `stat` cannot read count as passable (nothing to fix there).
pub fn first_blocked(path: &Path, who: (u32, u32), stat: impl Fn(&Path) -> Option<DirMode>) -> Option<PathBuf> {
    let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    ancestors.reverse();
    ancestors.into_iter().find(|dir| stat(dir).is_some_and(|m| !can_enter(m, who))).map(Path::to_path_buf)
}

/// Directories replaced by an empty file system in a worker's view, outer
/// ones first so that inner ones are made inside them.
pub fn order_covers(mut covers: Vec<PathBuf>) -> Vec<PathBuf> {
    covers.sort_by_key(|p| (p.components().count(), p.clone()));
    covers.dedup();
    covers
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(memory: Option<u64>, pids: u32, cpu_millis: Option<u32>) -> Limits {
        Limits { timeout: Duration::from_secs(1), max_body: 1, max_answer: 1, memory, queue: 1, pids, cpu_millis }
    }

    fn caps(version: CgroupVersion) -> CgroupCaps {
        CgroupCaps { version, memory: true, swap: true, pids: true, cpu: true }
    }

    fn files(plan: &LimitPlan) -> Vec<(&str, &str)> {
        plan.writes.iter().map(|w| (w.file, w.value.as_str())).collect()
    }

    #[test]
    fn v1_sets_memory_then_memsw_pids_and_cfs_quota() {
        let plan = plan_limits(&limits(Some(64 << 20), 64, Some(500)), Some(caps(CgroupVersion::V1)));
        assert_eq!(
            files(&plan),
            [
                ("memory.limit_in_bytes", "67108864"),
                ("memory.memsw.limit_in_bytes", "67108864"),
                ("pids.max", "64"),
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "50000"),
            ]
        );
        assert_eq!((plan.rlimit_as, plan.rlimit_nproc), (None, None));
        assert_eq!(plan.memory, Some(Enforcement::Cgroup));
    }

    #[test]
    fn v2_sets_max_files_and_kills_the_group_together() {
        let plan = plan_limits(&limits(Some(1 << 30), 10, Some(1500)), Some(caps(CgroupVersion::V2)));
        assert_eq!(
            files(&plan),
            [
                ("memory.max", "1073741824"),
                ("memory.swap.max", "0"),
                ("memory.oom.group", "1"),
                ("pids.max", "10"),
                ("cpu.max", "150000 100000"),
            ]
        );
    }

    #[test]
    fn without_swap_accounting_only_the_plain_limit_is_written() {
        let c = CgroupCaps { swap: false, ..caps(CgroupVersion::V1) };
        let plan = plan_limits(&limits(Some(1 << 20), 64, None), Some(c));
        assert_eq!(files(&plan), [("memory.limit_in_bytes", "1048576"), ("pids.max", "64")]);
        assert_eq!(plan.cpu, None, "no cpu limit asked for");
    }

    #[test]
    fn no_cgroups_falls_back_to_rlimits_and_says_cpu_is_unbounded() {
        let plan = plan_limits(&limits(Some(128 << 20), 32, Some(500)), None);
        assert!(plan.writes.is_empty());
        assert_eq!(plan.rlimit_as, Some(128 << 20));
        assert_eq!(plan.rlimit_nproc, Some(32));
        assert_eq!(
            (plan.memory, plan.pids, plan.cpu),
            (Some(Enforcement::Rlimit), Some(Enforcement::Rlimit), Some(Enforcement::None))
        );
    }

    #[test]
    fn a_missing_controller_falls_back_for_that_limit_only() {
        let c = CgroupCaps { memory: false, ..caps(CgroupVersion::V1) };
        let plan = plan_limits(&limits(Some(1 << 20), 64, None), Some(c));
        assert_eq!(files(&plan), [("pids.max", "64")]);
        assert_eq!(plan.rlimit_as, Some(1 << 20));
    }

    #[test]
    fn search_permission_follows_owner_group_other() {
        let root_only = DirMode { uid: 0, gid: 0, mode: 0o700 };
        assert!(!can_enter(root_only, (999, 999)));
        assert!(can_enter(root_only, (0, 0)));
        assert!(can_enter(DirMode { uid: 0, gid: 999, mode: 0o710 }, (999, 999)));
        assert!(can_enter(DirMode { uid: 0, gid: 0, mode: 0o755 }, (999, 999)));
        // The owner's bits decide for the owner, even if others may enter.
        assert!(!can_enter(DirMode { uid: 999, gid: 0, mode: 0o055 }, (999, 999)));
    }

    #[test]
    fn first_blocked_is_the_outermost_closed_ancestor() {
        let stat = |p: &Path| {
            let mode = match p.to_str() {
                Some("/root" | "/root/a/b") => 0o700,
                _ => 0o755,
            };
            Some(DirMode { uid: 0, gid: 0, mode })
        };
        let who = (999, 999);
        assert_eq!(first_blocked(Path::new("/root/a/b/c/python"), who, stat), Some(PathBuf::from("/root")));
        assert_eq!(first_blocked(Path::new("/usr/bin/python3"), who, stat), None);
        // The path itself is not an ancestor of itself.
        assert_eq!(first_blocked(Path::new("/root"), who, stat), None);
    }

    #[test]
    fn covers_go_outer_first_without_repeats() {
        let got = order_covers(vec!["/tmp/d/x".into(), "/root".into(), "/tmp".into(), "/root".into()]);
        assert_eq!(got, [PathBuf::from("/root"), "/tmp".into(), "/tmp/d/x".into()]);
    }
}

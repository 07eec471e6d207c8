//! Process groups: every worker process starts as the leader of a group of
//! its own, so whatever it forks (a shell, a helper, a runaway child) is
//! ended together with it — on a timeout, a removal, a crash or the node's
//! stop. A process that leaves the group on purpose (`setsid`) is out of
//! reach here by its group; a sandboxed worker's cgroup and pid namespace
//! catch those.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::sandbox::WorkerCgroup;

/// The groups of every worker process a runtime has started and not yet
/// seen ended, so that a stopping node can end them all.
#[derive(Debug)]
pub struct ProcessGroups {
    running: Mutex<BTreeSet<i32>>,
    /// How many there are, for those waiting for none.
    count: watch::Sender<usize>,
}

impl Default for ProcessGroups {
    fn default() -> Self {
        Self { running: Mutex::default(), count: watch::Sender::new(0) }
    }
}

/// The set, held; the count follows it when the guard goes.
struct Running<'a> {
    set: MutexGuard<'a, BTreeSet<i32>>,
    count: &'a watch::Sender<usize>,
}

impl std::ops::Deref for Running<'_> {
    type Target = BTreeSet<i32>;
    fn deref(&self) -> &Self::Target {
        &self.set
    }
}

impl std::ops::DerefMut for Running<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.set
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let n = self.set.len();
        self.count.send_if_modified(|c| std::mem::replace(c, n) != n);
    }
}

impl ProcessGroups {
    fn lock(&self) -> Running<'_> {
        Running { set: self.running.lock().unwrap_or_else(|p| p.into_inner()), count: &self.count }
    }

    /// Resolves once every group has ended.
    pub async fn all_ended(&self) {
        let mut count = self.count.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let _ = count.wait_for(|&n| n == 0).await;
    }

    /// Spawns `cmd` as the leader of a new process group.
    #[cfg(test)]
    pub fn spawn(self: &Arc<Self>, cmd: &mut Command) -> std::io::Result<(Child, ProcessGroup)> {
        self.spawn_in(cmd, None)
    }

    /// Spawns `cmd` as the leader of a new process group, which `cgroup`
    /// (the worker's, joined by its launcher) also holds.
    pub fn spawn_in(
        self: &Arc<Self>,
        cmd: &mut Command,
        cgroup: Option<WorkerCgroup>,
    ) -> std::io::Result<(Child, ProcessGroup)> {
        cmd.process_group(0).kill_on_drop(true);
        let child = cmd.spawn()?;
        let pgid = child.id().and_then(|id| i32::try_from(id).ok()).unwrap_or(0);
        if pgid > 0 {
            self.lock().insert(pgid);
        }
        Ok((child, ProcessGroup { pgid, ended: AtomicBool::new(pgid <= 0), groups: self.clone(), cgroup }))
    }

    /// Takes on the group `pgid` led by a process the node did not spawn
    /// itself (a worker forked by a zygote), held also by `cgroup`.
    pub fn adopt(self: &Arc<Self>, pgid: i32, cgroup: Option<WorkerCgroup>) -> ProcessGroup {
        if pgid > 0 {
            self.lock().insert(pgid);
        }
        ProcessGroup { pgid, ended: AtomicBool::new(pgid <= 0), groups: self.clone(), cgroup }
    }

    /// Kills every group still running.
    pub fn kill_all(&self) {
        let all = std::mem::take(&mut *self.lock());
        for pgid in all {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A start failure caused by the memory limit, said as the invocation error is.
pub(crate) fn oom_message(limit: u64) -> String {
    format!("it exceeded its memory limit of {} while starting", sedge_core::invocation::mebibytes(limit))
}

/// One worker's process group; killed when dropped.
#[derive(Debug)]
pub struct ProcessGroup {
    pgid: i32,
    ended: AtomicBool,
    groups: Arc<ProcessGroups>,
    cgroup: Option<WorkerCgroup>,
}

impl ProcessGroup {
    /// Kills every process in the group. Called once the leader has been
    /// reaped too, which clears up what it left behind; after that the id
    /// is forgotten so a later kill cannot reach a group that reused it.
    pub fn kill(&self) {
        if self.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        // ESRCH (nothing left) is the common, harmless case.
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        self.groups.lock().remove(&self.pgid);
        if let Some(c) = &self.cgroup {
            c.finish();
        }
    }

    /// The worker's cgroup, if it has one of its own.
    pub fn cgroup(&self) -> Option<&WorkerCgroup> {
        self.cgroup.as_ref()
    }

    /// Whether the kernel killed a process of this worker for going past
    /// its memory limit.
    pub fn oom_killed(&self) -> bool {
        self.cgroup.as_ref().is_some_and(WorkerCgroup::oom_killed)
    }

    /// What its processes use now: their PSS (`/proc/PID/smaps_rollup`)
    /// summed, pages shared between them and others split fairly; `None`
    /// when none of them could be read.
    pub fn pss(&self) -> Option<u64> {
        // Group 0 is the kernel's threads', and an ended group's id may
        // have been taken by another process.
        if self.pgid <= 0 || self.ended.load(Ordering::Acquire) {
            return None;
        }
        let mut total: Option<u64> = None;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let in_group = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| process_group_of(&stat) == Some(self.pgid));
            if !in_group {
                continue;
            }
            if let Some(bytes) =
                std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok().and_then(|t| kib_line(&t, "Pss:"))
            {
                total = Some(total.unwrap_or(0).saturating_add(bytes));
            }
        }
        total
    }

    /// Signals the group without forgetting it (the leader is still there).
    pub fn kill_now(&self) {
        if !self.ended.load(Ordering::Acquire) {
            let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
            if let Some(c) = &self.cgroup {
                c.kill_all();
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The process group in a `/proc/PID/stat` line (after the command's
/// closing parenthesis: state, parent, group).
fn process_group_of(stat: &str) -> Option<i32> {
    stat.rsplit_once(')')?.1.split_whitespace().nth(2)?.parse().ok()
}

/// The line `key` of a /proc file counting in kB (`Pss:  812 kB`,
/// `MemTotal: ...`), in bytes.
pub(crate) fn kib_line(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix(key))?;
    let kib: u64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn proc_files_are_read_for_the_group_and_its_size() {
        assert_eq!(process_group_of("42 (a (b) c) S 1 40 40 0 -1"), Some(40));
        let rollup = "55d0-7ff r--p 00000000 00:00 0 [rollup]\nRss: 900 kB\nPss: 812 kB\nPss_Anon: 3 kB\n";
        assert_eq!(kib_line(rollup, "Pss:"), Some(812 * 1024));
        assert_eq!(kib_line("Rss: 900 kB\n", "Pss:"), None);
        assert_eq!(kib_line("Pss: 18446744073709551615 kB\n", "Pss:"), Some(u64::MAX), "no overflow");
        assert_eq!(kib_line("MemFree: 1 kB\nMemTotal:  2048 kB\n", "MemTotal:"), Some(2 * 1024 * 1024));
    }

    #[tokio::test]
    async fn a_group_s_size_is_what_its_processes_use() {
        let groups = Arc::<ProcessGroups>::default();
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("sleep 30 & sleep 30").stdout(std::process::Stdio::null());
        let (mut child, group) = groups.spawn(&mut cmd).expect("sh runs");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let size = group.pss().expect("its processes are readable");
        assert!(size > 0 && size < 64 * 1024 * 1024, "{size}");
        group.kill_now();
        let _ = child.wait().await;
        group.kill();
    }

    fn alive(pid: i32) -> bool {
        nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    }

    #[tokio::test]
    async fn killing_the_group_ends_the_children_too() {
        let groups = Arc::<ProcessGroups>::default();
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("sleep 30 & echo $!; wait").stdout(std::process::Stdio::piped());
        let (mut child, group) = groups.spawn(&mut cmd).expect("sh runs");
        let mut out = child.stdout.take().expect("piped");
        let mut line = String::new();
        use tokio::io::AsyncBufReadExt;
        tokio::io::BufReader::new(&mut out).read_line(&mut line).await.expect("reads the pid");
        let grandchild: i32 = line.trim().parse().expect("a pid");
        assert!(alive(grandchild));
        assert_eq!(groups.len(), 1);
        group.kill_now();
        let _ = child.wait().await;
        group.kill();
        assert!(groups.is_empty());
        for _ in 0..100 {
            if !alive(grandchild) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the grandchild {grandchild} outlived its group");
    }
}

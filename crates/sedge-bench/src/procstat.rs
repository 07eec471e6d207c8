//! CPU time and memory of a local node and its workers, read from `/proc`
//! (Linux). Elsewhere, or when the process is gone, there is nothing to
//! read and resources are simply not reported.
//!
//! CPU is counted as the change over a step of utime+stime: the node's own
//! for "node", and for "workers" every descendant's plus the node's
//! cutime+cstime (workers that exited and were reaped during the step).
//! Memory is the peak of VmRSS sums seen by a sampling thread.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A process tree's figures at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TreeSample {
    pub node_cpu_s: f64,
    pub workers_cpu_s: f64,
    pub node_rss: u64,
    pub workers_rss: u64,
    pub workers: u32,
}

/// What a step cost the node, its workers and the generator itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub node_cpu_s: f64,
    pub workers_cpu_s: f64,
    pub node_peak_rss_mib: f64,
    pub workers_peak_rss_mib: f64,
    pub workers_peak: u32,
    /// CPU seconds the bench process spent (load generation, sampling).
    pub bench_cpu_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    ppid: u32,
    /// utime + stime, in clock ticks.
    own: u64,
    /// cutime + cstime: reaped children.
    reaped: u64,
}

/// `/proc/PID/stat`; the command name may hold spaces and parentheses, so
/// fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok()).map(|v| v.max(0) as u64);
    Some(Stat { ppid: u32::try_from(n(1)?).ok()?, own: n(11)? + n(12)?, reaped: n(13)? + n(14)? })
}

fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// VmRSS in bytes (absent for zombies and kernel threads).
fn rss(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            // The Linux default on every common architecture.
            .unwrap_or(100.0)
    })
}

/// Direct children, from the kernel's per-thread `children` lists when it
/// has them, else by scanning every process's parent.
fn children(pid: u32) -> Vec<u32> {
    let task_dir = format!("/proc/{pid}/task");
    if let Ok(tasks) = std::fs::read_dir(&task_dir) {
        let mut out = Vec::new();
        let mut listed = false;
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                listed = true;
                out.extend(text.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
            }
        }
        if listed {
            return out;
        }
    }
    let Ok(all) = std::fs::read_dir("/proc") else { return Vec::new() };
    all.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| stat(p).is_some_and(|s| s.ppid == pid))
        .collect()
}

fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children(p) {
            if !out.contains(&c) && c != pid {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

/// The node `pid` and its descendants now; `None` if it cannot be read.
pub fn sample(pid: u32) -> Option<TreeSample> {
    let tick = ticks_per_second();
    let node = stat(pid)?;
    let mut s = TreeSample {
        node_cpu_s: node.own as f64 / tick,
        node_rss: rss(pid).unwrap_or(0),
        workers_cpu_s: node.reaped as f64 / tick,
        ..TreeSample::default()
    };
    for child in descendants(pid) {
        if let Some(c) = stat(child) {
            s.workers_cpu_s += (c.own + c.reaped) as f64 / tick;
        }
        if let Some(r) = rss(child) {
            s.workers_rss += r;
            s.workers += 1;
        }
    }
    Some(s)
}

/// CPU seconds this process has used so far.
pub fn own_cpu_s() -> Option<f64> {
    if !Path::new("/proc/self/stat").exists() {
        return None;
    }
    stat(std::process::id()).map(|s| s.own as f64 / ticks_per_second())
}

/// CPU seconds of this process's children that have exited and been waited for.
pub fn reaped_children_cpu_s() -> Option<f64> {
    if !Path::new("/proc/self/stat").exists() {
        return None;
    }
    stat(std::process::id()).map(|s| s.reaped as f64 / ticks_per_second())
}

/// Samples a process tree on a thread of its own for the length of a step.
pub struct Sampler {
    pid: u32,
    first: Option<TreeSample>,
    bench_first: Option<f64>,
    /// Dropping it tells the thread to stop at once.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<TreeSample>>,
}

impl Sampler {
    pub fn start(pid: u32, every: Duration) -> Self {
        let first = sample(pid);
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sedge-bench-proc".into())
            .spawn(move || {
                let mut peak = TreeSample::default();
                loop {
                    if let Some(s) = sample(pid) {
                        peak.node_rss = peak.node_rss.max(s.node_rss);
                        peak.workers_rss = peak.workers_rss.max(s.workers_rss);
                        peak.workers = peak.workers.max(s.workers);
                    }
                    if stopped.recv_timeout(every) != Err(RecvTimeoutError::Timeout) {
                        return peak;
                    }
                }
            })
            .ok();
        Self { pid, first, bench_first: own_cpu_s(), stop: Some(stop), thread }
    }

    /// Stops sampling; `None` when the tree could not be read.
    pub fn finish(mut self) -> Option<Resources> {
        self.stop = None;
        let mut peak = self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default();
        let (first, last) = (self.first?, sample(self.pid)?);
        peak.node_rss = peak.node_rss.max(last.node_rss);
        peak.workers_rss = peak.workers_rss.max(last.workers_rss);
        peak.workers = peak.workers.max(last.workers);
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        Some(Resources {
            node_cpu_s: (last.node_cpu_s - first.node_cpu_s).max(0.0),
            // Workers that exited before being reaped can make this dip.
            workers_cpu_s: (last.workers_cpu_s - first.workers_cpu_s).max(0.0),
            node_peak_rss_mib: mib(peak.node_rss),
            workers_peak_rss_mib: mib(peak.workers_rss),
            workers_peak: peak.workers,
            bench_cpu_s: match (self.bench_first, own_cpu_s()) {
                (Some(a), Some(b)) => (b - a).max(0.0),
                _ => 0.0,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "4242 (my (odd) name) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0 99 1000 200";
        let s = parse_stat(line).expect("parses");
        assert_eq!(s, Stat { ppid: 17, own: 300, reaped: 10 });
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_and_a_child_are_seen() {
        if !Path::new("/proc/self/stat").exists() {
            return;
        }
        let mut child = std::process::Command::new("sleep").arg("5").spawn().expect("spawn sleep");
        let me = std::process::id();
        let seen = descendants(me).contains(&child.id());
        let s = sample(me).expect("own sample");
        let _ = child.kill();
        let _ = child.wait();
        assert!(seen, "the child is a descendant");
        assert!(s.node_rss > 0 && s.workers_rss > 0 && s.workers >= 1, "{s:?}");
    }
}

//! Python workers forked from their function's zygote: the module loads
//! once, further workers fork from the process that loaded it, each in its
//! own process group (and, sandboxed, its own cgroup); a module that cannot
//! be forked safely keeps starting fresh processes.

use std::time::Duration;

use crate::support::{FnDir, Node};

// Pids as each process sees them: sandboxed, a fresh worker is pid 1 of its
// namespace, a forked one a child of its zygote there.
const FORKED: &str = "import os, time\n\nLOADED_IN = os.getpid()\n\n\
def handle(req):\n    time.sleep(float(req.text or 0))\n    \
return {'pid': os.getpid(), 'loaded_in': LOADED_IN, 'pgid': os.getpgid(0),\n            \
'ppid': os.getppid(), 'cgroup': open('/proc/self/cgroup').read()}\n";

fn logs(node: &Node, name: &str) -> String {
    let out = node.cli(&["logs", name]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn further_workers_fork_from_the_zygote_each_in_its_own_group_and_cgroup() {
    forks_from_the_zygote(&Node::start(), true);
}

#[test]
fn unsandboxed_workers_fork_from_the_zygote_too() {
    let tmp = tempfile::tempdir().expect("tempdir");
    forks_from_the_zygote(&Node::start_with(&tmp.path().join("data"), &["--no-sandbox"]), false);
}

fn forks_from_the_zygote(node: &Node, sandboxed: bool) {
    let f = FnDir::python("forked", "[scale]\nmax = 3\n[limits]\nmemory = \"256MiB\"\n", FORKED);
    node.deploy(f.path());
    let first = node.post("/function/forked", b"").json();
    assert_eq!(first["loaded_in"], first["pid"], "the first worker loads the module itself: {first}");
    node.wait_for("the zygote", Duration::from_secs(30), |n| logs(n, "forked").contains("zygote ready"));
    let out = node.cli(&["scale", "forked", "--replicas", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    node.wait_for("three workers", Duration::from_secs(20), |n| {
        n.describe("forked")["availableReplicas"].as_u64() == Some(3)
    });
    let answers: Vec<serde_json::Value> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..3).map(|_| s.spawn(|| node.post("/function/forked", b"1"))).collect();
        calls.into_iter().map(|c| c.join().expect("thread").json()).collect()
    });
    let forked: Vec<&serde_json::Value> = answers.iter().filter(|a| a["loaded_in"] != a["pid"]).collect();
    assert_eq!(forked.len(), 2, "two workers forked from the zygote: {answers:?}");
    for a in &forked {
        assert_eq!(a["ppid"], a["loaded_in"], "the zygote is its parent: {a}");
        assert_eq!(a["pgid"], a["pid"], "a process group of its own: {a}");
    }
    assert_eq!(forked[0]["loaded_in"], forked[1]["loaded_in"], "one zygote");
    assert_ne!(forked[0]["pid"], forked[1]["pid"]);
    if sandboxed {
        assert_ne!(forked[0]["cgroup"], forked[1]["cgroup"], "each worker in its own cgroup");
    }
    assert_eq!(node.describe("forked")["sedge"]["lastColdStart"]["kind"], "zygote");
    if !sandboxed {
        // Pids are the host's: the zygote keeps one more child forked ahead
        // (its standby), and the next worker the pool adds is that process.
        let zygote = forked[0]["ppid"].as_u64().expect("ppid");
        let serving: Vec<u64> = forked.iter().filter_map(|a| a["pid"].as_u64()).collect();
        let mut standby = None;
        node.wait_for("a standby forked ahead", Duration::from_secs(20), |_| {
            standby = children_of(zygote).into_iter().find(|p| !serving.contains(p));
            standby.is_some()
        });
        for (replicas, want) in [("1", 1), ("2", 2)] {
            let out = node.cli(&["scale", "forked", "--replicas", replicas]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            node.wait_for("the workers", Duration::from_secs(20), |n| {
                n.describe("forked")["availableReplicas"].as_u64() == Some(want)
            });
        }
        let pids: Vec<u64> = std::thread::scope(|s| {
            let calls: Vec<_> = (0..2).map(|_| s.spawn(|| node.post("/function/forked", b"1"))).collect();
            calls.into_iter().filter_map(|c| c.join().expect("thread").json()["pid"].as_u64()).collect()
        });
        assert!(pids.contains(&standby.expect("standby")), "the added worker is the standby {standby:?}: {pids:?}");
    }
}

/// Host pids whose parent is `parent`.
fn children_of(parent: u64) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // After the name in parentheses: state, then the parent's pid.
            stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').nth(1)?.parse::<u64>().ok()) == Some(parent)
        })
        .collect()
}

#[test]
fn a_module_that_starts_a_thread_at_import_keeps_starting_fresh_workers() {
    let node = Node::start();
    let code = "import os, threading, time\nthreading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n\
LOADED_IN = os.getpid()\n\ndef handle(req):\n    time.sleep(float(req.text or 0))\n    \
return {'pid': os.getpid(), 'loaded_in': LOADED_IN}\n";
    let f = FnDir::python("threaded", "[scale]\nmax = 2\n", code);
    node.deploy(f.path());
    assert_eq!(node.post("/function/threaded", b"").status, 200);
    node.wait_for("the refusal", Duration::from_secs(30), |n| logs(n, "threaded").contains("not from a zygote"));
    assert!(logs(&node, "threaded").contains("Python threads"), "{}", logs(&node, "threaded"));
    let answers: Vec<serde_json::Value> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..2).map(|_| s.spawn(|| node.post("/function/threaded", b"1"))).collect();
        calls.into_iter().map(|c| c.join().expect("thread").json()).collect()
    });
    for a in &answers {
        assert_eq!(a["loaded_in"], a["pid"], "each loaded its own module: {a}");
    }
}

#[test]
fn a_redeploy_lets_forked_workers_finish_what_they_accepted() {
    let node = Node::start();
    let f = FnDir::python("redo", "[scale]\nmax = 2\n", FORKED);
    node.deploy(f.path());
    assert_eq!(node.post("/function/redo", b"").status, 200);
    node.wait_for("the zygote", Duration::from_secs(30), |n| logs(n, "redo").contains("zygote ready"));
    let out = node.cli(&["scale", "redo", "--replicas", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    node.wait_for("two workers", Duration::from_secs(20), |n| {
        n.describe("redo")["availableReplicas"].as_u64() == Some(2)
    });
    let answers: Vec<serde_json::Value> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..2).map(|_| s.spawn(|| node.post("/function/redo", b"2"))).collect();
        std::thread::sleep(Duration::from_millis(500));
        // A new version replaces this one (and its zygote) while both calls run.
        std::fs::write(f.path().join("extra.txt"), "v2").expect("written");
        node.deploy(f.path());
        calls
            .into_iter()
            .map(|c| {
                let a = c.join().expect("thread");
                assert_eq!(a.status, 200, "{}", a.text());
                a.json()
            })
            .collect()
    });
    assert!(answers.iter().any(|a| a["loaded_in"] != a["pid"]), "one call ran on a forked worker: {answers:?}");
}

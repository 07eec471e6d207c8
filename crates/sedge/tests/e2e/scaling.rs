//! Scale to zero and back, growth under load, and pinned replicas.

use std::time::Duration;

use crate::support::{sample, FnDir, Node};

const SLEEPY: &str = "import time\n\ndef handle(req):\n    time.sleep(float(req.text or 0))\n    return 'ok'\n";

fn available(node: &Node, name: &str) -> u64 {
    node.describe(name)["availableReplicas"].as_u64().expect("availableReplicas")
}

#[test]
fn idle_functions_scale_to_zero_and_wake_on_demand() {
    let node = Node::start();
    let f = FnDir::python("nap", "[scale]\nmin = 0\nidle = \"1s\"\n", SLEEPY);
    node.deploy(f.path());
    assert_eq!(node.post("/function/nap", b"").status, 200);
    node.wait_for("scale to zero", Duration::from_secs(20), |n| available(n, "nap") == 0);
    // A request at zero waits for the first worker rather than failing.
    let a = node.post("/function/nap", b"");
    assert_eq!(a.status, 200, "{}", a.text());
    let metrics = node.get("/metrics").text();
    let cold = sample(&metrics, "sedge_cold_starts_total", &[("function_name", "nap.openfaas-fn")]);
    assert_eq!(cold, Some(2.0), "{metrics}");
}

#[test]
fn pools_grow_with_concurrent_demand_up_to_max() {
    let node = Node::start();
    let f = FnDir::python("wide", "[scale]\nmax = 3\n", SLEEPY);
    node.deploy(f.path());
    std::thread::scope(|s| {
        let calls: Vec<_> = (0..3).map(|_| s.spawn(|| node.post("/function/wide", b"2"))).collect();
        node.wait_for("three workers", Duration::from_secs(20), |n| available(n, "wide") == 3);
        for c in calls {
            assert_eq!(c.join().expect("thread").status, 200);
        }
    });
    assert!(available(&node, "wide") <= 3);
}

#[test]
fn scale_replicas_pins_the_count() {
    let node = Node::start();
    let f = FnDir::python("pinned", "", SLEEPY);
    node.deploy(f.path());
    let out = node.cli(&["scale", "pinned", "--replicas", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    node.wait_for("two replicas", Duration::from_secs(20), |n| available(n, "pinned") == 2);
    let out = node.cli(&["scale", "pinned", "--replicas", "0"]);
    assert!(out.status.success());
    node.wait_for("zero replicas", Duration::from_secs(20), |n| available(n, "pinned") == 0);
    assert_eq!(node.post("/function/pinned", b"").status, 200);
}

/// Two calls that each wait for the other to arrive: they only both finish
/// if one worker really serves them at the same time.
const RENDEZVOUS: &str = r#"
import os, threading

meet = threading.Barrier(2, timeout=10)
# Not the pid: sandboxed workers all have the same one in their namespaces.
WORKER = os.urandom(8).hex()

def handle(req):
    meet.wait()
    return WORKER
"#;

#[test]
fn one_worker_serves_concurrency_requests_at_once() {
    let node = Node::start();
    let f = FnDir::python("pair", "[scale]\nmax = 1\nconcurrency = 2\n", RENDEZVOUS);
    node.deploy(f.path());
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| node.post("/function/pair", b""));
        let b = s.spawn(|| node.post("/function/pair", b""));
        (a.join().expect("thread"), b.join().expect("thread"))
    });
    assert_eq!((a.status, b.status), (200, 200), "{} / {}", a.text(), b.text());
    assert_eq!(a.text(), b.text(), "both ran in the one worker");
    assert_eq!(available(&node, "pair"), 1);
}

fn spare_starts(node: &Node, name: &str) -> u64 {
    node.describe(name)["sedge"]["spareStarts"].as_u64().expect("spareStarts")
}

#[test]
fn cold_starts_take_a_waiting_interpreter_unless_the_env_needs_a_fresh_one() {
    let node = Node::start();
    let code =
        "import os, sys\n\ndef handle(req):\n    return os.environ.get('MARK', '') + ' ' + ' '.join(sys.argv[1:])\n";
    let f = FnDir::python("warm", "[scale]\nidle = \"1s\"\n[env]\nMARK = \"m1\"\n", code);
    let fresh = FnDir::python("fresh", "[scale]\nidle = \"1s\"\n[env]\nPYTHONOPTIMIZE = \"1\"\n", code);
    node.deploy(f.path());
    node.deploy(fresh.path());
    // Each round ends at zero workers, so the next call is a cold start; a
    // spare is waiting by then (one starts whenever one is taken).
    node.wait_for("a cold start from a spare", Duration::from_secs(60), |n| {
        let a = n.post("/function/warm", b"");
        assert_eq!(a.status, 200, "{}", a.text());
        assert!(a.text().starts_with("m1 "), "the function's env reaches it: {}", a.text());
        assert!(a.text().ends_with(" handler.handle"), "argv as if started for it: {}", a.text());
        n.wait_for("zero", Duration::from_secs(20), |n| available(n, "warm") == 0);
        spare_starts(n, "warm") >= 1
    });
    for _ in 0..2 {
        assert_eq!(node.post("/function/fresh", b"").status, 200);
        node.wait_for("zero", Duration::from_secs(20), |n| available(n, "fresh") == 0);
    }
    assert_eq!(spare_starts(&node, "fresh"), 0, "PYTHON* variables need a fresh interpreter");
}

#[test]
fn a_cold_start_reports_its_phases_in_describe_and_the_metrics() {
    let node = Node::start();
    let code = "import time\ntime.sleep(0.2)\n\ndef handle(req):\n    return 'ok'\n";
    let f = FnDir::python("phased", "", code);
    node.deploy(f.path());
    assert_eq!(node.post("/function/phased", b"").status, 200);
    let last = &node.describe("phased")["sedge"]["lastColdStart"];
    let ms = |k: &str| last[k].as_f64().unwrap_or_else(|| panic!("{k} in {last}"));
    assert!(ms("importsMs") >= 200.0, "the module's sleep is its import time: {last}");
    assert!(ms("totalMs") >= ms("importsMs") + ms("processMs"), "{last}");
    assert!(["spare", "fresh", "zygote"].contains(&last["kind"].as_str().unwrap_or("")), "{last}");
    let metrics = node.get("/metrics").text();
    for phase in ["process", "imports", "model", "first_answer"] {
        let labels = [("function_name", "phased.openfaas-fn"), ("phase", phase)];
        assert_eq!(sample(&metrics, "sedge_cold_start_seconds_count", &labels), Some(1.0), "{phase} in\n{metrics}");
    }
    let labels = [("function_name", "phased.openfaas-fn"), ("phase", "imports"), ("le", "0.15")];
    assert_eq!(sample(&metrics, "sedge_cold_start_seconds_bucket", &labels), Some(0.0), "{metrics}");
}

#[test]
fn describe_shows_the_cpu_budget_of_an_ml_function() {
    let node = Node::start();
    let f = FnDir::python("ml", "[scale]\ncpu = 1.0\nmax = 4\n", "def handle(req):\n    return 'ok'\n");
    node.deploy(f.path());
    let scale = &node.describe("ml")["sedge"]["scale"];
    assert_eq!(scale["cpu"].as_f64(), Some(1.0), "{scale}");
    assert_eq!(scale["target"].as_u64(), Some(1), "{scale}");
    let plain = FnDir::python("plain", "", "def handle(req):\n    return 'ok'\n");
    node.deploy(plain.path());
    assert!(node.describe("plain")["sedge"]["scale"]["cpu"].is_null());
}

#[test]
fn a_worker_that_would_pass_the_node_s_memory_budget_does_not_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = Node::start_with(&tmp.path().join("data"), &["--memory", "200MiB"]);
    let small = FnDir::python("small", "[limits]\nmemory = \"128MiB\"\n[scale]\nmax = 2\n", SLEEPY);
    let big = FnDir::python("big", "[limits]\nmemory = \"128MiB\"\n", SLEEPY);
    node.deploy(small.path());
    node.deploy(big.path());
    node.wait_for("small's worker", Duration::from_secs(20), |n| available(n, "small") == 1);
    // small's one worker holds 128 of the 200 MiB: big's cannot start.
    node.cli(&["scale", "big", "--replicas", "0"]);
    node.wait_for("big at zero", Duration::from_secs(20), |n| available(n, "big") == 0);
    let refused = node.post("/function/big", b"");
    assert_eq!(refused.status, 502, "{}", refused.text());
    assert!(refused.error().contains("memory budget (200 MiB)"), "{}", refused.text());
    // Once small is at zero, big starts.
    node.cli(&["scale", "small", "--replicas", "0"]);
    node.wait_for("small at zero", Duration::from_secs(20), |n| available(n, "small") == 0);
    node.wait_for("big to start", Duration::from_secs(20), |n| n.post("/function/big", b"").status == 200);
}

const MIB: u64 = 1024 * 1024;

fn logs(node: &Node, name: &str) -> String {
    String::from_utf8_lossy(&node.cli(&["logs", name]).stdout).into_owned()
}

/// Describe's `memoryBudget`, checked to add up: what each kind holds sums
/// to what is held, and that with what is free to the budget.
fn memory_budget(node: &Node, name: &str) -> serde_json::Value {
    let m = node.describe(name)["sedge"]["memoryBudget"].clone();
    let kinds = ["worker", "zygote", "standby", "spare"];
    let sum = |of: &str| kinds.iter().map(|k| m[of][k].as_u64().expect("bytes by kind")).sum::<u64>();
    let (bytes, held, free) = (m["bytes"].as_u64(), m["held"].as_u64(), m["free"].as_u64());
    assert_eq!(Some(sum("node")), held, "{m}");
    assert_eq!(bytes, held.zip(free).map(|(h, f)| h + f), "{m}");
    assert!(held <= bytes, "held past the budget: {m}");
    for k in kinds {
        assert!(m["function"][k].as_u64() <= m["node"][k].as_u64(), "{m}");
    }
    m
}

#[test]
fn the_memory_budget_counts_zygotes_standbys_and_spares_and_gives_them_up_for_workers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Room for two workers of 128 MiB and 4 MiB more.
    let node = Node::start_with(&tmp.path().join("data"), &["--memory", "260MiB"]);
    let f = FnDir::python("tight", "[limits]\nmemory = \"128MiB\"\n[scale]\nmax = 2\n", SLEEPY);
    node.deploy(f.path());
    assert_eq!(node.post("/function/tight", b"").status, 200);
    // The zygote is held at the worker's limit while its module loads
    // (which leaves no room for a spare), then at its size.
    node.wait_for("the zygote counted at its size", Duration::from_secs(30), |n| {
        let zygote = memory_budget(n, "tight")["function"]["zygote"].as_u64().unwrap_or(0);
        zygote > 0 && zygote < 128 * MIB
    });
    // The spare was asked for while the zygote held its limit, the standby
    // once it settled (128 MiB more fits neither way), and nothing asks
    // again until a worker starts: no wait can change this.
    let m = memory_budget(&node, "tight");
    assert_eq!(m["function"]["worker"], 128 * MIB, "{m}");
    assert_eq!(m["node"]["standby"], 0, "128 MiB more for a standby does not fit: {m}");
    assert_eq!(m["node"]["spare"], 0, "nor a spare: {m}");
    assert_eq!(node.post("/function/tight", b"").status, 200);
    let metrics = node.get("/metrics").text();
    assert_eq!(sample(&metrics, "sedge_memory_budget_bytes", &[("kind", "budget")]), Some((260 * MIB) as f64));
    assert_eq!(sample(&metrics, "sedge_memory_budget_bytes", &[("kind", "worker")]), Some((128 * MIB) as f64));
    // A second worker fits only if the zygote (no worker forked from it
    // lives) is given up: it is, and the worker starts.
    node.cli(&["scale", "tight", "--replicas", "2"]);
    node.wait_for("two workers", Duration::from_secs(20), |n| available(n, "tight") == 2);
    let m = memory_budget(&node, "tight");
    assert_eq!(m["function"]["worker"], 256 * MIB, "{m}");
    assert_eq!(m["function"]["zygote"], 0, "{m}");
    node.wait_for("the zygote refused", Duration::from_secs(10), |n| logs(n, "tight").contains("no zygote for now"));
    // A worker that does not fit even alone is refused at once, as before.
    node.cli(&["scale", "tight", "--replicas", "0"]);
    node.wait_for("tight at zero", Duration::from_secs(20), |n| available(n, "tight") == 0);
    let huge = FnDir::python("huge", "[limits]\nmemory = \"300MiB\"\n", SLEEPY);
    node.deploy(huge.path());
    node.cli(&["scale", "huge", "--replicas", "0"]);
    node.wait_for("huge at zero", Duration::from_secs(20), |n| available(n, "huge") == 0);
    let refused = node.post("/function/huge", b"");
    assert_eq!(refused.status, 502, "{}", refused.text());
    assert!(
        refused.error().contains("memory budget (260 MiB) has no room for another worker of 300 MiB"),
        "{}",
        refused.text()
    );
    memory_budget(&node, "huge");
}

#[test]
fn a_zygote_s_standby_is_made_once_the_zygote_is_counted_at_its_size() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A worker, a zygote at its limit and a standby (3 × 128 MiB) do not
    // fit in 320 MiB; with the zygote at its size they do.
    let node = Node::start_with(&tmp.path().join("data"), &["--memory", "320MiB"]);
    let f = FnDir::python("roomy", "[limits]\nmemory = \"128MiB\"\n", SLEEPY);
    node.deploy(f.path());
    node.wait_for("a standby beside the zygote", Duration::from_secs(30), |n| {
        memory_budget(n, "roomy")["function"]["standby"].as_u64().unwrap_or(0) > 0
    });
    let m = memory_budget(&node, "roomy");
    let zygote = m["function"]["zygote"].as_u64().unwrap_or(0);
    assert!(zygote > 0 && zygote < 128 * MIB, "the zygote at its size: {m}");
    assert_eq!(m["function"]["worker"], 128 * MIB, "{m}");
}

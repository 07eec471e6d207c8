//! Crashes, timeouts, full queues, oversized bodies, broken modules: each
//! answers with its status and a message, and the function keeps serving.

use std::time::Duration;

use crate::support::{FnDir, Node};

const MISBEHAVING: &str = r#"
import os, time

# Workers in pid namespaces of their own all have the same small pid, so a
# worker is told apart by a token drawn when its process loads the module.
WORKER = os.urandom(8).hex()

def handle(req):
    if req.text == "crash":
        os._exit(7)
    if req.text.startswith("sleep"):
        time.sleep(float(req.text.split()[1]))
    if req.text == "raise":
        raise ValueError("bad pixels")
    return "worker %s" % WORKER
"#;

#[test]
fn a_crash_answers_502_and_the_worker_is_replaced() {
    let node = Node::start();
    let f = FnDir::python("crashy", "", MISBEHAVING);
    node.deploy(f.path());
    let before = node.post("/function/crashy", b"hi").text();
    let a = node.post("/function/crashy", b"crash");
    assert_eq!(a.status, 502, "{}", a.text());
    let e = a.error();
    assert!(e.contains("crashy") && e.contains('7'), "{e}");
    let after = node.post("/function/crashy", b"hi");
    assert_eq!(after.status, 200, "{}", after.text());
    assert_ne!(after.text(), before, "a new worker process serves after the crash");
}

#[test]
fn an_exception_answers_500_with_its_message() {
    let node = Node::start();
    let f = FnDir::python("raiser", "", MISBEHAVING);
    node.deploy(f.path());
    let a = node.post("/function/raiser", b"raise");
    assert_eq!(a.status, 500);
    assert!(a.error().contains("ValueError: bad pixels"), "{}", a.text());
    assert_eq!(node.post("/function/raiser", b"ok").status, 200);
}

#[test]
fn a_timeout_answers_504_and_kills_the_worker() {
    let node = Node::start();
    let f = FnDir::python("slow", "[limits]\ntimeout = \"500ms\"\n", MISBEHAVING);
    node.deploy(f.path());
    let before = node.post("/function/slow", b"hi").text();
    let a = node.post("/function/slow", b"sleep 30");
    assert_eq!(a.status, 504, "{}", a.text());
    assert!(a.error().contains("slow"), "{}", a.text());
    let after = node.post("/function/slow", b"hi");
    assert_eq!(after.status, 200, "{}", after.text());
    assert_ne!(after.text(), before, "the timed-out worker must not serve again");
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let node = Node::start();
    let f = FnDir::python("busy", "[limits]\nqueue = 1\n[scale]\nmax = 1\n", MISBEHAVING);
    node.deploy(f.path());
    std::thread::scope(|s| {
        // One request runs, one waits in the queue; the third finds it full.
        let running = s.spawn(|| node.post("/function/busy", b"sleep 2"));
        node.wait_for("the first request to be running", Duration::from_secs(10), |n| {
            n.describe("busy")["sedge"]["workers"]["busy"] == 1
        });
        let queued = s.spawn(|| node.post("/function/busy", b"hi"));
        node.wait_for("the second request to queue", Duration::from_secs(10), |n| {
            n.describe("busy")["sedge"]["queued"] == 1
        });
        let third = node.post("/function/busy", b"hi");
        assert_eq!(third.status, 429, "{}", third.text());
        assert_eq!(third.header("retry-after"), Some("1"));
        assert!(third.error().contains("busy"));
        assert_eq!(running.join().expect("thread").status, 200);
        assert_eq!(queued.join().expect("thread").status, 200);
    });
}

#[test]
fn an_oversized_body_answers_413() {
    let node = Node::start();
    let f = FnDir::python("small", "[limits]\nmax_body = \"1KiB\"\n", MISBEHAVING);
    node.deploy(f.path());
    let a = node.post("/function/small", &vec![b'x'; 4096]);
    assert_eq!(a.status, 413, "{}", a.text());
    assert!(a.error().contains("1024"), "{}", a.text());
    assert_eq!(node.post("/function/small", &vec![b'x'; 1024]).status, 200);
}

#[test]
fn a_module_still_loading_at_the_start_timeout_is_refused_quoting_its_output() {
    let node = Node::start();
    let code = "import time\nprint('warming the cache', flush=True)\ntime.sleep(300)\n\ndef handle(req):\n    return 'never'\n";
    // The start timeout is the function's timeout, but never under 10 s.
    let f = FnDir::python("stuck", "[limits]\ntimeout = \"1s\"\n", code);
    let out = node.cli(&["deploy", "--wait", f.path().to_str().expect("path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("422") && err.contains("not ready within 10s"), "{err}");
    assert!(err.contains("warming the cache"), "the worker's output is quoted: {err}");
}

#[test]
fn a_module_that_does_not_load_is_reported() {
    let node = Node::start();
    let f = FnDir::python("broken", "", "import no_such_module\n");
    let out = node.cli(&["deploy", "--wait", f.path().to_str().expect("path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("422") && err.contains("no_such_module"), "{err}");
    // Without --wait the deploy lands; invoking says why it cannot run.
    let out = node.cli(&["deploy", f.path().to_str().expect("path")]);
    assert!(out.status.success());
    let a = node.post("/function/broken", b"");
    assert_eq!(a.status, 502);
    assert!(a.error().contains("no_such_module"), "{}", a.text());
}

//! Restarts keep every function; a second node cannot share a data dir;
//! SIGTERM lets requests in flight finish and exits 0.

use std::time::Duration;

use crate::support::{FnDir, Node, BIN};

#[test]
fn functions_survive_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let node = Node::start_on(&data);
    let f = FnDir::python("durable", "", "def handle(req):\n    return 'still here'\n");
    node.deploy(f.path());
    drop(f);
    let status = node.terminate();
    assert!(status.success(), "exit {status}");

    let node = Node::start_on(&data);
    let a = node.post("/function/durable", b"");
    assert_eq!((a.status, a.text().as_str()), (200, "still here"));
}

#[test]
fn a_second_node_on_the_same_data_dir_is_refused() {
    let node = Node::start();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&node.data)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another sedge node"), "{err}");
    assert_eq!(node.get("/healthz").status, 200);
}

#[test]
fn sigterm_lets_requests_in_flight_finish() {
    let node = Node::start();
    let f =
        FnDir::python("finisher", "", "import time\n\ndef handle(req):\n    time.sleep(1)\n    return 'finished'\n");
    node.deploy(f.path());
    let url = format!("{}/function/finisher", node.url);
    let call = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut r = agent.post(&url).send("x").expect("answer before exit");
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default())
    });
    node.wait_for("the request to be running", Duration::from_secs(10), |n| {
        n.describe("finisher")["sedge"]["workers"]["busy"] == 1
    });
    let pid = node.pid();
    let status = node.terminate();
    assert!(status.success(), "exit {status}");
    assert_eq!(call.join().expect("thread"), (200, "finished".to_owned()));
    // No worker outlives the node.
    let out = std::process::Command::new("pgrep").args(["-P", &pid.to_string()]).output().expect("pgrep");
    assert!(out.stdout.is_empty(), "children left: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn a_relative_data_directory_works() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = Node::start_in(tmp.path(), std::path::Path::new("rel/data"));
    let f = FnDir::python("relative", "", "def handle(req):\n    return 'found'\n");
    node.deploy(f.path());
    let a = node.post("/function/relative", b"");
    assert_eq!((a.status, a.text().as_str()), (200, "found"));
    assert!(tmp.path().join("rel/data/sedge.db").is_file());
}

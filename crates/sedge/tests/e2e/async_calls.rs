//! Asynchronous calls (`/async-function`, `/system/calls`, `/system/tasks`)
//! against the real node: callbacks to a local receiver, kill -9 mid-load,
//! the dead-letter list, idempotency, a full disk.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{FnDir, Node};

/// A callback as the receiver got it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// A local HTTP server that records every POST and answers 200 (or, for
/// the first `refuse` requests, 500).
pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    pub fn start(refuse: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let url = format!("http://{}/done", listener.local_addr().expect("addr"));
        let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let seen = got.clone();
        std::thread::spawn(move || {
            let mut refused = 0;
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some(delivery) = read_request(&mut stream) else { continue };
                let status = if refused < refuse {
                    refused += 1;
                    "500 Internal Server Error"
                } else {
                    seen.lock().expect("lock").push(delivery);
                    "200 OK"
                };
                let _ = write!(stream, "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            }
        });
        Self { url, got }
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().expect("lock").clone()
    }

    pub fn wait_for(&self, what: &str, limit: Duration, mut check: impl FnMut(&[Delivery]) -> bool) {
        let start = std::time::Instant::now();
        while !check(&self.deliveries()) {
            assert!(
                start.elapsed() < limit,
                "timed out waiting for {what}; got {} deliveries",
                self.deliveries().len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn read_request(stream: &mut std::net::TcpStream) -> Option<Delivery> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Delivery { headers, body })
}

/// Echoes the body back, upper-cased, after a short wait, with a header of its own.
const SLOW_ECHO: &str = r#"
import time
import sedge

def handle(req):
    time.sleep(0.05)
    return sedge.Response(req.body.upper(), headers={"x-echo": "yes", "content-type": "text/plain"})
"#;

pub(crate) fn submit(node: &Node, function: &str, body: &str, headers: &[(&str, &str)]) -> Option<String> {
    // A refused connection (the node is down) is not an acceptance.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut req = ureq::http::Request::builder().method("POST").uri(format!("{}/async-function/{function}", node.url));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = agent.run(req.body(body.as_bytes().to_vec()).ok()?).ok()?;
    if resp.status().as_u16() != 202 {
        return None;
    }
    resp.headers().get("x-call-id").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

#[test]
fn every_accepted_call_arrives_after_a_kill_9_mid_load() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let receiver = Receiver::start(0);
    let f = FnDir::python("slow-echo", "[scale]\nmax = 2\n[async]\nconcurrency = 2\n", SLOW_ECHO);
    let node = Node::start_on(&data);
    node.deploy(f.path());
    let url = node.url.clone();
    let cb = receiver.url.clone();
    // Submit from another thread while this one kills the node under it.
    let submitter = {
        let node_url = url.clone();
        std::thread::spawn(move || {
            let probe = NodeUrl(node_url);
            let mut accepted = Vec::new();
            for i in 0..150 {
                let body = format!("call-{i}");
                if let Some(id) = probe.submit(&body, &cb) {
                    accepted.push((id, body));
                }
            }
            accepted
        })
    };
    receiver.wait_for("some callbacks before the kill", Duration::from_secs(120), |d| d.len() >= 10);
    node.kill9();
    let delivered_before = receiver.deliveries().len();
    let mut accepted = submitter.join().expect("submitter");
    assert!(accepted.len() >= 10, "only {} accepted before the kill", accepted.len());
    eprintln!("killed with {} calls accepted, {delivered_before} delivered", accepted.len());
    let node = Node::start_on(&data);
    // Calls accepted after the restart count too.
    for i in 0..10 {
        let body = format!("after-{i}");
        let id = submit(&node, "slow-echo", &body, &[("X-Callback-Url", &receiver.url)]).expect("accepted");
        accepted.push((id, body));
    }
    let want: HashMap<String, String> = accepted.iter().cloned().collect();
    receiver.wait_for("every accepted call's callback", Duration::from_secs(300), |d| {
        let ids: std::collections::HashSet<&str> =
            d.iter().filter_map(|x| x.headers.get("x-call-id").map(String::as_str)).collect();
        want.keys().all(|id| ids.contains(id.as_str()))
    });
    for d in receiver.deliveries() {
        let id = d.headers.get("x-call-id").expect("x-call-id");
        let Some(body) = want.get(id) else { continue };
        assert_eq!(String::from_utf8_lossy(&d.body), body.to_uppercase(), "call {id}");
        assert_eq!(d.headers.get("x-function-status").map(String::as_str), Some("200"));
        assert_eq!(d.headers.get("x-function-name").map(String::as_str), Some("slow-echo"));
        assert_eq!(d.headers.get("x-echo").map(String::as_str), Some("yes"), "the function's own headers");
        assert!(d.headers.get("x-duration-seconds").and_then(|v| v.parse::<f64>().ok()).is_some());
    }
    // Every accepted call is done in the store, none left queued or running.
    let done = node.get("/system/calls?function=slow-echo&state=done&limit=10000").json();
    let done: std::collections::HashSet<String> =
        done.as_array().expect("list").iter().filter_map(|c| c["id"].as_str().map(str::to_owned)).collect();
    assert!(want.keys().all(|id| done.contains(id)));
}

/// A client of a node that may be dead.
struct NodeUrl(String);

impl NodeUrl {
    fn submit(&self, body: &str, callback: &str) -> Option<String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let req = ureq::http::Request::builder()
            .method("POST")
            .uri(format!("{}/async-function/slow-echo", self.0))
            .header("X-Callback-Url", callback)
            .body(body.as_bytes().to_vec())
            .ok()?;
        let resp = agent.run(req).ok()?;
        if resp.status().as_u16() != 202 {
            return None;
        }
        resp.headers().get("x-call-id").and_then(|v| v.to_str().ok()).map(str::to_owned)
    }
}

pub(crate) const BUSY: &str = r#"
import sedge

def handle(req):
    if req.body == b"crash-500":
        return sedge.Response(b"my own error", status=500)
    return sedge.Response(b"try later", status=503)
"#;

#[test]
fn calls_that_exhaust_their_attempts_are_dead_lettered_and_can_be_retried() {
    let receiver = Receiver::start(1);
    let node = Node::start();
    let f = FnDir::python("busy", "[async]\nmax_attempts = 2\n", BUSY);
    node.deploy(f.path());
    let id = submit(&node, "busy", "x", &[("X-Callback-Url", &receiver.url)]).expect("accepted");
    let own = submit(&node, "busy", "crash-500", &[]).expect("accepted");
    node.wait_for("the dead letter", Duration::from_secs(60), |n| {
        n.get(&format!("/system/calls/{id}")).json()["state"] == "failed"
    });
    let call = node.get(&format!("/system/calls/{id}")).json();
    assert_eq!(call["attempts"], 2, "{call}");
    assert_eq!(call["status"], 503);
    assert!(call["error"].as_str().is_some_and(|e| e.contains("all 2 attempts")), "{call}");
    assert_eq!(call["result"]["body"], "try later");
    // The receiver refused the first delivery: the callback was retried.
    receiver.wait_for("the callback of the dead letter", Duration::from_secs(60), |d| !d.is_empty());
    let d = &receiver.deliveries()[0];
    assert_eq!(d.headers.get("x-call-id"), Some(&id));
    assert_eq!(d.headers.get("x-function-status").map(String::as_str), Some("503"));
    node.wait_for("the callback recorded", Duration::from_secs(30), |n| {
        n.get(&format!("/system/calls/{id}")).json()["callback"]["state"] == "delivered"
    });
    assert_eq!(node.get(&format!("/system/calls/{id}")).json()["callback"]["attempts"], 2);
    // The function's own 500 is not retried by default.
    node.wait_for("the 500", Duration::from_secs(30), |n| {
        n.get(&format!("/system/calls/{own}")).json()["state"] == "failed"
    });
    let call = node.get(&format!("/system/calls/{own}")).json();
    assert_eq!(call["attempts"], 1, "{call}");
    assert!(call["error"].as_str().is_some_and(|e| e.contains("status 500 is not retried")), "{call}");
    // The dead-letter list, and a retry from it.
    let out = node.cli(&["calls", "ls", "--state", "failed"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&id) && text.contains(&own), "{text}");
    let out = node.cli(&["calls", "retry", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    node.wait_for("the retried call to fail again", Duration::from_secs(60), |n| {
        let c = n.get(&format!("/system/calls/{id}")).json();
        c["state"] == "failed" && c["attempts"] == 2
    });
    let out = node.cli(&["calls", "show", &id]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"attempts\": 2"));
    let retry_queued = node.request("POST", "/system/calls/nope/retry", &[], b"");
    assert_eq!(retry_queued.status, 404, "{}", retry_queued.text());
    let out = node.cli(&["calls", "purge", "--state", "failed"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 2"), "{}", String::from_utf8_lossy(&out.stdout));
    let scrape = node.get("/metrics").text();
    let dead =
        crate::support::sample(&scrape, "sedge_async_dead_lettered_total", &[("function_name", "busy.openfaas-fn")]);
    assert_eq!(dead, Some(3.0), "{scrape}");
    assert!(crate::support::sample(&scrape, "sedge_async_retries_total", &[]).is_some_and(|n| n >= 2.0));
}

const COUNTER: &str = r#"
def handle(req):
    return req.body
"#;

#[test]
fn the_same_call_id_or_idempotency_key_runs_once() {
    let receiver = Receiver::start(0);
    let node = Node::start();
    let f = FnDir::python("once", "", COUNTER);
    node.deploy(f.path());
    let other = FnDir::python("other", "", COUNTER);
    node.deploy(other.path());
    let cb = receiver.url.as_str();
    let first =
        node.request("POST", "/async-function/once", &[("X-Call-Id", "order-17"), ("X-Callback-Url", cb)], b"a");
    assert_eq!(first.status, 202, "{}", first.text());
    assert_eq!(first.header("x-call-id"), Some("order-17"));
    assert_eq!(first.json()["duplicate"], false);
    let again =
        node.request("POST", "/async-function/once", &[("X-Call-Id", "order-17"), ("X-Callback-Url", cb)], b"a");
    assert_eq!((again.status, again.json()["duplicate"].clone()), (202, serde_json::json!(true)));
    let keyed = |body: &[u8]| {
        node.request("POST", "/async-function/once", &[("Idempotency-Key", "k-1"), ("X-Callback-Url", cb)], body)
    };
    let k1 = keyed(b"b");
    let k2 = keyed(b"b");
    assert_eq!(k1.status, 202);
    assert_eq!(k1.header("x-call-id"), k2.header("x-call-id"));
    assert_eq!(k2.json()["duplicate"], true);
    // Another function may not take the id.
    let taken = node.request("POST", "/async-function/other", &[("X-Call-Id", "order-17")], b"a");
    assert_eq!(taken.status, 409, "{}", taken.text());
    let bad = node.request("POST", "/async-function/once", &[("X-Call-Id", "no spaces")], b"a");
    assert_eq!(bad.status, 400);
    assert!(bad.error().contains("X-Call-Id"), "{}", bad.error());
    // What faas-cli invoke --async sends (proxy/invoke.go): the namespaced
    // name, the query, Content-Type text/plain, no credential.
    let faas =
        node.request("POST", "/async-function/once.openfaas-fn?lang=en", &[("Content-Type", "text/plain")], b"c");
    assert_eq!(faas.status, 202, "{}", faas.text());
    let missing = node.request("POST", "/async-function/absent", &[], b"a");
    assert_eq!(missing.status, 404);
    receiver.wait_for("two callbacks", Duration::from_secs(60), |d| d.len() >= 2);
    // Give a duplicate time to show up, were one run.
    node.wait_for("every call finished", Duration::from_secs(60), |n| {
        n.get("/system/calls?function=once&state=done").json().as_array().is_some_and(|a| a.len() == 3)
    });
    std::thread::sleep(Duration::from_secs(1));
    let ids: Vec<String> = receiver.deliveries().iter().filter_map(|d| d.headers.get("x-call-id").cloned()).collect();
    assert_eq!(ids.len(), 2, "each submission ran once: {ids:?}");
    assert!(ids.contains(&"order-17".to_owned()));
    assert_eq!(node.get("/system/calls?function=once").json().as_array().map(Vec::len), Some(3));
}

#[test]
fn a_nearly_full_disk_refuses_calls_with_507() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = Node::start_with(&tmp.path().join("data"), &["--calls-disk-reserve", "1000TiB"]);
    let f = FnDir::python("echo", "", COUNTER);
    node.deploy(f.path());
    let a = node.request("POST", "/async-function/echo", &[], b"x");
    assert_eq!(a.status, 507, "{}", a.text());
    assert!(a.error().contains("free"), "{}", a.error());
    let t = node.post("/system/tasks", br#"[{"function": "echo", "body": "x"}]"#);
    assert_eq!(t.status, 507, "{}", t.text());
    let out = node.cli(&["invoke", "echo", "--async", "-d", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("507"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(node.get("/system/calls").json().as_array().map(Vec::len), Some(0), "nothing half-stored");
}

pub(crate) const FUNCX: &str = r#"
def add(a, b=0):
    if a < 0:
        raise ValueError(f"negative: {a}")
    return a + b
"#;

#[test]
fn tasks_run_in_batches_and_answer_results_or_exceptions() {
    let node = Node::start();
    let f = FnDir::new(
        "name = \"adder\"\nruntime = \"python\"\nhandler = \"handler.add\"\nstyle = \"funcx\"\n",
        &[("handler.py", FUNCX)],
    );
    node.deploy(f.path());
    let plain = FnDir::python("plain", "", COUNTER);
    node.deploy(plain.path());
    let batch = br#"[{"function": "adder", "args": [1], "kwargs": {"b": 2}},
                     {"function": "adder", "args": [-5]},
                     {"function": "plain", "body": "raw text"}]"#;
    let a = node.post("/system/tasks", batch);
    assert_eq!(a.status, 200, "{}", a.text());
    let ids: Vec<String> =
        a.json()["task_ids"].as_array().expect("ids").iter().map(|v| v.as_str().expect("id").to_owned()).collect();
    assert_eq!(ids.len(), 3);
    node.wait_for("the batch", Duration::from_secs(60), |n| {
        let body = serde_json::json!({ "task_ids": ids }).to_string();
        let r = n.post("/system/tasks/batch-status", body.as_bytes()).json();
        ids.iter().all(|id| r["results"][id]["pending"] == false)
    });
    let ok = node.get(&format!("/system/tasks/{}", ids[0])).json();
    assert_eq!(
        (ok["status"].clone(), ok["result"].clone()),
        (serde_json::json!("success"), serde_json::json!(3)),
        "{ok}"
    );
    let failed = node.get(&format!("/system/tasks/{}", ids[1])).json();
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["exception"]["type"], "ValueError");
    assert_eq!(failed["exception"]["message"], "negative: -5");
    assert!(failed["exception"]["traceback"].as_str().is_some_and(|t| t.contains("raise ValueError")), "{failed}");
    let raw = node.get(&format!("/system/tasks/{}", ids[2])).json();
    assert_eq!(raw["result"], "raw text", "{raw}");
    let unknown = node.post("/system/tasks/batch-status", br#"{"task_ids": ["nope"]}"#).json();
    assert_eq!(unknown["results"]["nope"]["status"], "unknown");
    for (body, expect) in [
        (&br#"[{"function": "absent", "args": []}]"#[..], "tasks[0]: function absent not found"),
        (br#"[{"function": "adder", "args": [1], "body": "x"}]"#, "tasks[0]: give either"),
        (br#"[]"#, "1 to 10000 tasks"),
        (br#"{"nope": 1}"#, "expected a JSON array of tasks"),
    ] {
        let a = node.post("/system/tasks", body);
        assert!(a.status == 400 || a.status == 404, "{}", a.text());
        assert!(a.error().contains(expect), "{} should say {expect}", a.error());
    }
    let open = node.request_raw("POST", "/system/tasks", &[], batch);
    assert_eq!(open.status, 401, "tasks need the admin credential");
}

#[test]
fn the_python_client_runs_tasks_as_futures() {
    let node = Node::start();
    let f = FnDir::new(
        "name = \"adder\"\nruntime = \"python\"\nhandler = \"handler.add\"\nstyle = \"funcx\"\n[scale]\nmax = 2\n",
        &[("handler.py", FUNCX)],
    );
    node.deploy(f.path());
    node.deploy(&crate::support::example("funcx-python"));
    let sample = crate::support::example("digits-python").join("sample.json");
    let python = std::env::var("SEDGE_PYTHON")
        .unwrap_or_else(|_| crate::support::repo_root().join(".venv/bin/python").to_string_lossy().into_owned());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/task_client.py");
    let out = std::process::Command::new(&python)
        .arg(script)
        .arg(&node.url)
        .arg(&node.password)
        .arg(sample)
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    assert!(
        out.status.success(),
        "the client script failed (scripts/setup.sh installs clients/python into the venv): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

const NAPPER: &str = r#"
import time

def handle(req):
    time.sleep(0.3)
    return req.body
"#;

#[test]
fn queued_calls_run_in_arrival_order_within_their_concurrency_and_leave_room_for_sync_callers() {
    let node = Node::start();
    let f = FnDir::python("napper", "[scale]\nmax = 2\n[async]\nconcurrency = 1\n", NAPPER);
    node.deploy(f.path());
    let policy = &node.describe("napper")["sedge"]["async"];
    assert_eq!(policy["concurrency"], 1, "{policy}");
    assert_eq!(policy["maxAttempts"], 3);
    assert_eq!(policy["retryOn"], serde_json::json!(["429", "502", "503", "504", "timeout", "crash"]));
    let mut ids: Vec<String> =
        (0..5).map(|i| submit(&node, "napper", &format!("n{i}"), &[]).expect("accepted")).collect();
    // The CLI's way in: it prints the call's id.
    let out = node.cli(&["invoke", "napper", "--async", "-d", "n5"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ids.push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    assert_eq!(ids[5].len(), 36, "a UUID: {:?}", ids[5]);
    let mut most_running = 0;
    let mut synced = 0;
    node.wait_for("the queue to drain", Duration::from_secs(120), |n| {
        let running = n.get("/system/calls?function=napper&state=running").json().as_array().map_or(0, Vec::len);
        most_running = most_running.max(running);
        // A synchronous caller meanwhile gets the worker the queue leaves.
        if synced < 3 {
            let a = n.post("/function/napper", b"sync");
            assert_eq!((a.status, a.text()), (200, "sync".to_owned()));
            synced += 1;
        }
        n.get("/system/calls?function=napper&state=done").json().as_array().is_some_and(|a| a.len() == 6)
    });
    assert_eq!(most_running, 1, "[async] concurrency = 1");
    let started: Vec<String> = ids
        .iter()
        .map(|id| node.get(&format!("/system/calls/{id}")).json()["started_at"].as_str().expect("started").to_owned())
        .collect();
    let mut sorted = started.clone();
    sorted.sort();
    assert_eq!(started, sorted, "started in the order they arrived");
}

#[test]
fn calls_cut_off_by_a_stop_run_after_the_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let node = Node::start_on(&data);
    let f = FnDir::python("napper", "[scale]\nmax = 2\n[async]\nconcurrency = 2\n", NAPPER);
    node.deploy(f.path());
    let ids: Vec<String> = (0..8).map(|i| submit(&node, "napper", &format!("n{i}"), &[]).expect("accepted")).collect();
    node.wait_for("a call running", Duration::from_secs(60), |n| {
        n.get("/system/calls?function=napper&state=running").json().as_array().is_some_and(|a| !a.is_empty())
    });
    assert!(node.terminate().success());
    let node = Node::start_on(&data);
    node.wait_for("every call done", Duration::from_secs(120), |n| {
        n.get("/system/calls?function=napper&state=done").json().as_array().is_some_and(|a| a.len() == 8)
    });
    for (i, id) in ids.iter().enumerate() {
        let call = node.get(&format!("/system/calls/{id}")).json();
        assert_eq!(call["result"]["body"], format!("n{i}"), "{call}");
    }
}

#[test]
fn a_caller_that_hangs_up_after_sending_then_retries_with_its_id_gets_one_run() {
    let node = Node::start();
    let f = FnDir::python("hangup", "", COUNTER);
    node.deploy(f.path());
    let addr = node.url.trim_start_matches("http://").to_owned();
    for i in 0..5 {
        let id = format!("hang-{i}");
        {
            // The whole request, then gone before the answer.
            let mut s = std::net::TcpStream::connect(&addr).expect("connect");
            write!(
                s,
                "POST /async-function/hangup HTTP/1.1\r\nhost: x\r\nx-call-id: {id}\r\ncontent-length: 5\r\n\r\nbody{i}"
            )
            .expect("send");
        }
        // The caller's retry: stored once, whichever attempt got there.
        let again =
            node.request("POST", "/async-function/hangup", &[("X-Call-Id", &id)], format!("body{i}").as_bytes());
        assert_eq!(again.status, 202, "{}", again.text());
    }
    node.wait_for("every call done", Duration::from_secs(60), |n| {
        n.get("/system/calls?function=hangup&state=done").json().as_array().is_some_and(|a| a.len() == 5)
    });
    assert_eq!(node.get("/system/calls?function=hangup").json().as_array().map(Vec::len), Some(5));
}

#[test]
fn finished_calls_go_after_their_time_and_past_the_size_bound() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // 1000-byte bodies echoed back: 2000 bytes a call; the bound keeps one.
    let node = Node::start_with(&tmp.path().join("data"), &["--calls-keep", "3s", "--calls-max-size", "3000B"]);
    let f = FnDir::python("keep", "", COUNTER);
    node.deploy(f.path());
    let body = "k".repeat(1000);
    let ids: Vec<String> = (0..3).map(|_| submit(&node, "keep", &body, &[]).expect("accepted")).collect();
    node.wait_for("the size bound to leave one call", Duration::from_secs(60), |n| {
        n.get("/system/calls?function=keep").json().as_array().is_some_and(|a| a.len() == 1)
    });
    let left = node.get("/system/calls?function=keep").json();
    assert_eq!(left[0]["id"], ids[2].as_str(), "the newest stays: {left}");
    node.wait_for("the time bound to take the last", Duration::from_secs(60), |n| {
        n.get("/system/calls?function=keep").json().as_array().is_some_and(Vec::is_empty)
    });
    let gone = node.get(&format!("/system/calls/{}", ids[2]));
    assert_eq!(gone.status, 404);
}

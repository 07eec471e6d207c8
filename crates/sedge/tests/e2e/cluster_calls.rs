//! Asynchronous calls in a cluster at parity with one node: callbacks,
//! chosen ids, idempotency keys, retries and dead letters, `sedge calls`
//! and funcX tasks, on real nodes joined through a real nats-server. Each
//! function is placed by label on one node, and calls are submitted to and
//! read from the other, so nothing here is answered from a node's own
//! SQLite queue. Skipped where nats-server is not installed.

use std::time::Duration;

use crate::async_calls::{submit, Receiver, BUSY, FUNCX};
use crate::cluster::{node, placement, single, wait_nodes, NatsServer};
use crate::support::{FnDir, Node};

/// Waits until `worker` (and only it) serves `name`.
fn placed(on: &Node, name: &str, worker: &str) {
    on.wait_for(&format!("{name} on {worker}"), Duration::from_secs(30), |n| {
        let p = placement(n);
        p.iter().all(|(node, fns)| fns.iter().any(|f| f == name) == (node == worker))
    });
}

/// A nats-server and two nodes: `front` (no labels) and `worker` (`gpu`).
/// `None` where nats-server is not installed.
fn front_and_worker(tmp: &std::path::Path, test: &str, password: &str) -> Option<(NatsServer, Node, Node)> {
    let nats = single(tmp, test)?;
    let url = nats.url();
    let a = node(tmp, &url, "front", "", password, "1");
    let b = node(tmp, &url, "worker", "gpu", password, "1");
    wait_nodes(&a, 2);
    Some((nats, a, b))
}

fn call(node: &Node, id: &str) -> serde_json::Value {
    let a = node.get(&format!("/system/calls/{id}"));
    assert_eq!(a.status, 200, "{}", a.text());
    a.json()
}

const ECHO: &str = r#"
import sedge

def handle(req):
    return sedge.Response(req.body.upper(), headers={"x-echo": "yes", "content-type": "text/plain"})
"#;

#[test]
fn cluster_async_calls_take_callbacks_chosen_ids_and_idempotency_keys() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some((_nats, a, b)) = front_and_worker(tmp.path(), "cluster_async_calls_take_callbacks", "pw-cb") else {
        return;
    };
    let echo = FnDir::python("echo", "[placement]\nlabels = [\"gpu\"]\n", ECHO);
    a.deploy(echo.path());
    let other = FnDir::python("other", "[placement]\nlabels = [\"gpu\"]\n", ECHO);
    a.deploy(other.path());
    placed(&a, "echo", "worker");
    placed(&a, "other", "worker");
    // Queued calls a cluster could not keep are refused at deploy.
    let long = FnDir::python("long-lived", "[async]\nmax_age = \"3d\"\n", ECHO);
    let out = a.cli(&["deploy", long.path().to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("async.max_age = 72h"), "{err}");
    assert_eq!(a.get("/system/function/long-lived").status, 404, "nothing of it was published");
    // Subject wildcards in a path are no function's name, on the node
    // that runs none and reads the registry's records for names it lacks.
    for path in ["/async-function/%3E", "/async-function/%2A", "/function/%3E"] {
        let r = a.request("POST", path, &[], b"x");
        assert_eq!(r.status, 404, "{path}: {}", r.text());
    }

    // Submitted to the node that does not run it; the worker posts the callback.
    let receiver = Receiver::start(1);
    let id = submit(&a, "echo", "hello", &[("X-Callback-Url", &receiver.url)]).expect("accepted");
    receiver.wait_for("the callback", Duration::from_secs(60), |d| !d.is_empty());
    let d = &receiver.deliveries()[0];
    assert_eq!(d.body, b"HELLO");
    assert_eq!(d.headers.get("x-call-id"), Some(&id));
    assert_eq!(d.headers.get("x-function-name").map(String::as_str), Some("echo"));
    assert_eq!(d.headers.get("x-function-status").map(String::as_str), Some("200"));
    assert_eq!(d.headers.get("x-echo").map(String::as_str), Some("yes"));
    assert!(d.headers.contains_key("x-duration-seconds"), "{:?}", d.headers);
    a.wait_for("the callback recorded", Duration::from_secs(30), |n| call(n, &id)["callback"]["state"] == "delivered");
    let c = call(&a, &id);
    assert_eq!(c["node"], "worker", "{c}");
    assert_eq!(c["callback"]["attempts"], 2, "the refused first delivery was retried: {c}");
    assert_eq!(c["result"]["body"], "HELLO", "{c}");
    let r = a.request("POST", "/async-function/echo", &[("X-Callback-Url", "https://example.org/cb")], b"x");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error().contains("plain http"), "{}", r.error());

    // A chosen id, taken cluster-wide: the same function's repeat is a
    // duplicate on any node, another function's is refused.
    let first = a.request("POST", "/async-function/echo", &[("X-Call-Id", "order:17")], b"one");
    assert_eq!(first.status, 202, "{}", first.text());
    assert_eq!(first.json()["id"], "order:17");
    let again = b.request("POST", "/async-function/echo", &[("X-Call-Id", "order:17")], b"two");
    assert_eq!(again.status, 202, "{}", again.text());
    assert_eq!(again.json()["duplicate"], true, "{}", again.text());
    let taken = b.request("POST", "/async-function/other", &[("X-Call-Id", "order:17")], b"three");
    assert_eq!(taken.status, 409, "{}", taken.text());
    assert!(taken.error().contains("order:17"), "{}", taken.error());
    let bad = a.request("POST", "/async-function/echo", &[("X-Call-Id", "no spaces")], b"x");
    assert_eq!(bad.status, 400, "{}", bad.text());
    a.wait_for("the chosen id's call", Duration::from_secs(30), |n| call(n, "order:17")["state"] == "done");
    assert_eq!(call(&b, "order:17")["result"]["body"], "ONE");

    // A body and an answer over what a record holds inline (64 KiB).
    let big = "a".repeat(300_000);
    let large = submit(&a, "echo", &big, &[]).expect("accepted");
    a.wait_for("the large call", Duration::from_secs(30), |n| call(n, &large)["state"] == "done");
    let c = call(&b, &large);
    assert_eq!(c["request"]["body"].as_str().map(str::len), Some(300_000));
    assert_eq!(c["result"]["body"].as_str(), Some(big.to_uppercase().as_str()));

    // The same idempotency key sent to both nodes at once: one call.
    let (urls, mut answers) = ([a.url.clone(), b.url.clone()], Vec::new());
    for round in 0..5 {
        let key = format!("key-{round}");
        let threads: Vec<_> = (0..6)
            .map(|i| {
                let (url, key) = (urls[i % 2].clone(), key.clone());
                std::thread::spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                    let mut resp = agent
                        .post(format!("{url}/async-function/echo"))
                        .header("Idempotency-Key", &key)
                        .send(format!("body {i}").as_bytes())
                        .expect("submit");
                    assert_eq!(resp.status().as_u16(), 202);
                    let v: serde_json::Value =
                        serde_json::from_str(&resp.body_mut().read_to_string().expect("body")).expect("json");
                    (v["id"].as_str().expect("id").to_owned(), v["duplicate"] == true)
                })
            })
            .collect();
        let got: Vec<(String, bool)> = threads.into_iter().map(|t| t.join().expect("thread")).collect();
        assert!(got.iter().all(|(id, _)| *id == got[0].0), "one id for key {key}: {got:?}");
        assert_eq!(got.iter().filter(|(_, dup)| !dup).count(), 1, "one first submission for {key}: {got:?}");
        answers.push(got[0].0.clone());
    }
    let listed = a.get("/system/calls?function=echo&limit=1000").json();
    for id in &answers {
        let n = listed.as_array().expect("list").iter().filter(|c| c["id"] == id.as_str()).count();
        assert_eq!(n, 1, "{id} listed once: {listed}");
    }
    let keyed = listed.as_array().expect("list").len();
    assert_eq!(keyed, 3 + answers.len(), "the callback call, order:17, the large one and one per key: {listed}");
}

#[test]
fn cluster_calls_follow_the_retry_policy_die_and_are_retried_from_any_node() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some((_nats, a, b)) = front_and_worker(tmp.path(), "cluster_calls_follow_the_retry_policy", "pw-dead") else {
        return;
    };
    let busy = FnDir::python("busy", "[async]\nmax_attempts = 2\n[placement]\nlabels = [\"gpu\"]\n", BUSY);
    a.deploy(busy.path());
    placed(&a, "busy", "worker");
    let receiver = Receiver::start(0);
    let id = submit(&a, "busy", "x", &[("X-Callback-Url", &receiver.url)]).expect("accepted");
    let own = submit(&b, "busy", "crash-500", &[]).expect("accepted");
    a.wait_for("the dead letter", Duration::from_secs(60), |n| call(n, &id)["state"] == "failed");
    let c = call(&a, &id);
    assert_eq!((c["attempts"].clone(), c["status"].clone()), (serde_json::json!(2), serde_json::json!(503)), "{c}");
    assert!(c["error"].as_str().is_some_and(|e| e.contains("all 2 attempts")), "{c}");
    assert_eq!(c["result"]["body"], "try later", "{c}");
    receiver.wait_for("the dead letter's callback", Duration::from_secs(30), |d| !d.is_empty());
    assert_eq!(receiver.deliveries()[0].headers.get("x-function-status").map(String::as_str), Some("503"));
    a.wait_for("the 500", Duration::from_secs(30), |n| call(n, &own)["state"] == "failed");
    let c = call(&a, &own);
    assert_eq!(c["attempts"], 1, "{c}");
    assert!(c["error"].as_str().is_some_and(|e| e.contains("status 500 is not retried")), "{c}");

    // `sedge calls` on the node that ran none of them.
    let out = a.cli(&["calls", "ls", "--state", "failed"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&id) && text.contains(&own), "{text}");
    let out = a.cli(&["calls", "ls", "--function", "busy", "--state", "done"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&id), "{}", String::from_utf8_lossy(&out.stdout));
    let out = a.cli(&["calls", "ls", "--state", "nope"]);
    assert!(!out.status.success());
    let out = a.cli(&["calls", "retry", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    a.wait_for("the retried call to run again", Duration::from_secs(60), |n| {
        let c = call(n, &id);
        c["state"] == "failed" && c["attempts"] == 2 && c["callback"]["state"] == "delivered"
    });
    receiver.wait_for("the retried call's callback", Duration::from_secs(30), |d| d.len() >= 2);
    let missing = a.request("POST", "/system/calls/nope/retry", &[], b"");
    assert_eq!(missing.status, 404, "{}", missing.text());
    // Its second attempt waits out a back-off of at least half a second:
    // asked at once, the call is not finished.
    let running = submit(&a, "busy", "x", &[]).expect("accepted");
    let early = b.request("POST", &format!("/system/calls/{running}/retry"), &[], b"");
    assert_eq!(early.status, 409, "{}", early.text());
    assert!(early.error().contains("only finished"), "{}", early.error());
    a.wait_for("the third call dead", Duration::from_secs(60), |n| call(n, &running)["state"] == "failed");
    let out = b.cli(&["calls", "purge", "--state", "failed"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 3"), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(a.get(&format!("/system/calls/{id}")).status, 404);
    assert_eq!(a.get("/system/calls").json().as_array().map(Vec::len), Some(0));
}

#[test]
fn cluster_funcx_tasks_run_through_a_node_without_the_function() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some((_nats, a, b)) = front_and_worker(tmp.path(), "cluster_funcx_tasks", "pw-tasks") else { return };
    let adder = FnDir::new(
        "name = \"adder\"\nruntime = \"python\"\nhandler = \"handler.add\"\nstyle = \"funcx\"\n\
         [placement]\nlabels = [\"gpu\"]\n",
        &[("handler.py", FUNCX)],
    );
    a.deploy(adder.path());
    placed(&a, "adder", "worker");
    let batch = br#"[{"function": "adder", "args": [1], "kwargs": {"b": 2}},
                     {"function": "adder", "args": [-5]}]"#;
    let r = a.post("/system/tasks", batch);
    assert_eq!(r.status, 200, "{}", r.text());
    let ids: Vec<String> =
        r.json()["task_ids"].as_array().expect("ids").iter().map(|v| v.as_str().expect("id").to_owned()).collect();
    assert_eq!(ids.len(), 2);
    a.wait_for("the batch", Duration::from_secs(60), |n| {
        let body = serde_json::json!({ "task_ids": ids }).to_string();
        let r = n.post("/system/tasks/batch-status", body.as_bytes()).json();
        ids.iter().all(|id| r["results"][id]["pending"] == false)
    });
    let ok = a.get(&format!("/system/tasks/{}", ids[0])).json();
    assert_eq!((ok["status"].clone(), ok["result"].clone()), (serde_json::json!("success"), serde_json::json!(3)));
    let failed = b.get(&format!("/system/tasks/{}", ids[1])).json();
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["exception"]["type"], "ValueError", "{failed}");
    let r = a.post("/system/tasks", br#"[{"function": "absent", "args": []}]"#);
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.error().contains("tasks[0]: function absent not found"), "{}", r.error());
    let unknown = a.post("/system/tasks/batch-status", br#"{"task_ids": ["nope"]}"#).json();
    assert_eq!(unknown["results"]["nope"]["status"], "unknown");
    let listed = a.get("/system/calls?function=adder").json();
    assert!(listed.as_array().is_some_and(|l| l.len() == 2 && l.iter().all(|c| c["kind"] == "task")), "{listed}");
}

/// Appends a line to the file the body names: how many times it ran.
const TALLY: &str = r#"
def handle(req):
    with open(req.body.decode(), "a") as f:
        f.write("ran\n")
    return "counted"
"#;

#[test]
fn a_call_whose_result_is_recorded_is_not_run_again_when_its_node_dies_before_the_callback() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(nats) = single(tmp.path(), "a_call_whose_result_is_recorded_is_not_run_again") else { return };
    let url = nats.url();
    let a = node(tmp.path(), &url, "front", "", "pw-once", "1");
    let mut workers: Vec<Option<Node>> =
        ["w1", "w2"].iter().map(|name| Some(node(tmp.path(), &url, name, "gpu", "pw-once", "1"))).collect();
    wait_nodes(&a, 3);
    let tally = FnDir::python("tally", "[limits]\ntimeout = \"2s\"\n[placement]\nlabels = [\"gpu\"]\n", TALLY);
    a.deploy(tally.path());
    a.wait_for("tally on both workers", Duration::from_secs(30), |n| {
        let p = placement(n);
        ["w1", "w2"].iter().all(|w| p.get(*w).is_some_and(|f| f.iter().any(|f| f == "tally")))
    });
    // The receiver refuses the first deliveries: the call is done, its
    // callback pending, when the node that ran it dies.
    let receiver = Receiver::start(4);
    let file = tmp.path().join("runs");
    let id = submit(&a, "tally", &file.display().to_string(), &[("X-Callback-Url", &receiver.url)]).expect("accepted");
    a.wait_for("a refused delivery", Duration::from_secs(30), |n| {
        let c = call(n, &id);
        c["state"] == "done" && c["callback"]["attempts"].as_u64().is_some_and(|n| n >= 1)
    });
    let ran_on = call(&a, &id)["node"].as_str().expect("node").to_owned();
    let i = if ran_on == "w1" { 0 } else { 1 };
    workers[i].take().expect("the worker").kill9();
    // After the ack wait (timeout 2 s + 5 s) the other worker gets the
    // message, finds the result recorded and posts the callback only.
    receiver.wait_for("the callback from the other worker", Duration::from_secs(60), |d| !d.is_empty());
    let d = &receiver.deliveries()[0];
    assert_eq!(d.body, b"counted");
    assert_eq!(d.headers.get("x-call-id"), Some(&id));
    a.wait_for("the delivery recorded", Duration::from_secs(30), |n| call(n, &id)["callback"]["state"] == "delivered");
    let c = call(&a, &id);
    assert_eq!((c["attempts"].clone(), c["node"].clone()), (serde_json::json!(1), serde_json::json!(ran_on)), "{c}");
    let runs = std::fs::read_to_string(&file).expect("the tally");
    assert_eq!(runs.lines().count(), 1, "the function ran once: {runs:?}");
    drop(workers);
}

#[test]
fn an_idempotency_key_left_by_a_node_lost_mid_submission_is_taken_over() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some((nats, a, _b)) = front_and_worker(tmp.path(), "an_idempotency_key_left_by_a_node_lost", "pw-orphan")
    else {
        return;
    };
    let echo = FnDir::python("echo", "[placement]\nlabels = [\"gpu\"]\n", ECHO);
    a.deploy(echo.path());
    placed(&a, "echo", "worker");
    // What a node that died between taking the key and storing its call
    // leaves: the key, naming a call the cluster never got.
    let url = nats.url();
    crate::nats_triggers::runtime().block_on(async move {
        let client = async_nats::connect(&url).await.expect("connect");
        let calls = async_nats::jetstream::new(client).get_key_value("sedge-calls").await.expect("the calls bucket");
        calls.create("k.echo.order-9", "never-stored".into()).await.expect("the left key");
    });
    let r = a.request("POST", "/async-function/echo", &[("Idempotency-Key", "order-9")], b"nine");
    assert_eq!(r.status, 202, "{}", r.text());
    let (id, duplicate) = (r.json()["id"].as_str().expect("id").to_owned(), r.json()["duplicate"].clone());
    assert_ne!(id, "never-stored");
    assert_eq!(duplicate, false, "{}", r.text());
    a.wait_for("the call", Duration::from_secs(30), |n| call(n, &id)["state"] == "done");
    assert_eq!(call(&a, &id)["result"]["body"], "NINE");
    let again = a.request("POST", "/async-function/echo", &[("Idempotency-Key", "order-9")], b"ten");
    assert_eq!((again.status, again.json()["id"].clone()), (202, serde_json::json!(id)), "{}", again.text());
    assert_eq!(again.json()["duplicate"], true, "{}", again.text());
}

#[test]
fn a_new_version_with_another_timeout_sets_its_calls_ack_wait() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some((nats, a, _b)) = front_and_worker(tmp.path(), "a_new_version_with_another_timeout", "pw-ack") else {
        return;
    };
    let url = nats.url();
    // The ack wait of the calls' consumer, once it is `want`.
    let ack_wait_becomes = |want: Duration| {
        let url = url.clone();
        crate::nats_triggers::runtime().block_on(async move {
            let client = async_nats::connect(&url).await.expect("connect");
            let calls = async_nats::jetstream::new(client).get_stream("SEDGE_CALLS").await.expect("the call stream");
            let start = std::time::Instant::now();
            loop {
                let seen = match calls.consumer_info("calls-echo").await {
                    Ok(info) => Some(info.config.ack_wait),
                    Err(_) => None,
                };
                if seen == Some(want) {
                    return;
                }
                assert!(start.elapsed() < Duration::from_secs(30), "ack wait {seen:?}, not {want:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let v1 = FnDir::python("echo", "[limits]\ntimeout = \"2s\"\n[placement]\nlabels = [\"gpu\"]\n", ECHO);
    a.deploy(v1.path());
    placed(&a, "echo", "worker");
    ack_wait_becomes(Duration::from_secs(7));
    let v2 = FnDir::python("echo", "[limits]\ntimeout = \"20s\"\n[placement]\nlabels = [\"gpu\"]\n", ECHO);
    a.deploy(v2.path());
    ack_wait_becomes(Duration::from_secs(25));
    // And the calls of the new version still run.
    let id = submit(&a, "echo", "after", &[]).expect("accepted");
    a.wait_for("the call", Duration::from_secs(30), |n| call(n, &id)["state"] == "done");
    assert_eq!(call(&a, &id)["result"]["body"], "AFTER");
}

//! The wire shapes faas-cli relies on (list, describe, remove, scale, logs,
//! version, invoke with a namespace, auth headers), checked on the wire.

use std::time::Duration;

use crate::support::{sample, FnDir, Node};

fn deployed() -> (Node, FnDir) {
    let node = Node::start();
    let f = FnDir::python(
        "faas",
        "[labels]\ntier = \"edge\"\n",
        "def handle(req):\n    print('hello log')\n    return 'hi'\n",
    );
    node.deploy(f.path());
    (node, f)
}

#[test]
fn list_and_describe_have_the_openfaas_fields() {
    let (node, _f) = deployed();
    // faas-cli sends Basic after `faas-cli login`; Bearer is accepted too.
    for auth in [format!("Bearer {}", node.password), node.basic_auth()] {
        let a = node.request("GET", "/system/functions?namespace=openfaas-fn", &[("Authorization", &auth)], b"");
        assert_eq!(a.status, 200);
        let list = a.json();
        let f = &list.as_array().expect("array")[0];
        for field in [
            "name",
            "image",
            "replicas",
            "availableReplicas",
            "invocationCount",
            "envProcess",
            "labels",
            "annotations",
            "createdAt",
        ] {
            assert!(f.get(field).is_some(), "missing {field} in {f}");
        }
        assert_eq!(f["name"], "faas");
        assert!(f["image"].as_str().expect("image").starts_with("sha256:"));
        assert_eq!(f["labels"]["tier"], "edge");
        let created = f["createdAt"].as_str().expect("createdAt");
        assert!(humantime::parse_rfc3339(created).is_ok(), "createdAt {created} is not RFC 3339");
    }
    let d = node.get("/system/function/faas?usage=1");
    assert_eq!(d.status, 200);
    assert_eq!(d.json()["envProcess"], "handler.handle");
    assert_eq!(node.get("/system/function/nope").status, 404);
}

#[test]
fn invoke_with_a_namespace_and_count_invocations() {
    let (node, _f) = deployed();
    let a = node.post("/function/faas.openfaas-fn", b"");
    assert_eq!((a.status, a.text().as_str()), (200, "hi"));
    assert!(a.header("x-duration-seconds").is_some());
    assert_eq!(node.describe("faas")["invocationCount"], 1);
}

#[test]
fn info_has_what_faas_cli_version_reads() {
    let node = Node::start();
    let v = node.get("/system/info").json();
    for p in [
        "/version/release",
        "/version/sha",
        "/provider/provider",
        "/provider/orchestration",
        "/provider/version/release",
        "/provider/version/sha",
    ] {
        assert!(v.pointer(p).and_then(|x| x.as_str()).is_some(), "missing {p} in {v}");
    }
    assert_eq!(node.get("/healthz").status, 200);
}

/// What faas-cli sends with every body.
const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

#[test]
fn remove_and_scale_bodies() {
    let (node, _f) = deployed();
    let s = node.request("POST", "/system/scale-function/faas", JSON, br#"{"serviceName":"faas","replicas":2}"#);
    assert_eq!(s.status, 202, "{}", s.text());
    let bad = node.request("POST", "/system/scale-function/faas", JSON, br#"{"replicas":-1}"#);
    assert_eq!(bad.status, 400);
    assert!(bad.error().contains("replicas"));
    assert_eq!(node.request("POST", "/system/scale-function/ghost", JSON, br#"{"replicas":1}"#).status, 404);
    let garbled = node.request("DELETE", "/system/functions", &[], b"{oops");
    assert_eq!(garbled.status, 400);
    assert!(garbled.error().contains("functionName"));
    assert_eq!(node.request("DELETE", "/system/functions", &[], br#"{"functionName":"ghost"}"#).status, 404);
    assert_eq!(node.request("DELETE", "/system/functions", &[], br#"{"functionName":"faas"}"#).status, 200);
    assert_eq!(node.get("/system/functions").json(), serde_json::json!([]));
    assert_eq!(node.request("POST", "/system/functions", &[], br#"{"service":"x","image":"y"}"#).status, 501);
    // The function is gone: an asynchronous call to it is not accepted.
    let asynchronous = node.post("/async-function/faas", b"");
    assert_eq!(asynchronous.status, 404);
    assert!(asynchronous.error().contains("faas"));
}

#[test]
fn logs_are_a_stream_of_json_objects() {
    let (node, _f) = deployed();
    node.post("/function/faas", b"");
    node.wait_for("the log line", Duration::from_secs(10), |n| {
        n.get("/system/logs?name=faas&tail=10").text().contains("hello log")
    });
    let a = node.get("/system/logs?name=faas&follow=false&tail=10");
    let text = a.text();
    assert!(!text.trim_start().starts_with('['), "must not be an array: {text}");
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    let line = lines.iter().find(|l| l["text"] == "hello log").expect("hello log line");
    for field in ["name", "namespace", "instance", "timestamp", "text"] {
        assert!(line.get(field).is_some(), "missing {field} in {line}");
    }
    assert_eq!(line["name"], "faas");
    assert_eq!(node.get("/system/logs?name=ghost").status, 404);
    assert_eq!(node.get("/system/logs").status, 400);
}

#[test]
fn metrics_have_the_gateway_names() {
    let (node, _f) = deployed();
    node.post("/function/faas", b"");
    let m = node.get("/metrics").text();
    let f = ("function_name", "faas.openfaas-fn");
    let ok = ("code", "200");
    for (name, labels) in [
        ("gateway_function_invocation_started", &[f][..]),
        ("gateway_function_invocation_total", &[f, ok]),
        ("gateway_functions_seconds_count", &[f, ok]),
        ("sedge_cold_starts_total", &[f]),
    ] {
        assert_eq!(sample(&m, name, labels), Some(1.0), "{name} {labels:?} in\n{m}");
    }
    for (name, labels) in [
        ("gateway_service_count", &[f][..]),
        ("sedge_workers", &[f, ("state", "ready")]),
        ("sedge_spare_starts_total", &[f]),
        ("sedge_desired_workers", &[f]),
        ("sedge_cpu_budget_waits_total", &[f]),
        ("sedge_memory_budget_waits_total", &[f]),
    ] {
        assert!(sample(&m, name, labels).is_some(), "missing {name} {labels:?} in\n{m}");
    }
    assert_eq!(sample(&m, "sedge_queue_depth", &[f]), Some(0.0), "{m}");
}

#[test]
fn followed_logs_stream_new_lines_as_they_come() {
    use std::io::BufRead;
    let (node, _f) = deployed();
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let resp = agent
        .get(format!("{}/system/logs?name=faas&follow=true&tail=0", node.url))
        .header("authorization", node.basic_auth())
        .call()
        .expect("stream");
    assert_eq!(resp.status().as_u16(), 200);
    // The line is printed only after the stream is open, so it must arrive live.
    assert_eq!(node.post("/function/faas", b"").status, 200);
    let mut lines = std::io::BufReader::new(resp.into_body().into_reader()).lines();
    let first = lines.next().expect("a line").expect("readable");
    let v: serde_json::Value = serde_json::from_str(&first).expect("JSON object");
    assert_eq!(v["text"], "hello log");
}

#[test]
fn the_one_namespace_is_listed() {
    let node = Node::start();
    let a = node.get("/system/namespaces");
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json(), serde_json::json!(["openfaas-fn"]));
}

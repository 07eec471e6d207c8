//! faas-cli and Prometheus as their users run them: `promtool check
//! metrics` on a real scrape, in-flight invocations, namespaces other than
//! the one a node has, `logs --since`, and the OpenFaaS routes sedge lacks.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use crate::support::{holding, release, sample, FnDir, Node};

/// A function that prints its body, fails on `boom`, and answers `ok`.
fn talker() -> FnDir {
    FnDir::python(
        "talk",
        "",
        "def handle(req):\n    text = req.text\n    print(text, flush=True)\n    if text == 'boom':\n        raise ValueError('boom')\n    return 'ok'\n",
    )
}

/// The lints `promtool check metrics` reports on OpenFaaS's own names,
/// which its dashboards and alerts query as they are.
const OPENFAAS_NAMES: [&str; 2] = [
    "gateway_function_invocation_started counter metrics should have \"_total\" suffix",
    "gateway_service_count non-histogram and non-summary metrics should not have \"_count\" suffix",
];

fn promtool_check(scrape: &str) -> Option<(Option<i32>, String)> {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "SKIPPED the promtool check: cannot run promtool ({e}); .ci/run installs it (Debian's prometheus)"
            );
            return None;
        }
    };
    child.stdin.take().expect("stdin").write_all(scrape.as_bytes()).expect("feed promtool");
    let out = child.wait_with_output().expect("promtool ran");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Some((out.status.code(), said))
}

/// Every sample is named as its family's HELP and TYPE name it (the text
/// format 0.0.4's rule; a histogram's samples add `_bucket`, `_sum`, `_count`).
fn families_are_named_as_sampled(scrape: &str) {
    let declared = |kind: &str, name: &str| scrape.contains(&format!("# TYPE {name} {kind}\n"));
    for line in scrape.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name = line.split(['{', ' ']).next().expect("a sample name");
        let typed = ["counter", "gauge"].iter().any(|k| declared(k, name))
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name.strip_suffix(s).is_some_and(|family| declared("histogram", family)));
        assert!(typed, "{name} has no TYPE line of its own name in\n{scrape}");
    }
    for family in scrape.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()) {
        assert!(scrape.contains(&format!("# HELP {family} ")), "{family} has no HELP in\n{scrape}");
    }
}

#[test]
fn metrics_pass_promtool_but_for_openfaas_own_names() {
    let node = Node::start();
    let f = talker();
    node.deploy(f.path());
    assert_eq!(node.post("/function/talk", b"hi").status, 200);
    assert_eq!(node.post("/function/talk", b"boom").status, 500);
    assert_eq!(node.post("/function/ghost", b"").status, 404);
    assert_eq!(node.get("/system/nothing-here").status, 404);
    // An asynchronous call that fails, so the sedge_async_* families have series.
    let queued = node.post("/async-function/talk", b"boom");
    assert_eq!(queued.status, 202, "{}", queued.text());
    let id = queued.header("x-call-id").expect("x-call-id").to_owned();
    node.wait_for("the dead letter", Duration::from_secs(60), |n| {
        n.get(&format!("/system/calls/{id}")).json()["state"] == "failed"
    });
    let a = node.get("/metrics");
    assert_eq!(a.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let scrape = a.text();
    assert!(!scrape.contains("# EOF"), "an OpenMetrics marker in the 0.0.4 text:\n{scrape}");
    assert!(!scrape.contains("ghost"), "an unknown function got a series:\n{scrape}");
    families_are_named_as_sampled(&scrape);
    let f = ("function_name", "talk.openfaas-fn");
    assert_eq!(sample(&scrape, "gateway_function_invocation_total", &[f, ("code", "500")]), Some(1.0), "{scrape}");
    let route = [("method", "POST"), ("path", "/function/{name}"), ("status", "200")];
    assert_eq!(sample(&scrape, "http_requests_total", &route), Some(1.0), "{scrape}");
    let dead = sample(&scrape, "sedge_async_dead_lettered_total", &[f]);
    assert_eq!(dead, Some(1.0), "{scrape}");
    assert_eq!(sample(&scrape, "sedge_async_calls", &[f, ("state", "failed")]), Some(1.0), "{scrape}");
    assert_eq!(sample(&scrape, "sedge_async_oldest_queued_seconds", &[f]), Some(0.0), "{scrape}");
    let unmatched = [("method", "GET"), ("path", "unmatched"), ("status", "404")];
    assert_eq!(sample(&scrape, "http_request_duration_seconds_count", &unmatched), Some(1.0), "{scrape}");
    let Some((code, said)) = promtool_check(&scrape) else { return };
    let problems: Vec<&str> = said.lines().filter(|l| !l.trim().is_empty()).collect();
    let unexpected: Vec<&&str> = problems.iter().filter(|p| !OPENFAAS_NAMES.contains(p)).collect();
    assert!(unexpected.is_empty(), "promtool found {unexpected:?} in\n{scrape}");
    // 0: clean; 3: lint problems only (all of them OpenFaaS's names, above).
    assert!(matches!(code, Some(0 | 3)), "promtool exited {code:?}: {said}");
}

fn in_flight(node: &Node, function: &str) -> f64 {
    let scrape = node.get("/metrics").text();
    let f = ("function_name", function);
    let started = sample(&scrape, "gateway_function_invocation_started", &[f]).unwrap_or(0.0);
    let ended: f64 = scrape
        .lines()
        .filter(|l| l.starts_with("gateway_function_invocation_total{") && l.contains(&format!("{}=\"{}\"", f.0, f.1)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    started - ended
}

#[test]
fn in_flight_is_started_minus_total() {
    let node = Node::start();
    let _f = holding(&node, "held", "[scale]\nmin = 1\nmax = 1");
    std::thread::scope(|s| {
        let call = s.spawn(|| node.post("/function/held", b"x"));
        node.wait_for("the call to be in flight", Duration::from_secs(30), |n| in_flight(n, "held.openfaas-fn") == 1.0);
        release(&node.data);
        let a = call.join().expect("the held call");
        assert_eq!((a.status, a.text()), (200, "released 1".to_owned()));
    });
    assert_eq!(in_flight(&node, "held.openfaas-fn"), 0.0);
}

/// What each route answers for `namespace`: its status and error, if any.
fn namespaced(node: &Node, ns: &str) -> Vec<(String, u16, String)> {
    let json = [("content-type", "application/json")];
    let q = format!("namespace={ns}");
    let calls: Vec<(&str, String, String)> = vec![
        ("GET", format!("/system/functions?{q}"), String::new()),
        ("GET", format!("/system/function/talk?{q}"), String::new()),
        ("GET", format!("/system/function/talk.{ns}"), String::new()),
        ("GET", format!("/system/logs?name=talk&{q}"), String::new()),
        ("GET", format!("/system/logs?name=talk.{ns}"), String::new()),
        ("GET", format!("/system/secrets?{q}"), String::new()),
        ("POST", format!("/system/scale-function/talk?{q}"), r#"{"serviceName":"talk","replicas":1}"#.into()),
        ("POST", "/system/scale-function/talk".into(), format!(r#"{{"replicas":1,"namespace":"{ns}"}}"#)),
        ("POST", format!("/function/talk.{ns}"), String::new()),
    ];
    calls
        .into_iter()
        .map(|(method, path, body)| {
            let a = node.request(method, &path, &json, body.as_bytes());
            let error = if a.status >= 400 { a.error() } else { String::new() };
            (format!("{method} {path}"), a.status, error)
        })
        .collect()
}

#[test]
fn only_the_one_namespace_exists() {
    let node = Node::start();
    let f = talker();
    node.deploy(f.path());
    for (call, status, error) in namespaced(&node, "openfaas-fn") {
        assert!(status < 300, "{call}: {status} {error}");
    }
    for (call, status, error) in namespaced(&node, "staging") {
        assert_eq!(
            (status, error.as_str()),
            (404, "no such namespace: staging (sedge has one: openfaas-fn)"),
            "{call}"
        );
    }
    // A removal names its namespace in the body; a refused one removes nothing.
    let del = |ns: &str| {
        node.request(
            "DELETE",
            "/system/functions",
            &[],
            format!(r#"{{"functionName":"talk","namespace":"{ns}"}}"#).as_bytes(),
        )
    };
    assert_eq!(del("staging").status, 404);
    assert_eq!(node.describe("talk")["name"], "talk");
    let upload = node.request("PUT", "/system/bundles/talk?namespace=staging", &[], b"");
    assert_eq!((upload.status, upload.error().contains("staging")), (404, true));
    // Credentials first: a stranger learns nothing about namespaces.
    assert_eq!(node.request_raw("GET", "/system/functions?namespace=staging", &[], b"").status, 401);
    assert_eq!(del("openfaas-fn").status, 200);
}

/// The node's own timestamp of the log line reading `text`, once it is there.
fn logged_at(node: &Node, text: &str) -> String {
    let mut at = String::new();
    node.wait_for(&format!("the line {text:?}"), Duration::from_secs(20), |n| {
        let lines = n.get("/system/logs?name=talk").text();
        let found =
            lines.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find(|v| v["text"] == text);
        at = found.map(|v| v["timestamp"].as_str().unwrap_or_default().to_owned()).unwrap_or_default();
        !at.is_empty()
    });
    at
}

fn texts(node: &Node, query: &str) -> Vec<String> {
    let a = node.get(&format!("/system/logs?name=talk&{query}"));
    assert_eq!(a.status, 200, "{query}: {}", a.text());
    a.text()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("a JSON line")["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// `t` in another zone's local time, `+HH:MM` escaped for a query string.
fn with_offset(t: SystemTime, east: bool, hours: u64) -> String {
    let shift = Duration::from_secs(hours * 3600);
    let local = if east { t + shift } else { t - shift };
    let base = humantime::format_rfc3339_seconds(local).to_string();
    format!("{}{}{hours:02}:00", base.trim_end_matches('Z'), if east { "%2B" } else { "-" })
}

#[test]
fn logs_since_keep_the_lines_at_or_after_it() {
    let node = Node::start();
    let f = talker();
    node.deploy(f.path());
    node.post("/function/talk", b"first");
    let first = logged_at(&node, "first");
    node.post("/function/talk", b"second");
    let second = logged_at(&node, "second");
    assert_eq!(texts(&node, &format!("since={first}")), ["first", "second"]);
    assert_eq!(texts(&node, &format!("since={second}")), ["second"]);
    assert_eq!(texts(&node, &format!("since={first}&tail=1")), ["second"]);
    // faas-cli's form: its local time with its offset, to the second.
    let hour = Duration::from_secs(3600);
    let now = SystemTime::now();
    assert_eq!(texts(&node, &format!("since={}", with_offset(now - hour, true, 2))), ["first", "second"]);
    assert!(texts(&node, &format!("since={}", with_offset(now + hour, false, 5))).is_empty());
    let bad = node.get("/system/logs?name=talk&since=2s");
    assert_eq!(bad.status, 400);
    assert!(bad.error().contains("`since`") && bad.error().contains("\"2s\""), "{}", bad.error());
    let bad = node.get("/system/logs?name=talk&tail=lots");
    assert_eq!((bad.status, bad.error().contains("\"lots\"")), (400, true));

    let cli = |args: &[&str]| {
        let out = node.cli(args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = cli(&["logs", "talk", "--since", "1h"]);
    assert!(ok && out.contains("first") && out.contains("second"), "{out}{err}");
    let (ok, out, err) = cli(&["logs", "talk", "--since", &second]);
    assert!(ok && !out.contains("first") && out.contains("second"), "{out}{err}");
    let (ok, _, err) = cli(&["logs", "talk", "--since", "whenever"]);
    assert!(!ok && err.contains("--since \"whenever\""), "{err}");
}

#[test]
fn routes_sedge_lacks_say_which_case_they_are() {
    let node = Node::start();
    for (method, path, route) in [
        ("POST", "/system/alert", "/system/alert"),
        ("GET", "/system/telemetry", "/system/telemetry"),
        ("PUT", "/system/namespace/staging", "/system/namespace/{name}"),
    ] {
        let a = node.request(method, path, &[], b"");
        assert_eq!(a.status, 501, "{method} {path}: {}", a.text());
        assert_eq!(a.error(), format!("sedge does not serve OpenFaaS's {method} {route} yet"));
    }
    assert_eq!(node.request_raw("POST", "/system/alert", &[], b"").status, 401, "/system/ asks for credentials");
    for path in ["/system/nothing", "/system/function", "/nothing"] {
        let a = node.get(path);
        assert_eq!((a.status, a.error().as_str()), (404, "no such route"), "{path}");
    }
    let a = node.request("PUT", "/system/function/talk", &[], b"");
    assert_eq!(a.status, 405, "{}", a.text());
    assert_eq!(a.header("allow"), Some("GET,HEAD"));
    assert!(a.error().contains("/system/function/{name} does not take PUT"), "{}", a.error());
    assert_eq!(node.post("/async-function/talk", b"").status, 404, "served now: an unknown function");
    assert_eq!(node.get("/ui/").status, 200, "served now: the dashboard");
}

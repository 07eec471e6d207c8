//! Deploy, invoke, list, describe, logs, remove: through the CLI and HTTP.

use crate::support::{manifest, FnDir, Node};

const HANDLER: &str = r#"
import sedge

def handle(req):
    print("handling", req.method, req.path, flush=True)
    if req.path == "/status":
        return sedge.Response({"made": True}, status=201, headers={"x-made-by": "sedge-test"})
    return {
        "method": req.method,
        "path": req.path,
        "query": req.query,
        "header": req.headers.get("x-test"),
        "body": req.text,
    }
"#;

#[test]
fn request_parts_reach_the_function_and_answers_come_back() {
    let node = Node::start();
    let f = FnDir::python("parts", "", HANDLER);
    node.deploy(f.path());
    let a = node.request("PUT", "/function/parts/a/b?x=1&y=two", &[("X-Test", "yes")], b"payload");
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["path"], "/a/b");
    assert_eq!(v["query"]["x"], "1");
    assert_eq!(v["query"]["y"], "two");
    assert_eq!(v["header"], "yes");
    assert_eq!(v["body"], "payload");

    let s = node.post("/function/parts/status", b"");
    assert_eq!(s.status, 201);
    assert_eq!(s.header("x-made-by"), Some("sedge-test"));
    assert_eq!(s.json()["made"], true);
    assert!(s.header("content-type").unwrap_or_default().starts_with("application/json"));
}

#[test]
fn cli_covers_the_whole_lifecycle() {
    let node = Node::start();
    let f = FnDir::python("life", "", HANDLER);
    node.deploy(f.path());

    let out = node.cli(&["invoke", "life", "--data", "hi", "--path", "/p", "--header", "X-Test: 1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!((v["body"].as_str(), v["path"].as_str(), v["method"].as_str()), (Some("hi"), Some("/p"), Some("POST")));

    let ls = String::from_utf8_lossy(&node.cli(&["ls"]).stdout).into_owned();
    assert!(ls.lines().any(|l| l.starts_with("life ") && l.contains("python")), "{ls}");

    let d = node.cli(&["describe", "life"]);
    let desc: serde_json::Value = serde_json::from_slice(&d.stdout).expect("describe json");
    assert_eq!(desc["name"], "life");
    assert_eq!(desc["envProcess"], "handler.handle");

    node.wait_for("the print to reach the log", std::time::Duration::from_secs(10), |n| {
        String::from_utf8_lossy(&n.cli(&["logs", "life", "--tail", "50"]).stdout).contains("handling POST /p")
    });

    let rm = node.cli(&["rm", "life"]);
    assert!(rm.status.success(), "{}", String::from_utf8_lossy(&rm.stderr));
    assert_eq!(node.post("/function/life", b"").status, 404);
    let again = node.cli(&["rm", "life"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("404"));
}

#[test]
fn cli_reports_failures_with_status_and_field() {
    let node = Node::start();
    let out = node.cli(&["invoke", "ghost"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("404") && err.contains("ghost"), "{err}");

    let bad = FnDir::new(&manifest("bad", "python", "handler.handle", "[scale]\nmax = \"lots\"\n"), &[]);
    let out = node.cli(&["deploy", bad.path().to_str().expect("path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sedge.toml") && err.contains("max"), "{err}");
}

#[test]
fn node_functions_run() {
    let node = Node::start();
    let f = FnDir::new(
        &manifest("js", "node", "handler.handle", ""),
        &[("handler.js", "exports.handle = async (req) => ({ got: req.text(), q: req.query.a, m: req.method });\n")],
    );
    node.deploy(f.path());
    let a = node.post("/function/js?a=b", b"body");
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json(), serde_json::json!({"got": "body", "q": "b", "m": "POST"}));
}

#[test]
fn exec_functions_follow_the_watchdog() {
    let node = Node::start();
    let echo = FnDir::new(&manifest("echo", "exec", "cat", ""), &[]);
    node.deploy(echo.path());
    let a = node.post("/function/echo", b"round trip");
    assert_eq!((a.status, a.text().as_str()), (200, "round trip"));

    let env = FnDir::new(&manifest("env", "exec", "sh -c 'echo $Http_Method $Http_Path $Http_X_Tag'", ""), &[]);
    node.deploy(env.path());
    let a = node.request("PATCH", "/function/env/deep", &[("X-Tag", "t1")], b"");
    assert_eq!(a.text().trim(), "PATCH /deep t1");

    let fail = FnDir::new(&manifest("fail", "exec", "sh -c 'echo broken pipe dream >&2; exit 3'", ""), &[]);
    node.deploy(fail.path());
    let a = node.post("/function/fail", b"");
    assert_eq!(a.status, 500);
    let e = a.error();
    assert!(e.contains("fail") && e.contains("broken pipe dream") && e.contains('3'), "{e}");
}

#[test]
fn logs_of_a_quiet_function_say_so() {
    let node = Node::start();
    let f = FnDir::python("quiet", "", "def handle(req):\n    return 'x'\n");
    node.deploy(f.path());
    let out = node.cli(&["logs", "quiet"]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("quiet has printed nothing yet"));
}

#[test]
fn the_node_log_has_no_colour_codes_in_a_file_and_says_listening_once() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = tmp.path().join("node.log");
    let mut child = std::process::Command::new(crate::support::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(tmp.path().join("data"))
        .env("SEDGE_LOG", "info")
        .env("SEDGE_ADMIN_PASSWORD", "pw")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("serve");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("first line");
    assert!(line.starts_with("sedge listening on http://"), "{line}");
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("serving"), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a file: {text:?}");
    assert!(!text.contains("listening on"), "the address line belongs to stdout only: {text}");
}

#[test]
fn redeploying_the_same_bundle_keeps_its_workers() {
    let node = Node::start();
    let f = FnDir::python("same", "[scale]\nmin = 1\n", "def handle(req):\n    return 'same'\n");
    node.deploy(f.path());
    assert_eq!(node.post("/function/same", b"").text(), "same");
    let starts = |n: &Node| n.describe("same")["sedge"]["coldStarts"].as_u64().expect("coldStarts");
    let before = starts(&node);
    for args in
        [&["deploy", f.path().to_str().expect("utf-8")][..], &["deploy", "--wait", f.path().to_str().expect("utf-8")]]
    {
        let out = node.cli(args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.starts_with("unchanged same"), "{said}");
    }
    assert_eq!(node.post("/function/same", b"").text(), "same");
    assert_eq!(starts(&node), before, "no worker was started for an unchanged bundle");
    // A real change still replaces the version.
    std::fs::write(f.path().join("handler.py"), "def handle(req):\n    return 'changed'\n").expect("edit");
    let out = node.cli(&["deploy", "--wait", f.path().to_str().expect("utf-8")]);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("updated same"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(node.post("/function/same", b"").text(), "changed");
}

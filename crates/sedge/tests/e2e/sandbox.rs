//! Sandboxed workers (the default when the node runs as root): limits from
//! `[limits]` hold, workers run unprivileged and see only their own bundle,
//! and nothing a function does reaches the node or other functions.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{manifest, sample, FnDir, Node};

const PROBE: &str = r##"
import json, os, signal, time

def handle(req):
    cmd, _, arg = req.text.partition(" ")
    if cmd == "ids":
        return json.dumps({"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()})
    if cmd == "hog":
        chunks = []
        for _ in range(64):
            chunks.append(bytearray(32 * 1024 * 1024))
        return "allocated %d MiB" % (32 * len(chunks))
    if cmd == "bomb":
        forked, error = 0, ""
        for _ in range(300):
            try:
                pid = os.fork()
            except OSError as e:
                error = repr(e)
                break
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            forked += 1
        return json.dumps({"forked": forked, "error": error, "ns": os.readlink("/proc/self/ns/pid")})
    if cmd == "read":
        try:
            with open(arg, "rb") as f:
                return "read %d bytes" % len(f.read())
        except OSError as e:
            return "refused: " + repr(e)
    if cmd == "list":
        try:
            return "listed " + ",".join(sorted(os.listdir(arg)))
        except OSError as e:
            return "refused: " + repr(e)
    if cmd == "write-bundle":
        try:
            with open("handler.py", "a") as f:
                f.write("# changed\n")
            return "bundle written"
        except OSError as e:
            return "refused: " + repr(e)
    if cmd == "write-tmp":
        path = os.path.join(os.environ["TMPDIR"], "scratch")
        with open(path, "w") as f:
            f.write("kept")
        with open(path) as f:
            return "tmp " + f.read()
    if cmd == "kill":
        try:
            os.kill(int(arg), signal.SIGKILL)
            return "killed"
        except OSError as e:
            return "refused: " + repr(e)
    return "ok"
"##;

fn probe(name: &str, limits: &str) -> FnDir {
    FnDir::python(name, &format!("[limits]\n{limits}\n"), PROBE)
}

fn call(node: &Node, name: &str, body: &str) -> crate::support::Answer {
    node.post(&format!("/function/{name}"), body.as_bytes())
}

fn sandboxed_node() -> Node {
    let node = Node::start();
    let f = FnDir::python("isolated", "", "def handle(req):\n    return 'ok'\n");
    node.deploy(f.path());
    let iso = &node.describe("isolated")["sedge"]["isolation"];
    assert_eq!(iso["sandboxed"], true, "{iso}");
    assert!(iso["user"].is_string(), "these tests need a node running as root, to sandbox workers: {iso}");
    node
}

/// The bundle folder of the one deployed version of `name`.
fn bundle_of(node: &Node, name: &str) -> PathBuf {
    let digest = node.describe(name)["image"].as_str().expect("image").replace(':', "-");
    let dir = node.data.join("bundles").join(digest);
    assert!(dir.join("sedge.toml").is_file(), "no bundle at {}", dir.display());
    dir
}

/// Host processes in the pid namespace `ns` (a worker's, as `pid:[N]`).
fn processes_in(ns: &str) -> usize {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter(|e| std::fs::read_link(e.path().join("ns/pid")).is_ok_and(|l| l.as_os_str() == ns))
        .count()
}

#[test]
fn a_worker_past_its_memory_limit_answers_502_and_is_replaced() {
    let node = sandboxed_node();
    let hog = probe("hog", "memory = \"64MiB\"");
    let other = probe("bystander", "");
    node.deploy(hog.path());
    node.deploy(other.path());
    assert_eq!(call(&node, "hog", "ok").status, 200);
    let a = call(&node, "hog", "hog");
    assert_eq!(a.status, 502, "{}", a.text());
    assert_eq!(a.error(), "function hog exceeded its memory limit of 64 MiB");
    assert_eq!(node.get("/healthz").status, 200, "the node keeps serving");
    assert_eq!(call(&node, "bystander", "ok").text(), "ok", "other functions keep serving");
    let again = call(&node, "hog", "ok");
    assert_eq!((again.status, again.text()), (200, "ok".to_owned()), "a new worker serves");
    assert_eq!(node.describe("hog")["sedge"]["oomKills"], 1);
    let metrics = node.get("/metrics").text();
    let kills = sample(&metrics, "sedge_oom_kills_total", &[("function_name", "hog.openfaas-fn")]);
    assert_eq!(kills, Some(1.0), "{metrics}");
    let iso = &node.describe("hog")["sedge"]["isolation"];
    assert_eq!((iso["memory"].as_u64(), iso["memoryBy"].as_str()), (Some(64 << 20), Some("cgroup")), "{iso}");
}

#[test]
fn a_fork_bomb_stays_under_the_pids_limit_and_ends_with_its_worker() {
    let node = sandboxed_node();
    let f = probe("bomb", "pids = 32");
    node.deploy(f.path());
    let a = call(&node, "bomb", "bomb");
    assert_eq!(a.status, 200, "{}", a.text());
    let got = a.json();
    let forked = got["forked"].as_u64().expect("forked");
    assert!(forked > 0 && forked < 32, "{got}");
    assert!(got["error"].as_str().is_some_and(|e| e.contains("Resource temporarily unavailable")), "{got}");
    let ns = got["ns"].as_str().expect("ns").to_owned();
    let running = processes_in(&ns);
    assert!(running > forked as usize && running <= 32, "{running} processes of the function on the host");
    // Removing the function stops its worker: every child goes with it.
    let out = node.cli(&["rm", "bomb"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    node.wait_for("the bomb's children to end", Duration::from_secs(20), |_| processes_in(&ns) == 0);
}

#[test]
fn a_worker_cannot_read_the_node_s_files_or_another_function_s_bundle() {
    let node = sandboxed_node();
    let f = probe("snoop", "");
    node.deploy(f.path());
    let db = node.data.join("sedge.db");
    assert!(db.is_file());
    let other = bundle_of(&node, "isolated");
    let own = bundle_of(&node, "snoop");
    for path in [db.as_path(), Path::new("/etc/shadow"), &other.join("handler.py")] {
        let a = call(&node, "snoop", &format!("read {}", path.display()));
        assert_eq!(a.status, 200, "{}", a.text());
        assert!(a.text().starts_with("refused: "), "{}: {}", path.display(), a.text());
    }
    let listed = call(&node, "snoop", &format!("list {}", node.data.join("bundles").display())).text();
    let own_name = own.file_name().and_then(|n| n.to_str()).expect("name");
    assert_eq!(listed, format!("listed {own_name}"), "only its own bundle is in view");
    let read_own = call(&node, "snoop", &format!("read {}", own.join("handler.py").display())).text();
    assert!(read_own.starts_with("read "), "{read_own}");
    // exec commands are held the same way.
    let exec = FnDir::new(&manifest("cat", "exec", "cat /etc/shadow", ""), &[]);
    node.deploy(exec.path());
    let a = node.post("/function/cat", b"");
    assert_eq!(a.status, 500, "{}", a.text());
    assert!(a.error().contains("Permission denied"), "{}", a.error());
}

#[test]
fn the_bundle_is_read_only_and_tmpdir_is_writable() {
    let node = sandboxed_node();
    let f = probe("writer", "");
    node.deploy(f.path());
    let a = call(&node, "writer", "write-bundle").text();
    // Both the mount (read-only) and the owner (root) refuse it.
    assert!(a.starts_with("refused: "), "{a}");
    let own = bundle_of(&node, "writer");
    let code = std::fs::read_to_string(own.join("handler.py")).expect("handler");
    assert_eq!(code, PROBE, "the stored bundle is unchanged");
    assert_eq!(call(&node, "writer", "write-tmp").text(), "tmp kept");
}

#[test]
fn workers_run_as_the_unprivileged_sandbox_user() {
    let node = sandboxed_node();
    let f = probe("whoami", "");
    node.deploy(f.path());
    let ids = call(&node, "whoami", "ids").json();
    let iso = &node.describe("whoami")["sedge"]["isolation"];
    let uid = ids["uid"].as_u64().expect("uid");
    assert_ne!(uid, 0, "{ids}");
    assert_eq!(Some(uid), iso["uid"].as_u64(), "{iso}");
    assert_eq!(ids["groups"], serde_json::json!([]), "no supplementary groups: {ids}");
    let id = std::process::Command::new("id").args(["-u", iso["user"].as_str().expect("user")]).output().expect("id");
    assert_eq!(String::from_utf8_lossy(&id.stdout).trim(), uid.to_string());
    assert_eq!(iso["namespaces"], serde_json::json!(["mount", "pid"]));
}

#[test]
fn a_worker_cannot_kill_the_node() {
    let node = sandboxed_node();
    let f = probe("assassin", "");
    node.deploy(f.path());
    let a = call(&node, "assassin", &format!("kill {}", node.pid())).text();
    assert!(a.starts_with("refused: "), "{a}");
    assert_eq!(node.get("/healthz").status, 200);
    assert_eq!(call(&node, "isolated", "").text(), "ok");
}

#[test]
fn no_sandbox_runs_workers_as_the_node_and_describe_says_so() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = Node::start_with(&tmp.path().join("data"), &["--no-sandbox"]);
    let f = probe("open", "memory = \"64MiB\"");
    node.deploy(f.path());
    let iso = &node.describe("open")["sedge"]["isolation"];
    assert_eq!((iso["sandboxed"].as_bool(), iso["memoryBy"].as_str()), (Some(false), Some("none")), "{iso}");
    let ids = call(&node, "open", "ids").json();
    assert_eq!(ids["uid"].as_u64(), Some(u64::from(nix_uid())));
}

fn nix_uid() -> u32 {
    let out = std::process::Command::new("id").arg("-u").output().expect("id");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("uid")
}

const HTTP_HOG: &str = r#"
from http.server import BaseHTTPRequestHandler, HTTPServer
import os

class H(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path == "/hog":
            chunks = [bytearray(32 * 1024 * 1024) for _ in range(64)]
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def do_GET(self):
        self.do_POST()

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

#[test]
fn exec_and_http_workers_past_their_memory_limit_answer_502_too() {
    let node = sandboxed_node();
    let limits = "[limits]\nmemory = \"64MiB\"\n";
    let exec = FnDir::new(
        &manifest("exechog", "exec", "python3 -c 'x = [bytearray(32 << 20) for _ in range(64)]'", limits),
        &[],
    );
    let http = FnDir::new(&manifest("httphog", "http", "python3 server.py", limits), &[("server.py", HTTP_HOG)]);
    node.deploy(exec.path());
    node.deploy(http.path());
    for (name, path) in [("exechog", "/function/exechog"), ("httphog", "/function/httphog/hog")] {
        let a = node.post(path, b"");
        assert_eq!(a.status, 502, "{name}: {}", a.text());
        assert_eq!(a.error(), format!("function {name} exceeded its memory limit of 64 MiB"));
        assert_eq!(node.describe(name)["sedge"]["oomKills"], 1, "{name}");
    }
    let again = node.post("/function/httphog", b"");
    assert_eq!((again.status, again.text()), (200, "ok".to_owned()), "a new server answers");
}

const HTTP_WITH_CHILD: &str = r#"
import os, subprocess
from http.server import BaseHTTPRequestHandler, HTTPServer

subprocess.Popen(["sleep", "300"])

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        ns = os.readlink("/proc/self/ns/pid").encode()
        self.send_response(200)
        self.send_header("content-length", str(len(ns)))
        self.end_headers()
        self.wfile.write(ns)

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

#[test]
fn a_node_killed_outright_takes_its_workers_along() {
    let node = sandboxed_node();
    let f = FnDir::new(&manifest("server", "http", "python3 server.py", ""), &[("server.py", HTTP_WITH_CHILD)]);
    node.deploy(f.path());
    let ns = node.get("/function/server").text();
    assert!(ns.starts_with("pid:["), "{ns}");
    assert!(processes_in(&ns) >= 2, "the server and its child run");
    // Dropping the node SIGKILLs it: no chance to stop its workers itself.
    drop(node);
    let start = std::time::Instant::now();
    while processes_in(&ns) > 0 {
        assert!(start.elapsed() < Duration::from_secs(20), "workers outlived their node");
        std::thread::sleep(Duration::from_millis(50));
    }
}

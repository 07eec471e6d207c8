//! `runtime = "http"`: sedge starts a process serving HTTP on `$PORT`, waits
//! until it answers, proxies to it and restarts it when it dies.

use crate::support::{manifest, FnDir, Node};

/// A standard-library server that takes a moment before it listens, so a
/// request proxied too early would fail.
const SERVER: &str = r#"
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

time.sleep(0.5)
# Told apart by a token, not the pid: sandboxed servers all have the same
# small pid in namespaces of their own.
WORKER = os.urandom(8).hex()

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.answer(b"")

    def do_POST(self):
        self.answer(self.rfile.read(int(self.headers.get("content-length") or 0)))

    def answer(self, body):
        if self.path.startswith("/die"):
            os._exit(3)
        out = json.dumps({"method": self.command, "path": self.path, "tag": self.headers.get("x-tag"),
                          "body": body.decode(), "pid": WORKER}).encode()
        self.send_response(201 if self.path.startswith("/made") else 200)
        self.send_header("content-type", "application/json")
        self.send_header("x-served-by", "stdlib")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        print("served", self.path, file=sys.stderr, flush=True)

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

#[test]
fn an_http_server_is_proxied_once_ready_and_restarted_when_it_dies() {
    let node = Node::start();
    let f = FnDir::new(&manifest("web", "http", "python3 server.py", ""), &[("server.py", SERVER)]);
    // Without --wait: the first request itself must wait for readiness.
    let out = node.cli(&["deploy", f.path().to_str().expect("path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let a = node.request("POST", "/function/web/made/it?x=1", &[("X-Tag", "t")], b"hello");
    assert_eq!(a.status, 201, "{}", a.text());
    assert_eq!(a.header("x-served-by"), Some("stdlib"));
    let v = a.json();
    assert_eq!((v["method"].as_str(), v["path"].as_str()), (Some("POST"), Some("/made/it?x=1")));
    assert_eq!((v["tag"].as_str(), v["body"].as_str()), (Some("t"), Some("hello")));
    let pid = v["pid"].clone();

    let dead = node.get("/function/web/die");
    assert_eq!(dead.status, 502, "{}", dead.text());
    let again = node.get("/function/web/");
    assert_eq!(again.status, 200, "{}", again.text());
    assert_ne!(again.json()["pid"], pid, "a new server process answers after the crash");
}

#[test]
fn a_server_that_never_listens_is_reported() {
    let node = Node::start();
    let f = FnDir::new(&manifest("mute", "http", "python3 -c 'import sys; sys.exit(4)'", ""), &[]);
    let out = node.cli(&["deploy", "--wait", f.path().to_str().expect("path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exited before it answered"), "{err}");
}

//! Clients that hang up, bodies that look like frames, and workers whose
//! children outstay them: none of it may break a worker or leave a process
//! behind.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{FnDir, Node};

/// Answers who ran it and what it got, so a test can tell a forged
/// invocation from its own; logs each invocation's path.
const ECHO: &str = r#"
import json, os

def handle(req):
    print("handling %s %s" % (req.method, req.path), flush=True)
    return json.dumps({
        "pid": os.getpid(),
        "ns": os.readlink("/proc/self/ns/pid"),
        "method": req.method,
        "path": req.path,
        "len": len(req.body),
        "who": req.headers.get("who", ""),
    })
"#;

/// The size of one EfficientNet-Lite0 input tensor (1×3×224×224 float32).
const TENSOR: usize = 602_112;

/// A small deterministic generator: the tests need variety, not secrecy.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn host(node: &Node) -> String {
    node.url.trim_start_matches("http://").to_owned()
}

fn post_head(path: &str, len: usize, extra: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n{extra}\r\n")
}

/// One whole exchange on a raw socket; the status and the body.
fn exchange(addr: &str, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    s.write_all(head.as_bytes()).expect("head");
    s.write_all(body).expect("body");
    let mut answer = Vec::new();
    let mut buf = [0u8; 65536];
    // Read until the answer's declared length is in.
    loop {
        let n = s.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((headers, rest)) = text.split_once("\r\n\r\n") {
            let len = headers
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok());
            if len.is_some_and(|len| rest.len() >= len) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn cold_starts(node: &Node, name: &str) -> u64 {
    node.describe(name)["sedge"]["coldStarts"].as_u64().expect("coldStarts")
}

fn logs(node: &Node, name: &str) -> String {
    String::from_utf8_lossy(&node.cli(&["logs", name, "--tail", "2000"]).stdout).into_owned()
}

#[test]
fn clients_hanging_up_mid_request_never_break_a_worker() {
    let node = Node::start();
    let f = FnDir::python("tensor", "[limits]\nmax_body = \"2MiB\"\nqueue = 64\n[scale]\nmax = 2\n", ECHO);
    node.deploy(f.path());
    let body = vec![7u8; TENSOR];
    // Both workers up and held, so that any later start is a restart.
    let out = node.cli(&["scale", "tensor", "--replicas", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    node.wait_for("two workers", Duration::from_secs(30), |n| n.describe("tensor")["availableReplicas"] == 2);
    let warm = cold_starts(&node, "tensor");
    assert_eq!(warm, 2);
    let addr = host(&node);
    let bad = Arc::new(AtomicU32::new(0));
    let stayed = Arc::new(AtomicU32::new(0));
    let mut rng = Lcg(0x5eed);
    for round in 0..30 {
        let waits: Vec<u64> = (0..16).map(|_| 5 + rng.below(56)).collect();
        let cuts: Vec<usize> = (0..16).map(|_| rng.below(TENSOR as u64 + 1) as usize).collect();
        std::thread::scope(|s| {
            for (i, (&wait, &cut)) in waits.iter().zip(&cuts).enumerate() {
                let (addr, body) = (&addr, &body);
                s.spawn(move || {
                    let mut c = TcpStream::connect(addr).expect("connect");
                    let _ = c.write_all(post_head("/function/tensor", TENSOR, "").as_bytes());
                    // Half the clients send the whole body, half stop part-way.
                    let sent = if i % 2 == 0 { TENSOR } else { cut };
                    let _ = c.write_all(&body[..sent]);
                    std::thread::sleep(Duration::from_millis(wait));
                    let _ = c.shutdown(Shutdown::Both);
                });
            }
            // Two clients per round stay for their answers.
            for _ in 0..2 {
                let (addr, body, bad, stayed) = (&addr, &body, bad.clone(), stayed.clone());
                s.spawn(move || {
                    let (status, text) = exchange(addr, &post_head("/function/tensor", TENSOR, ""), body);
                    stayed.fetch_add(1, Ordering::Relaxed);
                    if status >= 500 || status == 0 {
                        eprintln!("round {round}: a staying client got {status}: {text}");
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
    }
    assert_eq!(stayed.load(Ordering::Relaxed), 60);
    assert_eq!(bad.load(Ordering::Relaxed), 0, "staying clients got 5xx");
    // Requests already with a worker run to their end; then all is steady.
    for _ in 0..4 {
        let a = node.post("/function/tensor", &body);
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.json()["len"], TENSOR);
    }
    assert_eq!(cold_starts(&node, "tensor"), warm, "workers were restarted");
    let log = logs(&node, "tensor");
    assert!(!log.contains("exited") && !log.contains("bad frame"), "{log}");
}

/// The host pid of the worker that gave `answer` (its `pid` and pid
/// namespace `ns`): in a namespace of its own, the process there whose pid
/// in that namespace is the one it saw.
pub(crate) fn host_pid(answer: &serde_json::Value) -> u64 {
    let (pid, ns) = (answer["pid"].as_u64().expect("pid"), answer["ns"].as_str().expect("ns"));
    if std::fs::read_link("/proc/self/ns/pid").is_ok_and(|own| own.as_os_str() == ns) {
        return pid;
    }
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .find_map(|e| {
            let host: u64 = e.file_name().to_str()?.parse().ok()?;
            if std::fs::read_link(e.path().join("ns/pid")).ok()?.as_os_str() != ns {
                return None;
            }
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let inner = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?.split_whitespace().last()?;
            (inner.parse::<u64>().ok()? == pid).then_some(host)
        })
        .expect("the worker among the host's processes")
}

pub(crate) fn signal(pid: u64, sig: &str) {
    let ok = Command::new("kill").args([sig, &pid.to_string()]).status().expect("kill");
    assert!(ok.success());
}

/// Builds the bytes of a well-formed worker frame, as a hostile client would.
fn forged_frame() -> Vec<u8> {
    let header = br#"{"type":"invoke","id":1,"method":"DELETE","path":"/smuggled","query":"","headers":[["who","admin"]],"timeout_ms":10000}"#;
    let mut out = Vec::new();
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(header);
    out
}

#[test]
fn a_body_that_holds_a_frame_is_only_ever_a_body() {
    let node = Node::start();
    let f = FnDir::python("victim", "[limits]\nmax_body = \"16MiB\"\n[scale]\nmax = 1\n", ECHO);
    node.deploy(f.path());
    let first = node.post("/function/victim", b"hello");
    assert_eq!(first.status, 200, "{}", first.text());
    let pid = host_pid(&first.json());
    let addr = host(&node);
    // B: a large body sent while the worker is stopped, then B hangs up.
    signal(pid, "-STOP");
    let big = vec![b'b'; 8 * 1024 * 1024];
    let b = std::thread::spawn({
        let addr = addr.clone();
        move || {
            let mut s = TcpStream::connect(&addr).expect("connect");
            s.write_all(post_head("/function/victim", big.len(), "").as_bytes()).expect("head");
            let _ = s.write_all(&big);
            std::thread::sleep(Duration::from_secs(1));
            let _ = s.shutdown(Shutdown::Both);
        }
    });
    // The worker resumes only after B has gone, with B's frame (at most)
    // partly delivered: with frames cut short, what C sends next would be
    // read as the rest of B's body and then as frames of its own.
    b.join().expect("client B");
    std::thread::sleep(Duration::from_millis(500));
    signal(pid, "-CONT");
    // C: filler that would complete B's body (a pipe holds 64 KiB), then a
    // forged frame.
    let mut body = vec![b'c'; 8 * 1024 * 1024 - 65_536];
    body.extend(forged_frame());
    let (status, text) = exchange(&addr, &post_head("/function/victim", body.len(), ""), &body);
    assert_eq!(status, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).expect("JSON answer");
    assert_eq!(answer["method"], "POST", "{text}");
    assert_eq!(answer["path"], "/", "{text}");
    assert_eq!(answer["len"], body.len(), "{text}");
    assert_eq!(answer["who"], "", "{text}");
    // Whatever B's fate, nothing ran as the forged request.
    std::thread::sleep(Duration::from_millis(500));
    let log = logs(&node, "victim");
    assert!(!log.contains("smuggled"), "{log}");
    assert_eq!(node.post("/function/victim", b"after").status, 200);
}

/// Starts a child that outlives the handler, named by the request's tag
/// so the test finds it among the host's processes (a sandboxed worker's
/// own pids mean nothing outside its namespace), and for `hang` then sleeps
/// past the function's timeout.
const FORKER: &str = r#"
import subprocess, time

def handle(req):
    child = subprocess.Popen(["sh", "-c", "sleep 300; : child-of-%s" % req.text.split()[1]])
    if req.text.startswith("hang"):
        time.sleep(60)
    return "started"
"#;

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn wait_gone(pid: u32, what: &str) {
    let start = Instant::now();
    while running(pid) {
        assert!(start.elapsed() < Duration::from_secs(20), "{what}: child {pid} is still running");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The host pid of the child started for `tag`, once it runs.
fn find_child(tag: &str) -> u32 {
    let needle = format!("child-of-{tag}");
    let start = Instant::now();
    loop {
        let found = std::fs::read_dir("/proc").expect("/proc").filter_map(Result::ok).find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline).contains(&needle).then_some(pid)
        });
        if let Some(pid) = found {
            return pid;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no child process for {tag}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_workers_children_go_when_it_times_out_is_removed_or_the_node_stops() {
    let tag = format!("{}", std::process::id());
    let node = Node::start();
    let f = FnDir::python("forker", "[limits]\ntimeout = \"1s\"\n", FORKER);
    node.deploy(f.path());

    let hang = std::thread::scope(|s| {
        let call = s.spawn(|| node.post("/function/forker", format!("hang {tag}-t").as_bytes()));
        let pid = find_child(&format!("{tag}-t"));
        (call.join().expect("call"), pid)
    });
    assert_eq!(hang.0.status, 504, "{}", hang.0.text());
    wait_gone(hang.1, "after a timeout");

    let a = node.post("/function/forker", format!("run {tag}-r").as_bytes());
    assert_eq!(a.status, 200, "{}", a.text());
    let pid = find_child(&format!("{tag}-r"));
    assert!(running(pid), "the child runs while its worker does");
    let out = node.cli(&["rm", "forker"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_gone(pid, "after the function was removed");

    node.deploy(f.path());
    let a = node.post("/function/forker", format!("run {tag}-s").as_bytes());
    assert_eq!(a.status, 200, "{}", a.text());
    let pid = find_child(&format!("{tag}-s"));
    assert!(running(pid));
    assert!(node.terminate().success());
    wait_gone(pid, "after the node stopped");
}

const BIG_ANSWER: &str = r#"
import os, sedge

# Sandboxed workers all have the same pid in namespaces of their own: a
# token drawn at load tells them apart.
WORKER = os.urandom(8).hex()

def handle(req):
    return sedge.Response(b"a" * int(req.text), headers={"x-pid": WORKER})
"#;

const BIG_SERVER: &str = r#"
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.rfile.read(int(self.headers["content-length"])))
        self.send_response(200)
        self.send_header("content-length", str(n))
        self.end_headers()
        self.wfile.write(b"a" * n)
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

#[test]
fn answers_over_max_answer_are_refused_by_every_engine() {
    let node = Node::start();
    let limits = "[limits]\nmax_answer = \"1MiB\"\n";
    let python = FnDir::python("bigpy", limits, BIG_ANSWER);
    let exec = FnDir::new(&crate::support::manifest("bigexec", "exec", "head -c 3000000 /dev/zero", limits), &[]);
    let http = FnDir::new(
        &crate::support::manifest("bighttp", "http", "python3 server.py", limits),
        &[("server.py", BIG_SERVER)],
    );
    for f in [&python, &exec, &http] {
        node.deploy(f.path());
    }
    let small = node.post("/function/bigpy", b"10");
    assert_eq!(small.status, 200, "{}", small.text());
    let pid = small.header("x-pid").expect("x-pid").to_owned();
    for name in ["bigpy", "bigexec", "bighttp"] {
        let a = node.post(&format!("/function/{name}"), b"3000000");
        assert_eq!(a.status, 502, "{name}: {}", a.text());
        let e = a.error();
        assert!(e.contains(name) && e.contains("max_answer of 1048576 bytes"), "{e}");
    }
    // Within the cap all is well, and the Python worker was kept.
    let again = node.post("/function/bigpy", b"1000000");
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.body.len(), 1_000_000);
    assert_eq!(again.header("x-pid"), Some(pid.as_str()), "the worker was replaced");
    assert_eq!(node.post("/function/bighttp", b"1000").body.len(), 1000);
}

//! The gateway is bounded everywhere: requests refused before their bodies
//! are read, connections that idle, trickle or crowd closed, and the
//! management API closed to other origins. Raw sockets show what reaches
//! the wire (and what is never asked for).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{holding, release, FnDir, Node, BIN};

const ECHO: &str = "def handle(req):\n    return 'got %d' % len(req.body)\n";

/// Bounds every blocking read, so a node that waits forever fails the test
/// instead of hanging it; never a claim about speed.
const PATIENCE: Duration = Duration::from_secs(30);

fn addr(node: &Node) -> String {
    node.url.trim_start_matches("http://").to_owned()
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(PATIENCE)).expect("read timeout");
    s
}

fn post_head(path: &str, len: u64, extra: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n{extra}\r\n")
}

/// An answer read off a raw socket.
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    fn error(&self) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body));
        v["error"].as_str().unwrap_or_else(|| panic!("no error field: {}", self.body)).to_owned()
    }
}

/// Reads one answer (head and a Content-Length body).
fn read_answer(s: &mut TcpStream) -> Raw {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = s.read(&mut buf).expect("read the answer");
        assert!(n > 0, "closed before a whole answer: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        let Some((head, rest)) = text.split_once("\r\n\r\n") else { continue };
        let raw = Raw {
            status: head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0),
            head: head.to_owned(),
            body: rest.to_owned(),
        };
        let len: usize = raw.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        if raw.body.len() >= len {
            return raw;
        }
    }
}

/// The peer closed the connection: a read gives end-of-file or a reset.
fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return false,
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn node_with(extra: &[&str]) -> (Node, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = Node::start_with(&tmp.path().join("data"), extra);
    (node, tmp)
}

fn busy(node: &Node, name: &str) -> u64 {
    node.describe(name)["sedge"]["workers"]["busy"].as_u64().expect("busy")
}

#[test]
fn a_declared_length_over_max_body_is_refused_before_the_body_is_sent() {
    let node = Node::start();
    let f = FnDir::python("small", "[limits]\nmax_body = \"1MiB\"\n", ECHO);
    node.deploy(f.path());
    let mut s = connect(&addr(&node));
    // Headers only: a node that waited for the body would never answer.
    s.write_all(post_head("/function/small", 1_000_000_000_000, "").as_bytes()).expect("head");
    let a = read_answer(&mut s);
    assert_eq!(a.status, 413, "{}", a.body);
    assert!(a.error().contains("max_body of 1048576 bytes"), "{}", a.error());
    assert_eq!(a.header("connection").as_deref(), Some("close"));
    assert!(closed(&mut s), "the connection with an unread body stays open");
    // An unknown function is still a 404, whatever its body.
    let mut s = connect(&addr(&node));
    s.write_all(post_head("/function/nope", 1_000_000_000_000, "").as_bytes()).expect("head");
    let missing = read_answer(&mut s);
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("connection").as_deref(), Some("close"));
    // Within the limit, the same function answers.
    let ok = node.post("/function/small", &[1u8; 1000]);
    assert_eq!((ok.status, ok.text()), (200, "got 1000".to_owned()));
}

#[test]
fn expect_continue_is_never_answered_100_for_a_body_that_is_refused() {
    let node = Node::start();
    let f = FnDir::python("small", "[limits]\nmax_body = \"1MiB\"\n", ECHO);
    node.deploy(f.path());
    let mut s = connect(&addr(&node));
    s.write_all(post_head("/function/small", 1 << 30, "Expect: 100-continue\r\n").as_bytes()).expect("head");
    let a = read_answer(&mut s);
    assert_eq!(a.status, 413, "the first answer must be the refusal, not 100: {}", a.head);
    // Within the limit, 100 comes and then the answer.
    let mut s = connect(&addr(&node));
    s.write_all(post_head("/function/small", 5, "Expect: 100-continue\r\n").as_bytes()).expect("head");
    let mut buf = [0u8; 25];
    s.read_exact(&mut buf).expect("100 Continue");
    assert!(buf.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"), "{:?}", String::from_utf8_lossy(&buf));
    s.write_all(b"hello").expect("body");
    let a = read_answer(&mut s);
    assert_eq!((a.status, a.body.as_str()), (200, "got 5"));
}

#[test]
fn a_full_queue_refuses_a_large_body_before_it_is_sent() {
    let node = Node::start();
    let _f = holding(&node, "one", "queue = 0\nmax_body = \"64MiB\"\n[scale]\nmin = 1\nmax = 1");
    std::thread::scope(|s| {
        let held = s.spawn(|| node.post("/function/one", b"first"));
        node.wait_for("the worker to be busy", PATIENCE, |n| busy(n, "one") == 1);
        for extra in ["", "Expect: 100-continue\r\n"] {
            let mut c = connect(&addr(&node));
            c.write_all(post_head("/function/one", 8 * 1024 * 1024, extra).as_bytes()).expect("head");
            let a = read_answer(&mut c);
            assert_eq!(a.status, 429, "{extra}{}", a.head);
            assert!(a.error().contains("one"), "{}", a.error());
            assert_eq!(a.header("retry-after").as_deref(), Some("1"));
            assert_eq!(a.header("connection").as_deref(), Some("close"));
            assert!(closed(&mut c));
        }
        // A client that sends its whole body before reading (as most HTTP
        // libraries do) gets the refusal, not a reset: the node drains what
        // it will not read before closing.
        let body = vec![b'x'; 32 * 1024 * 1024];
        let mut c = connect(&addr(&node));
        c.write_all(post_head("/function/one", body.len() as u64, "").as_bytes()).expect("head");
        c.write_all(&body).expect("the whole body is taken");
        assert_eq!(read_answer(&mut c).status, 429);
        release(&node.data);
        let first = held.join().expect("held request");
        assert_eq!((first.status, first.text()), (200, "released 5".to_owned()));
    });
}

#[test]
fn an_idle_connection_is_closed_after_the_idle_timeout() {
    // The header-read timeout is long, so only the idle timeout can close it.
    let (node, _tmp) = node_with(&["--idle-timeout", "1s", "--header-read-timeout", "10m"]);
    let mut s = connect(&addr(&node));
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let a = read_answer(&mut s);
    assert_eq!((a.status, a.body.as_str()), (200, "OK"));
    assert!(closed(&mut s), "an idle keep-alive connection stayed open");
}

#[test]
fn headers_trickled_in_are_cut_off_after_the_header_read_timeout() {
    let (node, _tmp) = node_with(&["--header-read-timeout", "1s", "--idle-timeout", "10m"]);
    let mut s = connect(&addr(&node));
    s.set_read_timeout(Some(Duration::from_millis(200))).expect("read timeout");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").expect("request line");
    let start = Instant::now();
    // Each header line keeps the socket busy; only the timeout may end it.
    let mut i = 0;
    loop {
        assert!(start.elapsed() < PATIENCE, "a trickling client was never cut off");
        if s.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes()).is_err() || closed(&mut s) {
            break;
        }
        i += 1;
    }
}

#[test]
fn a_body_that_stops_arriving_gets_408() {
    let (node, _tmp) = node_with(&["--body-timeout", "1s"]);
    let f = FnDir::python("small", "", ECHO);
    node.deploy(f.path());
    let mut s = connect(&addr(&node));
    s.write_all(post_head("/function/small", 100, "").as_bytes()).expect("head");
    s.write_all(&[0u8; 10]).expect("part of the body");
    let a = read_answer(&mut s);
    assert_eq!(a.status, 408, "{}", a.body);
    assert!(a.error().contains("sent nothing for 1s"), "{}", a.error());
    assert!(closed(&mut s));
}

/// A node whose log goes to a file, for the tests that read it.
struct Logged {
    child: Child,
    url: String,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Logged {
    fn start(extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let log = tmp.path().join("node.log");
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(tmp.path().join("data"))
            .args(extra)
            .env("SEDGE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start sedge serve");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().expect("stdout")), &mut line)
            .expect("listening line");
        let url = line.trim().strip_prefix("sedge listening on ").expect("listening line").to_owned();
        Self { child, url, log, _tmp: tmp }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn past_the_connection_cap_new_connections_are_closed_and_it_is_logged() {
    let node = Logged::start(&["--max-connections", "2"]);
    let addr = node.url.trim_start_matches("http://").to_owned();
    assert!(node.log().contains("open-descriptor limit: "), "{}", node.log());
    // Two keep-alive connections, each known to be served.
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = connect(&addr);
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
            assert_eq!(read_answer(&mut s).status, 200);
            s
        })
        .collect();
    let mut third = connect(&addr);
    // The request may or may not reach the socket before it is closed.
    let _ = third.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(closed(&mut third), "a connection past the cap was served");
    let start = Instant::now();
    while !node.log().contains("connection cap reached (2 open)") {
        assert!(start.elapsed() < PATIENCE, "no log line for the cap: {}", node.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // A closed connection gives its place back.
    drop(held.pop());
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < PATIENCE, "the cap never gave a place back");
        let mut s = connect(&addr);
        if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").is_ok() {
            let mut buf = [0u8; 12];
            if s.read_exact(&mut buf).is_ok() {
                assert_eq!(&buf, b"HTTP/1.1 200");
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_followed_log_is_not_an_idle_connection() {
    let (node, _tmp) = node_with(&["--idle-timeout", "1s"]);
    let f = FnDir::python("talk", "", "def handle(req):\n    print('said so', flush=True)\n    return 'ok'\n");
    node.deploy(f.path());
    let mut s = connect(&addr(&node));
    let head = format!(
        "GET /system/logs?name=talk&follow=true HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n",
        node.basic_auth()
    );
    s.write_all(head.as_bytes()).expect("request");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = s.read(&mut buf).expect("read the head");
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&buf[..n]);
    }
    // Several idle timeouts pass with the stream open and quiet.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(node.post("/function/talk", b"").status, 200);
    while !String::from_utf8_lossy(&got).contains("said so") {
        let n = s.read(&mut buf).expect("read the log");
        assert!(n > 0, "the followed log was closed as idle: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn the_management_api_refuses_other_origins_other_content_types_and_pins_past_max() {
    let node = Node::start();
    let f = FnDir::python("pinned", "[scale]\nmax = 2\n", ECHO);
    node.deploy(f.path());
    let json = ("content-type", "application/json");
    let body = br#"{"serviceName":"pinned","replicas":1}"#;
    let path = "/system/scale-function/pinned";
    // Refused even with the admin credential (added by `request`): a
    // browser may hold it.
    let evil = node.request("POST", path, &[json, ("origin", "http://evil.example")], body);
    assert_eq!(evil.status, 403, "{}", evil.text());
    assert!(evil.error().contains("cross-origin"), "{}", evil.error());
    let site = node.request("POST", path, &[json, ("sec-fetch-site", "cross-site")], body);
    assert_eq!(site.status, 403, "{}", site.text());
    // Reads are refused too: a page must not learn what the node runs.
    let list = node.request("GET", "/system/functions", &[("origin", "http://evil.example")], b"");
    assert_eq!(list.status, 403);
    let text = node.request("POST", path, &[("content-type", "text/plain")], body);
    assert_eq!(text.status, 415, "{}", text.text());
    assert!(text.error().contains("application/json"), "{}", text.error());
    assert_eq!(node.request("POST", path, &[], body).status, 415);
    // JSON bodies are small: a large one is refused by its declared length.
    let mut s = connect(&addr(&node));
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n",
        node.basic_auth()
    );
    s.write_all(head.as_bytes()).expect("head");
    let huge = read_answer(&mut s);
    assert_eq!(huge.status, 413, "{}", huge.body);
    assert!(huge.error().contains("JSON body is at most"), "{}", huge.error());
    let past = node.request("POST", path, &[json], br#"{"serviceName":"pinned","replicas":60}"#);
    assert_eq!(past.status, 400, "{}", past.text());
    assert!(past.error().contains("from 0 to 2") && past.error().contains("[scale] max"), "{}", past.error());
    // The node's own page (same origin) and plain clients still scale.
    let own = node.url.clone();
    let ok = node.request("POST", path, &[("content-type", "application/json; charset=utf-8"), ("origin", &own)], body);
    assert_eq!(ok.status, 202, "{}", ok.text());
    let out = node.cli(&["scale", "pinned", "--replicas", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    node.wait_for("two workers", PATIENCE, |n| n.describe("pinned")["availableReplicas"] == 2);
    // Invocations are not the management API: any origin may call a function.
    let call = node.request("POST", "/function/pinned", &[("origin", "http://evil.example")], b"abc");
    assert_eq!((call.status, call.text()), (200, "got 3".to_owned()));
}

#[test]
fn bodies_past_the_node_body_memory_get_503_until_it_is_given_back() {
    let (node, _tmp) = node_with(&["--max-body-memory", "1MiB"]);
    let _f = holding(&node, "mem", "queue = 4\nmax_body = \"4MiB\"\n[scale]\nmin = 1\nmax = 1");
    let big = 600 * 1024;
    std::thread::scope(|s| {
        let held = s.spawn(|| node.post("/function/mem", &vec![1u8; big]));
        node.wait_for("the worker to be busy", PATIENCE, |n| busy(n, "mem") == 1);
        // By declared length: refused before the body is sent.
        let mut c = connect(&addr(&node));
        c.write_all(post_head("/function/mem", big as u64, "").as_bytes()).expect("head");
        let a = read_answer(&mut c);
        assert_eq!(a.status, 503, "{}", a.body);
        assert!(a.error().contains("1048576 bytes of request bodies"), "{}", a.error());
        assert_eq!(a.header("retry-after").as_deref(), Some("1"));
        assert_eq!(a.header("connection").as_deref(), Some("close"));
        // Chunked: refused once the chunks pass what is left.
        let mut c = connect(&addr(&node));
        let head = "POST /function/mem HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        c.write_all(format!("{head}{big:x}\r\n").as_bytes()).expect("head");
        c.write_all(&vec![2u8; big]).expect("chunk");
        assert_eq!(read_answer(&mut c).status, 503);
        release(&node.data);
        let first = held.join().expect("held request");
        assert_eq!((first.status, first.text()), (200, format!("released {big}")));
    });
    // The held body's memory came back with the end of its invocation.
    let a = node.post("/function/mem", &vec![3u8; 900 * 1024]);
    assert_eq!((a.status, a.text()), (200, format!("released {}", 900 * 1024)));
}

#[test]
fn oversized_or_too_many_headers_are_refused() {
    let (node, _tmp) = node_with(&["--max-header-size", "8KiB", "--max-headers", "20"]);
    let mut s = connect(&addr(&node));
    let long = "a".repeat(20 * 1024);
    s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: {long}\r\n\r\n").as_bytes()).expect("request");
    assert_eq!(read_answer(&mut s).status, 431);
    assert!(closed(&mut s));
    let mut s = connect(&addr(&node));
    let many: String = (0..30).map(|i| format!("X-H{i}: 1\r\n")).collect();
    s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes()).expect("request");
    assert_eq!(read_answer(&mut s).status, 431);
    // Within both, the same node answers.
    assert_eq!(node.get("/healthz").status, 200);
}

#[test]
fn on_stop_requests_in_flight_finish_and_idle_connections_close() {
    let node = Node::start();
    let _f = holding(&node, "slow", "[scale]\nmin = 1\nmax = 1");
    let data = node.data.clone();
    let addr = addr(&node);
    let mut held = connect(&addr);
    held.write_all(format!("{}first", post_head("/function/slow", 5, "")).as_bytes()).expect("held request");
    node.wait_for("the worker to be busy", PATIENCE, |n| busy(n, "slow") == 1);
    let mut idle = connect(&addr);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    assert_eq!(read_answer(&mut idle).status, 200);
    let stopper = std::thread::spawn(move || node.terminate());
    assert!(closed(&mut idle), "an idle connection outlived the stop");
    let start = Instant::now();
    while TcpStream::connect(&addr).is_ok() {
        assert!(start.elapsed() < PATIENCE, "the node still accepts after the stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    release(&data);
    let a = read_answer(&mut held);
    assert_eq!((a.status, a.body.as_str()), (200, "released 5"));
    assert!(stopper.join().expect("stopper").success());
}

#[test]
fn a_body_trickled_in_is_cut_off_at_the_functions_timeout() {
    // Each byte comes well within the progress timeout; the whole body does
    // not come within the function's timeout.
    let (node, _tmp) = node_with(&["--body-timeout", "10m"]);
    let f = FnDir::python("trickled", "[limits]\ntimeout = \"1s\"\n", ECHO);
    node.deploy(f.path());
    let mut s = connect(&addr(&node));
    s.write_all(post_head("/function/trickled", 100, "").as_bytes()).expect("head");
    let writer = {
        let mut s = s.try_clone().expect("clone");
        std::thread::spawn(move || {
            for _ in 0..100 {
                if s.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let a = read_answer(&mut s);
    assert_eq!(a.status, 408, "{}", a.body);
    assert!(a.error().contains("did not arrive whole within 1s"), "{}", a.error());
    drop(s);
    let _ = writer.join();
}

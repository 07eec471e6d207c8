//! NATS triggers against a real nats-server the test starts on a free port
//! (with JetStream, storing under the test's folder): core subjects with
//! requests answered, JetStream subjects consumed durably across a node's
//! SIGKILL, and a server that goes away and comes back.

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{FnDir, Node};

/// A nats-server on 127.0.0.1 with JetStream, stopped when dropped.
pub struct NatsServer {
    child: Child,
    program: PathBuf,
    store: PathBuf,
    pub port: u16,
    pub url: String,
}

impl NatsServer {
    /// `None` where nats-server is not installed (.ci/run installs it).
    pub fn start(dir: &Path) -> Option<Self> {
        let program = ["/usr/sbin/nats-server", "/usr/bin/nats-server"].into_iter().find(|p| Path::new(p).exists())?;
        let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let store = dir.join("nats-store");
        let child = Self::spawn(Path::new(program), &store, port);
        Some(Self { child, program: program.into(), store, port, url: format!("nats://127.0.0.1:{port}") })
    }

    fn spawn(program: &Path, store: &Path, port: u16) -> Child {
        let child = Command::new(program)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "nats-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// Kills the server (SIGKILL); [`NatsServer::restart`] brings it back on the same port and store.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.child = Self::spawn(&self.program, &self.store, self.port);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
}

const ECHO: &str = r#"
import sedge

def handle(req):
    subject = req.headers.get("x-nats-subject", "")
    camera = req.headers.get("camera", "-")
    return sedge.Response(subject.encode() + b" " + camera.encode() + b" " + req.body.upper(),
                          headers={"content-type": "text/plain"})
"#;

/// The calls of a function in one state, from the node's own store.
fn calls(node: &Node, function: &str, state: &str) -> Vec<serde_json::Value> {
    node.get(&format!("/system/calls?function={function}&state={state}&limit=100000"))
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn request_bodies(node: &Node, function: &str) -> Vec<String> {
    calls(node, function, "done")
        .iter()
        .filter_map(|c| c["id"].as_str())
        .map(|id| node.get(&format!("/system/calls/{id}")).json()["request"]["body"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn a_nats_request_gets_the_functions_answer_and_the_reply_subject_too() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(server) = NatsServer::start(tmp.path()) else {
        eprintln!("skipped: nats-server is not installed (apt-get install nats-server)");
        return;
    };
    let f = FnDir::python("cam", "[[triggers]]\nnats = \"cam.*.frames\"\nreply = \"results.{topic}\"\n", ECHO);
    let node = Node::start_with(&tmp.path().join("data"), &["--nats", &server.url]);
    node.deploy(f.path());
    let rt = runtime();
    let (answer, published) = rt.block_on(async {
        use tokio_stream::StreamExt;
        let client = async_nats::connect(&server.url).await.expect("connect");
        let mut results = client.subscribe("results.>").await.expect("subscribe");
        client.flush().await.expect("flush");
        // The node subscribes within a second of the deploy; until then a
        // request goes to no one, so ask until the first answer comes.
        let start = Instant::now();
        let answer = loop {
            assert!(start.elapsed() < Duration::from_secs(30), "no answer from the function");
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Camera", "3");
            let request = async_nats::Request::new()
                .payload("hello".into())
                .headers(headers)
                .timeout(Some(Duration::from_secs(2)));
            match client.send_request("cam.north.frames", request).await {
                Ok(m) => break m,
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        };
        let published = tokio::time::timeout(Duration::from_secs(10), results.next())
            .await
            .expect("a reply in time")
            .expect("a reply");
        (answer, published)
    });
    assert_eq!(&answer.payload[..], b"cam.north.frames 3 HELLO");
    let status = answer.headers.as_ref().and_then(|h| h.get("X-Sedge-Status")).map(|v| v.as_str().to_owned());
    assert_eq!(status.as_deref(), Some("200"));
    assert_eq!(published.subject.as_str(), "results.cam.north.frames");
    assert_eq!(&published.payload[..], b"cam.north.frames 3 HELLO");
    // The call keeps the subject, the requester's reply subject and the message's own headers.
    let done = calls(&node, "cam", "done");
    let id = done[0]["id"].as_str().expect("an id");
    let call = node.get(&format!("/system/calls/{id}")).json();
    let headers: Vec<(String, String)> = serde_json::from_value(call["request"]["headers"].clone()).expect("headers");
    let header = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(header("x-nats-subject").as_deref(), Some("cam.north.frames"));
    assert!(header("x-nats-reply").is_some_and(|r| r.starts_with("_INBOX.")), "{headers:?}");
    assert_eq!(header("camera").as_deref(), Some("3"));
}

#[test]
fn every_jetstream_message_is_processed_at_least_once_across_a_kill_9() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(server) = NatsServer::start(tmp.path()) else {
        eprintln!("skipped: nats-server is not installed (apt-get install nats-server)");
        return;
    };
    let rt = runtime();
    rt.block_on(async {
        let client = async_nats::connect(&server.url).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "FRAMES".into(),
            subjects: vec!["frames.>".into()],
            ..Default::default()
        })
        .await
        .expect("create the stream");
    });
    let data = tmp.path().join("data");
    let f = FnDir::python(
        "frames",
        "[scale]\nmax = 2\n[async]\nconcurrency = 2\n[[triggers]]\nnats = \"frames.>\"\n",
        ECHO,
    );
    let node = Node::start_with(&data, &["--nats", &server.url]);
    node.deploy(f.path());
    const N: usize = 1000;
    let url = server.url.clone();
    // Published into the stream whether or not the node is there: the
    // stream keeps them, the durable consumer hands them out.
    let publishing = std::thread::spawn(move || {
        runtime().block_on(async {
            let client = async_nats::connect(&url).await.expect("connect");
            let js = async_nats::jetstream::new(client);
            for i in 0..N {
                let ack = js.publish(format!("frames.cam{}", i % 5), format!("m-{i}").into()).await.expect("publish");
                ack.await.expect("stored by the stream");
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    });
    node.wait_for("some messages processed before the kill", Duration::from_secs(120), |n| {
        calls(n, "frames", "done").len() >= 50
    });
    eprintln!("killing the node with {} calls done", calls(&node, "frames", "done").len());
    node.kill9();
    std::thread::sleep(Duration::from_millis(500));
    let node = Node::start_with(&data, &["--nats", &server.url]);
    publishing.join().expect("publisher");
    let want: HashSet<String> = (0..N).map(|i| format!("m-{i}")).collect();
    let mut last = Instant::now();
    node.wait_for("every message processed", Duration::from_secs(300), |n| {
        let done = calls(n, "frames", "done").len();
        if last.elapsed() > Duration::from_secs(5) {
            last = Instant::now();
            eprintln!("done {done}, queued {}", calls(n, "frames", "queued").len());
        }
        done >= N
    });
    let seen: HashSet<String> = request_bodies(&node, "frames").into_iter().collect();
    let missing: Vec<&String> = want.iter().filter(|m| !seen.contains(*m)).collect();
    assert!(missing.is_empty(), "{} never processed, e.g. {:?}", missing.len(), &missing[..missing.len().min(5)]);
    // A message sent again after the kill carries its stream sequence, the
    // call's idempotency key: it is not queued twice.
    assert_eq!(calls(&node, "frames", "done").len(), N);
    let d = node.describe("frames");
    let t = &d["sedge"]["triggers"][0];
    assert_eq!(t["kind"], "nats", "{d}");
    assert_eq!(t["state"], "connected", "{d}");
}

#[test]
fn a_nats_server_that_goes_away_is_reconnected_and_its_state_shown() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(mut server) = NatsServer::start(tmp.path()) else {
        eprintln!("skipped: nats-server is not installed (apt-get install nats-server)");
        return;
    };
    let f = FnDir::python("watch", "[[triggers]]\nnats = \"watch.in\"\n", ECHO);
    let node = Node::start_with(&tmp.path().join("data"), &["--nats", &server.url]);
    node.deploy(f.path());
    let state = |n: &Node| n.describe("watch")["sedge"]["triggers"][0].clone();
    node.wait_for("the trigger connected", Duration::from_secs(30), |n| state(n)["state"] == "connected");
    let url = server.url.clone();
    let publish = |text: &'static str| {
        let url = url.clone();
        runtime().block_on(async move {
            let client = async_nats::connect(&url).await.expect("connect");
            client.publish("watch.in", text.into()).await.expect("publish");
            client.flush().await.expect("flush");
        })
    };
    node.wait_for("a message before the outage", Duration::from_secs(30), |n| {
        publish("before");
        std::thread::sleep(Duration::from_millis(300));
        !calls(n, "watch", "done").is_empty()
    });
    server.kill();
    node.wait_for("the trigger reconnecting", Duration::from_secs(30), |n| {
        let s = state(n);
        s["state"] == "reconnecting" && s["attempts"].as_u64().unwrap_or(0) >= 1 && s["lastError"].is_string()
    });
    let metrics = node.get("/metrics").text();
    assert!(metrics.contains("sedge_trigger_connected{function=\"watch\",kind=\"nats\"} 0"), "{metrics}");
    server.restart();
    node.wait_for("the trigger connected again", Duration::from_secs(60), |n| state(n)["state"] == "connected");
    let before = calls(&node, "watch", "done").len();
    node.wait_for("a message after the outage", Duration::from_secs(30), |n| {
        publish("after");
        std::thread::sleep(Duration::from_millis(300));
        calls(n, "watch", "done").len() > before
    });
    let s = state(&node);
    assert!(s["messages"].as_u64().unwrap_or(0) >= 2, "{s}");
    assert!(s["lastMessage"].is_string(), "{s}");
    let metrics = node.get("/metrics").text();
    assert!(metrics.contains("sedge_trigger_connected{function=\"watch\",kind=\"nats\"} 1"), "{metrics}");
    assert!(metrics.contains("sedge_trigger_messages_total{function=\"watch\",kind=\"nats\"}"), "{metrics}");
}

#[test]
fn a_jetstream_consumer_goes_on_after_the_server_restarts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(mut server) = NatsServer::start(tmp.path()) else {
        eprintln!("skipped: nats-server is not installed (apt-get install nats-server)");
        return;
    };
    let url = server.url.clone();
    let publish = |text: &'static str| {
        let url = url.clone();
        runtime().block_on(async move {
            let client = async_nats::connect(&url).await.expect("connect");
            let js = async_nats::jetstream::new(client);
            js.publish("meters.a", text.into()).await.expect("publish").await.expect("stored by the stream");
        })
    };
    runtime().block_on(async {
        let client = async_nats::connect(&server.url).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "METERS".into(),
            subjects: vec!["meters.>".into()],
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("create the stream");
    });
    let f = FnDir::python("meters", "[[triggers]]\nnats = \"meters.>\"\n", ECHO);
    let node = Node::start_with(&tmp.path().join("data"), &["--nats", &server.url]);
    node.deploy(f.path());
    publish("before");
    node.wait_for("the message before the restart", Duration::from_secs(30), |n| {
        request_bodies(n, "meters").contains(&"before".to_owned())
    });
    server.kill();
    node.wait_for("the trigger reconnecting", Duration::from_secs(30), |n| {
        n.describe("meters")["sedge"]["triggers"][0]["state"] == "reconnecting"
    });
    server.restart();
    // Kept by the stream on disk, whether the node's consumer has found its way back yet or not.
    publish("after");
    node.wait_for("the message after the restart", Duration::from_secs(90), |n| {
        request_bodies(n, "meters").contains(&"after".to_owned())
    });
    assert_eq!(calls(&node, "meters", "done").len(), 2);
}

#[test]
fn a_node_starts_while_its_nats_server_is_away_and_connects_once_it_is_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(mut server) = NatsServer::start(tmp.path()) else {
        eprintln!("skipped: nats-server is not installed (apt-get install nats-server)");
        return;
    };
    server.kill();
    let f = FnDir::python("late", "[[triggers]]\nnats = \"late.in\"\n", ECHO);
    let node = Node::start_with(&tmp.path().join("data"), &["--nats", &server.url]);
    node.deploy(f.path());
    let state = |n: &Node| n.describe("late")["sedge"]["triggers"][0].clone();
    node.wait_for("failed attempts shown", Duration::from_secs(30), |n| {
        let s = state(n);
        s["connected"] == false && s["attempts"].as_u64().unwrap_or(0) >= 1
    });
    server.restart();
    node.wait_for("the trigger connected", Duration::from_secs(60), |n| state(n)["state"] == "connected");
    let url = server.url.clone();
    node.wait_for("a message processed", Duration::from_secs(30), |n| {
        let url = url.clone();
        runtime().block_on(async move {
            let client = async_nats::connect(&url).await.expect("connect");
            client.publish("late.in", "hi".into()).await.expect("publish");
            client.flush().await.expect("flush");
        });
        std::thread::sleep(Duration::from_millis(300));
        !calls(n, "late", "done").is_empty()
    });
}

#[test]
fn an_answer_ready_while_the_server_is_away_is_published_once_it_is_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(mut server) = NatsServer::start(tmp.path()) else {
        eprintln!("skipped: nats-server is not installed (apt-get install nats-server)");
        return;
    };
    let slow = "import time\nimport sedge\n\ndef handle(req):\n    time.sleep(3)\n    return sedge.Response(b'late ' + req.body)\n";
    let f = FnDir::python("slow", "[[triggers]]\nnats = \"slow.in\"\nreply = \"slow.out\"\n", slow);
    let node = Node::start_with(&tmp.path().join("data"), &["--nats", &server.url]);
    node.deploy(f.path());
    node.wait_for("the trigger connected", Duration::from_secs(30), |n| {
        n.describe("slow")["sedge"]["triggers"][0]["state"] == "connected"
    });
    // A listener that stays across the outage: async-nats subscribes again on reconnecting.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let url = server.url.clone();
    std::thread::spawn(move || {
        runtime().block_on(async move {
            use tokio_stream::StreamExt;
            let client = async_nats::ConnectOptions::new()
                .max_reconnects(None)
                .reconnect_delay_callback(|_| Duration::from_millis(200))
                .connect(&url)
                .await
                .expect("connect");
            let mut answers = client.subscribe("slow.out").await.expect("subscribe");
            client.flush().await.expect("flush");
            let _ = ready_tx.send(());
            while let Some(m) = answers.next().await {
                let _ = tx.send(m.payload.to_vec());
            }
        })
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("the listener subscribed");
    let url = server.url.clone();
    node.wait_for("the call running", Duration::from_secs(30), |n| {
        let url = url.clone();
        if calls(n, "slow", "running").is_empty() && calls(n, "slow", "queued").is_empty() {
            runtime().block_on(async move {
                let client = async_nats::connect(&url).await.expect("connect");
                client.publish("slow.in", "frame".into()).await.expect("publish");
                client.flush().await.expect("flush");
            });
        }
        std::thread::sleep(Duration::from_millis(200));
        !calls(n, "slow", "running").is_empty()
    });
    server.kill();
    node.wait_for("the call done while the server is away", Duration::from_secs(30), |n| {
        !calls(n, "slow", "done").is_empty()
    });
    std::thread::sleep(Duration::from_secs(1));
    server.restart();
    let answer = rx.recv_timeout(Duration::from_secs(60)).expect("the answer after the server came back");
    assert_eq!(answer, b"late frame".to_vec());
}

#[test]
fn in_a_cluster_a_nats_trigger_rides_the_clusters_own_connection() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(server) = NatsServer::start(tmp.path()) else {
        eprintln!("skipped: nats-server is not installed (apt-get install nats-server)");
        return;
    };
    // No --nats: the trigger must use the connection --cluster made.
    let f = FnDir::python("cam", "[[triggers]]\nnats = \"cam.*.frames\"\n", ECHO);
    let node = Node::start_unattended(
        &tmp.path().join("data"),
        &["--no-sandbox", "--cluster", &server.url, "--node-name", "solo", "--cluster-replicas", "1"],
    );
    node.deploy(f.path());
    let rt = runtime();
    let answer = rt.block_on(async {
        let client = async_nats::connect(&server.url).await.expect("connect");
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < Duration::from_secs(30), "no answer from the function");
            let request = async_nats::Request::new().payload("hello".into()).timeout(Some(Duration::from_secs(2)));
            match client.send_request("cam.east.frames", request).await {
                Ok(m) => break m,
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    });
    assert_eq!(&answer.payload[..], b"cam.east.frames - HELLO");
    let describe = node.get("/system/function/cam").json();
    let trigger = &describe["sedge"]["triggers"][0];
    assert_eq!(trigger["state"], "connected", "{describe}");
    assert!(trigger["messages"].as_u64().is_some_and(|n| n >= 1), "{describe}");
}

//! Triggers against a real broker: a mosquitto the test starts on a free
//! port, a node that takes its messages as queued calls, killed with
//! SIGKILL mid-stream; cron schedules; answers on reply topics.

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

use crate::support::{FnDir, Node};

/// A mosquitto on 127.0.0.1, stopped when dropped.
struct Broker {
    child: Child,
    program: PathBuf,
    conf: PathBuf,
    url: String,
    port: u16,
}

impl Broker {
    /// `None` where mosquitto is not installed (.ci/run installs it).
    fn start(dir: &Path) -> Option<Self> {
        let program = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"].into_iter().find(|p| Path::new(p).exists())?;
        let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let conf = dir.join("mosquitto.conf");
        // No limit on what the broker keeps for the node while it is down
        // (the default is 1,000 messages per client).
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n"),
        )
        .expect("write mosquitto.conf");
        let child = Self::spawn(Path::new(program), &conf, port);
        Some(Self { child, program: program.into(), conf, url: format!("mqtt://127.0.0.1:{port}"), port })
    }

    fn spawn(program: &Path, conf: &Path, port: u16) -> Child {
        let child = Command::new(program)
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "mosquitto did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port after [`Broker::kill`].
    fn restart(&mut self) {
        self.child = Self::spawn(&self.program, &self.conf, self.port);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A publishing client; counts the broker's acknowledgements of QoS 1 messages.
struct Publisher {
    client: Client,
    acked: Arc<Mutex<usize>>,
}

impl Publisher {
    fn connect(port: u16, id: &str) -> Self {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut connection) = Client::new(options, 64);
        let acked: Arc<Mutex<usize>> = Arc::default();
        let count = acked.clone();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::PubAck(_))) => *count.lock().expect("lock") += 1,
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        Self { client, acked }
    }

    fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload).expect("publish");
    }

    fn acked(&self) -> usize {
        *self.acked.lock().expect("lock")
    }
}

/// Messages a subscriber got: (topic, payload).
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A subscriber that keeps every (topic, payload) it gets.
fn subscribe(port: u16, filter: &str) -> Received {
    let mut options = MqttOptions::new(format!("sub-{}", std::process::id()), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = Client::new(options, 64);
    client.subscribe(filter, QoS::AtLeastOnce).expect("subscribe");
    let got: Received = Arc::default();
    let seen = got.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _client = client;
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    seen.lock().expect("lock").push((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("subscribed");
    got
}

const ECHO: &str = r#"
import sedge

def handle(req):
    topic = req.headers.get("x-mqtt-topic", "")
    return sedge.Response(topic.encode() + b" " + req.body.upper(), headers={"content-type": "text/plain"})
"#;

/// The request bodies of a function's finished calls, from the node's own store.
fn done_bodies(node: &Node, function: &str) -> Vec<String> {
    let list = node.get(&format!("/system/calls?function={function}&state=done&limit=100000")).json();
    list.as_array()
        .expect("a list")
        .iter()
        .filter_map(|c| c["id"].as_str())
        .map(|id| node.get(&format!("/system/calls/{id}")).json()["request"]["body"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn done_count(node: &Node, function: &str) -> usize {
    node.get(&format!("/system/calls?function={function}&state=done&limit=100000"))
        .json()
        .as_array()
        .map_or(0, Vec::len)
}

#[test]
fn every_qos1_message_is_processed_at_least_once_across_a_kill_9() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(broker) = Broker::start(tmp.path()) else {
        eprintln!("skipped: mosquitto is not installed (apt-get install mosquitto)");
        return;
    };
    let data = tmp.path().join("data");
    let f = FnDir::python(
        "sensor",
        "[scale]\nmax = 2\n[async]\nconcurrency = 2\n[[triggers]]\nmqtt = \"sensors/+/temperature\"\nqos = 1\n",
        ECHO,
    );
    let node = Node::start_with(&data, &["--mqtt", &broker.url]);
    node.deploy(f.path());
    let publisher = Publisher::connect(broker.port, "camera-1");
    // The node subscribes within a second of the deploy; a message before
    // that goes to no subscriber, so start once a probe has arrived.
    node.wait_for("the node subscribed", Duration::from_secs(30), |n| {
        publisher.publish("sensors/probe/temperature", b"probe".to_vec());
        std::thread::sleep(Duration::from_millis(200));
        done_count(n, "sensor") > 0
    });
    const N: usize = 1000;
    let publishing = {
        let client = publisher.client.clone();
        std::thread::spawn(move || {
            for i in 0..N {
                let topic = format!("sensors/{}/temperature", i % 7);
                client.publish(topic, QoS::AtLeastOnce, false, format!("m-{i}").into_bytes()).expect("publish");
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    node.wait_for("some messages processed before the kill", Duration::from_secs(120), |n| {
        done_count(n, "sensor") >= 50
    });
    eprintln!("killing the node with {} calls done", done_count(&node, "sensor"));
    node.kill9();
    std::thread::sleep(Duration::from_millis(500));
    let node = Node::start_with(&data, &["--mqtt", &broker.url]);
    publishing.join().expect("publisher");
    let start = Instant::now();
    while publisher.acked() < N {
        assert!(start.elapsed() < Duration::from_secs(60), "the broker acknowledged {} of {N}", publisher.acked());
        std::thread::sleep(Duration::from_millis(100));
    }
    let want: HashSet<String> = (0..N).map(|i| format!("m-{i}")).collect();
    let mut last = Instant::now();
    node.wait_for("every message processed", Duration::from_secs(300), |n| {
        let done = done_count(n, "sensor");
        if last.elapsed() > Duration::from_secs(5) {
            last = Instant::now();
            let states: Vec<String> = ["queued", "running", "failed"]
                .iter()
                .map(|s| {
                    format!(
                        "{s} {}",
                        n.get(&format!("/system/calls?function=sensor&state={s}&limit=10000"))
                            .json()
                            .as_array()
                            .map_or(0, Vec::len)
                    )
                })
                .collect();
            eprintln!("done {done}, {}", states.join(", "));
        }
        done >= N
    });
    let start = Instant::now();
    loop {
        let seen: HashSet<String> = done_bodies(&node, "sensor").into_iter().collect();
        let missing: Vec<&String> = want.iter().filter(|m| !seen.contains(*m)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "{} never processed, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // The headers carry the message's topic and QoS.
    let list = node.get("/system/calls?function=sensor&state=done&limit=1").json();
    let id = list[0]["id"].as_str().expect("an id").to_owned();
    let call = node.get(&format!("/system/calls/{id}")).json();
    let headers: Vec<(String, String)> = serde_json::from_value(call["request"]["headers"].clone()).expect("headers");
    let header = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert!(header("x-mqtt-topic").is_some_and(|t| t.starts_with("sensors/")), "{headers:?}");
    assert_eq!(header("x-mqtt-qos").as_deref(), Some("1"));
    assert_eq!(header("x-mqtt-retain").as_deref(), Some("false"));
}

#[test]
fn answers_are_published_to_the_reply_topic() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(broker) = Broker::start(tmp.path()) else {
        eprintln!("skipped: mosquitto is not installed (apt-get install mosquitto)");
        return;
    };
    let replies = subscribe(broker.port, "results/#");
    let f = FnDir::python(
        "echo",
        &format!("[[triggers]]\nmqtt = \"frames/#\"\nbroker = \"{}\"\nreply = \"results/{{topic}}\"\n", broker.url),
        ECHO,
    );
    let node = Node::start();
    node.deploy(f.path());
    let publisher = Publisher::connect(broker.port, "camera-2");
    // The node subscribes within a second of the deploy; until then a
    // message would go to no one, so publish until the first answer comes.
    let start = Instant::now();
    while replies.lock().expect("lock").is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30), "no answer on results/#");
        publisher.publish("frames/cam1", b"hello".to_vec());
        std::thread::sleep(Duration::from_millis(500));
    }
    let got = replies.lock().expect("lock").clone();
    assert_eq!(got[0].0, "results/frames/cam1");
    assert_eq!(got[0].1, b"frames/cam1 HELLO".to_vec());
    drop(node);
}

#[test]
fn a_cron_trigger_with_seconds_queues_calls() {
    let f = FnDir::python(
        "tick",
        "[[triggers]]\ncron = \"* * * * * *\"\n",
        "import sedge\n\ndef handle(req):\n    return sedge.Response(req.headers.get('x-cron-time', '').encode())\n",
    );
    let node = Node::start();
    node.deploy(f.path());
    let d = node.describe("tick");
    assert_eq!(d["sedge"]["triggers"][0]["kind"], "cron", "{d}");
    assert_eq!(d["sedge"]["triggers"][0]["pattern"], "* * * * * *");
    node.wait_for("three cron calls", Duration::from_secs(30), |n| done_count(n, "tick") >= 3);
    let list = node.get("/system/calls?function=tick&state=done&limit=1").json();
    let id = list[0]["id"].as_str().expect("an id").to_owned();
    let call = node.get(&format!("/system/calls/{id}")).json();
    let answer = call["result"]["body"].as_str().expect("an answer").to_owned();
    assert!(answer.ends_with('Z') && answer.contains('T'), "{answer}");
}

#[test]
fn a_bad_trigger_is_refused_naming_the_field() {
    let f = FnDir::python("bad", "[[triggers]]\nmqtt = \"a/#/b\"\n", ECHO);
    let node = Node::start();
    let out = node.cli(&["deploy", &f.path().display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("triggers[0].mqtt") && err.contains("'#'"), "{err}");
}

#[test]
fn a_broker_that_goes_away_is_reconnected_and_its_state_shown() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(mut broker) = Broker::start(tmp.path()) else {
        eprintln!("skipped: mosquitto is not installed (apt-get install mosquitto)");
        return;
    };
    let f = FnDir::python("meter", "[[triggers]]\nmqtt = \"meters/#\"\n", ECHO);
    let node = Node::start_with(&tmp.path().join("data"), &["--mqtt", &broker.url]);
    node.deploy(f.path());
    let state = |n: &Node| n.describe("meter")["sedge"]["triggers"][0].clone();
    node.wait_for("the trigger connected", Duration::from_secs(30), |n| state(n)["state"] == "connected");
    assert_eq!(state(&node)["broker"], broker.url.as_str());
    let publisher = Publisher::connect(broker.port, "meter-1");
    node.wait_for("a message before the outage", Duration::from_secs(30), |n| {
        publisher.publish("meters/a", b"before".to_vec());
        std::thread::sleep(Duration::from_millis(300));
        done_count(n, "meter") > 0
    });
    broker.kill();
    node.wait_for("the trigger reconnecting", Duration::from_secs(30), |n| {
        let s = state(n);
        s["state"] == "reconnecting" && s["attempts"].as_u64().unwrap_or(0) >= 1 && s["lastError"].is_string()
    });
    let metrics = node.get("/metrics").text();
    assert!(metrics.contains("sedge_trigger_connected{function=\"meter\",kind=\"mqtt\"} 0"), "{metrics}");
    broker.restart();
    // Back-off reaches 30 s at most; the broker is back well before that.
    node.wait_for("the trigger connected again", Duration::from_secs(60), |n| state(n)["state"] == "connected");
    let before = done_count(&node, "meter");
    node.wait_for("a message after the outage", Duration::from_secs(30), |n| {
        publisher.publish("meters/b", b"after".to_vec());
        std::thread::sleep(Duration::from_millis(300));
        done_count(n, "meter") > before
    });
    let s = state(&node);
    assert!(s["messages"].as_u64().unwrap_or(0) >= 2, "{s}");
    assert!(s["lastMessage"].as_str().is_some_and(|t| t.ends_with('Z')), "{s}");
    let metrics = node.get("/metrics").text();
    assert!(metrics.contains("sedge_trigger_connected{function=\"meter\",kind=\"mqtt\"} 1"), "{metrics}");
}

#[test]
fn the_camera_example_gets_its_frames_classified_over_mqtt() {
    let dir = crate::support::example("effnet-onnx");
    let picture = crate::support::repo_root().join("models/samples/chelsea.png");
    if !dir.join("efficientnet-lite0.onnx").is_file() || !picture.is_file() {
        eprintln!("skipped: scripts/fetch-models.sh has not put the model in {}", dir.display());
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(broker) = Broker::start(tmp.path()) else {
        eprintln!("skipped: mosquitto is not installed (apt-get install mosquitto)");
        return;
    };
    let node = Node::start_with(&tmp.path().join("data"), &["--mqtt", &broker.url]);
    node.deploy(&dir);
    node.wait_for("the trigger connected", Duration::from_secs(30), |n| {
        n.describe("effnet-onnx")["sedge"]["triggers"][0]["state"] == "connected"
    });
    let python = std::env::var("SEDGE_PYTHON")
        .unwrap_or_else(|_| crate::support::repo_root().join(".venv/bin/python").to_string_lossy().into_owned());
    let out = Command::new(&python)
        .arg(crate::support::repo_root().join("examples/camera/camera.py"))
        .args(["--broker", &broker.url, "--camera", "porch", "--count", "3", "--interval", "0.2", "--timeout", "30"])
        .arg(&picture)
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "camera.py failed (scripts/setup.sh installs paho-mqtt from requirements-test.txt): {stderr}{stdout}"
    );
    eprint!("{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for line in lines {
        // ImageNet class 282, the top-1 of this picture over HTTP too.
        assert!(line.contains("a cat having a striped coat") && line.contains("class 282"), "{stdout}");
    }
    let t = &node.describe("effnet-onnx")["sedge"]["triggers"][0];
    assert!(t["messages"].as_u64().unwrap_or(0) >= 3 && t["replies"].as_u64().unwrap_or(0) >= 3, "{t}");
}

#[test]
fn an_answer_ready_while_the_broker_is_away_is_published_once_it_is_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(mut broker) = Broker::start(tmp.path()) else {
        eprintln!("skipped: mosquitto is not installed (apt-get install mosquitto)");
        return;
    };
    let slow = "import time\nimport sedge\n\ndef handle(req):\n    time.sleep(3)\n    return sedge.Response(b'late ' + req.body)\n";
    let f = FnDir::python("slow", "[[triggers]]\nmqtt = \"slow/in\"\nreply = \"slow/out\"\n", slow);
    let node = Node::start_with(&tmp.path().join("data"), &["--mqtt", &broker.url]);
    node.deploy(f.path());
    node.wait_for("the trigger connected", Duration::from_secs(30), |n| {
        n.describe("slow")["sedge"]["triggers"][0]["state"] == "connected"
    });
    // A listener that subscribes again on every connection: the broker
    // keeps no state across its restart here.
    let mut options = MqttOptions::new("slow-listener", "127.0.0.1", broker.port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = Client::new(options, 64);
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe("slow/out", QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(p.payload.to_vec());
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("the listener subscribed");
    let publisher = Publisher::connect(broker.port, "slow-camera");
    node.wait_for("the call running", Duration::from_secs(30), |n| {
        if done_count(n, "slow") == 0
            && n.get("/system/calls?function=slow").json().as_array().is_some_and(Vec::is_empty)
        {
            publisher.publish("slow/in", b"frame".to_vec());
        }
        std::thread::sleep(Duration::from_millis(200));
        n.get("/system/calls?function=slow&state=running").json().as_array().is_some_and(|a| !a.is_empty())
    });
    broker.kill();
    node.wait_for("the call done while the broker is away", Duration::from_secs(30), |n| done_count(n, "slow") > 0);
    std::thread::sleep(Duration::from_secs(1));
    broker.restart();
    let answer = rx.recv_timeout(Duration::from_secs(60)).expect("the answer after the broker came back");
    assert_eq!(answer, b"late frame".to_vec());
}

//! Several nodes as one platform: real nats-server processes (one, or a
//! cluster of three) on free loopback ports, and real `sedge serve` nodes
//! joined through them (`--cluster`). Skipped with a message where
//! nats-server is not installed (.ci/run installs it).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{example, FnDir, Node};

fn nats_program() -> Option<&'static str> {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn wait_listening(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "nats-server did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One nats-server with JetStream, stopped when dropped.
pub(crate) struct NatsServer {
    child: Option<Child>,
    port: u16,
}

impl NatsServer {
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn nats_server(program: &str, dir: &Path, name: &str, cluster: Option<(u16, &[u16])>, extra: &[&str]) -> NatsServer {
    let port = free_port();
    let store = dir.join(name);
    std::fs::create_dir_all(&store).expect("store dir");
    let mut cmd = Command::new(program);
    cmd.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-n", name, "-sd"]).arg(&store).args(extra);
    if let Some((cluster_port, routes)) = cluster {
        let routes: Vec<String> = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
        cmd.args(["--cluster_name", "sedge-test", "--cluster", &format!("nats://127.0.0.1:{cluster_port}")]);
        cmd.args(["--routes", &routes.join(",")]);
    }
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start nats-server");
    wait_listening(port);
    NatsServer { child: Some(child), port }
}

/// A single nats-server, or `None` (with the skip message) where there is none.
pub(crate) fn single(dir: &Path, test: &str) -> Option<NatsServer> {
    let Some(program) = nats_program() else {
        eprintln!("skipped {test}: nats-server is not installed (apt-get install nats-server)");
        return None;
    };
    Some(nats_server(program, dir, "n1", None, &[]))
}

/// Three nats-servers routed into one cluster.
fn three(dir: &Path, test: &str) -> Option<Vec<NatsServer>> {
    let Some(program) = nats_program() else {
        eprintln!("skipped {test}: nats-server is not installed (apt-get install nats-server)");
        return None;
    };
    let cluster_ports = [free_port(), free_port(), free_port()];
    Some(
        (0..3)
            .map(|i| nats_server(program, dir, &format!("n{}", i + 1), Some((cluster_ports[i], &cluster_ports)), &[]))
            .collect(),
    )
}

/// A cluster node named `name` with `labels`, reaching NATS at `urls`.
pub(crate) fn node(tmp: &Path, urls: &str, name: &str, labels: &str, password: &str, replicas: &str) -> Node {
    let data = tmp.join(format!("data-{name}"));
    node_on(&data, urls, name, labels, password, replicas)
}

pub(super) fn node_on(data: &Path, urls: &str, name: &str, labels: &str, password: &str, replicas: &str) -> Node {
    let mut args = vec!["--no-sandbox", "--cluster", urls, "--node-name", name, "--cluster-replicas", replicas];
    if !labels.is_empty() {
        args.extend(["--labels", labels]);
    }
    if password.is_empty() {
        Node::start_unattended(data, &args)
    } else {
        Node::start_with_password(data, &args, password)
    }
}

pub(super) fn nodes_json(node: &Node) -> serde_json::Value {
    let a = node.get("/system/nodes");
    assert_eq!(a.status, 200, "{}", a.text());
    a.json()
}

/// The functions each node serves, by node name.
pub(crate) fn placement(node: &Node) -> std::collections::BTreeMap<String, Vec<String>> {
    let all = nodes_json(node);
    all["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            let fns =
                n["functions"].as_array().expect("functions").iter().map(|f| f.as_str().expect("name").to_owned());
            (n["name"].as_str().expect("name").to_owned(), fns.collect())
        })
        .collect()
}

pub(crate) fn wait_nodes(node: &Node, n: usize) {
    node.wait_for(&format!("{n} nodes"), Duration::from_secs(20), |x| {
        nodes_json(x)["nodes"].as_array().map_or(0, Vec::len) == n
    });
}

fn echo(name: &str, extra: &str) -> FnDir {
    FnDir::python(
        name,
        &format!("[limits]\nmax_body = \"8MiB\"\nmax_answer = \"8MiB\"\n{extra}"),
        "import hashlib\n\ndef handle(req):\n    return {'len': len(req.body), 'sha': hashlib.sha256(req.body).hexdigest(), 'q': req.query_string}\n",
    )
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(data))
}

#[test]
fn three_nodes_on_three_nats_servers_deploy_once_run_where_placed_and_survive_a_nats_server() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(mut servers) = three(tmp.path(), "three_nodes_on_three_nats_servers") else { return };
    let urls: Vec<String> = servers.iter().map(NatsServer::url).collect();
    // Each node starts at another server, knowing all three.
    let order = |i: usize| (0..3).map(|k| urls[(i + k) % 3].clone()).collect::<Vec<_>>().join(",");
    let password = "cluster-test-password";
    let a = node(tmp.path(), &order(0), "cam-gw-1", "camera,arm64", password, "3");
    // The others bring no password: they take the cluster's.
    let b = node(tmp.path(), &order(1), "jetson-1", "gpu", "", "3");
    let c = node(tmp.path(), &order(2), "pi-1", "", "", "3");
    assert_eq!(b.password, password, "the second node took the cluster's admin password");
    assert_eq!(c.password, password);
    wait_nodes(&a, 3);

    // Deployed on one node, it runs on all three.
    a.deploy(&example("hello-python"));
    for n in [&a, &b, &c] {
        let r = n.post("/function/hello-python", b"");
        assert_eq!((r.status, r.text().as_str()), (200, "Hello from sedge!"), "on {}", n.url);
    }
    let p = placement(&c);
    assert!(p.values().all(|fns| fns.contains(&"hello-python".to_owned())), "{p:?}");

    // Placed by label: only on the gpu node; the others forward to it.
    let gpu = echo("gpu-echo", "[placement]\nlabels = [\"gpu\"]\n");
    c.deploy(gpu.path());
    let p = placement(&a);
    assert_eq!(
        p.iter().filter(|(_, f)| f.contains(&"gpu-echo".to_owned())).map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["jetson-1"],
        "{p:?}"
    );
    assert!(a.data.join("bundles").read_dir().map_or(0, |d| d.count()) <= 1, "the gpu function is not unpacked on a");
    // A 600 KB body fits one NATS message; 3 MB goes through the object store, both ways.
    for size in [0usize, 600 * 1024, 3 * 1024 * 1024] {
        let body: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        for n in [&a, &c] {
            let r = n.request("POST", "/function/gpu-echo?x=1", &[("content-type", "application/octet-stream")], &body);
            assert_eq!(r.status, 200, "{size} bytes via {}: {}", n.url, r.text());
            let j = r.json();
            assert_eq!(
                (j["len"].as_u64(), j["sha"].as_str(), j["q"].as_str()),
                (Some(size as u64), Some(sha256_hex(&body).as_str()), Some("x=1"))
            );
        }
    }
    let big = vec![b'x'; 9 * 1024 * 1024];
    let r = a.request("POST", "/function/gpu-echo", &[], &big);
    assert_eq!(r.status, 413, "the function's max_body holds on the forwarding node: {}", r.text());

    // No node can run it: refused, naming the labels.
    let nowhere = FnDir::python("nowhere", "[placement]\nlabels = [\"tpu\"]\n", "def handle(req):\n    return 'x'\n");
    let r = a.request("PUT", "/system/bundles/nowhere?wait=true", &[], &pack(nowhere.path()));
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.error().contains("tpu"), "{}", r.error());

    // An asynchronous call accepted by a node that does not run the
    // function runs where it is placed; any node shows its result.
    let r = a.post("/async-function/gpu-echo", b"later");
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.header("x-call-id").expect("x-call-id").to_owned();
    c.wait_for("the async call done", Duration::from_secs(20), |c| {
        c.get(&format!("/system/calls/{id}")).json()["state"] == "done"
    });
    let call = c.get(&format!("/system/calls/{id}")).json();
    assert_eq!(call["node"], "jetson-1", "{call}");
    assert!(call["result"]["body"].as_str().is_some_and(|b| b.contains("\"len\": 5")), "{call}");

    // `sedge nodes` shows all three with their labels.
    let out = b.cli(&["nodes"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    for (name, labels) in [("cam-gw-1", "camera,arm64"), ("jetson-1", "gpu"), ("pi-1", "-")] {
        let row = table.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no row for {name}:\n{table}"));
        assert!(row.contains(labels), "{row}");
    }
    let metrics = b.get("/metrics").text();
    assert_eq!(crate::support::sample(&metrics, "sedge_cluster_connected", &[]), Some(1.0), "{metrics}");

    // One NATS server of three goes: the cluster keeps serving and deploying.
    servers[0].kill();
    for n in [&a, &b, &c] {
        n.wait_until("serving without the first NATS server", Duration::from_secs(30), |n| {
            let (echo, hello) = (n.post("/function/gpu-echo", b"abc"), n.post("/function/hello-python", b""));
            if echo.status == 200 && hello.status == 200 {
                return Ok(());
            }
            Err(format!(
                "on {}: gpu-echo {} {}, hello-python {} {}",
                n.url,
                echo.status,
                echo.text(),
                hello.status,
                hello.text()
            ))
        });
    }
    let later = FnDir::python("later", "", "def handle(req):\n    return 'later'\n");
    a.wait_for("a deploy without the first NATS server", Duration::from_secs(30), |n| {
        n.request("PUT", "/system/bundles/later?wait=true", &[], &pack(later.path())).status / 100 == 2
    });
    for n in [&a, &b, &c] {
        let r = n.post("/function/later", b"");
        assert_eq!((r.status, r.text().as_str()), (200, "later"), "on {}", n.url);
    }
}

fn pack(dir: &Path) -> Vec<u8> {
    let (_, archive) = sedge_store::pack::pack(dir).expect("pack");
    archive
}

#[test]
fn a_single_node_lists_itself_alone() {
    let node = Node::start();
    let all = nodes_json(&node);
    assert_eq!(all["clustered"], false);
    let nodes = all["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1);
    for field in ["name", "labels", "address", "functions", "inflight", "capacity", "lastSeen"] {
        assert!(nodes[0].get(field).is_some(), "{field} missing: {all}");
    }
    assert!(humantime::parse_rfc3339(nodes[0]["lastSeen"].as_str().expect("lastSeen")).is_ok());
    assert_eq!(node.request_raw("GET", "/system/nodes", &[], b"").status, 401, "behind the admin credential");
    // Asking for another node's log lines is refused, naming why.
    let r = node.get("/system/logs?name=any&node=b");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error().contains("not part of a cluster"), "{}", r.error());
}

/// Sends `body` to `path` on `url` until `stop`; counts answers by status.
fn load(
    url: String,
    path: &'static str,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Vec<(u16, String)>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        while !stop.load(Ordering::Relaxed) {
            let answer = agent.post(&format!("{url}{path}")).send(&b"x"[..]);
            let entry = match answer {
                Ok(mut r) => (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default()),
                Err(e) => (0, e.to_string()),
            };
            tally.lock().expect("lock").push(entry);
        }
    })
}

#[test]
fn a_node_killed_under_load_costs_only_the_calls_inside_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(nats) = single(tmp.path(), "a_node_killed_under_load") else { return };
    let url = nats.url();
    let a = node(tmp.path(), &url, "a", "", "pw-kill", "1");
    let b = node(tmp.path(), &url, "b", "", "pw-kill", "1");
    let c = node(tmp.path(), &url, "c", "", "pw-kill", "1");
    wait_nodes(&a, 3);
    let slow = FnDir::python(
        "slow",
        "[limits]\ntimeout = \"5s\"\n[scale]\nmin = 1\nmax = 1\nconcurrency = 2\n",
        "import time\n\ndef handle(req):\n    time.sleep(0.05)\n    return 'ok'\n",
    );
    a.deploy(slow.path());
    a.wait_for("slow on all three", Duration::from_secs(20), |n| placement(n).values().all(|f| f.len() == 1));
    let stop = Arc::new(AtomicBool::new(false));
    let tally: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
    // Six clients on a and b, two workers' room on each: calls spill to c.
    let clients: Vec<_> = (0..6)
        .map(|i| {
            load(if i % 2 == 0 { a.url.clone() } else { b.url.clone() }, "/function/slow", stop.clone(), tally.clone())
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    // Asynchronous calls accepted before the kill, some of them on c.
    let ids: Vec<String> = (0..30)
        .map(|i| {
            let r = [&a, &b][i % 2].post("/async-function/slow", b"later");
            assert_eq!(r.status, 202, "{}", r.text());
            r.header("x-call-id").expect("x-call-id").to_owned()
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let served_by_c =
        crate::support::sample(&c.get("/metrics").text(), "sedge_cluster_served_total", &[]).unwrap_or(0.0);
    assert!(served_by_c > 0.0, "c took forwarded calls before the kill");
    let before = tally.lock().expect("lock").len();
    c.kill9();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.join().expect("client");
    }
    let all = tally.lock().expect("lock");
    let failed: Vec<&(u16, String)> = all.iter().filter(|(s, _)| *s != 200).collect();
    // At most the calls c held when it died (its two places), each a 504
    // when the caller's deadline passed.
    assert!(failed.len() <= 2, "{} of {} failed: {failed:?}", failed.len(), all.len());
    assert!(failed.iter().all(|(s, _)| *s == 504), "{failed:?}");
    assert!(all.len() > before + 20, "calls went on after the kill: {} then {}", before, all.len());
    // Every asynchronous call accepted before the kill completes, those c
    // held included (JetStream gives them again after their ack wait).
    for id in &ids {
        a.wait_for(&format!("async call {id} done"), Duration::from_secs(60), |a| {
            a.get(&format!("/system/calls/{id}")).json()["state"] == "done"
        });
    }
    drop(b);
}

#[test]
fn a_rolling_redeploy_under_load_answers_no_5xx() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(nats) = single(tmp.path(), "a_rolling_redeploy_under_load") else { return };
    let url = nats.url();
    let nodes: Vec<Node> = ["r1", "r2", "r3"].iter().map(|n| node(tmp.path(), &url, n, "", "pw-roll", "1")).collect();
    wait_nodes(&nodes[0], 3);
    let version = |v: &str| {
        FnDir::python(
            "rolling",
            "[scale]\nmin = 1\nmax = 2\n",
            &format!("import time\n\ndef handle(req):\n    time.sleep(0.01)\n    return '{v}'\n"),
        )
    };
    let v1 = version("v1");
    nodes[0].deploy(v1.path());
    let stop = Arc::new(AtomicBool::new(false));
    let tally: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
    let clients: Vec<_> =
        (0..6).map(|i| load(nodes[i % 3].url.clone(), "/function/rolling", stop.clone(), tally.clone())).collect();
    std::thread::sleep(Duration::from_millis(500));
    for v in ["v2", "v3"] {
        let next = version(v);
        nodes[1].deploy(next.path());
        for n in &nodes {
            let r = n.post("/function/rolling", b"");
            assert_eq!(
                (r.status, r.text()),
                (200, v.to_owned()),
                "on {}: every node serves {v} once the deploy answered",
                n.url
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.join().expect("client");
    }
    let all = tally.lock().expect("lock");
    let bad: Vec<&(u16, String)> =
        all.iter().filter(|(s, b)| *s != 200 || !["v1", "v2", "v3"].contains(&b.as_str())).collect();
    assert!(bad.is_empty(), "{} of {}: {:?}", bad.len(), all.len(), &bad[..bad.len().min(5)]);
    assert!(all.len() > 50, "{} calls", all.len());
    drop(all);

    // A version no node can load is refused, naming the node, and v3 keeps
    // serving everywhere.
    let broken = FnDir::python("rolling", "[scale]\nmin = 1\nmax = 2\n", "raise RuntimeError('will not load')\n");
    let out = nodes[2].cli(&["deploy", "--wait", broken.path().to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node r") && err.contains("will not load") && err.contains("previous version was put back"),
        "{err}"
    );
    for n in &nodes {
        n.wait_for("v3 serving again", Duration::from_secs(20), |n| n.post("/function/rolling", b"").text() == "v3");
    }
}

#[test]
fn a_node_restarted_with_an_empty_data_dir_catches_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(nats) = single(tmp.path(), "a_node_restarted_with_an_empty_data_dir") else { return };
    let url = nats.url();
    let a = node(tmp.path(), &url, "a", "", "pw-catch", "1");
    let b_data: PathBuf = tmp.path().join("data-b");
    let b = node_on(&b_data, &url, "b", "", "pw-catch", "1");
    wait_nodes(&a, 2);
    a.deploy(&example("hello-python"));
    let echo_fn = echo("catch-echo", "");
    b.deploy(echo_fn.path());
    let status = b.terminate();
    assert!(status.success());
    std::fs::remove_dir_all(&b_data).expect("empty b's data directory");
    // While b is gone, a deploy happens: b learns it too.
    let third = FnDir::python("while-away", "", "def handle(req):\n    return 'away'\n");
    a.deploy(third.path());
    let b = node_on(&b_data, &url, "b", "", "pw-catch", "1");
    b.wait_for("b serving the three functions", Duration::from_secs(30), |b| {
        placement(b).get("b").is_some_and(|f| f.len() == 3)
    });
    // Served by b itself, from its own (new) store.
    let local = b.get("/system/functions").json();
    let mut names: Vec<&str> =
        local.as_array().expect("list").iter().map(|f| f["name"].as_str().expect("name")).collect();
    names.sort_unstable();
    assert_eq!(names, ["catch-echo", "hello-python", "while-away"]);
    assert_eq!(b.post("/function/while-away", b"").text(), "away");
    // Removed on one node, it goes from every node.
    let r = b.request(
        "DELETE",
        "/system/functions",
        &[("content-type", "application/json")],
        br#"{"functionName": "while-away"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for n in [&a, &b] {
        n.wait_for("while-away removed", Duration::from_secs(10), |n| {
            n.post("/function/while-away", b"").status == 404
        });
    }
}

#[test]
fn nodes_authenticate_to_nats_with_the_credentials_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(program) = nats_program() else {
        eprintln!("skipped nodes_authenticate_to_nats: nats-server is not installed (apt-get install nats-server)");
        return;
    };
    let server = nats_server(program, tmp.path(), "auth", None, &["--user", "sedge", "--pass", "n4ts-secret"]);
    let creds = tmp.path().join("nats.creds");
    std::fs::write(&creds, "sedge:n4ts-secret\n").expect("creds");
    let creds_arg = creds.to_str().expect("utf-8");
    let url = server.url();
    let ok = Node::start_with_password(
        &tmp.path().join("ok"),
        &["--no-sandbox", "--cluster", &url, "--node-name", "ok", "--cluster-creds", creds_arg],
        "pw-auth",
    );
    assert_eq!(nodes_json(&ok)["clustered"], true);
    let refused = Command::new(crate::support::BIN)
        .args(["serve", "--no-sandbox", "--listen", "127.0.0.1:0", "--cluster", &url, "--node-name", "nope", "--data"])
        .arg(tmp.path().join("nope"))
        .env("SEDGE_ADMIN_PASSWORD", "x")
        .output()
        .expect("run");
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("--cluster") && err.contains(&url), "{err}");
}

#[test]
fn a_caller_that_hangs_up_leaves_no_call_running_on_the_other_node() {
    use std::io::Write;
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(nats) = single(tmp.path(), "a_caller_that_hangs_up") else { return };
    let url = nats.url();
    let a = node(tmp.path(), &url, "a", "front", "pw-hangup", "1");
    let b = node(tmp.path(), &url, "b", "w", "pw-hangup", "1");
    wait_nodes(&a, 2);
    let mark = tmp.path().join("ran");
    // A slow cold start: a call waits for the worker to load its module.
    let late = FnDir::python(
        "late",
        &format!("[env]\nMARK = \"{}\"\n[scale]\nmin = 0\nmax = 1\n[placement]\nlabels = [\"w\"]\n", mark.display()),
        "import os, time\ntime.sleep(3)\n\ndef handle(req):\n    with open(os.environ['MARK'], 'a') as f:\n        f.write('ran\\n')\n    return 'ran'\n",
    );
    a.deploy(late.path());
    let r = b.request(
        "POST",
        "/system/scale-function/late",
        &[("content-type", "application/json")],
        br#"{"replicas": 0}"#,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    std::thread::sleep(Duration::from_millis(500));
    // Through a, which forwards to b; the client goes away before the worker is up.
    let addr = a.url.trim_start_matches("http://").to_owned();
    let mut socket = std::net::TcpStream::connect(&addr).expect("connect");
    socket.write_all(b"POST /function/late HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n\r\nx").expect("send");
    std::thread::sleep(Duration::from_millis(500));
    drop(socket);
    std::thread::sleep(Duration::from_secs(5));
    assert!(!mark.exists(), "the call ran on b after its caller hung up");
    // The same call with a caller that waits runs (the mark works).
    let r = a.post("/function/late", b"x");
    assert_eq!((r.status, r.text().as_str()), (200, "ran"));
    assert_eq!(std::fs::read_to_string(&mark).expect("mark"), "ran\n");
}

/// Each node's share of a function in a cluster listing: node → (answered, availableReplicas, invocationCount).
fn shares(status: &serde_json::Value) -> std::collections::BTreeMap<String, (bool, u64, u64)> {
    status["sedge"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no sedge.nodes in {status}"))
        .iter()
        .map(|n| {
            let node = n["node"].as_str().expect("node").to_owned();
            let figures = (
                n["answered"] == true,
                n["availableReplicas"].as_u64().unwrap_or(0),
                n["invocationCount"].as_u64().unwrap_or(0),
            );
            (node, figures)
        })
        .collect()
}

fn scale_to(node: &Node, name: &str, replicas: u32) -> crate::support::Answer {
    let body = serde_json::json!({ "replicas": replicas }).to_string();
    node.request(
        "POST",
        &format!("/system/scale-function/{name}"),
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
}

fn listed(node: &Node, name: &str) -> serde_json::Value {
    let r = node.get("/system/functions");
    assert_eq!(r.status, 200, "{}", r.text());
    let all = r.json();
    all.as_array()
        .expect("a list")
        .iter()
        .find(|f| f["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} not listed: {all}"))
}

#[test]
fn ls_describe_logs_and_scale_speak_for_every_node_and_a_killed_node_shows_as_not_answering() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(nats) = single(tmp.path(), "ls_describe_logs_and_scale_speak_for_every_node") else { return };
    let url = nats.url();
    let a = node(tmp.path(), &url, "a", "w", "pw-views", "1");
    let b = node(tmp.path(), &url, "b", "w", "pw-views", "1");
    let c = node(tmp.path(), &url, "c", "front", "pw-views", "1");
    wait_nodes(&c, 3);
    let f = FnDir::python(
        "views",
        "[scale]\nmax = 3\n[placement]\nlabels = [\"w\"]\n",
        "def handle(req):\n    print('got', req.body.decode(), flush=True)\n    return 'ok'\n",
    );
    c.deploy(f.path());

    // c runs nothing, yet lists the function with the nodes that run it.
    let status = listed(&c, "views");
    let s = shares(&status);
    assert_eq!(s.keys().map(String::as_str).collect::<Vec<_>>(), ["a", "b"], "{status}");
    assert!(s.values().all(|(answered, _, _)| *answered), "{status}");
    let summed: u64 = s.values().map(|(_, r, _)| r).sum();
    assert_eq!(status["availableReplicas"].as_u64(), Some(summed), "{status}");
    assert_eq!(status["image"].as_str().map(|i| i.starts_with("sha256:")), Some(true), "{status}");
    assert!(c.data.join("bundles").read_dir().map_or(0, |d| d.count()) <= 1, "views is not unpacked on c");
    let out = c.cli(&["ls"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table.lines().find(|l| l.starts_with("views ")).unwrap_or_else(|| panic!("no row:\n{table}"));
    assert!(row.contains("a(") && row.contains("b("), "{table}");

    // Calls on two nodes: describe on the third shows each node's count and the sum.
    let before = shares(&c.describe("views"));
    for (n, body, times) in [(&a, "from-a", 2), (&b, "from-b", 3)] {
        for _ in 0..times {
            let r = n.post("/function/views", body.as_bytes());
            assert_eq!((r.status, r.text().as_str()), (200, "ok"));
        }
    }
    let d = c.describe("views");
    let after = shares(&d);
    assert_eq!(after["a"].2 - before["a"].2, 2, "{d}");
    assert_eq!(after["b"].2 - before["b"].2, 3, "{d}");
    assert_eq!(d["invocationCount"].as_u64(), Some(after["a"].2 + after["b"].2), "{d}");

    // Logs on the third node: the lines of both, each marked with its node.
    let out = c.cli(&["logs", "views"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let node_of = |needle: &str, text: &str| -> Vec<String> {
        text.lines().filter(|l| l.ends_with(needle)).map(|l| l.split(' ').nth(1).unwrap_or("").to_owned()).collect()
    };
    assert_eq!(node_of("got from-a", &text), ["a", "a"], "{text}");
    assert_eq!(node_of("got from-b", &text), ["b", "b", "b"], "{text}");
    let only_b = c.get("/system/logs?name=views&node=b").text();
    assert!(only_b.contains("from-b") && !only_b.contains("from-a"), "{only_b}");
    let line: serde_json::Value = serde_json::from_str(only_b.lines().next().expect("a line")).expect("json");
    assert_eq!((line["node"].as_str(), line["name"].as_str()), (Some("b"), Some("views")), "{line}");
    let out = c.cli(&["logs", "views", "--node", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node nope"), "{}", String::from_utf8_lossy(&out.stderr));

    // Following from the third node: new lines of both nodes come as written.
    let mut follower =
        c.cli_command(&["logs", "views", "-f", "--tail", "0"]).stdout(Stdio::piped()).spawn().expect("follow");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // With `--tail 0` a line written before the follower's first round is
    // not shown: lines are written round after round until each node's
    // show, then two rounds more; from its first one shown, each node's
    // lines all come, once each and in order.
    let mut seen: Vec<String> = Vec::new();
    let shown = |seen: &[String], node: &str| -> Vec<(String, usize)> {
        let mark = format!("got later-{node}-");
        seen.iter()
            .filter_map(|l| {
                let n = l.rsplit_once(mark.as_str())?.1.parse().ok()?;
                Some((l.split(' ').nth(1).unwrap_or("").to_owned(), n))
            })
            .collect()
    };
    let until = Instant::now() + Duration::from_secs(30);
    let (mut rounds, mut first) = (0, None);
    while first.is_none_or(|f| rounds < f + 2) && Instant::now() < until {
        rounds += 1;
        for (n, node) in [(&a, "a"), (&b, "b")] {
            assert_eq!(n.post("/function/views", format!("later-{node}-{rounds}").as_bytes()).status, 200);
        }
        let round_end = Instant::now() + Duration::from_secs(1);
        while let Some(wait) = round_end.checked_duration_since(Instant::now()) {
            if let Ok(l) = rx.recv_timeout(wait) {
                seen.push(l);
            }
        }
        if first.is_none() && ["a", "b"].iter().all(|n| !shown(&seen, n).is_empty()) {
            first = Some(rounds);
        }
    }
    let last_come = |seen: &[String]| ["a", "b"].iter().all(|n| shown(seen, n).last().is_some_and(|l| l.1 == rounds));
    while !last_come(&seen) && Instant::now() < until {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(l);
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let joined = seen.join("\n");
    assert!(first.is_some(), "no new line of both nodes came within 30 s:\n{joined}");
    for node in ["a", "b"] {
        let lines = shown(&seen, node);
        assert!(lines.iter().all(|(marked, _)| marked == node), "{joined}");
        let from = lines.first().map_or(0, |l| l.1);
        assert_eq!(lines.iter().map(|l| l.1).collect::<Vec<_>>(), (from..=rounds).collect::<Vec<_>>(), "{joined}");
    }

    // Scale on the node that runs nothing: the pin holds on every node that runs it.
    let out = c.cli(&["scale", "views", "--replicas", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("on each of: a, b"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    c.wait_for("2 workers on a and on b", Duration::from_secs(30), |c| {
        let s = shares(&c.describe("views"));
        s.values().all(|(_, ready, _)| *ready == 2) && s.len() == 2
    });
    assert_eq!(c.describe("views")["availableReplicas"], 4);
    // A node that starts running it later holds the pin too.
    let _d = node(tmp.path(), &url, "d", "w", "pw-views", "1");
    c.wait_for("2 workers on d as well", Duration::from_secs(60), |c| {
        let s = shares(&c.describe("views"));
        s.get("d").is_some_and(|(_, ready, _)| *ready == 2)
    });

    let r = scale_to(&c, "views", 4);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error().contains("[scale] max"), "{}", r.error());
    let r = scale_to(&c, "ghost", 1);
    assert_eq!(r.status, 404, "{}", r.text());

    // b killed: the listing still answers, b shown as not answering.
    b.kill9();
    let status = listed(&c, "views");
    let s = shares(&status);
    assert_eq!(s.get("a").map(|x| x.0), Some(true), "{status}");
    assert_eq!(s.get("b").map(|x| x.0), Some(false), "{status}");
    let out = c.cli(&["logs", "views"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("got from-a"));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("node b did not answer"), "{said}");
    let out = c.cli(&["ls"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("b(no answer)"), "{}", String::from_utf8_lossy(&out.stdout));

    // Scale to 0 drops the pin: the idle workers stop on the nodes left.
    let r = scale_to(&c, "views", 0);
    assert_eq!(r.status, 202, "{}", r.text());
    c.wait_for("the pin dropped on a and d", Duration::from_secs(30), |c| {
        let s = shares(&c.describe("views"));
        ["a", "d"].iter().all(|n| s.get(*n).is_some_and(|(answered, ready, _)| *answered && *ready < 2))
    });
}

#[test]
fn a_call_no_node_can_take_yet_waits_for_one_within_its_timeout() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(nats) = single(tmp.path(), "a_call_no_node_can_take_yet") else { return };
    let url = nats.url();
    let a = node(tmp.path(), &url, "a", "", "pw-nobody", "1");
    let b_data: PathBuf = tmp.path().join("data-b");
    let b = node_on(&b_data, &url, "b", "gpu", "pw-nobody", "1");
    wait_nodes(&a, 2);
    let placed = "[placement]\nlabels = [\"gpu\"]\n[limits]\n";
    let patient =
        FnDir::python("patient", &format!("{placed}timeout = \"90s\"\n"), "def handle(req):\n    return 'b'\n");
    let hasty = FnDir::python("hasty", &format!("{placed}timeout = \"1s\"\n"), "def handle(req):\n    return 'b'\n");
    for (name, f) in [("patient", &patient), ("hasty", &hasty)] {
        let r = a.request("PUT", &format!("/system/bundles/{name}?wait=true"), &[], &pack(f.path()));
        assert_eq!(r.status / 100, 2, "{}", r.text());
    }
    assert_eq!(a.post("/function/patient", b"").text(), "b");
    // b, the only node that can run them, goes.
    assert!(b.terminate().success());
    a.wait_for("b gone from a's view", Duration::from_secs(20), |a| placement(a).len() == 1);
    // No node serves it within its timeout: a clear 502, not a hang.
    let r = a.post("/function/hasty", b"");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.error().contains("no node of the cluster served it within its timeout of 1000 ms"), "{}", r.error());
    // A call made while no node serves it is served once one does.
    let to = format!("{}/function/patient", a.url);
    let call = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        match agent.post(&to).send(&b""[..]) {
            Ok(mut r) => (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!call.is_finished(), "the call waits for a node rather than failing at once: {:?}", call.join());
    let _b = node_on(&b_data, &url, "b", "gpu", "pw-nobody", "1");
    assert_eq!(call.join().expect("caller"), (200, "b".to_owned()));
}

#[test]
fn a_function_removed_and_deployed_again_with_the_same_bundle_serves_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(nats) = single(tmp.path(), "a_function_removed_and_deployed_again") else { return };
    let url = nats.url();
    let a = node(tmp.path(), &url, "a", "front", "pw-again", "1");
    let b = node(tmp.path(), &url, "b", "w", "pw-again", "1");
    wait_nodes(&a, 2);
    let f = FnDir::python("again", "[placement]\nlabels = [\"w\"]\n", "def handle(req):\n    return 'here'\n");
    let v2 = FnDir::python("again", "[placement]\nlabels = [\"w\"]\n", "def handle(req):\n    return 'v2'\n");
    for (dir, answer) in [(&f, "here"), (&v2, "v2"), (&f, "here")] {
        // Removed, or replaced: the bundle it had is deleted from the cluster.
        let r = a.request("PUT", "/system/bundles/again", &[], &pack(dir.path()));
        assert_eq!(r.status / 100, 2, "{}", r.text());
        b.wait_for("b serving it", Duration::from_secs(30), |b| b.post("/function/again", b"").text() == answer);
    }
    let r = a.request(
        "DELETE",
        "/system/functions",
        &[("content-type", "application/json")],
        br#"{"functionName": "again"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = a.request("PUT", "/system/bundles/again", &[], &pack(f.path()));
    assert_eq!(r.status / 100, 2, "{}", r.text());
    b.wait_for("b serving it again", Duration::from_secs(30), |b| b.post("/function/again", b"").text() == "here");
    assert_eq!(a.post("/function/again", b"").text(), "here");
}

#[test]
fn a_removal_whose_client_hangs_up_still_drops_the_functions_pin() {
    use std::io::Write;
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(nats) = single(tmp.path(), "a_removal_whose_client_hangs_up") else { return };
    let url = nats.url();
    let a = node(tmp.path(), &url, "a", "front", "pw-remove", "1");
    let b = node(tmp.path(), &url, "b", "w", "pw-remove", "1");
    wait_nodes(&a, 2);
    let on_w = "[scale]\nmax = 3\n[placement]\nlabels = [\"w\"]\n";
    let pinned = FnDir::python("pinned", on_w, "def handle(req):\n    return 'p'\n");
    let witness = FnDir::python("witness", on_w, "def handle(req):\n    return 'w1'\n");
    a.deploy(pinned.path());
    a.deploy(witness.path());
    let desired = |n: &Node, name: &str| n.describe(name).pointer("/sedge/scale/desired").and_then(|d| d.as_u64());
    assert_eq!(scale_to(&a, "pinned", 3).status, 202);
    assert_eq!(scale_to(&a, "witness", 2).status, 202);
    b.wait_for("pinned held at 3 on b", Duration::from_secs(20), |b| desired(b, "pinned") == Some(3));

    // The removal goes on until b no longer serves it (up to a heartbeat);
    // the client hangs up once the registry has dropped the function.
    let body = br#"{"functionName": "pinned"}"#;
    let head = format!(
        "DELETE /system/functions HTTP/1.1\r\nhost: a\r\nauthorization: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        a.basic_auth(),
        body.len()
    );
    let mut socket = std::net::TcpStream::connect(a.url.trim_start_matches("http://")).expect("connect");
    socket.write_all(head.as_bytes()).and_then(|()| socket.write_all(body)).expect("send");
    a.wait_for("pinned gone from the registry", Duration::from_secs(20), |a| {
        a.get("/system/function/pinned").status == 404
    });
    drop(socket);
    a.wait_for("pinned served nowhere", Duration::from_secs(20), |a| {
        !placement(a).values().any(|fs| fs.iter().any(|f| f == "pinned"))
    });

    // Deployed again, it scales by load. A new version of the witness takes
    // its pin in the same pass over the pins as a pin left of `pinned`
    // would be taken: once the witness holds, so would `pinned`.
    let r = a.request("PUT", "/system/bundles/pinned?wait=true", &[], &pack(pinned.path()));
    assert_eq!(r.status / 100, 2, "{}", r.text());
    std::fs::write(witness.path().join("handler.py"), "def handle(req):\n    return 'w2'\n").expect("new version");
    let r = a.request("PUT", "/system/bundles/witness?wait=true", &[], &pack(witness.path()));
    assert_eq!(r.status / 100, 2, "{}", r.text());
    assert_eq!(a.post("/function/witness", b"").text(), "w2");
    b.wait_for("the new witness held at 2 on b", Duration::from_secs(20), |b| desired(b, "witness") == Some(2));
    let d = b.describe("pinned");
    assert_ne!(d.pointer("/sedge/scale/desired").and_then(|d| d.as_u64()), Some(3), "the old pin holds: {d}");
}

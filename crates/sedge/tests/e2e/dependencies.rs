//! Functions that bring their own dependencies: a requirements.txt is
//! installed with the node's pip (wheels made here, so no index is needed),
//! a package.json with npm (from the npm registry), each into an environment
//! reused by every deploy with the same inputs; a failed install refuses the
//! version and the previous one keeps serving.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{manifest, FnDir, Node};

fn python() -> String {
    std::env::var("SEDGE_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Writes a pure-Python wheel of `name` `version` whose module holds
/// `VERSION = version` into `dir`; returns its file name.
fn make_wheel(dir: &Path, name: &str, version: &str) -> String {
    let file = format!("{name}-{version}-py3-none-any.whl");
    let script = r#"
import base64, hashlib, sys, zipfile
out, name, version = sys.argv[1:4]
info = f"{name}-{version}.dist-info"
files = {
    f"{name}/__init__.py": f"VERSION = {version!r}\n",
    f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: sedge-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(out, "w") as z:
    for path, text in files.items():
        z.writestr(path, text)
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text)}")
    record.append(f"{info}/RECORD,,")
    z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
"#;
    let status = Command::new(python())
        .args(["-c", script])
        .arg(dir.join(&file))
        .args([name, version])
        .status()
        .expect("run python");
    assert!(status.success(), "making the wheel failed");
    file
}

/// A python function importing `module` and answering its VERSION, with
/// a requirements.txt naming `wheel` under wheels/.
fn versioned(name: &str, module: &str, version: &str) -> FnDir {
    let code = format!("import {module}\n\ndef handle(req):\n    return {module}.VERSION\n");
    let dir = FnDir::new(&manifest(name, "python", "handler.handle", ""), &[("handler.py", &code)]);
    std::fs::create_dir_all(dir.path().join("wheels")).expect("mkdir");
    let wheel = make_wheel(&dir.path().join("wheels"), module, version);
    std::fs::write(dir.path().join("requirements.txt"), format!("./wheels/{wheel}\n")).expect("write");
    dir
}

fn deploy_cli(node: &Node, dir: &Path) -> (bool, String) {
    let out = node.cli(&["deploy", "--wait", dir.to_str().expect("utf-8")]);
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn leftovers(node: &Node) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(node.data.join("envs")) else { return vec![] };
    entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(".tmp")).collect()
}

#[test]
fn requirements_are_installed_once_and_shared_by_equal_requirements() {
    let node = Node::start();
    let first = versioned("first", "sedgedemo", "1.0");
    let (ok, stderr) = deploy_cli(&node, first.path());
    assert!(ok, "{stderr}");
    assert!(stderr.contains("Successfully installed sedgedemo-1.0"), "deploy shows the install: {stderr}");
    assert_eq!(node.post("/function/first", b"").text(), "1.0");
    let env = node.describe("first")["sedge"]["environment"].as_str().expect("an environment").to_owned();
    assert!(node.data.join("envs").join(&env).join("sedgedemo").is_dir());

    // Same requirements and wheel bytes in another function: reused, not reinstalled.
    let second = FnDir::new(
        &manifest("second", "python", "handler.handle", ""),
        &[("handler.py", "import sedgedemo\n\ndef handle(req):\n    return 'second ' + sedgedemo.VERSION\n")],
    );
    copy_dir(&first.path().join("wheels"), &second.path().join("wheels"));
    std::fs::copy(first.path().join("requirements.txt"), second.path().join("requirements.txt")).expect("copy");
    let (ok, stderr) = deploy_cli(&node, second.path());
    assert!(ok, "{stderr}");
    assert!(stderr.contains(&format!("reusing environment {env}")), "{stderr}");
    assert!(!stderr.contains("Successfully installed"), "{stderr}");
    assert_eq!(node.post("/function/second", b"").text(), "second 1.0");

    // The build's lines are in the function's log.
    let logs = node.get("/system/logs?name=first").text();
    assert!(logs.contains("Successfully installed sedgedemo-1.0"), "{logs}");
    assert!(leftovers(&node).is_empty());
}

#[test]
fn requirements_the_node_already_meets_install_nothing() {
    let node = Node::start();
    let code = "import bottle\n\ndef handle(req):\n    return 'bottle ' + bottle.__version__\n";
    let dir = FnDir::new(
        &manifest("met", "python", "handler.handle", ""),
        &[
            ("handler.py", code),
            ("requirements.txt", "bottle>=0.12\nnot-on-this-platform==1; sys_platform == 'win32'\n"),
        ],
    );
    let (ok, stderr) = deploy_cli(&node, dir.path());
    assert!(ok, "{stderr}");
    assert!(stderr.contains("met by the node's own Python packages"), "{stderr}");
    assert!(node.describe("met")["sedge"]["environment"].is_null());
    assert!(node.post("/function/met", b"").text().starts_with("bottle 0."));
}

#[test]
fn installed_packages_come_before_the_nodes_own() {
    // The node's environment has bottle (the tests' requirements.txt); the
    // function pins a different one of its own.
    let node = Node::start();
    let dir = versioned("pinned", "bottle", "0.0.1");
    let (ok, stderr) = deploy_cli(&node, dir.path());
    assert!(ok, "{stderr}");
    assert_eq!(node.post("/function/pinned", b"").text(), "0.0.1");
}

#[test]
fn a_debian_managed_python_installs_requirements_too() {
    // PEP 668 forbids pip into the system interpreter; an environment of
    // the function's own is not the system's, and is allowed.
    let debian = Path::new("/usr/bin/python3");
    if !debian.exists()
        || std::fs::read_dir("/usr/lib")
            .map_or(true, |mut d| !d.any(|e| e.is_ok_and(|e| e.path().join("EXTERNALLY-MANAGED").exists())))
    {
        eprintln!("skipped: no externally managed /usr/bin/python3 on this machine");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = Node::start_with(&tmp.path().join("data"), &["--python", "/usr/bin/python3"]);
    let dir = versioned("debian", "sedgedemo", "3.0");
    let (ok, stderr) = deploy_cli(&node, dir.path());
    assert!(ok, "{stderr}");
    assert_eq!(node.post("/function/debian", b"").text(), "3.0");
}

#[test]
fn a_failed_install_refuses_the_version_and_the_previous_one_serves() {
    let node = Node::start();
    let dir = FnDir::python("keeper", "", "def handle(req):\n    return 'v1'\n");
    node.deploy(dir.path());
    std::fs::write(dir.path().join("handler.py"), "import broken\n\ndef handle(req):\n    return 'v2'\n")
        .expect("write");
    std::fs::write(dir.path().join("broken-1.0-py3-none-any.whl"), "not a zip file").expect("write");
    std::fs::write(dir.path().join("requirements.txt"), "./broken-1.0-py3-none-any.whl\n").expect("write");
    let (ok, stderr) = deploy_cli(&node, dir.path());
    assert!(!ok, "the deploy must fail: {stderr}");
    assert!(stderr.contains("422") && stderr.contains("installing requirements.txt failed"), "{stderr}");
    assert_eq!(stderr.matches("its last lines").count(), 1, "the failure is said once: {stderr}");
    assert_eq!(node.post("/function/keeper", b"").text(), "v1");
    let error = node.describe("keeper")["lastDeployError"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("installing requirements.txt failed"), "{error}");
    assert!(leftovers(&node).is_empty(), "a failed build leaves no folder: {:?}", leftovers(&node));

    // Without the CLI: the plain answer is 422 with the installer's lines.
    let archive = sedge_store::pack::pack(dir.path()).expect("pack").1;
    let a = node.request("PUT", "/system/bundles/keeper?wait=true", &[], &archive);
    assert_eq!(a.status, 422, "{}", a.text());
    assert!(a.error().to_lowercase().contains("wheel") || a.error().contains("zip"), "{}", a.error());
}

#[test]
fn requirements_that_reach_outside_the_folder_are_refused_naming_the_line() {
    let node = Node::start();
    let dir = FnDir::python("reacher", "", "def handle(req):\n    return 'x'\n");
    std::fs::write(dir.path().join("requirements.txt"), "six\n-r /etc/shadow\n").expect("write");
    let archive = sedge_store::pack::pack(dir.path()).expect("pack").1;
    let a = node.request("PUT", "/system/bundles/reacher?wait=true", &[], &archive);
    assert_eq!(a.status, 422, "{}", a.text());
    assert!(a.error().contains("requirements.txt line 2: option -r is not allowed"), "{}", a.error());
    assert_eq!(node.post("/function/reacher", b"").status, 404);
}

#[test]
fn an_environment_survives_a_restart_and_goes_with_its_last_function() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let node = Node::start_on(&data);
    let dir = versioned("lasting", "sedgedemo", "2.0");
    assert!(deploy_cli(&node, dir.path()).0);
    let env = node.describe("lasting")["sedge"]["environment"].as_str().expect("env").to_owned();
    node.terminate();

    let node = Node::start_on(&data);
    assert_eq!(node.post("/function/lasting", b"").text(), "2.0");
    let logs = node.get("/system/logs?name=lasting").text();
    assert!(logs.contains(&format!("reusing environment {env}")), "not rebuilt at start: {logs}");

    let out = node.cli(&["rm", "lasting"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    node.wait_for("the environment to go", Duration::from_secs(30), |n| !n.data.join("envs").join(&env).exists());
}

#[test]
fn package_json_is_installed_with_npm() {
    let node = Node::start();
    let code = "const isNumber = require('is-number');\n\
                module.exports = async (event) => String(isNumber(event.body.toString()));\n";
    let dir = FnDir::new(
        &manifest("numeric", "node", "handler.js", "style = \"openfaas\"\n"),
        &[
            ("handler.js", code),
            ("package.json", "{\"name\": \"numeric\", \"dependencies\": {\"is-number\": \"7.0.0\"}}\n"),
        ],
    );
    let (ok, stderr) = deploy_cli(&node, dir.path());
    assert!(ok, "{stderr}");
    assert!(stderr.contains("added 1 package"), "{stderr}");
    assert_eq!(node.post("/function/numeric", b"42").text(), "true");
    assert_eq!(node.post("/function/numeric", b"forty-two").text(), "false");
    let env = node.describe("numeric")["sedge"]["environment"].as_str().expect("env").to_owned();
    assert!(env.starts_with("npm-"), "{env}");
}

#[test]
fn ignored_paths_stay_out_of_the_bundle() {
    let node = Node::start();
    let code = "import os\n\ndef handle(req):\n    return ' '.join(sorted(os.listdir('.')))\n";
    let dir = FnDir::new(
        &manifest("lister", "python", "handler.handle", ""),
        &[
            ("handler.py", code),
            (".sedgeignore", "data/\n"),
            ("data/big.bin", "large"),
            (".venv/bin/python", "local"),
            ("kept.txt", "x"),
        ],
    );
    node.deploy(dir.path());
    assert_eq!(node.post("/function/lister", b"").text(), ".sedgeignore handler.py kept.txt sedge.toml");
}

/// A package index (PEP 503 "simple" pages) served by Python's http.server
/// from a folder holding one wheel; its request log says what was fetched.
struct Index {
    server: std::process::Child,
    url: String,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Index {
    fn start(module: &str, version: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let wheel = make_wheel(dir.path(), module, version);
        let page = dir.path().join("simple").join(module);
        std::fs::create_dir_all(&page).expect("mkdir");
        std::fs::write(page.join("index.html"), format!("<a href=\"../../{wheel}\">{wheel}</a>\n")).expect("write");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let log = dir.path().join("requests.log");
        let server = Command::new(python())
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string()])
            .current_dir(dir.path())
            .stderr(std::fs::File::create(&log).expect("log"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start http.server");
        let url = format!("http://127.0.0.1:{port}/simple/");
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "the index did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { server, url, log, _dir: dir }
    }

    fn fetches_of(&self, suffix: &str) -> usize {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter(|l| l.contains("GET ") && l.contains(suffix)).count()
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[test]
fn a_wheel_from_the_index_is_fetched_once_and_its_files_kept_once() {
    let index = Index::start("sedgeshared", "1.0");
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = Node::start_with_env(&tmp.path().join("data"), &[], &[("PIP_INDEX_URL", &index.url)]);
    let code = "import sedgeshared\n\ndef handle(req):\n    return sedgeshared.VERSION\n";
    let one = FnDir::new(
        &manifest("one", "python", "handler.handle", ""),
        &[("handler.py", code), ("requirements.txt", "sedgeshared==1.0\n")],
    );
    let (ok, stderr) = deploy_cli(&node, one.path());
    assert!(ok, "{stderr}");
    assert_eq!(index.fetches_of(".whl"), 1, "{stderr}");
    // Other requirements (another environment) needing the same wheel.
    let two = FnDir::new(
        &manifest("two", "python", "handler.handle", ""),
        &[("handler.py", code), ("requirements.txt", "# the same package\nsedgeshared>=1.0\n")],
    );
    let (ok, stderr) = deploy_cli(&node, two.path());
    assert!(ok, "{stderr}");
    assert!(stderr.contains("already on the node: installed without fetching"), "{stderr}");
    assert!(stderr.contains("shared with other environments"), "{stderr}");
    assert_eq!(index.fetches_of(".whl"), 1, "fetched once for both");
    assert_eq!(node.post("/function/two", b"").text(), "1.0");
    let (a, b) =
        (node.describe("one")["sedge"]["environment"].clone(), node.describe("two")["sedge"]["environment"].clone());
    assert_ne!(a, b, "two environments");
    use std::os::unix::fs::MetadataExt;
    let file = |env: &serde_json::Value| {
        let path = node.data.join("envs").join(env.as_str().expect("env")).join("sedgeshared/__init__.py");
        std::fs::metadata(path).expect("installed").ino()
    };
    assert_eq!(file(&a), file(&b), "one copy on disk");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// A package index that takes connections and never answers: a build
/// fetching from it hangs until the test lets it go.
struct SilentIndex {
    listener: std::net::TcpListener,
    url: String,
}

impl SilentIndex {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/simple/", listener.local_addr().expect("addr"));
        Self { listener, url }
    }

    /// Waits for the first connection and keeps it open, unanswered.
    fn accept(&self) -> std::net::TcpStream {
        self.listener.accept().expect("a build fetching from the index").0
    }
}

#[test]
fn a_hanging_build_holds_up_only_its_own_function() {
    let index = SilentIndex::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let env = [("PIP_INDEX_URL", index.url.as_str()), ("PIP_RETRIES", "0"), ("PIP_DEFAULT_TIMEOUT", "300")];
    let node = Node::start_with_env(&tmp.path().join("data"), &[], &env);
    let code = "import sedgestuck\n\ndef handle(req):\n    return 'never'\n";
    let stuck = FnDir::new(
        &manifest("stuck", "python", "handler.handle", ""),
        &[("handler.py", code), ("requirements.txt", "sedgestuck==1.0\n")],
    );
    let plain = FnDir::python("plain", "", "def handle(req):\n    return 'plain'\n");
    std::thread::scope(|s| {
        let building = s.spawn(|| deploy_cli(&node, stuck.path()));
        let held = index.accept();
        // The build of stuck is waiting on the index: another function deploys and serves.
        let (ok, stderr) = deploy_cli(&node, plain.path());
        assert!(ok, "{stderr}");
        assert_eq!(node.post("/function/plain", b"").text(), "plain");
        assert!(!building.is_finished(), "the stuck build was still running");
        // Letting the index go ends the build, which fails and serves nothing.
        drop(held);
        drop(index);
        let (ok, stderr) = building.join().expect("the stuck deploy");
        assert!(!ok, "{stderr}");
    });
    assert_eq!(node.get("/function/stuck").status, 404);
}

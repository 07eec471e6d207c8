//! Test support: a real `sedge serve` process on a free port with its own
//! data directory, function folders written on the fly, and an HTTP client.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_sedge");

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

pub fn example(name: &str) -> PathBuf {
    repo_root().join("examples/functions").join(name)
}

pub struct Node {
    child: Child,
    pub url: String,
    pub data: PathBuf,
    /// The admin password the node was started with (empty with --no-auth).
    pub password: String,
    _tmp: Option<tempfile::TempDir>,
}

pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The `error` field of a JSON error answer.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_else(|| panic!("no error field: {}", self.text())).to_owned()
    }
}

impl Node {
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let mut node = Self::start_on(&data);
        node._tmp = Some(tmp);
        node
    }

    /// A node on an existing data directory (for restart tests).
    pub fn start_on(data: &Path) -> Self {
        Self::start_with(data, &[])
    }

    /// A node started with extra `serve` arguments.
    pub fn start_with(data: &Path, extra: &[&str]) -> Self {
        let password = if extra.contains(&"--no-auth") { String::new() } else { test_password() };
        let env: &[(&str, &str)] = if password.is_empty() { &[] } else { &[("SEDGE_ADMIN_PASSWORD", &password)] };
        let mut node = Self::spawn(data, extra, env, None);
        node.password = password;
        node
    }

    /// A node started with extra `serve` arguments and environment variables.
    pub fn start_with_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let password = test_password();
        let mut all = env.to_vec();
        all.push(("SEDGE_ADMIN_PASSWORD", &password));
        let mut node = Self::spawn(data, extra, &all, None);
        node.password = password;
        node
    }

    /// A node started with extra `serve` arguments and this admin password.
    pub fn start_with_password(data: &Path, extra: &[&str], password: &str) -> Self {
        let mut node = Self::spawn(data, extra, &[("SEDGE_ADMIN_PASSWORD", password)], None);
        node.password = password.to_owned();
        node
    }

    /// A node started from the folder `cwd`, `data` possibly relative to it.
    pub fn start_in(cwd: &Path, data: &Path) -> Self {
        let password = test_password();
        let mut node = Self::spawn(data, &[], &[("SEDGE_ADMIN_PASSWORD", &password)], Some(cwd));
        node.password = password;
        node
    }

    /// A node that finds its own password (generated, or from a file given
    /// in `extra`); the password is read from the node's secrets folder.
    pub fn start_unattended(data: &Path, extra: &[&str]) -> Self {
        let mut node = Self::spawn(data, extra, &[], None);
        node.password = std::fs::read_to_string(data.join("secrets/admin-password"))
            .expect("the node's password file")
            .trim()
            .to_owned();
        node
    }

    fn spawn(data: &Path, extra: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> Self {
        let mut cmd = Command::new(BIN);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"]).arg(data).args(extra).env("SEDGE_LOG", "warn");
        cmd.env_remove("SEDGE_ADMIN_PASSWORD");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("start sedge serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read listening line");
        let url = line
            .trim()
            .strip_prefix("sedge listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from serve: {line:?}"))
            .to_owned();
        Self { child, url, data: data.to_owned(), password: String::new(), _tmp: None }
    }

    /// `Authorization` for the admin credential, HTTP Basic as faas-cli sends it.
    pub fn basic_auth(&self) -> String {
        sedge_store::secrets::admin_basic_auth(&self.password)
    }

    /// A request with the admin credential on `/system/` paths (unless the
    /// caller gives its own `Authorization`).
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        let auth = self.basic_auth();
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        let given = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
        if path.starts_with("/system/") && !given && !self.password.is_empty() {
            all.push(("authorization", &auth));
        }
        self.request_raw(method, path, &all, body)
    }

    /// A request exactly as given: no credentials added.
    pub fn request_raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut req = ureq::http::Request::builder().method(method).uri(format!("{}{path}", self.url));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut resp = agent.run(req.body(body.to_vec()).expect("request")).expect("HTTP exchange");
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let body = resp.body_mut().with_config().limit(u64::MAX).read_to_vec().expect("body");
        Answer { status, headers, body }
    }

    pub fn get(&self, path: &str) -> Answer {
        self.request("GET", path, &[], b"")
    }

    pub fn post(&self, path: &str, body: &[u8]) -> Answer {
        self.request("POST", path, &[], body)
    }

    /// Runs the CLI against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_command(args).output().expect("run sedge CLI")
    }

    /// The CLI as a command, with this node's gateway and credential.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args).env("SEDGE_GATEWAY", &self.url).env("SEDGE_PASSWORD", &self.password);
        cmd
    }

    /// `sedge deploy DIR --wait`, which must succeed.
    pub fn deploy(&self, dir: &Path) {
        let out = self.cli(&["deploy", "--wait", dir.to_str().expect("utf-8 path")]);
        assert!(out.status.success(), "deploy {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    }

    pub fn describe(&self, name: &str) -> serde_json::Value {
        let a = self.get(&format!("/system/function/{name}"));
        assert_eq!(a.status, 200, "{}", a.text());
        a.json()
    }

    /// Polls until `check` holds, failing after `limit`. Waits on the
    /// system's own behaviour (idle timers, restarts), never on speed.
    pub fn wait_for(&self, what: &str, limit: Duration, mut check: impl FnMut(&Self) -> bool) {
        self.wait_until(what, limit, |n| if check(n) { Ok(()) } else { Err("not yet".to_owned()) });
    }

    /// [`Self::wait_for`] with what the check saw last in the failure:
    /// `check` says `Err(what it saw)` until it is satisfied.
    pub fn wait_until(&self, what: &str, limit: Duration, mut check: impl FnMut(&Self) -> Result<(), String>) {
        let start = Instant::now();
        loop {
            match check(self) {
                Ok(()) => return,
                Err(seen) => assert!(start.elapsed() < limit, "timed out waiting for {what}; last seen: {seen}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a power cut would stop it: nothing of it runs after.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let ok = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(ok.success());
        let status = self.child.wait().expect("wait");
        std::mem::forget(self);
        status
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A password unique to this test process and call.
fn test_password() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("test-{}-{}-{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A function folder written into a temp dir: `files` are (path, contents).
pub struct FnDir {
    tmp: tempfile::TempDir,
}

impl FnDir {
    pub fn new(manifest: &str, files: &[(&str, &str)]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("sedge.toml"), manifest).expect("write manifest");
        for (path, text) in files {
            let p = tmp.path().join(path);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).expect("mkdir");
            }
            std::fs::write(p, text).expect("write file");
        }
        Self { tmp }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn python(name: &str, extra: &str, code: &str) -> Self {
        Self::new(
            &format!("name = \"{name}\"\nruntime = \"python\"\nhandler = \"handler.handle\"\n{extra}"),
            &[("handler.py", code)],
        )
    }
}

pub fn manifest(name: &str, runtime: &str, handler: &str, extra: &str) -> String {
    format!("name = \"{name}\"\nruntime = \"{runtime}\"\nhandler = \"{handler}\"\n{extra}")
}

/// The value of the sample `name{labels..}` in a Prometheus text scrape:
/// the line of that name whose labels include every one of `labels`.
pub fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        let has = |(k, v): &(&str, &str)| rest.contains(&format!("{k}=\"{v}\""));
        (metric == name && labels.iter().all(has)).then(|| value.parse().ok()).flatten()
    })
}

/// Blocks until a file named `release` exists in the function's own folder
/// (the one place a sandboxed worker shares with the test), so a test
/// decides when the worker is free again, without guessing at durations.
const HOLD: &str = r#"
import os, time

def handle(req):
    while not os.path.exists("release"):
        time.sleep(0.02)
    return "released %d" % len(req.body)
"#;

/// A function whose one worker can be held busy until [`release`].
pub fn holding(node: &Node, name: &str, extra: &str) -> FnDir {
    let manifest = format!("[limits]\ntimeout = \"120s\"\n{extra}\n");
    let f = FnDir::python(name, &manifest, HOLD);
    node.deploy(f.path());
    f
}

/// Lets every held worker of the node whose data directory is `data` go.
pub fn release(data: &Path) {
    for entry in std::fs::read_dir(data.join("bundles")).expect("bundle folders") {
        let dir = entry.expect("entry").path();
        if dir.is_dir() {
            std::fs::write(dir.join("release"), "").expect("release");
        }
    }
}

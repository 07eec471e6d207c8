//! Credentials on the management API, invoke tokens, the CLI's login, and
//! secrets given to the functions that name them.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use crate::support::{FnDir, Node};

/// Every management route, with a body each accepts.
const SYSTEM_ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/system/info", ""),
    ("GET", "/system/namespaces", ""),
    ("GET", "/system/functions", ""),
    ("DELETE", "/system/functions", r#"{"functionName": "hello"}"#),
    ("POST", "/system/functions", "{}"),
    ("GET", "/system/function/hello", ""),
    ("POST", "/system/scale-function/hello", r#"{"serviceName": "hello", "replicas": 1}"#),
    ("PUT", "/system/bundles/hello", "not a bundle"),
    ("POST", "/system/function/hello/token", ""),
    ("GET", "/system/secrets", ""),
    ("POST", "/system/secrets", r#"{"name": "s", "value": "v"}"#),
    ("PUT", "/system/secrets", r#"{"name": "s", "value": "v"}"#),
    ("DELETE", "/system/secrets", r#"{"name": "s"}"#),
    ("GET", "/system/logs?name=hello", ""),
];

fn hello() -> FnDir {
    FnDir::python("hello", "", "def handle(req):\n    return 'hi'\n")
}

#[test]
fn every_system_route_needs_the_admin_credential() {
    let node = Node::start();
    node.deploy(hello().path());
    let wrong = {
        use base64::Engine;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("admin:{}x", node.password)))
    };
    let json = ("content-type", "application/json");
    for (method, path, body) in SYSTEM_ROUTES {
        for auth in [None, Some(wrong.as_str()), Some("Bearer nope"), Some("Basic bm9ib2R5OnB3")] {
            let mut headers = vec![json];
            headers.extend(auth.map(|a| ("authorization", a)));
            let a = node.request_raw(method, path, &headers, body.as_bytes());
            assert_eq!(a.status, 401, "{method} {path} with {auth:?}: {}", a.text());
            assert_eq!(a.header("www-authenticate"), Some("Basic realm=\"sedge\""), "{method} {path}");
            assert!(a.error().contains("credentials"), "{}", a.error());
        }
    }
    // The right credential, Basic (what faas-cli sends) or Bearer, gets through.
    let bearer = format!("Bearer {}", node.password);
    for auth in [node.basic_auth(), bearer] {
        let a = node.request_raw("GET", "/system/functions", &[("authorization", &auth)], b"");
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.json()[0]["name"], "hello");
        let a = node.request_raw("GET", "/system/info", &[("authorization", &auth)], b"");
        assert_eq!(a.status, 200, "{}", a.text());
    }
    // Functions, health and metrics stay open.
    assert_eq!(node.request_raw("POST", "/function/hello", &[], b"").status, 200);
    assert_eq!(node.request_raw("GET", "/healthz", &[], b"").status, 200);
    assert_eq!(node.request_raw("GET", "/metrics", &[], b"").status, 200);
}

#[test]
fn a_generated_password_is_kept_private_and_reused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let node = Node::start_unattended(&data, &[]);
    let file = data.join("secrets/admin-password");
    let mode = std::fs::metadata(&file).expect("password file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(node.password.len() >= 40, "a strong password: {}", node.password);
    assert_eq!(node.get("/system/functions").status, 200);
    let first = node.password.clone();
    assert!(node.terminate().success());
    let node = Node::start_unattended(&data, &[]);
    assert_eq!(node.password, first, "the same password after a restart");
    assert_eq!(node.get("/system/functions").status, 200);
}

#[test]
fn a_password_file_and_metrics_auth() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, "from-a-file\n").expect("write");
    let data = tmp.path().join("data");
    let node = Node::start_unattended(&data, &["--admin-password-file", pw.to_str().expect("utf-8"), "--metrics-auth"]);
    assert_eq!(node.password, "from-a-file");
    assert_eq!(node.get("/system/functions").status, 200);
    assert_eq!(node.request_raw("GET", "/metrics", &[], b"").status, 401);
    let auth = node.basic_auth();
    assert_eq!(node.request_raw("GET", "/metrics", &[("authorization", &auth)], b"").status, 200);

    let empty = tmp.path().join("empty");
    std::fs::write(&empty, "\n").expect("write");
    let out = std::process::Command::new(crate::support::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(tmp.path().join("other"))
        .args(["--admin-password-file", empty.to_str().expect("utf-8")])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--admin-password-file") && err.contains("empty"), "{err}");
}

#[test]
fn no_auth_is_refused_off_loopback() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(crate::support::BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--no-auth", "--data"])
        .arg(tmp.path().join("data"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-auth") && err.contains("loopback"), "{err}");

    let node = Node::start_with(&tmp.path().join("data"), &["--no-auth"]);
    assert_eq!(node.request_raw("GET", "/system/functions", &[], b"").status, 200);
}

#[test]
fn a_function_may_ask_for_invoke_auth() {
    let node = Node::start();
    let f = FnDir::python(
        "guarded",
        "[auth]\ninvoke = true\n",
        "def handle(req):\n    return 'auth header seen: ' + str('authorization' in {k.lower() for k in req.headers})\n",
    );
    node.deploy(f.path());
    let a = node.request_raw("POST", "/function/guarded", &[], b"");
    assert_eq!(a.status, 401, "{}", a.text());
    assert!(a.error().contains("function guarded"), "{}", a.error());

    let token = node.describe("guarded")["sedge"]["auth"]["token"].as_str().expect("a token").to_owned();
    let bearer = format!("Bearer {token}");
    let a = node.request_raw("POST", "/function/guarded", &[("authorization", &bearer)], b"");
    assert_eq!((a.status, a.text().as_str()), (200, "auth header seen: False"));
    let admin = node.basic_auth();
    assert_eq!(node.request_raw("POST", "/function/guarded", &[("authorization", &admin)], b"").status, 200);
    assert_eq!(node.request_raw("POST", "/function/guarded", &[("authorization", "Bearer x")], b"").status, 401);

    // Rotating: the old token stops working at once, the new one works.
    let out = node.cli(&["rotate-token", "guarded"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let new = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_ne!(new, token);
    assert_eq!(node.request_raw("POST", "/function/guarded", &[("authorization", &bearer)], b"").status, 401);
    let bearer = format!("Bearer {new}");
    assert_eq!(node.request_raw("POST", "/function/guarded", &[("authorization", &bearer)], b"").status, 200);

    // The token survives a restart; open functions ignore tokens.
    let data = node.data.clone();
    let password = node.password.clone();
    assert!(node.terminate().success());
    let node = Node::start_unattended(&data, &[]);
    assert_eq!(node.password, password);
    assert_eq!(node.request_raw("POST", "/function/guarded", &[("authorization", &bearer)], b"").status, 200);

    let out = node.cli(&["rotate-token", "nope"]);
    assert!(!out.status.success());
}

#[test]
fn the_cli_logs_in_and_finds_a_local_nodes_password() {
    let node = Node::start();
    node.deploy(hello().path());
    let home = tempfile::tempdir().expect("tempdir");
    // A CLI with no password anywhere: a clear message naming `sedge login`.
    let bare = |args: &[&str]| {
        let mut cmd = node.cli_command(args);
        cmd.env_remove("SEDGE_PASSWORD")
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("HOME", home.path())
            .env("SEDGE_DATA", home.path().join("no-node-here"));
        cmd
    };
    let out = bare(&["ls"]).output().expect("ls");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && err.contains("sedge login"), "{err}");

    // A wrong password is refused and not stored.
    let mut login =
        bare(&["login", "--password-stdin"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("login");
    login.stdin.take().expect("stdin").write_all(b"wrong\n").expect("write");
    let out = login.wait_with_output().expect("login");
    assert!(!out.status.success());
    assert!(!home.path().join("config/sedge/credentials.json").exists());

    let mut login = bare(&["login", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("login");
    login.stdin.take().expect("stdin").write_all(format!("{}\n", node.password).as_bytes()).expect("write");
    let out = login.wait_with_output().expect("login");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stored = home.path().join("config/sedge/credentials.json");
    let mode = std::fs::metadata(&stored).expect("stored").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let out = bare(&["ls"]).output().expect("ls");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello"));

    let out = bare(&["logout"]).output().expect("logout");
    assert!(out.status.success());
    assert!(!bare(&["ls"]).output().expect("ls").status.success());

    // On the node's machine, its data directory's password file is enough.
    let out = bare(&["ls"]).env("SEDGE_DATA", &node.data).output().expect("ls");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn secrets_are_managed_without_showing_values() {
    let node = Node::start();
    let json = [("content-type", "application/json")];
    // faas-cli's shapes: a text value, then a base64 rawValue.
    let a = node.request(
        "POST",
        "/system/secrets",
        &json,
        br#"{"name": "db-password", "namespace": "openfaas-fn", "value": "hunter2"}"#,
    );
    assert_eq!(a.status, 201, "{}", a.text());
    let a = node.request("POST", "/system/secrets", &json, br#"{"name": "db-password", "value": "again"}"#);
    assert_eq!(a.status, 409, "{}", a.text());
    let a = node.request("POST", "/system/secrets", &json, br#"{"name": "api.key", "rawValue": "c2VjcmV0LWtleQ=="}"#);
    assert_eq!(a.status, 201, "{}", a.text());
    let a = node.request("POST", "/system/secrets", &json, br#"{"name": "../escape", "value": "x"}"#);
    assert_eq!(a.status, 400, "{}", a.text());
    assert!(a.error().contains("../escape"), "{}", a.error());
    let a = node.request("POST", "/system/secrets", &json, br#"{"name": "x", "namespace": "other", "value": "x"}"#);
    assert_eq!(a.status, 404, "{}", a.text());
    assert_eq!(a.error(), "no such namespace: other (sedge has one: openfaas-fn)");
    let a = node.request("PUT", "/system/secrets", &json, br#"{"name": "missing", "value": "x"}"#);
    assert_eq!(a.status, 404, "{}", a.text());

    let list = node.get("/system/secrets");
    assert_eq!(list.status, 200);
    assert_eq!(
        list.json(),
        serde_json::json!([
            { "name": "api.key", "namespace": "openfaas-fn" },
            { "name": "db-password", "namespace": "openfaas-fn" },
        ])
    );
    assert!(!list.text().contains("hunter2"));

    // Stored privately in the data directory.
    let file = node.data.join("secrets/values/db-password");
    assert_eq!(std::fs::read(&file).expect("value"), b"hunter2");
    assert_eq!(std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777, 0o600);

    // The CLI's secret commands.
    let out = node.cli(&["secret", "create", "cli-made", "--from-literal", "v1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = node.cli(&["secret", "ls"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "api.key\ncli-made\ndb-password\n");
    let out = node.cli(&["secret", "rm", "cli-made"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let a = node.request("DELETE", "/system/secrets", &json, br#"{"name": "cli-made"}"#);
    assert_eq!(a.status, 404);
}

#[test]
fn a_function_naming_a_missing_secret_is_not_deployed() {
    let node = Node::start();
    let f = FnDir::python("needy", "secrets = [\"absent\"]\n", "def handle(req):\n    return 'x'\n");
    let out = node.cli(&["deploy", "--wait", f.path().to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("absent") && err.contains("does not exist"), "{err}");
    assert_eq!(node.get("/system/function/needy").status, 404);
}

const READ_SECRET: &str = r#"import os

def handle(req):
    out = []
    for path in [os.path.join(os.environ.get('SEDGE_SECRETS_DIR', '/nowhere'), 'db-password'), '/var/openfaas/secrets/db-password']:
        try:
            with open(path) as f:
                out.append(f.read())
        except OSError as e:
            out.append(type(e).__name__)
    return ' '.join(out)
"#;

#[test]
fn a_function_reads_the_secrets_it_names_and_no_other() {
    let node = Node::start();
    let json = [("content-type", "application/json")];
    let a = node.request("POST", "/system/secrets", &json, br#"{"name": "db-password", "value": "hunter2"}"#);
    assert_eq!(a.status, 201, "{}", a.text());
    let named = FnDir::python("named", "secrets = [\"db-password\"]\n", READ_SECRET);
    let other = FnDir::python("other", "", READ_SECRET);
    node.deploy(named.path());
    node.deploy(other.path());
    // Sandboxed (the node runs as root): at OpenFaaS's path, which is also SEDGE_SECRETS_DIR.
    assert_eq!(node.post("/function/named", b"").text(), "hunter2 hunter2");
    let seen = node.post("/function/other", b"").text();
    assert!(!seen.contains("hunter2"), "another function read the secret: {seen}");
    assert_eq!(node.describe("named")["sedge"]["secrets"], serde_json::json!(["db-password"]));
    assert!(!node.describe("named").to_string().contains("hunter2"));

    // An update reaches the function's files; a secret in use cannot be removed.
    let a = node.request("PUT", "/system/secrets", &json, br#"{"name": "db-password", "value": "changed"}"#);
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(node.post("/function/named", b"").text(), "changed changed");
    let a = node.request("DELETE", "/system/secrets", &json, br#"{"name": "db-password"}"#);
    assert_eq!(a.status, 409, "{}", a.text());
    assert!(a.error().contains("named"), "{}", a.error());
    let out = node.cli(&["rm", "named"]);
    assert!(out.status.success());
    assert!(!node.data.join("secrets/mounts/named").exists());
    let a = node.request("DELETE", "/system/secrets", &json, br#"{"name": "db-password"}"#);
    assert_eq!(a.status, 200, "{}", a.text());
}

#[test]
fn without_the_sandbox_secrets_are_in_sedge_secrets_dir() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = Node::start_with(&tmp.path().join("data"), &["--no-sandbox"]);
    let json = [("content-type", "application/json")];
    let a = node.request("POST", "/system/secrets", &json, br#"{"name": "db-password", "value": "plain"}"#);
    assert_eq!(a.status, 201, "{}", a.text());
    let named = FnDir::python("named", "secrets = [\"db-password\"]\n", READ_SECRET);
    node.deploy(named.path());
    let text = node.post("/function/named", b"").text();
    assert!(text.starts_with("plain "), "{text}");
}

#[test]
fn a_refused_redeploy_leaves_the_serving_versions_secrets_and_token() {
    let node = Node::start();
    let json = [("content-type", "application/json")];
    for body in [&br#"{"name": "db-password", "value": "v1"}"#[..], br#"{"name": "other", "value": "v2"}"#] {
        assert_eq!(node.request("POST", "/system/secrets", &json, body).status, 201);
    }
    let v1 = FnDir::python("keeper", "secrets = [\"db-password\"]\n[auth]\ninvoke = true\n", READ_SECRET);
    node.deploy(v1.path());
    let token = node.describe("keeper")["sedge"]["auth"]["token"].as_str().expect("token").to_owned();
    let bearer = format!("Bearer {token}");
    // A new version naming another secret, without invoke auth, that does not load.
    let v2 = FnDir::python("keeper", "secrets = [\"other\"]\n", "import no_such_module\n");
    let out = node.cli(&["deploy", "--wait", v2.path().to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let a = node.request_raw("POST", "/function/keeper", &[("authorization", &bearer)], b"");
    assert_eq!((a.status, a.text().as_str()), (200, "v1 v1"), "the serving version lost its secret or token");
    assert_eq!(node.request_raw("POST", "/function/keeper", &[], b"").status, 401);
}

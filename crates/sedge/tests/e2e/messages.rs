//! What the CLI prints when something is wrong: each cause once, TOML's
//! excerpt on lines of its own, and what to do; and what `--help` shows.

use std::process::{Command, Output};

use crate::support::{FnDir, Node, BIN};

/// A gateway address where nothing listens.
fn nowhere() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

fn sedge(args: &[&str], gateway: &str) -> Output {
    Command::new(BIN)
        .args(args)
        .env("SEDGE_GATEWAY", gateway)
        .env("SEDGE_PASSWORD", "unused")
        .output()
        .expect("run sedge")
}

fn stderr(out: &Output) -> String {
    assert!(!out.status.success(), "the command should fail: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn once(text: &str, needle: &str) {
    assert_eq!(text.matches(needle).count(), 1, "{needle:?} should appear once in:\n{text}");
}

#[test]
fn a_folder_without_sedge_toml_is_named_once_with_what_it_needs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_str().expect("utf-8");
    let err = stderr(&sedge(&["deploy", path], &nowhere()));
    once(&err, "error: ");
    once(&err, &format!("{path} has no sedge.toml"));
    once(&err, "No such file or directory");
    once(&err, &format!("hint: {path} must contain a sedge.toml"));

    let missing = dir.path().join("absent");
    let err = stderr(&sedge(&["deploy", missing.to_str().expect("utf-8")], &nowhere()));
    once(&err, "no such folder");
}

#[test]
fn a_toml_error_keeps_its_excerpt_on_lines_of_its_own() {
    let f = FnDir::new("name = \"bad\"\nruntime = \"python\"\nhandler = 3\n", &[]);
    let err = stderr(&sedge(&["deploy", f.path().to_str().expect("utf-8")], &nowhere()));
    once(&err, "TOML parse error at line 3");
    once(&err, "invalid type: integer `3`, expected a string");
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.iter().any(|l| l.trim() == "3 | handler = 3"), "the excerpt is a line of its own:\n{err}");
    assert!(lines.iter().any(|l| l.trim() == "|           ^"), "the caret is a line of its own:\n{err}");
    once(&err, "hint: ");

    let f = FnDir::new("name = \"bad\"\nruntime = \"python\"\nhandler = \"h.handle\"\n[scale]\nmax = 0\n", &[]);
    let err = stderr(&sedge(&["deploy", f.path().to_str().expect("utf-8")], &nowhere()));
    once(&err, "field `scale.max`");
}

#[test]
fn an_unreachable_node_is_named_with_what_to_check() {
    let url = nowhere();
    for args in [&["ls"][..], &["invoke", "hello"], &["logs", "hello"]] {
        let err = stderr(&sedge(args, &url));
        once(&err, &format!("cannot reach the node at {url}"));
        once(&err, "Connection refused");
        once(&err, "`sedge serve`");
    }
    let err = stderr(&sedge(&["ls", "--gateway", &url], "http://127.0.0.1:9"));
    once(&err, &url);
}

#[test]
fn a_wrong_password_says_to_log_in() {
    let node = Node::start();
    let out = Command::new(BIN)
        .args(["describe", "anything"])
        .env("SEDGE_GATEWAY", &node.url)
        .env("SEDGE_PASSWORD", "not-the-password")
        .output()
        .expect("run");
    let err = stderr(&out);
    once(&err, "401");
    once(&err, "sedge login");

    for args in [&["describe", "ghost"][..], &["invoke", "ghost"], &["logs", "ghost"], &["rm", "ghost"]] {
        let err = stderr(&node.cli(args));
        once(&err, "404");
        once(&err, "ghost not found");
        once(&err, "`sedge ls`");
    }
    let err = stderr(&node.cli(&["secret", "rm", "ghost"]));
    assert!(!err.contains("sedge ls"), "a secret is not a function: {err}");
}

fn help(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).arg("--help").env_remove("SEDGE_GATEWAY").output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn help_shows_what_each_command_takes() {
    let serve = help(&["serve"]);
    assert!(!serve.contains("--gateway"), "serve is the node, it talks to none:\n{serve}");
    assert!(serve.contains("~/.local/share/sedge"), "the default data folder is shown:\n{serve}");
    let run = help(&["bench", "run"]);
    assert!(run.contains("--gateway") && !run.contains("127.0.0.1:8080"), "bench run starts its own node:\n{run}");
    let deploy = help(&["deploy"]);
    assert!(deploy.contains("<DIR>") && deploy.contains("sedge.toml") && deploy.contains("127.0.0.1:8080"));
    let load = help(&["bench", "load"]);
    assert!(load.contains("-d, --data") && load.contains("    --duration"), "{load}");
    assert!(help(&["invoke"]).contains("-d, --data"));
}

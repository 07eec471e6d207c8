//! Hostile and broken uploads are refused with 400 and leave nothing behind;
//! a failed redeploy leaves the previous version serving.

use flate2::{write::GzEncoder, Compression};

use crate::support::{manifest, FnDir, Node};

/// A tar.gz with raw entry names (so `..` and absolute paths can be forged).
fn forge(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        if !link.is_empty() {
            h.set_link_name(link).expect("link");
        }
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, *data).expect("append");
    }
    b.into_inner().expect("tar").finish().expect("gz")
}

const OK_MANIFEST: &[u8] = b"name = \"target\"\nruntime = \"exec\"\nhandler = \"cat\"\n";

fn put(node: &Node, name: &str, body: &[u8]) -> crate::support::Answer {
    node.request("PUT", &format!("/system/bundles/{name}"), &[], body)
}

#[test]
fn hostile_archives_are_refused_and_nothing_is_stored() {
    use tar::EntryType::{Link, Regular, Symlink};
    let node = Node::start();
    let m = ("sedge.toml", Regular, "", OK_MANIFEST);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (forge(&[m, ("../escape.py", Regular, "", b"x")]), ".."),
        (forge(&[m, ("/tmp/abs.py", Regular, "", b"x")]), "absolute"),
        (forge(&[m, ("link", Symlink, "/etc/passwd", b"")]), "outside"),
        (forge(&[m, ("sub/link", Symlink, "../../x", b"")]), "outside"),
        (forge(&[m, ("hard", Link, "../x", b"")]), "outside"),
        (b"this is not gzip".to_vec(), "tar.gz"),
        (forge(&[("main.py", Regular, "", b"")]), "sedge.toml"),
        (
            forge(&[("sedge.toml", Regular, "", b"name = \"target\"\nruntime = \"cobol\"\nhandler = \"x\"\n")]),
            "runtime",
        ),
        (forge(&[("sedge.toml", Regular, "", b"name = \"other\"\nruntime = \"exec\"\nhandler = \"cat\"\n")]), "other"),
    ];
    for (body, expect) in cases {
        let a = put(&node, "target", &body);
        assert_eq!(a.status, 400, "{}", a.text());
        assert!(a.error().contains(expect), "{:?} should mention {expect:?}", a.error());
    }
    assert_eq!(node.get("/system/functions").json(), serde_json::json!([]));
    assert_eq!(node.post("/function/target", b"").status, 404);
    let escaped = node.data.parent().expect("tmp").join("escape.py");
    assert!(!escaped.exists());
    assert_eq!(put(&node, "Bad_Name", &forge(&[m])).status, 400);
    assert_eq!(put(&node, "target", b"").status, 400);
}

#[test]
fn a_failed_redeploy_leaves_the_previous_version_serving() {
    let node = Node::start();
    let v1 = FnDir::python("atomic", "", "def handle(req):\n    return 'v1'\n");
    node.deploy(v1.path());
    let image_v1 = node.describe("atomic")["image"].clone();

    let broken = FnDir::python("atomic", "", "raise RuntimeError('will not load')\n");
    let out = node.cli(&["deploy", "--wait", broken.path().to_str().expect("path")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("will not load"));
    let bad_manifest =
        FnDir::new(&manifest("atomic", "python", "handler.handle", "[limits]\ntimeout = \"never\"\n"), &[]);
    let archive = {
        let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        b.append_dir_all(".", bad_manifest.path()).expect("pack");
        b.into_inner().expect("tar").finish().expect("gz")
    };
    let a = put(&node, "atomic", &archive);
    assert_eq!(a.status, 400);
    assert!(a.error().contains("limits.timeout"), "{}", a.text());

    assert_eq!(node.post("/function/atomic", b"").text(), "v1");
    assert_eq!(node.describe("atomic")["image"], image_v1);

    let v2 = FnDir::python("atomic", "", "def handle(req):\n    return 'v2'\n");
    node.deploy(v2.path());
    assert_eq!(node.post("/function/atomic", b"").text(), "v2");
    assert_ne!(node.describe("atomic")["image"], image_v1);
}

/// Every path under `dir`, relative to it, walked without following links.
fn tree(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut std::collections::BTreeSet<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            out.insert(p.strip_prefix(root).expect("under root").display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(root, &p, out);
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// What a refused upload may change around the data directory: nothing but
/// the database's own files.
fn assert_untouched(node: &Node, before: &std::collections::BTreeSet<String>) {
    let marker = node.data.parent().expect("marker dir");
    let after = tree(marker);
    let changed: Vec<_> = after.symmetric_difference(before).filter(|p| !p.contains("sedge.db")).collect();
    assert!(changed.is_empty(), "a refused upload changed {changed:?}");
    let leftovers = |d: &str| std::fs::read_dir(node.data.join(d)).expect("dir").count();
    assert_eq!(leftovers("bundles"), 0, "no bundle folder is left");
    assert_eq!(leftovers("uploads"), 0, "no upload file is left");
}

#[test]
fn link_chains_and_other_escapes_are_refused_naming_the_entry() {
    use tar::EntryType::{Directory, Fifo, Link, Regular, Symlink};
    let node = Node::start();
    let before = tree(node.data.parent().expect("marker dir"));
    let m = ("sedge.toml", Regular, "", OK_MANIFEST);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        // The chain from the issue: f would land two folders above the bundle.
        (
            forge(&[
                m,
                ("x", Symlink, ".", b""),
                ("x/y", Symlink, "..", b""),
                ("x/y/z", Symlink, "..", b""),
                ("x/y/z/f", Regular, "", b"escaped"),
            ]),
            "x/y",
        ),
        (
            forge(&[
                m,
                ("a", Symlink, ".", b""),
                ("a/b", Symlink, ".", b""),
                ("a/b/c", Symlink, "..", b""),
                ("a/b/c/d", Symlink, "..", b""),
                ("a/b/c/d/e", Symlink, "..", b""),
                ("a/b/c/d/e/f", Regular, "", b"x"),
            ]),
            "a/b",
        ),
        // Each link alone stays inside; resolved through the next it does not.
        (
            forge(&[
                m,
                ("sub", Directory, "", b""),
                ("sub/up", Symlink, "..", b""),
                ("esc", Symlink, "sub/up/..", b""),
            ]),
            "esc",
        ),
        // Made unsafe by a later entry.
        (forge(&[m, ("sub/l", Symlink, "d/../../x", b""), ("sub/d", Symlink, "..", b"")]), "sub/l"),
        (forge(&[m, ("hard", Link, "/etc/passwd", b"")]), "hard"),
        (forge(&[m, ("hard", Link, "../../../etc/passwd", b"")]), "hard"),
        (forge(&[m, ("abs", Symlink, "/", b"")]), "abs"),
        (forge(&[m, ("ok/../../up.py", Regular, "", b"x")]), "ok/../../up.py"),
        (forge(&[m, ("pipe", Fifo, "", b"")]), "pipe"),
        (forge(&[m, ("l", Symlink, "sedge.toml", b""), ("l", Regular, "", b"overwrite")]), "l"),
    ];
    for (body, entry) in cases {
        let a = put(&node, "target", &body);
        assert_eq!(a.status, 400, "{entry}: {}", a.text());
        assert!(a.error().contains(&format!("{entry:?}")), "{:?} should name {entry:?}", a.error());
        assert_untouched(&node, &before);
    }
    assert_eq!(node.get("/system/functions").json(), serde_json::json!([]));
}

#[test]
fn a_gzip_bomb_is_stopped_at_the_unpacked_cap() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = Node::start_with(&tmp.path().join("data"), &["--max-unpacked", "1MiB"]);
    let before = tree(tmp.path());
    let zeros = vec![0u8; 32 * 1024 * 1024];
    let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::best()));
    let mut h = tar::Header::new_gnu();
    h.set_size(OK_MANIFEST.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "sedge.toml", OK_MANIFEST).expect("manifest");
    let mut h = tar::Header::new_gnu();
    h.set_size(zeros.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "zeros.bin", &zeros[..]).expect("zeros");
    let bomb = b.into_inner().expect("tar").finish().expect("gz");
    assert!(bomb.len() < 256 * 1024, "a small archive: {} bytes", bomb.len());
    let a = put(&node, "target", &bomb);
    assert_eq!(a.status, 413, "{}", a.text());
    assert!(a.error().contains("1048576"), "{}", a.error());
    assert_untouched(&node, &before);
}

/// Sends a bundle upload by hand (so a body can be left unsent or sent in
/// chunks) and returns the status line and body of the answer.
fn raw_put(node: &Node, extra: &str, chunks: &[&[u8]]) -> String {
    use std::io::{Read, Write};
    let addr = node.url.strip_prefix("http://").expect("http url");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(20))).expect("timeout");
    let head = format!(
        "PUT /system/bundles/target HTTP/1.1\r\nHost: sedge\r\nAuthorization: {}\r\n{extra}\r\n",
        node.basic_auth()
    );
    s.write_all(head.as_bytes()).expect("head");
    // The node may answer and close before the body is all sent.
    for c in chunks {
        if s.write_all(format!("{:x}\r\n", c.len()).as_bytes())
            .and_then(|()| s.write_all(c))
            .and_then(|()| s.write_all(b"\r\n"))
            .is_err()
        {
            break;
        }
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn an_archive_over_the_upload_limit_is_refused_and_leaves_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = Node::start_with(&tmp.path().join("data"), &["--max-bundle", "64KiB"]);
    let before = tree(tmp.path());
    // Declared too large: refused before a byte of the body is read.
    let a = raw_put(&node, "Content-Length: 204800\r\nConnection: close\r\n", &[]);
    assert!(a.starts_with("HTTP/1.1 413"), "{a}");
    assert!(a.contains("65536"), "{a}");
    assert_untouched(&node, &before);
    // Not declared: refused as soon as what arrived passes the limit.
    let chunk = vec![7u8; 16 * 1024];
    let chunks: Vec<&[u8]> = std::iter::repeat_n(&chunk[..], 12).collect();
    let a = raw_put(&node, "Transfer-Encoding: chunked\r\nConnection: close\r\n", &chunks);
    assert!(a.starts_with("HTTP/1.1 413"), "{a}");
    assert_untouched(&node, &before);
}

#[test]
fn a_broken_redeploy_without_wait_keeps_the_old_version_serving() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let node = Node::start_on(&data);
    let v1 = FnDir::python("steady", "", "def handle(req):\n    return 'v1'\n");
    node.deploy(v1.path());
    let image_v1 = node.describe("steady")["image"].clone();
    assert_eq!(node.describe("steady")["lastDeployError"], serde_json::Value::Null);

    let broken = FnDir::python("steady", "", "raise RuntimeError('cannot import this')\n");
    let out = node.cli(&["deploy", broken.path().to_str().expect("path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    node.wait_for("the failed deploy to be reported", std::time::Duration::from_secs(30), |n| {
        n.describe("steady")["lastDeployError"].as_str().is_some_and(|e| e.contains("cannot import this"))
    });
    for _ in 0..5 {
        let a = node.post("/function/steady", b"");
        assert_eq!((a.status, a.text()), (200, "v1".to_owned()));
    }
    assert_eq!(node.describe("steady")["image"], image_v1);
    let dirs = std::fs::read_dir(node.data.join("bundles")).expect("bundles").count();
    assert_eq!(dirs, 1, "the refused version's folder is removed");

    // A good redeploy without wait replaces it once loaded, clears the
    // error, and the old folder goes once its workers are done.
    let v2 = FnDir::python("steady", "", "def handle(req):\n    return 'v2'\n");
    let out = node.cli(&["deploy", v2.path().to_str().expect("path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    node.wait_for("v2 to serve", std::time::Duration::from_secs(30), |n| {
        n.post("/function/steady", b"").text() == "v2"
    });
    assert_eq!(node.describe("steady")["lastDeployError"], serde_json::Value::Null);
    node.wait_for("v1's folder to be removed", std::time::Duration::from_secs(30), |n| {
        std::fs::read_dir(n.data.join("bundles")).expect("bundles").count() == 1
    });

    // The store agrees with what serves: a restart serves v2.
    assert!(node.terminate().success());
    let again = Node::start_on(&data);
    assert_eq!(again.post("/function/steady", b"").text(), "v2");
    let a = again.request("DELETE", "/system/functions", &[], br#"{"functionName": "steady"}"#);
    assert_eq!(a.status, 200, "{}", a.text());
    again.wait_for("the removed function's folder to go", std::time::Duration::from_secs(30), |n| {
        std::fs::read_dir(n.data.join("bundles")).expect("bundles").count() == 0
    });
}

#[test]
fn uploads_in_flight_are_capped_and_aborted_ones_leave_nothing() {
    use std::io::Write;
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = Node::start_with(&tmp.path().join("data"), &["--max-uploads", "2"]);
    let before = tree(tmp.path());
    let addr = node.url.strip_prefix("http://").expect("http url").to_owned();
    let uploads = |n: &Node| std::fs::read_dir(n.data.join("uploads")).expect("uploads").count();
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        let head = format!(
            "PUT /system/bundles/target HTTP/1.1\r\nHost: sedge\r\nAuthorization: {}\r\nContent-Length: 100000000\r\n\r\n",
            node.basic_auth()
        );
        s.write_all(head.as_bytes()).expect("head");
        s.write_all(&[0u8; 4096]).expect("some body");
        slow.push(s);
    }
    node.wait_for("both uploads to be admitted", std::time::Duration::from_secs(10), |n| uploads(n) == 2);
    let m = ("sedge.toml", tar::EntryType::Regular, "", OK_MANIFEST);
    let a = put(&node, "target", &forge(&[m]));
    assert_eq!(a.status, 503, "{}", a.text());
    assert!(a.header("retry-after").is_some());
    assert!(a.error().contains("2 bundle uploads"), "{}", a.error());

    drop(slow);
    node.wait_for("the aborted uploads' files to go", std::time::Duration::from_secs(10), |n| uploads(n) == 0);
    assert_untouched(&node, &before);
    assert_eq!(put(&node, "target", &forge(&[m])).status, 201);
}

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

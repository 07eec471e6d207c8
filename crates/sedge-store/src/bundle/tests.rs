use super::*;
use flate2::{write::GzEncoder, Compression};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum E {
    File(String, Vec<u8>),
    Dir(String),
    Link(String, String),
    Hard(String, String),
    Fifo(String),
}

fn file(p: &str, d: &[u8]) -> E {
    E::File(p.into(), d.to_vec())
}
fn link(p: &str, t: &str) -> E {
    E::Link(p.into(), t.into())
}

fn header(kind: EntryType, name: &str, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    // Write the raw name so tests can forge names tar::Builder refuses.
    let name = name.as_bytes();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h
}

fn tar_bytes(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (mut h, data): (tar::Header, &[u8]) = match e {
            E::File(p, d) => (header(EntryType::Regular, p, d.len() as u64), d),
            E::Dir(p) => (header(EntryType::Directory, p, 0), &[]),
            E::Link(p, t) | E::Hard(p, t) => {
                let kind = if matches!(e, E::Link(..)) { EntryType::Symlink } else { EntryType::Link };
                let mut h = header(kind, p, 0);
                h.set_link_name(t).expect("link name");
                (h, &[])
            }
            E::Fifo(p) => (header(EntryType::Fifo, p, 0), &[]),
        };
        h.set_cksum();
        b.append(&h, data).expect("append");
    }
    b.into_inner().expect("finish")
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut g = GzEncoder::new(Vec::new(), Compression::fast());
    g.write_all(bytes).expect("gzip");
    g.finish().expect("gzip")
}

fn archive(entries: &[E]) -> Vec<u8> {
    gz(&tar_bytes(entries))
}

fn manifest() -> E {
    file("sedge.toml", b"name = \"x\"")
}

/// Unpacks into `sandbox/out` and returns the result and the sandbox.
fn try_unpack_with(entries: &[E], limits: &UnpackLimits) -> (Result<(), BundleError>, tempfile::TempDir) {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let r = unpack(&archive(entries)[..], &sandbox.path().join("out"), limits);
    (r, sandbox)
}

fn try_unpack(entries: &[E]) -> (Result<(), BundleError>, tempfile::TempDir) {
    try_unpack_with(entries, &UnpackLimits::default())
}

/// Every path in `dir`, walked without following links.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&p));
        }
    }
    out
}

fn assert_refused(entries: &[E], entry: &str) {
    let (r, sandbox) = try_unpack(entries);
    match r {
        Err(BundleError::UnsafeEntry { path, .. }) => assert_eq!(path, entry),
        other => panic!("expected {entry:?} to be refused, got {other:?}"),
    }
    assert!(walk(sandbox.path()).is_empty(), "left behind: {:?}", walk(sandbox.path()));
}

#[test]
fn unpacks_a_normal_folder() {
    let (r, sandbox) = try_unpack(&[
        manifest(),
        file("./lib/util.py", b"x = 1"),
        link("lib/alias.py", "util.py"),
        link("up", "lib/../lib"),
        E::Hard("copy.py".into(), "lib/util.py".into()),
        E::Dir("empty".into()),
    ]);
    r.expect("safe bundle");
    let out = sandbox.path().join("out");
    assert_eq!(fs::read(out.join("lib/util.py")).expect("file"), b"x = 1");
    assert_eq!(fs::read(out.join("lib/alias.py")).expect("link"), b"x = 1");
    assert_eq!(fs::read(out.join("copy.py")).expect("hard link"), b"x = 1");
    assert!(out.join("empty").is_dir());
}

#[test]
fn refuses_escapes_by_name() {
    assert_refused(&[manifest(), file("../evil.py", b"")], "../evil.py");
    assert_refused(&[manifest(), file("/etc/evil", b"")], "/etc/evil");
    assert_refused(&[manifest(), file("a/../../evil", b"")], "a/../../evil");
    assert_refused(&[manifest(), link("l", "/etc/passwd")], "l");
    assert_refused(&[manifest(), link("a/l", "../../x")], "a/l");
    assert_refused(&[manifest(), E::Hard("l".into(), "../x".into())], "l");
    assert_refused(&[manifest(), E::Fifo("pipe".into())], "pipe");
}

#[test]
fn the_link_chain_is_refused_and_writes_nothing_outside() {
    let chain = [link("x", "."), link("x/y", ".."), link("x/y/z", ".."), file("x/y/z/f", b"escaped")];
    assert_refused(&chain, "x/y");
    let longer = [manifest(), link("a", "."), link("a/b", "."), link("a/b/c", ".."), file("a/b/c/f", b"")];
    assert_refused(&longer, "a/b");
}

#[test]
fn a_link_made_unsafe_by_a_later_entry_is_refused() {
    // `l -> d/../x` stays inside while d is missing; d becoming a link to
    // `.` would make l climb out.
    let (r, _s) = try_unpack(&[manifest(), link("sub/l", "d/../../x"), link("sub/d", "..")]);
    assert!(matches!(r, Err(BundleError::UnsafeEntry { .. })), "{r:?}");
    let (r, sandbox) = try_unpack(&[manifest(), E::Dir("sub".into()), link("l", "sub/d/../.."), link("sub/d", ".")]);
    match r {
        Err(BundleError::UnsafeEntry { path, .. }) => assert_eq!(path, "l"),
        other => panic!("expected l to be refused, got {other:?}"),
    }
    assert!(walk(sandbox.path()).is_empty());
}

#[test]
fn links_are_resolved_through_other_links() {
    // `b -> a/..` is fine lexically but a is a link to `..`.
    let cases = [
        vec![manifest(), link("a", ".."), link("b", "a")],
        vec![manifest(), E::Dir("d".into()), link("d/up", ".."), link("esc", "d/up/..")],
    ];
    for c in cases {
        let (r, _s) = try_unpack(&c);
        assert!(matches!(r, Err(BundleError::UnsafeEntry { .. })), "{c:?}: {r:?}");
    }
    let (r, _s) = try_unpack(&[manifest(), link("a", "b"), link("b", "a")]);
    assert!(matches!(r, Err(BundleError::UnsafeEntry { ref reason, .. }) if reason.contains("loop")), "{r:?}");
}

#[test]
fn never_writes_over_or_through_a_link() {
    assert_refused(&[manifest(), link("l", "sedge.toml"), file("l", b"x")], "l");
    assert_refused(&[manifest(), link("d", "."), E::Dir("d".into())], "d");
    assert_refused(&[manifest(), link("d", "."), link("d", "sedge.toml")], "d");
    assert_refused(&[manifest(), link("d", "sub"), E::Dir("sub".into()), file("d/f", b"")], "d/f");
}

#[test]
fn hard_links_only_to_files_of_this_archive() {
    assert_refused(&[manifest(), E::Hard("h".into(), "etc/passwd".into())], "h");
    assert_refused(&[manifest(), E::Dir("d".into()), E::Hard("h".into(), "d".into())], "h");
    assert_refused(&[manifest(), link("s", "sedge.toml"), E::Hard("h".into(), "s".into())], "h");
}

#[test]
fn later_files_replace_earlier_ones_but_not_their_hard_links() {
    let (r, sandbox) = try_unpack(&[manifest(), file("a", b"one"), E::Hard("b".into(), "a".into()), file("a", b"two")]);
    r.expect("unpack");
    let out = sandbox.path().join("out");
    assert_eq!(fs::read(out.join("a")).expect("a"), b"two");
    assert_eq!(fs::read(out.join("b")).expect("b"), b"one");
}

#[test]
fn limits_are_enforced() {
    let small = UnpackLimits { max_unpacked: 100, ..UnpackLimits::default() };
    let (r, s) = try_unpack_with(&[manifest(), file("big", &[0; 200])], &small);
    assert!(matches!(r, Err(BundleError::TooLarge(_))), "{r:?}");
    assert!(walk(s.path()).is_empty());

    let few = UnpackLimits { max_entries: 3, ..UnpackLimits::default() };
    let many: Vec<E> = std::iter::once(manifest()).chain((0..5).map(|i| file(&format!("f{i}"), b""))).collect();
    assert!(matches!(try_unpack_with(&many, &few).0, Err(BundleError::TooLarge(_))));

    let shallow = UnpackLimits { max_depth: 3, ..UnpackLimits::default() };
    assert!(try_unpack_with(&[manifest(), file("a/b/c", b"")], &shallow).0.is_ok());
    let (r, _s) = try_unpack_with(&[manifest(), file("a/b/c/d", b"")], &shallow);
    assert!(matches!(r, Err(BundleError::UnsafeEntry { ref reason, .. }) if reason.contains("deeper")), "{r:?}");

    let short = UnpackLimits { max_path_len: 10, ..UnpackLimits::default() };
    let (r, _s) = try_unpack_with(&[manifest(), file("abcdefghijk", b"")], &short);
    assert!(matches!(r, Err(BundleError::UnsafeEntry { ref reason, .. }) if reason.contains("longer")), "{r:?}");

    let tiny_manifest = UnpackLimits { max_manifest: 5, ..UnpackLimits::default() };
    let (r, _s) = try_unpack_with(&[manifest()], &tiny_manifest);
    assert!(matches!(r, Err(BundleError::TooLarge(ref m)) if m.contains("sedge.toml")), "{r:?}");
}

#[test]
fn a_gzip_bomb_stops_at_the_cap_even_when_headers_lie() {
    let limits = UnpackLimits { max_unpacked: 1024 * 1024, ..UnpackLimits::default() };
    // A header claiming a small size followed by a huge declared one: what
    // counts is the bytes written.
    let mut t = tar_bytes(&[manifest()]);
    t.truncate(t.len() - 1024);
    let mut h = header(EntryType::Regular, "zeros", 64 * 1024 * 1024);
    h.set_cksum();
    t.extend_from_slice(h.as_bytes());
    t.extend(std::iter::repeat_n(0u8, 64 * 1024 * 1024));
    let bomb = gz(&t);
    assert!(bomb.len() < 1024 * 1024, "the bomb is small: {}", bomb.len());
    let sandbox = tempfile::tempdir().expect("tempdir");
    let r = unpack(&bomb[..], &sandbox.path().join("out"), &limits);
    assert!(matches!(r, Err(BundleError::TooLarge(_))), "{r:?}");
    assert!(walk(sandbox.path()).is_empty());
}

#[test]
fn a_huge_long_name_is_not_held_in_memory() {
    let mut t = Vec::new();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::GNULongName);
    h.set_size(512 * 1024 * 1024);
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_cksum();
    t.extend_from_slice(h.as_bytes());
    t.extend(std::iter::repeat_n(b'a', 8 * 1024 * 1024));
    let sandbox = tempfile::tempdir().expect("tempdir");
    let r = unpack(&gz(&t)[..], &sandbox.path().join("out"), &UnpackLimits::default());
    assert!(matches!(r, Err(BundleError::TooLarge(_))), "{r:?}");
}

#[test]
fn refuses_garbage_and_missing_manifest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = unpack(&b"not gzip at all"[..], &dir.path().join("a"), &UnpackLimits::default());
    assert!(matches!(r, Err(BundleError::NotAnArchive(_))), "{r:?}");
    assert!(!dir.path().join("a").exists());
    assert!(matches!(try_unpack(&[file("main.py", b"")]).0, Err(BundleError::NoManifest)));
    assert!(matches!(try_unpack(&[link("sedge.toml", "nowhere")]).0, Err(BundleError::NoManifest)));
}

#[test]
fn an_existing_destination_is_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir(dir.path().join("out")).expect("mkdir");
    fs::write(dir.path().join("out/keep"), "x").expect("write");
    let r = unpack(&archive(&[manifest()])[..], &dir.path().join("out"), &UnpackLimits::default());
    assert!(matches!(r, Err(BundleError::Io(_))), "{r:?}");
    assert!(dir.path().join("out/keep").is_file());
}

fn arb_name() -> impl Strategy<Value = String> {
    prop_oneof![Just("a".to_owned()), Just("b".to_owned()), Just("c".to_owned())]
}

fn arb_path() -> impl Strategy<Value = String> {
    proptest::collection::vec(arb_name(), 1..4).prop_map(|v| v.join("/"))
}

fn arb_target() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("../..".to_owned()),
        Just("/".to_owned()),
        Just("/tmp".to_owned()),
        arb_name(),
        arb_path(),
        (arb_name(), prop_oneof![Just(".."), Just("../.."), Just(".")]).prop_map(|(a, b)| format!("{a}/{b}")),
        arb_path().prop_map(|p| format!("../{p}")),
    ]
}

fn arb_entry() -> impl Strategy<Value = E> {
    prop_oneof![
        3 => (arb_path(), arb_target()).prop_map(|(p, t)| E::Link(p, t)),
        2 => arb_path().prop_map(|p| E::File(p, b"data".to_vec())),
        1 => arb_path().prop_map(E::Dir),
        1 => (arb_path(), arb_target()).prop_map(|(p, t)| E::Hard(p, t)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the chain of links, nothing appears in the sandbox outside
    /// `out`, and on error not even `out`. When it succeeds, every link in
    /// `out` resolves inside it.
    #[test]
    fn random_link_chains_never_escape(entries in proptest::collection::vec(arb_entry(), 1..10)) {
        let mut all = vec![manifest()];
        all.extend(entries);
        let (r, sandbox) = try_unpack(&all);
        let out = sandbox.path().join("out");
        for p in walk(sandbox.path()) {
            prop_assert!(p.starts_with(&out), "{} is outside the bundle folder ({r:?})", p.display());
        }
        if r.is_err() {
            prop_assert!(!out.exists(), "a failed unpack left its folder: {r:?}");
        } else {
            let root = out.canonicalize().expect("canonical");
            for p in walk(&out) {
                if let Ok(real) = p.canonicalize() {
                    prop_assert!(real.starts_with(&root), "{} resolves to {}", p.display(), real.display());
                }
            }
        }
    }
}

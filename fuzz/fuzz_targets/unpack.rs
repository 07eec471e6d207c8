//! Bytes → bundle unpack into a fresh folder inside a sandbox folder.
//! Whatever the outcome, nothing may appear in the sandbox outside the
//! bundle folder, a failed unpack leaves no folder, and every path in a
//! finished one resolves inside it. Input that is not gzip is gzipped first
//! so the fuzzer explores tar structure rather than compression.
#![no_main]

use std::io::Write;
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use sedge_store::UnpackLimits;

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&p, out);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let archive = if data.starts_with(&[0x1f, 0x8b]) {
        data.to_vec()
    } else {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).expect("gzip into memory");
        gz.finish().expect("gzip into memory")
    };
    let sandbox = tempfile::tempdir().expect("sandbox");
    let out = sandbox.path().join("out");
    let limits = UnpackLimits { max_unpacked: 4 * 1024 * 1024, max_entries: 256, ..UnpackLimits::default() };
    let result = sedge_store::bundle::unpack(&archive[..], &out, &limits);
    let mut all = Vec::new();
    walk(sandbox.path(), &mut all);
    for p in &all {
        assert!(p.starts_with(&out), "{} is outside the bundle folder ({result:?})", p.display());
    }
    match result {
        Err(_) => assert!(!out.exists(), "a failed unpack left its folder: {result:?}"),
        Ok(()) => {
            let root = out.canonicalize().expect("canonical bundle folder");
            for p in &all {
                if let Ok(real) = p.canonicalize() {
                    assert!(real.starts_with(&root), "{} resolves to {}", p.display(), real.display());
                }
            }
        }
    }
});

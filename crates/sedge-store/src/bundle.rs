//! Safe unpacking of a function bundle (a gzip-compressed tar of its folder).
//!
//! Every entry is checked before anything is written: no absolute paths, no
//! `..`, no link that points outside the folder, no device or fifo, and a cap
//! on the unpacked size and entry count so a small upload cannot fill the
//! disk. Unpacking goes to a fresh folder the caller renames into place.

use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use tar::{Archive, EntryType};

/// Unpacked bytes allowed per bundle.
pub const MAX_UNPACKED: u64 = 2 * 1024 * 1024 * 1024;
pub const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle is not a readable tar.gz archive: {0}")]
    NotAnArchive(String),
    #[error("bundle entry {path:?} is refused: {reason}")]
    UnsafeEntry { path: String, reason: &'static str },
    #[error("bundle unpacks to more than {MAX_UNPACKED} bytes")]
    TooLarge,
    #[error("bundle has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("bundle has no sedge.toml at its top level")]
    NoManifest,
    #[error("could not write the unpacked bundle: {0}")]
    Io(#[from] std::io::Error),
}

/// Turns an entry path into a relative path inside the folder, or says why not.
fn safe_relative(path: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("it contains '..'"),
            Component::RootDir | Component::Prefix(_) => return Err("it is an absolute path"),
        }
    }
    Ok(out)
}

/// Whether a link at `entry` (relative to the folder) pointing at `target`
/// stays inside the folder.
fn link_stays_inside(entry: &Path, target: &Path, symlink: bool) -> bool {
    if target.is_absolute() {
        return false;
    }
    // A symlink resolves from its own directory; a hard link from the root.
    let mut depth: i64 = 0;
    if symlink {
        depth = entry.parent().map_or(0, |p| p.components().count() as i64);
    }
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => depth -= 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// Unpacks `archive` into `dest` (which must not exist yet).
pub fn unpack(archive: &[u8], dest: &Path) -> Result<(), BundleError> {
    let bad = |e: std::io::Error| BundleError::NotAnArchive(e.to_string());
    let mut tar = Archive::new(GzDecoder::new(archive));
    fs::create_dir_all(dest)?;
    let mut total: u64 = 0;
    let mut count = 0usize;
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(BundleError::TooManyEntries);
        }
        let raw_path = entry.path().map_err(bad)?.into_owned();
        let shown = raw_path.display().to_string();
        let unsafe_entry = |reason| BundleError::UnsafeEntry { path: shown.clone(), reason };
        let rel = safe_relative(&raw_path).map_err(unsafe_entry)?;
        let kind = entry.header().entry_type();
        if rel.as_os_str().is_empty() {
            if kind.is_dir() {
                continue;
            }
            return Err(unsafe_entry("it has no name"));
        }
        let target = dest.join(&rel);
        match kind {
            EntryType::Directory => fs::create_dir_all(&target)?,
            EntryType::Regular | EntryType::Continuous => {
                total = total.saturating_add(entry.header().size().map_err(bad)?);
                if total > MAX_UNPACKED {
                    return Err(BundleError::TooLarge);
                }
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent)?;
                }
                let mut data = Vec::new();
                entry.by_ref().take(MAX_UNPACKED).read_to_end(&mut data).map_err(bad)?;
                fs::write(&target, &data)?;
                let executable = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
                set_mode(&target, if executable { 0o755 } else { 0o644 })?;
            }
            EntryType::Symlink | EntryType::Link => {
                let symlink = kind == EntryType::Symlink;
                let link = entry
                    .link_name()
                    .map_err(bad)?
                    .ok_or_else(|| unsafe_entry("it is a link without a target"))?
                    .into_owned();
                if !link_stays_inside(&rel, &link, symlink) {
                    return Err(unsafe_entry("it is a link that points outside the folder"));
                }
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent)?;
                }
                if symlink {
                    make_symlink(&link, &target)?;
                } else {
                    let source = dest.join(safe_relative(&link).map_err(unsafe_entry)?);
                    fs::copy(source, &target)?;
                }
            }
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink => {}
            _ => return Err(unsafe_entry("only files, folders and links are allowed")),
        }
    }
    if !dest.join(sedge_core::manifest::MANIFEST_FILE).is_file() {
        return Err(BundleError::NoManifest);
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(unix)]
fn make_symlink(link: &Path, at: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(link, at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::GzEncoder, Compression};

    enum E<'a> {
        File(&'a str, &'a [u8]),
        Link(&'a str, &'a str, EntryType),
        Fifo(&'a str),
    }

    fn archive(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        for e in entries {
            let mut h = tar::Header::new_gnu();
            let (path, data): (&str, &[u8]) = match e {
                E::File(p, d) => {
                    h.set_entry_type(EntryType::Regular);
                    h.set_size(d.len() as u64);
                    (p, d)
                }
                E::Link(p, target, kind) => {
                    h.set_entry_type(*kind);
                    h.set_size(0);
                    h.set_link_name(target).expect("link name");
                    (p, &[])
                }
                E::Fifo(p) => {
                    h.set_entry_type(EntryType::Fifo);
                    h.set_size(0);
                    (p, &[])
                }
            };
            h.set_mode(0o644);
            // Write the raw name so tests can forge names tar::Builder refuses.
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, data).expect("append");
        }
        b.into_inner().expect("finish").finish().expect("gzip")
    }

    const MANIFEST: E<'static> = E::File("sedge.toml", b"name = \"x\"");

    fn try_unpack(entries: &[E<'_>]) -> Result<(), BundleError> {
        let dir = tempfile::tempdir().expect("tempdir");
        unpack(&archive(entries), &dir.path().join("out"))
    }

    #[test]
    fn unpacks_a_normal_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let a = archive(&[
            MANIFEST,
            E::File("./lib/util.py", b"x = 1"),
            E::Link("lib/alias.py", "util.py", EntryType::Symlink),
        ]);
        unpack(&a, &out).expect("safe bundle");
        assert_eq!(fs::read(out.join("lib/util.py")).expect("file"), b"x = 1");
        assert_eq!(fs::read(out.join("lib/alias.py")).expect("link"), b"x = 1");
    }

    #[test]
    fn refuses_escapes() {
        let cases = [
            vec![MANIFEST, E::File("../evil.py", b"")],
            vec![MANIFEST, E::File("/etc/evil", b"")],
            vec![MANIFEST, E::File("a/../../evil", b"")],
            vec![MANIFEST, E::Link("l", "/etc/passwd", EntryType::Symlink)],
            vec![MANIFEST, E::Link("a/l", "../../x", EntryType::Symlink)],
            vec![MANIFEST, E::Link("l", "../x", EntryType::Link)],
            vec![MANIFEST, E::Fifo("pipe")],
        ];
        for entries in cases {
            match try_unpack(&entries) {
                Err(BundleError::UnsafeEntry { .. }) => {}
                other => panic!("expected an unsafe-entry error, got {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_garbage_and_missing_manifest() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(unpack(b"not gzip at all", &dir.path().join("a")), Err(BundleError::NotAnArchive(_))));
        assert!(matches!(try_unpack(&[E::File("main.py", b"")]), Err(BundleError::NoManifest)));
    }

    #[test]
    fn links_inside_are_fine() {
        assert!(link_stays_inside(Path::new("a/b/l"), Path::new("../c"), true));
        assert!(!link_stays_inside(Path::new("l"), Path::new("../c"), true));
        assert!(link_stays_inside(Path::new("a/l"), Path::new("a/c"), false));
    }
}

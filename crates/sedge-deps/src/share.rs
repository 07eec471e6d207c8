//! One copy of each installed file, whatever number of environments hold
//! it: after an install, every file whose content (and mode) is already in
//! the node's file store becomes a hard link to it, and new ones are added.
//! Ten functions with numpy then hold its files once on disk, and their
//! workers map the same pages of its libraries.
//!
//! Environments are never written after they are built (workers see them
//! read-only), so sharing inodes between them is safe. A file only the store
//! still links to belongs to no environment and goes at [`sweep`].

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Shared {
    /// Files that were already in the store.
    pub files: u64,
    pub bytes: u64,
}

/// Links every regular file under `dir` with the store's copy of it.
pub fn share_files(dir: &Path, store: &Path) -> std::io::Result<Shared> {
    std::fs::create_dir_all(store)?;
    let mut shared = Shared::default();
    let mut pending = vec![dir.to_owned()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() && !share_one(&entry.path(), store, &mut shared)? {
                // Another file system: nothing can be linked across it.
                return Ok(shared);
            }
        }
    }
    Ok(shared)
}

/// False when the store cannot be linked to from here.
fn share_one(path: &Path, store: &Path, shared: &mut Shared) -> std::io::Result<bool> {
    let meta = std::fs::metadata(path)?;
    if meta.len() == 0 {
        return Ok(true);
    }
    let mode = meta.permissions().mode() & 0o7777;
    let name = format!("{}-{mode:o}", digest(path)?);
    let kept = store.join(&name);
    match std::fs::metadata(&kept) {
        Ok(k) if k.ino() == meta.ino() && k.dev() == meta.dev() => Ok(true),
        Ok(_) => {
            // Replace the file by a link in one step: a new name, then rename.
            let link = path.with_file_name(format!(".sedge-link-{name}"));
            match std::fs::hard_link(&kept, &link) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => return Ok(false),
                Err(e) => return Err(e),
            }
            std::fs::rename(&link, path)?;
            shared.files += 1;
            shared.bytes += meta.len();
            Ok(true)
        }
        Err(_) => match std::fs::hard_link(path, &kept) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => Ok(false),
            Err(e) => Err(e),
        },
    }
}

fn digest(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Removes the store's files no environment links to; returns how many.
pub fn sweep(store: &Path) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(store) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        if entry.metadata()?.nlink() == 1 {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str, mode: u32) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn ino(path: &Path) -> u64 {
        std::fs::metadata(path).expect("stat").ino()
    }

    #[test]
    fn equal_files_end_as_one_inode_and_unused_ones_are_swept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (a, b, store) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("store"));
        write(&a.join("pkg/lib.so"), "machine code", 0o755);
        write(&a.join("pkg/__init__.py"), "x = 1", 0o644);
        write(&b.join("pkg/lib.so"), "machine code", 0o755);
        write(&b.join("pkg/__init__.py"), "x = 2", 0o644);
        write(&b.join("bin/tool"), "x = 1", 0o755);
        assert_eq!(share_files(&a, &store).expect("share a"), Shared::default());
        let got = share_files(&b, &store).expect("share b");
        assert_eq!(got, Shared { files: 1, bytes: 12 }, "only lib.so is the same content and mode");
        assert_eq!(ino(&a.join("pkg/lib.so")), ino(&b.join("pkg/lib.so")));
        assert_ne!(ino(&a.join("pkg/__init__.py")), ino(&b.join("bin/tool")), "same bytes, other mode");
        assert_eq!(std::fs::read_to_string(b.join("pkg/lib.so")).expect("read"), "machine code");

        std::fs::remove_dir_all(&a).expect("rm a");
        // a's __init__.py went with a; lib.so is still b's.
        assert_eq!(sweep(&store).expect("sweep"), 1);
        std::fs::remove_dir_all(&b).expect("rm b");
        assert_eq!(sweep(&store).expect("sweep"), 3);
        assert_eq!(std::fs::read_dir(&store).expect("store").count(), 0);
    }

    #[test]
    fn sharing_twice_changes_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (a, store) = (tmp.path().join("a"), tmp.path().join("store"));
        write(&a.join("f"), "data", 0o644);
        share_files(&a, &store).expect("share");
        assert_eq!(share_files(&a, &store).expect("again"), Shared::default());
    }
}

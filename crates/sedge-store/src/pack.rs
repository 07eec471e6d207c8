//! Packing a function folder into the tar.gz bundle a node accepts (the
//! inverse of [`crate::bundle::unpack`]), for the CLI and the benchmark.

use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use sedge_core::manifest::MANIFEST_FILE;
use sedge_core::{FunctionSpec, ManifestError};

/// Folders that never belong in a bundle: version control and caches the
/// runtimes rebuild.
const SKIP: &[&str] = &[".git", "__pycache__", ".pytest_cache", ".mypy_cache"];

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    #[error("packing {path}: {source}")]
    Pack { path: PathBuf, source: std::io::Error },
}

/// Reads and checks the folder's manifest, then packs the folder.
pub fn pack(dir: &Path) -> Result<(FunctionSpec, Vec<u8>), PackError> {
    let manifest = dir.join(MANIFEST_FILE);
    let text =
        std::fs::read_to_string(&manifest).map_err(|source| PackError::Read { path: manifest.clone(), source })?;
    let spec = FunctionSpec::parse(&manifest.display().to_string(), &text)?;
    let packing = |source| PackError::Pack { path: dir.to_owned(), source };
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    tar.follow_symlinks(false);
    add_dir(&mut tar, dir, Path::new(""))?;
    let archive = tar.into_inner().map_err(packing)?.finish().map_err(packing)?;
    Ok((spec, archive))
}

fn add_dir(tar: &mut tar::Builder<GzEncoder<Vec<u8>>>, root: &Path, rel: &Path) -> Result<(), PackError> {
    let dir = root.join(rel);
    let read = |source| PackError::Read { path: dir.clone(), source };
    let mut entries: Vec<_> = std::fs::read_dir(&dir).map_err(read)?.collect::<std::io::Result<_>>().map_err(read)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if SKIP.iter().any(|s| name == *s) {
            continue;
        }
        let path = rel.join(&name);
        let packing = |source| PackError::Pack { path: root.join(&path), source };
        let kind = entry.file_type().map_err(packing)?;
        if kind.is_dir() {
            tar.append_dir(&path, entry.path()).map_err(packing)?;
            add_dir(tar, root, &path)?;
        } else {
            tar.append_path_with_name(entry.path(), &path).map_err(packing)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_then_unpack_round_trips_and_skips_caches() {
        let src = tempfile::tempdir().expect("tempdir");
        std::fs::write(src.path().join("sedge.toml"), "name = \"f\"\nruntime = \"exec\"\nhandler = \"cat\"\n")
            .expect("write");
        std::fs::create_dir_all(src.path().join("lib/__pycache__")).expect("mkdir");
        std::fs::write(src.path().join("lib/a.py"), "x = 1").expect("write");
        std::fs::write(src.path().join("lib/__pycache__/a.pyc"), "junk").expect("write");
        let (spec, archive) = pack(src.path()).expect("pack");
        assert_eq!(spec.name.as_str(), "f");
        let out = tempfile::tempdir().expect("tempdir");
        crate::bundle::unpack(&archive[..], &out.path().join("u"), &Default::default()).expect("unpack");
        assert_eq!(std::fs::read_to_string(out.path().join("u/lib/a.py")).expect("read"), "x = 1");
        assert!(!out.path().join("u/lib/__pycache__").exists());
    }

    #[test]
    fn a_folder_without_a_manifest_is_named() {
        let src = tempfile::tempdir().expect("tempdir");
        let err = pack(src.path()).expect_err("no manifest").to_string();
        assert!(err.contains("sedge.toml"), "{err}");
    }
}

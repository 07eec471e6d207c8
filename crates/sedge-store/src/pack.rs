//! Packing a function folder into the tar.gz bundle a node accepts (the
//! inverse of [`crate::bundle::unpack`]), for the CLI and the benchmark.
//!
//! What the node rebuilds or never needs stays out: version control,
//! caches, virtual environments, and `node_modules` beside a `package.json`
//! (the node installs from it). A `.sedgeignore` in the folder adds
//! gitignore-style patterns; `!pattern` takes a default back.

use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use sedge_core::manifest::MANIFEST_FILE;
use sedge_core::{FunctionSpec, ManifestError};

/// The folder's own list of paths to leave out, gitignore-style.
pub const IGNORE_FILE: &str = ".sedgeignore";

/// Left out unless the ignore file takes them back: version control,
/// caches the runtimes rebuild, local virtual environments.
const IGNORED: &[&str] =
    &[".git/", "__pycache__/", "*.pyc", ".pytest_cache/", ".mypy_cache/", ".venv/", "venv/", ".DS_Store"];

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    #[error("packing {path}: {source}")]
    Pack { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Ignore { path: PathBuf, message: String },
}

/// Reads and checks the folder's manifest, then packs the folder.
pub fn pack(dir: &Path) -> Result<(FunctionSpec, Vec<u8>), PackError> {
    let manifest = dir.join(MANIFEST_FILE);
    let text =
        std::fs::read_to_string(&manifest).map_err(|source| PackError::Read { path: manifest.clone(), source })?;
    let spec = FunctionSpec::parse(&manifest.display().to_string(), &text)?;
    let packing = |source| PackError::Pack { path: dir.to_owned(), source };
    let ignored = ignore_rules(dir)?;
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    tar.follow_symlinks(false);
    add_dir(&mut tar, dir, Path::new(""), &ignored)?;
    let archive = tar.into_inner().map_err(packing)?.finish().map_err(packing)?;
    Ok((spec, archive))
}

/// The defaults, then the folder's `.sedgeignore`, which may re-include.
fn ignore_rules(dir: &Path) -> Result<Gitignore, PackError> {
    let file = dir.join(IGNORE_FILE);
    let bad = |message: String| PackError::Ignore { path: file.clone(), message };
    let mut rules = GitignoreBuilder::new(dir);
    let mut defaults: Vec<&str> = IGNORED.to_vec();
    if dir.join("package.json").is_file() {
        defaults.push("/node_modules/");
    }
    for pattern in defaults {
        rules.add_line(None, pattern).map_err(|e| bad(e.to_string()))?;
    }
    if file.is_file() {
        if let Some(e) = rules.add(&file) {
            return Err(bad(e.to_string()));
        }
    }
    rules.build().map_err(|e| bad(e.to_string()))
}

fn add_dir(
    tar: &mut tar::Builder<GzEncoder<Vec<u8>>>,
    root: &Path,
    rel: &Path,
    ignored: &Gitignore,
) -> Result<(), PackError> {
    let dir = root.join(rel);
    let read = |source| PackError::Read { path: dir.clone(), source };
    let mut entries: Vec<_> = std::fs::read_dir(&dir).map_err(read)?.collect::<std::io::Result<_>>().map_err(read)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let path = rel.join(&name);
        let packing = |source| PackError::Pack { path: root.join(&path), source };
        let kind = entry.file_type().map_err(packing)?;
        if ignored.matched(root.join(&path), kind.is_dir()).is_ignore() {
            continue;
        }
        if kind.is_dir() {
            tar.append_dir(&path, entry.path()).map_err(packing)?;
            add_dir(tar, root, &path, ignored)?;
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

    fn packed_paths(dir: &Path) -> Vec<String> {
        let (_, archive) = pack(dir).expect("pack");
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]));
        let mut paths: Vec<String> = tar
            .entries()
            .expect("entries")
            .map(|e| e.expect("entry").path().expect("path").to_string_lossy().trim_end_matches('/').to_owned())
            .collect();
        paths.sort();
        paths
    }

    fn folder(files: &[&str]) -> tempfile::TempDir {
        let src = tempfile::tempdir().expect("tempdir");
        std::fs::write(src.path().join("sedge.toml"), "name = \"f\"\nruntime = \"node\"\nhandler = \"h.main\"\n")
            .expect("write");
        for f in files {
            let path = src.path().join(f);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, "x").expect("write");
        }
        src
    }

    #[test]
    fn node_modules_stay_out_beside_a_package_json_only() {
        let with = folder(&["package.json", "h.js", "node_modules/a/index.js", "lib/node_modules/b.js"]);
        assert_eq!(
            packed_paths(with.path()),
            ["h.js", "lib", "lib/node_modules", "lib/node_modules/b.js", "package.json", "sedge.toml"]
        );
        let without = folder(&["h.js", "node_modules/a/index.js"]);
        assert!(packed_paths(without.path()).contains(&"node_modules/a/index.js".to_owned()));
    }

    #[test]
    fn sedgeignore_adds_patterns_and_takes_defaults_back() {
        let src = folder(&["h.js", "data/big.bin", "data/keep.txt", ".venv/bin/python", "notes.md"]);
        std::fs::write(src.path().join(IGNORE_FILE), "# large files\ndata/*\n!data/keep.txt\n*.md\n!.venv/\n")
            .expect("write");
        assert_eq!(
            packed_paths(src.path()),
            [".sedgeignore", ".venv", ".venv/bin", ".venv/bin/python", "data", "data/keep.txt", "h.js", "sedge.toml"]
        );
    }

    #[test]
    fn a_folder_without_a_manifest_is_named() {
        let src = tempfile::tempdir().expect("tempdir");
        let err = pack(src.path()).expect_err("no manifest").to_string();
        assert!(err.contains("sedge.toml"), "{err}");
    }
}

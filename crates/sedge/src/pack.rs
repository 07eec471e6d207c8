//! Packs a function folder into the tar.gz bundle a node accepts.

use std::path::Path;

use anyhow::{Context, Result};
use flate2::write::GzEncoder;
use flate2::Compression;
use sedge_core::manifest::MANIFEST_FILE;
use sedge_core::FunctionSpec;

/// Folders that never belong in a bundle: version control and caches the
/// runtimes rebuild.
const SKIP: &[&str] = &[".git", "__pycache__", ".pytest_cache", ".mypy_cache"];

/// Reads and checks the folder's manifest, then packs the folder.
pub fn pack(dir: &Path) -> Result<(FunctionSpec, Vec<u8>)> {
    let manifest = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest).with_context(|| format!("cannot read {}", manifest.display()))?;
    let spec = FunctionSpec::parse(&manifest.display().to_string(), &text)?;
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    tar.follow_symlinks(false);
    add_dir(&mut tar, dir, Path::new(""))?;
    let archive = tar.into_inner().context("packing")?.finish().context("compressing")?;
    Ok((spec, archive))
}

fn add_dir(tar: &mut tar::Builder<GzEncoder<Vec<u8>>>, root: &Path, rel: &Path) -> Result<()> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot read {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if SKIP.iter().any(|s| name == *s) {
            continue;
        }
        let path = rel.join(&name);
        let kind = entry.file_type()?;
        if kind.is_dir() {
            tar.append_dir(&path, entry.path())?;
            add_dir(tar, root, &path)?;
        } else {
            tar.append_path_with_name(entry.path(), &path).with_context(|| format!("packing {}", path.display()))?;
        }
    }
    Ok(())
}

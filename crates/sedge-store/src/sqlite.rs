//! The registry in SQLite: one row per function, one per bundle archive.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use sedge_core::manifest::MANIFEST_FILE;
use sedge_core::{FunctionName, FunctionSpec, ManifestError};
use sha2::{Digest, Sha256};

use crate::bundle::{self, BundleError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data directory {0} is in use by another sedge node")]
    Locked(PathBuf),
    #[error("data directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    #[error("bundle is for function {found:?} (its sedge.toml says so) but was uploaded as {expected:?}")]
    NameMismatch { expected: String, found: String },
    #[error("stored function {name} is unreadable: {problem}")]
    Corrupt { name: String, problem: String },
}

/// A deployed function as the registry knows it.
#[derive(Debug, Clone)]
pub struct FunctionRecord {
    pub spec: FunctionSpec,
    /// `sha256:<hex>` of the uploaded archive.
    pub digest: String,
    /// The unpacked folder the workers run in.
    pub dir: PathBuf,
    pub created_at: SystemTime,
}

/// A checked, unpacked bundle not yet registered: [`Store::commit`] makes it
/// the function's current version, dropping it leaves the registry unchanged.
#[derive(Debug)]
pub struct StagedBundle {
    pub record: FunctionRecord,
    archive: Vec<u8>,
}

pub struct Store {
    conn: Mutex<Connection>,
    bundles: PathBuf,
    _lock: File,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bundles (
    digest  TEXT PRIMARY KEY,
    archive BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS functions (
    name          TEXT PRIMARY KEY,
    digest        TEXT NOT NULL REFERENCES bundles(digest),
    manifest      TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
";

impl Store {
    /// Opens (creating if needed) the store under `dir`, taking its lock.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let io = |source| StoreError::Dir { path: dir.to_owned(), source };
        let bundles = dir.join("bundles");
        fs::create_dir_all(&bundles).map_err(io)?;
        let lock = File::create(dir.join("lock")).map_err(io)?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked(dir.to_owned()));
        }
        let conn = Connection::open(dir.join("sedge.db"))?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON;")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn: Mutex::new(conn), bundles, _lock: lock })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (transactions roll back), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks and unpacks an upload for function `name`.
    pub fn stage(&self, name: &FunctionName, archive: Vec<u8>) -> Result<StagedBundle, StoreError> {
        let digest = format!("sha256:{:x}", Sha256::digest(&archive));
        let dir = self.unpacked(&digest, &archive)?;
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = fs::read_to_string(&manifest_path).map_err(BundleError::Io)?;
        let spec = FunctionSpec::parse(MANIFEST_FILE, &text)?;
        if spec.name != *name {
            return Err(StoreError::NameMismatch { expected: name.to_string(), found: spec.name.to_string() });
        }
        let record = FunctionRecord { spec, digest, dir, created_at: SystemTime::now() };
        Ok(StagedBundle { record, archive })
    }

    /// Makes a staged bundle the function's current version, in one transaction.
    pub fn commit(&self, staged: StagedBundle) -> Result<FunctionRecord, StoreError> {
        let r = &staged.record;
        let text = fs::read_to_string(r.dir.join(MANIFEST_FILE)).map_err(BundleError::Io)?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO bundles (digest, archive) VALUES (?1, ?2)",
            params![r.digest, staged.archive],
        )?;
        tx.execute(
            "INSERT INTO functions (name, digest, manifest, created_at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET digest = excluded.digest, manifest = excluded.manifest,
                                             created_at_ms = excluded.created_at_ms",
            params![r.spec.name.as_str(), r.digest, text, millis(r.created_at)],
        )?;
        tx.execute("DELETE FROM bundles WHERE digest NOT IN (SELECT digest FROM functions)", [])?;
        tx.commit()?;
        Ok(staged.record)
    }

    /// Every deployed function, by name; re-unpacks any bundle whose folder went missing.
    pub fn list(&self) -> Result<Vec<FunctionRecord>, StoreError> {
        let rows: Vec<(String, String, String, i64)> = {
            let conn = self.conn();
            let mut stmt = conn.prepare("SELECT name, digest, manifest, created_at_ms FROM functions ORDER BY name")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        rows.into_iter().map(|(name, digest, manifest, ms)| self.record(name, digest, &manifest, ms)).collect()
    }

    pub fn remove(&self, name: &FunctionName) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute("DELETE FROM functions WHERE name = ?1", params![name.as_str()])?;
        tx.execute("DELETE FROM bundles WHERE digest NOT IN (SELECT digest FROM functions)", [])?;
        tx.commit()?;
        Ok(n > 0)
    }

    fn record(&self, name: String, digest: String, manifest: &str, ms: i64) -> Result<FunctionRecord, StoreError> {
        let corrupt = |problem: String| StoreError::Corrupt { name: name.clone(), problem };
        let spec = FunctionSpec::parse(MANIFEST_FILE, manifest).map_err(|e| corrupt(e.to_string()))?;
        let dir = self.bundles.join(folder_name(&digest));
        if !dir.join(MANIFEST_FILE).is_file() {
            let archive: Option<Vec<u8>> = self
                .conn()
                .query_row("SELECT archive FROM bundles WHERE digest = ?1", params![digest], |r| r.get(0))
                .optional()?;
            let archive = archive.ok_or_else(|| corrupt(format!("bundle {digest} is missing")))?;
            self.unpacked(&digest, &archive)?;
        }
        let created_at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        Ok(FunctionRecord { spec, digest, dir, created_at })
    }

    /// Deletes unpacked folders no function uses (older versions, failed
    /// deploys, interrupted unpacks). Call when no worker runs, at start-up:
    /// a draining old version may still be reading its folder.
    pub fn sweep(&self) -> Result<usize, StoreError> {
        let keep: std::collections::HashSet<String> = {
            let conn = self.conn();
            let mut stmt = conn.prepare("SELECT digest FROM functions")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.map(|d| d.map(|d| folder_name(&d))).collect::<Result<_, _>>()?
        };
        let io = |source| StoreError::Dir { path: self.bundles.clone(), source };
        let mut removed = 0;
        for entry in fs::read_dir(&self.bundles).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                fs::remove_dir_all(entry.path()).map_err(io)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The unpacked folder of a bundle, unpacking it first when needed. The
    /// folder appears whole or not at all (unpack beside it, then rename).
    fn unpacked(&self, digest: &str, archive: &[u8]) -> Result<PathBuf, StoreError> {
        let dir = self.bundles.join(folder_name(digest));
        if dir.join(MANIFEST_FILE).is_file() {
            return Ok(dir);
        }
        let tmp = self.bundles.join(format!(".tmp-{}-{}", folder_name(digest), unique()));
        let result = bundle::unpack(archive, &tmp).and_then(|()| {
            if dir.exists() {
                fs::remove_dir_all(&dir)?;
            }
            fs::rename(&tmp, &dir)?;
            Ok(())
        });
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result?;
        Ok(dir)
    }
}

fn folder_name(digest: &str) -> String {
    digest.replace(':', "-")
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::GzEncoder, Compression};

    fn bundle(manifest: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        let mut h = tar::Header::new_gnu();
        h.set_size(manifest.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "sedge.toml", manifest.as_bytes()).expect("append");
        b.into_inner().expect("tar").finish().expect("gzip")
    }

    fn manifest(name: &str, handler: &str) -> String {
        format!("name = \"{name}\"\nruntime = \"python\"\nhandler = \"{handler}\"\n")
    }

    fn name(s: &str) -> FunctionName {
        FunctionName::parse(s).expect("valid name")
    }

    #[test]
    fn deploy_survives_reopen_and_lost_folders() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            let staged = store.stage(&name("f"), bundle(&manifest("f", "a.b"))).expect("stage");
            store.commit(staged).expect("commit");
        }
        fs::remove_dir_all(dir.path().join("bundles")).expect("rm");
        let store = Store::open(dir.path()).expect("reopen");
        let list = store.list().expect("list");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].spec.handler, "a.b");
        assert!(list[0].dir.join("sedge.toml").is_file());
    }

    #[test]
    fn second_open_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = Store::open(dir.path()).expect("open");
        assert!(matches!(Store::open(dir.path()), Err(StoreError::Locked(_))));
    }

    #[test]
    fn staging_without_commit_changes_nothing_and_redeploy_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store.commit(store.stage(&name("f"), bundle(&manifest("f", "a.b"))).expect("stage")).expect("commit");
        let _dropped = store.stage(&name("f"), bundle(&manifest("f", "c.d"))).expect("stage");
        assert_eq!(store.list().expect("list")[0].spec.handler, "a.b");
        assert!(matches!(store.stage(&name("f"), bundle(&manifest("g", "a.b"))), Err(StoreError::NameMismatch { .. })));
        assert!(matches!(store.stage(&name("f"), bundle("name = 1")), Err(StoreError::Manifest(_))));
        store.commit(store.stage(&name("f"), bundle(&manifest("f", "c.d"))).expect("stage")).expect("commit");
        assert_eq!(store.list().expect("list")[0].spec.handler, "c.d");
        let dirs = || fs::read_dir(dir.path().join("bundles")).expect("bundles").count();
        let before = dirs();
        assert!(before >= 3, "old version, refused uploads and current version are all unpacked");
        assert_eq!(store.sweep().expect("sweep"), before - 1);
        assert_eq!(dirs(), 1);
        assert!(store.list().expect("list")[0].dir.is_dir());
        assert!(store.remove(&name("f")).expect("remove"));
        assert!(!store.remove(&name("f")).expect("remove"));
        assert!(store.list().expect("list").is_empty());
    }
}

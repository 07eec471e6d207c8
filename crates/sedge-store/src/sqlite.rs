//! The registry in SQLite: one row per function, one per bundle archive.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, MAIN_DB};
use sedge_core::manifest::MANIFEST_FILE;
use sedge_core::{FunctionName, FunctionSpec, ManifestError};
use sha2::{Digest, Sha256};

use tempfile::{NamedTempFile, TempPath};

use crate::bundle::{self, BundleError, UnpackLimits};

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
/// the function's current version; [`Store::discard`] (or dropping it, which
/// leaves the folder for the next sweep) leaves the registry unchanged. The
/// uploaded archive file is removed when it is dropped.
#[derive(Debug)]
pub struct StagedBundle {
    pub record: FunctionRecord,
    archive: TempPath,
}

impl StagedBundle {
    /// The uploaded archive, as received (a cluster stores it for the other nodes).
    pub fn archive(&self) -> &Path {
        &self.archive
    }
}

pub struct Store {
    conn: Mutex<Connection>,
    bundles: PathBuf,
    uploads: PathBuf,
    limits: UnpackLimits,
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
    /// Uploads a previous run left half-received are removed.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let io = |source| StoreError::Dir { path: dir.to_owned(), source };
        let bundles = dir.join("bundles");
        let uploads = dir.join("uploads");
        fs::create_dir_all(&bundles).map_err(io)?;
        let lock = File::create(dir.join("lock")).map_err(io)?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked(dir.to_owned()));
        }
        if uploads.exists() {
            fs::remove_dir_all(&uploads).map_err(io)?;
        }
        fs::create_dir_all(&uploads).map_err(io)?;
        let conn = Connection::open(dir.join("sedge.db"))?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON;")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn: Mutex::new(conn), bundles, uploads, limits: UnpackLimits::default(), _lock: lock })
    }

    /// Replaces the default bounds on what one bundle may unpack to.
    pub fn with_limits(mut self, limits: UnpackLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &UnpackLimits {
        &self.limits
    }

    /// A new empty file in the store's upload folder (on the same disk as
    /// the bundles), removed when dropped unless staged.
    pub fn upload_file(&self) -> Result<NamedTempFile, StoreError> {
        tempfile::Builder::new()
            .prefix("upload-")
            .tempfile_in(&self.uploads)
            .map_err(|source| StoreError::Dir { path: self.uploads.clone(), source })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (transactions roll back), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks and unpacks an upload held in memory (the CLI's `--deploy`).
    pub fn stage_bytes(&self, name: &FunctionName, archive: &[u8]) -> Result<StagedBundle, StoreError> {
        let mut file = self.upload_file()?;
        file.write_all(archive).map_err(BundleError::Io)?;
        self.stage(name, file.into_temp_path())
    }

    /// Checks and unpacks the upload at `archive` for function `name`. On
    /// error nothing of it is left on disk.
    pub fn stage(&self, name: &FunctionName, archive: TempPath) -> Result<StagedBundle, StoreError> {
        let digest = {
            let mut file = File::open(&archive).map_err(BundleError::Io)?;
            let mut hash = Sha256::new();
            io::copy(&mut file, &mut hash).map_err(BundleError::Io)?;
            format!("sha256:{:x}", hash.finalize())
        };
        let existed = self.bundles.join(folder_name(&digest)).join(MANIFEST_FILE).is_file();
        let file = File::open(&archive).map_err(BundleError::Io)?;
        let dir = self.unpacked(&digest, file)?;
        let checked = self.read_spec(&dir, name);
        match checked {
            Ok(spec) => {
                let record = FunctionRecord { spec, digest, dir, created_at: SystemTime::now() };
                Ok(StagedBundle { record, archive })
            }
            Err(e) => {
                if !existed {
                    let _ = fs::remove_dir_all(&dir);
                }
                Err(e)
            }
        }
    }

    fn read_spec(&self, dir: &Path, name: &FunctionName) -> Result<FunctionSpec, StoreError> {
        let text = fs::read_to_string(dir.join(MANIFEST_FILE)).map_err(BundleError::Io)?;
        let spec = FunctionSpec::parse(MANIFEST_FILE, &text)?;
        if spec.name != *name {
            return Err(StoreError::NameMismatch { expected: name.to_string(), found: spec.name.to_string() });
        }
        Ok(spec)
    }

    /// Makes a staged bundle the function's current version, in one
    /// transaction. The archive is streamed into the database, never held
    /// whole in memory.
    pub fn commit(&self, staged: StagedBundle) -> Result<FunctionRecord, StoreError> {
        let r = &staged.record;
        let text = fs::read_to_string(r.dir.join(MANIFEST_FILE)).map_err(BundleError::Io)?;
        let mut file = File::open(&staged.archive).map_err(BundleError::Io)?;
        let size = file.metadata().map_err(BundleError::Io)?.len();
        let size = i64::try_from(size).map_err(|_| BundleError::TooLarge("archive too large to store".into()))?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO bundles (digest, archive) VALUES (?1, zeroblob(?2))",
            params![r.digest, size],
        )?;
        if inserted == 1 {
            let row = tx.last_insert_rowid();
            let mut blob = tx.blob_open(MAIN_DB, "bundles", "archive", row, false)?;
            io::copy(&mut file, &mut blob).map_err(BundleError::Io)?;
        }
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

    /// Drops a staged bundle that will not be committed: its archive and,
    /// unless a deployed function uses the same bundle, its folder.
    pub fn discard(&self, staged: StagedBundle) -> Result<(), StoreError> {
        let dir = staged.record.dir.clone();
        drop(staged);
        self.release(&dir).map(|_| ())
    }

    /// Removes the unpacked folder `dir` if no deployed function uses it
    /// (an old version once its workers are gone). Returns whether it did.
    /// The caller keeps deploys out meanwhile, so no staging reuses it.
    pub fn release(&self, dir: &Path) -> Result<bool, StoreError> {
        let Some(folder) = dir.file_name().map(|f| f.to_string_lossy().into_owned()) else { return Ok(false) };
        if dir.parent() != Some(self.bundles.as_path()) || !dir.exists() {
            return Ok(false);
        }
        if self.used_folders()?.contains(&folder) {
            return Ok(false);
        }
        fs::remove_dir_all(dir).map_err(|source| StoreError::Dir { path: dir.to_owned(), source })?;
        Ok(true)
    }

    fn used_folders(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT digest FROM functions")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.map(|d| d.map(|d| folder_name(&d))).collect::<Result<_, _>>()?)
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
            // Streamed from the database: the archive is never whole in memory.
            let conn = self.conn();
            let row: Option<i64> = conn
                .query_row("SELECT rowid FROM bundles WHERE digest = ?1", params![digest], |r| r.get(0))
                .optional()?;
            let row = row.ok_or_else(|| corrupt(format!("bundle {digest} is missing")))?;
            let blob = conn.blob_open(MAIN_DB, "bundles", "archive", row, true)?;
            // The archive passed the checks once; limits lowered since then
            // must not keep an accepted function from coming back. Every
            // path check still applies.
            self.unpacked_within(&digest, blob, &self.limits.at_least(&UnpackLimits::default()))?;
        }
        let created_at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        Ok(FunctionRecord { spec, digest, dir, created_at })
    }

    /// Deletes unpacked folders no function uses (older versions, failed
    /// deploys, interrupted unpacks). Call when no worker runs, at start-up:
    /// a draining old version may still be reading its folder.
    pub fn sweep(&self) -> Result<usize, StoreError> {
        let keep = self.used_folders()?;
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
    fn unpacked(&self, digest: &str, archive: impl Read) -> Result<PathBuf, StoreError> {
        self.unpacked_within(digest, archive, &self.limits)
    }

    fn unpacked_within(&self, digest: &str, archive: impl Read, limits: &UnpackLimits) -> Result<PathBuf, StoreError> {
        let dir = self.bundles.join(folder_name(digest));
        if dir.join(MANIFEST_FILE).is_file() {
            return Ok(dir);
        }
        let tmp = self.bundles.join(format!(".tmp-{}-{}", folder_name(digest), unique()));
        let result = bundle::unpack(archive, &tmp, limits).and_then(|()| {
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
            let staged = store.stage_bytes(&name("f"), &bundle(&manifest("f", "a.b"))).expect("stage");
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
        store.commit(store.stage_bytes(&name("f"), &bundle(&manifest("f", "a.b"))).expect("stage")).expect("commit");
        let _dropped = store.stage_bytes(&name("f"), &bundle(&manifest("f", "c.d"))).expect("stage");
        assert_eq!(store.list().expect("list")[0].spec.handler, "a.b");
        assert!(matches!(
            store.stage_bytes(&name("f"), &bundle(&manifest("g", "a.b"))),
            Err(StoreError::NameMismatch { .. })
        ));
        assert!(matches!(store.stage_bytes(&name("f"), &bundle("name = 1")), Err(StoreError::Manifest(_))));
        store.commit(store.stage_bytes(&name("f"), &bundle(&manifest("f", "c.d"))).expect("stage")).expect("commit");
        assert_eq!(store.list().expect("list")[0].spec.handler, "c.d");
        let dirs = || fs::read_dir(dir.path().join("bundles")).expect("bundles").count();
        assert_eq!(dirs(), 2, "refused uploads leave no folder; the old version waits for its workers");
        assert_eq!(store.sweep().expect("sweep"), 1);
        assert_eq!(dirs(), 1);
        assert!(store.list().expect("list")[0].dir.is_dir());
        assert!(store.remove(&name("f")).expect("remove"));
        assert!(!store.remove(&name("f")).expect("remove"));
        assert!(store.list().expect("list").is_empty());
    }

    #[test]
    fn release_and_discard_remove_only_unused_folders() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let v1 =
            store.commit(store.stage_bytes(&name("f"), &bundle(&manifest("f", "a.b"))).expect("stage")).expect("v1");
        assert!(!store.release(&v1.dir).expect("release"), "v1 serves");
        let same = store.stage_bytes(&name("f"), &bundle(&manifest("f", "a.b"))).expect("stage");
        store.discard(same).expect("discard");
        assert!(v1.dir.is_dir(), "discarding a copy of the serving bundle keeps its folder");
        let v2 = store.stage_bytes(&name("f"), &bundle(&manifest("f", "c.d"))).expect("stage");
        let v2_dir = v2.record.dir.clone();
        store.discard(v2).expect("discard");
        assert!(!v2_dir.exists());
        store.commit(store.stage_bytes(&name("f"), &bundle(&manifest("f", "c.d"))).expect("stage")).expect("v2");
        assert!(store.release(&v1.dir).expect("release"));
        assert!(!v1.dir.exists());
        assert_eq!(fs::read_dir(dir.path().join("uploads")).expect("uploads").count(), 0);
    }

    #[test]
    fn leftover_uploads_are_removed_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            store.upload_file().expect("upload").keep().expect("keep");
        }
        assert_eq!(fs::read_dir(dir.path().join("uploads")).expect("uploads").count(), 1);
        let _store = Store::open(dir.path()).expect("reopen");
        assert_eq!(fs::read_dir(dir.path().join("uploads")).expect("uploads").count(), 0);
    }
}

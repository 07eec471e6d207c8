//! The node's secrets on disk: the admin password, the values of the
//! secrets functions ask for (`secrets = [...]` in sedge.toml), and the
//! invoke tokens of functions that require one.
//!
//! Everything lives under `DATA/secrets/` in files of mode 0600 inside
//! folders of mode 0700, written to a temporary file and renamed so a crash
//! never leaves half a value. Values are never logged or shown by
//! `describe`; only their names are listed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use sedge_core::{FunctionName, SecretName};

/// Largest secret value accepted (Kubernetes, and so OpenFaaS, allow 1 MiB).
pub const MAX_SECRET: usize = 1024 * 1024;
/// The user name the admin password belongs to (faas-cli's default).
pub const ADMIN_USER: &str = "admin";

/// The `Authorization` value for the admin password, HTTP Basic as
/// faas-cli sends it.
pub fn admin_basic_auth(password: &str) -> String {
    let pair = format!("{ADMIN_USER}:{password}");
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret {0:?} already exists: update it instead")]
    Exists(String),
    #[error("secret {0:?} does not exist")]
    NotFound(String),
    #[error("secret {name:?} is {size} bytes, over the limit of {MAX_SECRET} bytes")]
    TooLarge { name: String, size: usize },
    #[error("the admin password in {0} is empty")]
    EmptyPassword(PathBuf),
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("the system's random source failed: {0}")]
    Random(String),
}

/// Where the admin password came from, for the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordOrigin {
    /// Generated at this start and written to the file.
    Generated(PathBuf),
    /// Read from the file a previous start generated.
    Stored(PathBuf),
}

pub struct SecretStore {
    root: PathBuf,
    /// The group that may read functions' secret files (sandboxed workers
    /// run as another user than the node); `None`: only the node's user.
    reader_gid: Option<u32>,
}

/// A fresh random credential: 32 bytes from the OS, URL-safe base64.
pub fn random_token() -> Result<String, SecretError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| SecretError::Random(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

impl SecretStore {
    /// Opens (creating) `root`, tightening its mode so only the node's user can enter it.
    pub fn open(root: &Path) -> Result<Self, SecretError> {
        let store = Self { root: root.to_owned(), reader_gid: None };
        for dir in [store.root.clone(), store.values_dir(), store.tokens_dir(), store.mounts_dir()] {
            private_dir(&dir)?;
        }
        Ok(store)
    }

    /// Gives functions' secret files to group `gid` (read-only), so workers
    /// running as that group can read their own.
    pub fn with_reader_group(mut self, gid: Option<u32>) -> Self {
        self.reader_gid = gid;
        self
    }

    pub fn admin_password_path(&self) -> PathBuf {
        self.root.join("admin-password")
    }

    /// The admin password: read from the file, or generated and stored there on first start.
    pub fn admin_password(&self) -> Result<(String, PasswordOrigin), SecretError> {
        let path = self.admin_password_path();
        match fs::read_to_string(&path) {
            Ok(text) => {
                let password = text.trim().to_owned();
                if password.is_empty() {
                    return Err(SecretError::EmptyPassword(path));
                }
                Ok((password, PasswordOrigin::Stored(path)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let password = random_token()?;
                write_private(&path, password.as_bytes())?;
                Ok((password, PasswordOrigin::Generated(path)))
            }
            Err(source) => Err(SecretError::Io { action: "reading", path, source }),
        }
    }

    /// Stores a password the operator supplied, so the CLI on this machine finds it.
    pub fn set_admin_password(&self, password: &str) -> Result<(), SecretError> {
        write_private(&self.admin_password_path(), password.as_bytes())
    }

    fn values_dir(&self) -> PathBuf {
        self.root.join("values")
    }

    fn tokens_dir(&self) -> PathBuf {
        self.root.join("tokens")
    }

    fn value_path(&self, name: &SecretName) -> PathBuf {
        self.values_dir().join(name.as_str())
    }

    /// Names of the stored secrets, sorted.
    pub fn list(&self) -> Result<Vec<SecretName>, SecretError> {
        names_in(&self.values_dir(), |n| SecretName::parse(n).ok())
    }

    pub fn exists(&self, name: &SecretName) -> bool {
        self.value_path(name).is_file()
    }

    /// Creates a secret; refuses one that exists (faas-cli's `secret create`).
    pub fn create(&self, name: &SecretName, value: &[u8]) -> Result<(), SecretError> {
        if self.exists(name) {
            return Err(SecretError::Exists(name.to_string()));
        }
        self.write_value(name, value)
    }

    /// Replaces an existing secret's value (faas-cli's `secret update`).
    pub fn update(&self, name: &SecretName, value: &[u8]) -> Result<(), SecretError> {
        if !self.exists(name) {
            return Err(SecretError::NotFound(name.to_string()));
        }
        self.write_value(name, value)
    }

    /// Sets a secret's value whether or not it exists: a value the cluster
    /// holds, written here as it is there.
    pub fn put(&self, name: &SecretName, value: &[u8]) -> Result<(), SecretError> {
        self.write_value(name, value)
    }

    fn write_value(&self, name: &SecretName, value: &[u8]) -> Result<(), SecretError> {
        if value.len() > MAX_SECRET {
            return Err(SecretError::TooLarge { name: name.to_string(), size: value.len() });
        }
        write_private(&self.value_path(name), value)
    }

    pub fn read(&self, name: &SecretName) -> Result<Vec<u8>, SecretError> {
        let path = self.value_path(name);
        fs::read(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => SecretError::NotFound(name.to_string()),
            _ => SecretError::Io { action: "reading", path, source },
        })
    }

    pub fn remove(&self, name: &SecretName) -> Result<(), SecretError> {
        let path = self.value_path(name);
        fs::remove_file(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => SecretError::NotFound(name.to_string()),
            _ => SecretError::Io { action: "removing", path, source },
        })
    }

    fn mounts_dir(&self) -> PathBuf {
        self.root.join("mounts")
    }

    /// The folder holding the files of `function`'s secrets, one per name.
    pub fn mount_dir(&self, function: &FunctionName) -> PathBuf {
        self.mounts_dir().join(function.as_str())
    }

    /// Writes `function`'s secret files (the values of `names`) into its
    /// folder. Each file is replaced by a rename, so a worker reading one
    /// sees the old value or the new. Files of other names stay until
    /// [`Self::prune`]: the version still serving may need them.
    pub fn materialize(&self, function: &FunctionName, names: &[SecretName]) -> Result<PathBuf, SecretError> {
        let dir = self.mount_dir(function);
        private_dir(&self.mounts_dir())?;
        private_dir(&dir)?;
        for name in names {
            let path = dir.join(name.as_str());
            write_private(&path, &self.read(name)?)?;
            self.share(&path, 0o440)?;
        }
        self.share(&dir, 0o750)?;
        Ok(dir)
    }

    /// Removes `function`'s secret files that `names` (its serving version's
    /// list) no longer holds.
    pub fn prune(&self, function: &FunctionName, names: &[SecretName]) -> Result<(), SecretError> {
        let dir = self.mount_dir(function);
        if !dir.is_dir() {
            return Ok(());
        }
        let io = |source| SecretError::Io { action: "listing", path: dir.clone(), source };
        for entry in fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let keep = entry.file_name().to_str().is_some_and(|n| names.iter().any(|s| s.as_str() == n));
            if !keep {
                let path = entry.path();
                fs::remove_file(&path).map_err(|source| SecretError::Io { action: "removing", path, source })?;
            }
        }
        Ok(())
    }

    /// Hands `path` to the reader group with `mode`, when there is one.
    fn share(&self, path: &Path, mode: u32) -> Result<(), SecretError> {
        use std::os::unix::fs::PermissionsExt;
        let Some(gid) = self.reader_gid else { return Ok(()) };
        let io = |action, source| SecretError::Io { action, path: path.to_owned(), source };
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| io("giving to the workers' group", e))?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| io("setting the mode of", e))
    }

    /// Removes `function`'s secret files (the function is gone).
    pub fn unmount(&self, function: &FunctionName) -> Result<(), SecretError> {
        let dir = self.mount_dir(function);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SecretError::Io { action: "removing", path: dir, source }),
        }
    }

    fn token_path(&self, function: &FunctionName) -> PathBuf {
        self.tokens_dir().join(function.as_str())
    }

    /// The function's invoke token, if it has one.
    pub fn token(&self, function: &FunctionName) -> Result<Option<String>, SecretError> {
        let path = self.token_path(function);
        match fs::read_to_string(&path) {
            Ok(t) => Ok(Some(t.trim().to_owned()).filter(|t| !t.is_empty())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SecretError::Io { action: "reading", path, source }),
        }
    }

    /// The function's token, made on first use.
    pub fn ensure_token(&self, function: &FunctionName) -> Result<String, SecretError> {
        match self.token(function)? {
            Some(t) => Ok(t),
            None => self.rotate_token(function),
        }
    }

    /// Replaces the function's token with a fresh one; the old stops working at once.
    pub fn rotate_token(&self, function: &FunctionName) -> Result<String, SecretError> {
        let token = random_token()?;
        self.set_token(function, &token)?;
        Ok(token)
    }

    /// Sets the function's token to `token` (one the cluster holds).
    pub fn set_token(&self, function: &FunctionName, token: &str) -> Result<(), SecretError> {
        write_private(&self.token_path(function), token.as_bytes())
    }

    /// The functions that have a token here, sorted.
    pub fn token_names(&self) -> Result<Vec<FunctionName>, SecretError> {
        names_in(&self.tokens_dir(), |n| FunctionName::parse(n).ok())
    }

    pub fn remove_token(&self, function: &FunctionName) -> Result<(), SecretError> {
        let path = self.token_path(function);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SecretError::Io { action: "removing", path, source }),
        }
    }
}

/// The files of `dir` whose names `parse` takes, sorted. Temporary files
/// of an interrupted write start with '.', which no name may.
fn names_in<T: Ord>(dir: &Path, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>, SecretError> {
    let io = |source| SecretError::Io { action: "listing", path: dir.to_owned(), source };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        if let Some(name) = entry.map_err(io)?.file_name().to_str().and_then(&parse) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(unix)]
fn private_dir(dir: &Path) -> Result<(), SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |action, source| SecretError::Io { action, path: dir.to_owned(), source };
    fs::create_dir_all(dir).map_err(|e| io("creating", e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| io("setting the mode of", e))
}

/// Writes `bytes` to `path` with mode 0600 through a temporary file in the
/// same folder, so readers see the old value or the new, never a mix.
#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SecretError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |action, source| SecretError::Io { action, path: path.to_owned(), source };
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("secret");
    // Unique per write: two requests writing one secret must not share a file.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{file_name}.{}.{n}.tmp", std::process::id()));
    let written = (|| {
        let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io("writing", e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn admin_password_is_generated_once_and_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SecretStore::open(&dir.path().join("secrets")).expect("open");
        let (first, origin) = store.admin_password().expect("generate");
        assert!(matches!(origin, PasswordOrigin::Generated(_)));
        assert!(first.len() >= 40);
        assert_eq!(mode(&store.admin_password_path()), 0o600);
        assert_eq!(mode(&dir.path().join("secrets")), 0o700);
        let (again, origin) = store.admin_password().expect("read");
        assert_eq!(again, first);
        assert!(matches!(origin, PasswordOrigin::Stored(_)));
    }

    #[test]
    fn secrets_create_update_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SecretStore::open(dir.path()).expect("open");
        let name = SecretName::parse("db-password").expect("name");
        assert!(matches!(store.update(&name, b"x"), Err(SecretError::NotFound(_))));
        store.create(&name, b"hunter2").expect("create");
        assert!(matches!(store.create(&name, b"again"), Err(SecretError::Exists(_))));
        assert_eq!(store.read(&name).expect("read"), b"hunter2");
        store.update(&name, b"new").expect("update");
        assert_eq!(store.read(&name).expect("read"), b"new");
        let other = SecretName::parse("from.cluster").expect("name");
        store.put(&other, b"theirs").expect("put a new one");
        store.put(&other, b"again").expect("put over it");
        assert_eq!(store.read(&other).expect("read"), b"again");
        store.remove(&other).expect("remove");
        assert_eq!(store.list().expect("list"), vec![name.clone()]);
        assert_eq!(mode(&dir.path().join("values/db-password")), 0o600);
        let big = vec![0u8; MAX_SECRET + 1];
        assert!(matches!(store.update(&name, &big), Err(SecretError::TooLarge { .. })));
        store.remove(&name).expect("remove");
        assert!(matches!(store.remove(&name), Err(SecretError::NotFound(_))));
        assert!(store.list().expect("list").is_empty());
    }

    #[test]
    fn materialized_files_follow_the_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SecretStore::open(dir.path()).expect("open");
        let f = FunctionName::parse("f").expect("name");
        let (a, b) = (SecretName::parse("a").expect("a"), SecretName::parse("b").expect("b"));
        store.create(&a, b"one").expect("a");
        store.create(&b, b"two").expect("b");
        let mount = store.materialize(&f, &[a.clone(), b.clone()]).expect("both");
        assert_eq!(fs::read(mount.join("b")).expect("b"), b"two");
        assert_eq!(mode(&mount.join("a")), 0o600);
        store.update(&a, b"uno").expect("update");
        store.materialize(&f, std::slice::from_ref(&a)).expect("one");
        assert_eq!(fs::read(mount.join("a")).expect("a"), b"uno");
        assert!(mount.join("b").exists(), "kept until the new list serves");
        store.prune(&f, std::slice::from_ref(&a)).expect("prune");
        assert!(!mount.join("b").exists());
        let missing = SecretName::parse("missing").expect("name");
        assert!(matches!(store.materialize(&f, &[missing]), Err(SecretError::NotFound(_))));
        store.unmount(&f).expect("unmount");
        assert!(!mount.exists());
    }

    #[test]
    fn tokens_rotate() {
        let f = FunctionName::parse("f").expect("name");
        let f = &f;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SecretStore::open(dir.path()).expect("open");
        assert_eq!(store.token(f).expect("none"), None);
        let first = store.ensure_token(f).expect("make");
        assert_eq!(store.ensure_token(f).expect("same"), first);
        let second = store.rotate_token(f).expect("rotate");
        assert_ne!(first, second);
        assert_eq!(store.token(f).expect("read"), Some(second));
        assert_eq!(store.token_names().expect("names"), vec![f.clone()]);
        store.set_token(f, "given").expect("set");
        assert_eq!(store.token(f).expect("read"), Some("given".to_owned()));
        store.remove_token(f).expect("remove");
        assert!(store.token_names().expect("names").is_empty());
        assert_eq!(store.token(f).expect("gone"), None);
    }
}

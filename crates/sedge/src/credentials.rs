//! Where the CLI finds the admin password of the node it talks to:
//! `SEDGE_PASSWORD`, then what `sedge login` stored for that gateway (a
//! 0600 file in the user's config directory), then — for a node on this
//! machine — the node's own password file in its data directory, so the
//! quick start needs no login.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};

fn key(gateway: &str) -> String {
    gateway.trim_end_matches('/').to_owned()
}

pub fn config_file() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("sedge").join("credentials.json"))
}

fn read_logins() -> Result<BTreeMap<String, String>> {
    let Some(path) = config_file() else { return Ok(BTreeMap::new()) };
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("{} is not valid JSON", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_logins(logins: &BTreeMap<String, String>) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = config_file().context("no config directory for this user (set HOME or XDG_CONFIG_HOME)")?;
    let dir = path.parent().context("config path has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".credentials.{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    // A file created earlier with a wider mode is narrowed too.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(&serde_json::to_vec_pretty(logins)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

pub fn store(gateway: &str, password: &str) -> Result<PathBuf> {
    let mut logins = read_logins()?;
    logins.insert(key(gateway), password.to_owned());
    write_logins(&logins)
}

pub fn forget(gateway: &str) -> Result<bool> {
    let mut logins = read_logins()?;
    let had = logins.remove(&key(gateway)).is_some();
    if had {
        write_logins(&logins)?;
    }
    Ok(had)
}

/// Whether `gateway` is a node on this machine.
fn is_local(gateway: &str) -> bool {
    let rest = gateway.split_once("://").map_or(gateway, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or_default();
    let host =
        host.rsplit_once(':').map_or(host, |(h, port)| if port.chars().all(|c| c.is_ascii_digit()) { h } else { host });
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The node's own password file, when the node runs on this machine with
/// the default (or `SEDGE_DATA`) data directory and this user may read it.
fn node_file() -> PathBuf {
    let data =
        std::env::var_os("SEDGE_DATA").map(PathBuf::from).unwrap_or_else(crate::commands::serve::default_data_dir);
    data.join("secrets").join("admin-password")
}

pub fn find(gateway: &str) -> Result<Option<String>> {
    if let Ok(p) = std::env::var("SEDGE_PASSWORD") {
        if !p.trim().is_empty() {
            return Ok(Some(p.trim().to_owned()));
        }
    }
    if let Some(p) = read_logins()?.get(&key(gateway)) {
        return Ok(Some(p.clone()));
    }
    if is_local(gateway) {
        let path = node_file();
        if let Ok(text) = std::fs::read_to_string(&path) {
            let p = text.trim().to_owned();
            if !p.is_empty() {
                return Ok(Some(p));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_gateways() {
        for local in ["http://127.0.0.1:8080", "http://localhost:8080/", "http://[::1]:8080", "127.0.0.2", "localhost"]
        {
            assert!(is_local(local), "{local}");
        }
        for remote in ["http://10.0.0.2:8080", "http://example.com", "http://127.0.0.1.example.com:80"] {
            assert!(!is_local(remote), "{remote}");
        }
    }
}

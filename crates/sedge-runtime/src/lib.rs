//! Runs functions: one [`Pool`] of workers per deployed function, and the
//! [`Runtime`] that holds the pools and dispatches invocations to them.
//!
//! Workers are python or node processes running the shims in `runtimes/`
//! (compiled in here and written to disk by [`RuntimeConfig::install_shims`]),
//! or `exec` commands run once per request. The gateway calls [`Runtime`];
//! the scaling policy comes from `sedge-scaler`; specs from `sedge-core`.

mod exec;
mod group;
mod http;
pub mod logs;
mod pool;
mod process;
mod spares;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sedge_core::{FunctionSpec, Invocation, InvokeError, Reply, RuntimeKind};

pub use logs::{FunctionLogs, LogLine};
pub use pool::FunctionShared;
pub use pool::{Admission, Pool, PoolStats};

const PYTHON_SHIM: &str = include_str!("../../../runtimes/python/sedge_worker.py");
const PYTHON_STYLES: &str = include_str!("../../../runtimes/python/sedge_styles.py");
const NODE_SHIM: &str = include_str!("../../../runtimes/node/sedge_worker.js");

/// Where the language runtimes are and how to start them.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub python: String,
    pub node: String,
    pub shim_dir: PathBuf,
    /// Keep one started interpreter per language waiting for the next cold start.
    pub spares: bool,
    /// Every worker process group started, so a stopping node ends them all.
    pub(crate) groups: Arc<group::ProcessGroups>,
}

impl RuntimeConfig {
    /// Writes the shims under `dir` (replacing older copies) and points at them.
    pub fn install_shims(dir: &Path, python: String, node: String, spares: bool) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("sedge_worker.py"), PYTHON_SHIM)?;
        std::fs::write(dir.join("sedge_styles.py"), PYTHON_STYLES)?;
        std::fs::write(dir.join("sedge_worker.js"), NODE_SHIM)?;
        Ok(Self { python, node, shim_dir: dir.to_owned(), spares, groups: Arc::default() })
    }

    pub(crate) fn shim(&self, kind: RuntimeKind) -> PathBuf {
        self.shim_dir.join(match kind {
            RuntimeKind::Node => "sedge_worker.js",
            _ => "sedge_worker.py",
        })
    }
}

/// Every deployed function's pool, by name.
pub struct Runtime {
    config: Arc<RuntimeConfig>,
    spares: Arc<spares::Spares>,
    pools: RwLock<HashMap<String, Arc<Pool>>>,
    shared: Mutex<HashMap<String, Arc<FunctionShared>>>,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Self {
        let config = Arc::new(config);
        let spares = spares::Spares::new(config.clone());
        Self { config, spares, pools: RwLock::default(), shared: Mutex::default() }
    }

    /// The function's log and counters, which outlive redeploys.
    pub fn shared(&self, name: &str) -> Arc<FunctionShared> {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.entry(name.to_owned()).or_default().clone()
    }

    /// A pool for a new version, not yet serving: warm it, then [`Self::install`] it.
    pub fn prepare(&self, spec: FunctionSpec, dir: PathBuf) -> Arc<Pool> {
        let shared = self.shared(spec.name.as_str());
        self.spares.fill(spec.runtime);
        Pool::new(spec, dir, self.config.clone(), self.spares.clone(), shared)
    }

    /// Makes `pool` serve its function; the version it replaces finishes
    /// what it already accepted and then stops.
    pub fn install(&self, pool: Arc<Pool>) {
        let name = pool.spec().name.to_string();
        pool.tick();
        let old = self.write().insert(name, pool);
        if let Some(old) = old {
            let grace = old.spec().limits.timeout + Duration::from_secs(1);
            tokio::spawn(async move { old.drain(grace).await });
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Pool>> {
        self.pools.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.pools.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        v.sort();
        v
    }

    pub fn remove(&self, name: &str) -> bool {
        let old = self.write().remove(name);
        match old {
            Some(pool) => {
                let grace = pool.spec().limits.timeout + Duration::from_secs(1);
                tokio::spawn(async move { pool.drain(grace).await });
                true
            }
            None => false,
        }
    }

    pub async fn invoke(&self, name: &str, inv: Invocation) -> Result<Reply, InvokeError> {
        let pool = self.get(name).ok_or_else(|| InvokeError::NotFound(name.to_owned()))?;
        pool.invoke(inv).await
    }

    /// One step of every pool's scaling policy; call about once a second.
    pub fn tick(&self) {
        let pools: Vec<Arc<Pool>> = self.pools.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for pool in pools {
            pool.tick();
        }
    }

    /// Lets in-flight work finish (up to `grace`) and stops every worker.
    pub async fn shutdown(&self, grace: Duration) {
        self.spares.close();
        let pools: Vec<Arc<Pool>> = self.write().drain().map(|(_, p)| p).collect();
        let drains: Vec<_> = pools.into_iter().map(|p| tokio::spawn(async move { p.drain(grace).await })).collect();
        for d in drains {
            let _ = d.await;
        }
        // Give stopping workers their moment to exit on their closed
        // channel, then end whatever is left, children included.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while !self.config.groups.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.config.groups.kill_all();
    }

    /// Worker process groups running now (spares included).
    pub fn process_groups(&self) -> usize {
        self.config.groups.len()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Pool>>> {
        self.pools.write().unwrap_or_else(|p| p.into_inner())
    }
}

//! Runs functions: one [`Pool`] of workers per deployed function, and the
//! [`Runtime`] that holds the pools and dispatches invocations to them.
//!
//! # Layout
//!
//! - [`engine`]: the contract every kind of worker meets (call with a
//!   deadline, liveness, kill, stop) and the start of one.
//! - [`registry`]: which engine runs each runtime kind.
//! - `pool`: one function version's workers; depends on the contract only,
//!   and enforces the deadline, answer-size cap and start timeout for all.
//! - Engines: `language` (python and node: `process` workers running the
//!   shims in `runtimes/`, compiled in here and written to disk by
//!   [`RuntimeConfig::install_shims`], taken from `spares` when one waits),
//!   `exec` (a process per call), `http` (a server on `$PORT`, proxied).
//! - [`models`]: a function's worker calling a model the node serves
//!   (`sedge.infer`), through the model's own pool.
//! - `group` (process groups), [`sandbox`], [`logs`].
//!
//! The gateway calls [`Runtime`]; the scaling policy comes from
//! `sedge-scaler`; specs from `sedge-core`.

pub mod budget;
pub mod engine;
mod exec;
mod group;
mod http;
mod language;
pub mod logs;
pub mod models;
#[cfg(feature = "onnx")]
mod onnx;
mod pool;
mod process;
pub mod registry;
pub mod sandbox;
mod spares;
mod zygotes;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sedge_core::{FunctionSpec, Invocation, InvokeError, Reply};

pub use logs::{FunctionLogs, LogLine};
pub use pool::FunctionShared;
pub use pool::{Admission, ColdStart, ColdStarts, Pool, PoolStats};
pub use registry::{Engines, NoEngine};

const PYTHON_SHIM: &str = include_str!("../../../runtimes/python/sedge_worker.py");
const PYTHON_STYLES: &str = include_str!("../../../runtimes/python/sedge_styles.py");
const NODE_SHIM: &str = include_str!("../../../runtimes/node/sedge_worker.js");
/// Where [`RuntimeConfig::install_shims`] writes the shims, in its folder.
pub(crate) const PYTHON_SHIM_FILE: &str = "sedge_worker.py";
pub(crate) const NODE_SHIM_FILE: &str = "sedge_worker.js";

/// Where the language runtimes are and how to start them.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub python: String,
    pub node: String,
    pub shim_dir: PathBuf,
    /// Keep one started interpreter per language waiting for the next cold start.
    pub spares: bool,
    /// Fork a Python function's further workers from a zygote that loaded
    /// its module (docs/scaling.md).
    pub zygotes: bool,
    /// Every worker process group started, so a stopping node ends them all.
    pub(crate) groups: Arc<group::ProcessGroups>,
    /// How workers are isolated; `None` runs them as the node's own children.
    pub sandbox: Option<Arc<sandbox::Sandbox>>,
    /// Where each function's secret files are (`ROOT/NAME/`), written by the
    /// gateway before a version serves.
    pub secrets_root: Option<PathBuf>,
    /// The node's cores and memory, which every pool's workers (and the
    /// models served in the node) count against.
    pub budget: Arc<budget::NodeBudget>,
}

impl RuntimeConfig {
    /// Writes the shims under `dir` (replacing older copies) and points at them.
    pub fn install_shims(dir: &Path, python: String, node: String, spares: bool) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(PYTHON_SHIM_FILE), PYTHON_SHIM)?;
        std::fs::write(dir.join("sedge_styles.py"), PYTHON_STYLES)?;
        std::fs::write(dir.join(NODE_SHIM_FILE), NODE_SHIM)?;
        Ok(Self {
            python,
            node,
            shim_dir: dir.to_owned(),
            spares,
            zygotes: true,
            groups: Arc::default(),
            sandbox: None,
            secrets_root: None,
            budget: Arc::default(),
        })
    }

    /// Runs every worker in `sandbox`.
    pub fn with_sandbox(mut self, sandbox: sandbox::Sandbox) -> Self {
        self.sandbox = Some(Arc::new(sandbox));
        self
    }

    /// The command that starts `program` as a worker of a function with
    /// `limits` and bundle `dir`, and the cgroup it joins (if sandboxed).
    pub(crate) fn command(
        &self,
        program: &str,
        limits: &sedge_core::Limits,
        files: &WorkerFiles,
        oom_kills: Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<(tokio::process::Command, Option<sandbox::WorkerCgroup>), String> {
        let (mut cmd, cgroup) = match &self.sandbox {
            Some(s) => s.command(program, limits, files, oom_kills)?,
            None => (tokio::process::Command::new(program), None),
        };
        cmd.envs(self.files_env(files));
        Ok((cmd, cgroup))
    }

    /// The folder of `spec`'s secret files, when it names any.
    pub(crate) fn secrets_of(&self, spec: &sedge_core::FunctionSpec) -> Option<PathBuf> {
        let root = self.secrets_root.as_ref()?;
        (!spec.secrets.is_empty()).then(|| root.join(spec.name.as_str()))
    }

    /// Tells the worker where its secrets are (the OpenFaaS path inside a
    /// sandbox, the folder itself without one) and where its installed
    /// dependencies are (the same path everywhere).
    pub(crate) fn files_env(&self, files: &WorkerFiles) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some(dir) = &files.secrets {
            env.push(("SEDGE_SECRETS_DIR".to_owned(), self.secrets_seen_at(dir).to_string_lossy().into_owned()));
        }
        if let Some(dir) = &files.deps {
            env.push(("SEDGE_MODULES_DIR".to_owned(), dir.to_string_lossy().into_owned()));
        }
        env
    }

    /// Where a worker sees the secrets folder `dir`.
    pub(crate) fn secrets_seen_at(&self, dir: &Path) -> PathBuf {
        if self.sandbox.as_ref().is_some_and(|s| s.worker_gid().is_some()) {
            PathBuf::from(sandbox::launch::SECRETS_AT)
        } else {
            dir.to_owned()
        }
    }

    /// A cgroup for an `exec` worker, shared by its runs: making and first
    /// joining a fresh cgroup costs milliseconds, too much for every call.
    pub(crate) fn exec_cgroup(
        &self,
        limits: &sedge_core::Limits,
        oom_kills: Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<Option<sandbox::WorkerCgroup>, String> {
        match &self.sandbox {
            Some(s) => s.cgroup(limits, oom_kills),
            None => Ok(None),
        }
    }

    /// The command for one run of an `exec` worker in `cgroup`.
    pub(crate) fn command_in(
        &self,
        program: &str,
        limits: &sedge_core::Limits,
        files: &WorkerFiles,
        cgroup: Option<&sandbox::WorkerCgroup>,
    ) -> Result<tokio::process::Command, String> {
        let mut cmd = match &self.sandbox {
            Some(s) => s.command_in(program, limits, files, cgroup)?,
            None => tokio::process::Command::new(program),
        };
        cmd.envs(self.files_env(files));
        Ok(cmd)
    }

    /// What `describe` shows about the isolation of a function with `limits`.
    pub fn isolation(&self, limits: &sedge_core::Limits) -> serde_json::Value {
        match &self.sandbox {
            Some(s) => s.isolation(limits),
            None => serde_json::json!({
                "sandboxed": false,
                "user": null,
                "namespaces": [],
                "cgroup": "none",
                "memory": limits.memory,
                "memoryBy": "none",
                "pids": limits.pids,
                "pidsBy": "none",
                "cpu": limits.cpu_millis.map(|m| f64::from(m) / 1000.0),
                "cpuBy": "none",
            }),
        }
    }
}

/// What a worker of one version reads besides the node's own files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerFiles {
    /// The unpacked bundle: the worker's working directory.
    pub bundle: PathBuf,
    /// The function's secret files, when it names any.
    pub secrets: Option<PathBuf>,
    /// Its installed dependencies (`sedge-deps`): a Python packages folder
    /// or a `node_modules`, put on the module search path.
    pub deps: Option<PathBuf>,
}

/// Every deployed function's pool, by name.
pub struct Runtime {
    config: Arc<RuntimeConfig>,
    engines: Engines,
    pools: Arc<models::PoolMap>,
    remote_models: models::RemoteSlot,
    shared: Mutex<HashMap<String, Arc<FunctionShared>>>,
}

impl Runtime {
    /// A runtime with the engines built into sedge.
    pub fn new(config: RuntimeConfig) -> Self {
        let config = Arc::new(config);
        let engines = Engines::standard(&config);
        Self::with_engines(config, engines)
    }

    /// A runtime whose workers `engines` start (the standard ones and
    /// whatever else the node was built with).
    pub fn with_engines(config: Arc<RuntimeConfig>, engines: Engines) -> Self {
        let pools: Arc<models::PoolMap> = Arc::default();
        let remote_models = models::RemoteSlot::default();
        for engine in engines.all() {
            engine.attach(models::Models::new(&pools, &remote_models));
        }
        Self { config, engines, pools, remote_models, shared: Mutex::default() }
    }

    /// Where functions' calls of models this node does not run go (set
    /// once: in a cluster, to the nodes that run them).
    pub fn set_remote_models(&self, remote: Arc<dyn models::RemoteModels>) {
        let _ = self.remote_models.set(remote);
    }

    /// The function's log and counters, which outlive redeploys.
    pub fn shared(&self, name: &str) -> Arc<FunctionShared> {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.entry(name.to_owned()).or_default().clone()
    }

    /// A pool for a new version, not yet serving: warm it, then
    /// [`Self::install`] it. `deps` is the folder of its installed
    /// dependencies, if it has any. Fails when no engine on this node runs
    /// the function's runtime kind.
    pub fn prepare(&self, spec: FunctionSpec, dir: PathBuf, deps: Option<PathBuf>) -> Result<Arc<Pool>, NoEngine> {
        let engine = self.engines.get(spec.runtime)?;
        let shared = self.shared(spec.name.as_str());
        let files = WorkerFiles { bundle: dir, secrets: self.config.secrets_of(&spec), deps };
        let cpu = budget::cpu_per_worker(&spec, &files.bundle);
        let pool = Pool::within(spec, files, engine, shared, self.config.budget.clone(), cpu);
        pool.engine().prepare(pool.version());
        Ok(pool)
    }

    /// Ends a prepared pool that will not serve (its version was refused),
    /// with what its engine started ahead for it: its folder is about to go.
    pub async fn discard(&self, pool: &Arc<Pool>) {
        pool.engine().retire(pool.dir());
        pool.drain(Duration::ZERO).await;
    }

    /// Makes `pool` serve its function; the version it replaces finishes
    /// what it already accepted and then stops.
    pub fn install(&self, pool: Arc<Pool>) {
        let name = pool.spec().name.to_string();
        pool.tick();
        let dir = pool.dir().clone();
        let old = self.write().insert(name, pool);
        if let Some(old) = old {
            // The same bundle deployed again keeps its spare.
            if *old.dir() != dir {
                old.engine().retire(old.dir());
            }
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
                pool.engine().retire(pool.dir());
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
        let _close_sandbox = CloseSandbox(self.config.sandbox.clone());
        for engine in self.engines.all() {
            engine.close();
        }
        let pools: Vec<Arc<Pool>> = self.write().drain().map(|(_, p)| p).collect();
        let drains: Vec<_> = pools.into_iter().map(|p| tokio::spawn(async move { p.drain(grace).await })).collect();
        for d in drains {
            let _ = d.await;
        }
        // Give stopping workers their moment to exit on their closed
        // channel, then end whatever is left, children included.
        let _ = tokio::time::timeout(Duration::from_millis(500), self.config.groups.all_ended()).await;
        self.config.groups.kill_all();
    }

    /// What `describe` shows about the isolation of a function with `limits`.
    pub fn isolation(&self, limits: &sedge_core::Limits) -> serde_json::Value {
        self.config.isolation(limits)
    }

    /// What the node's memory budget holds, by kind of process, on the
    /// node and for `function`.
    pub fn memory_use(&self, function: &str) -> budget::MemoryUse {
        self.config.budget.memory_use(function)
    }

    /// Worker process groups running now (spares included).
    pub fn process_groups(&self) -> usize {
        self.config.groups.len()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Pool>>> {
        self.pools.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes the node's cgroups once the workers are gone.
struct CloseSandbox(Option<Arc<sandbox::Sandbox>>);

impl Drop for CloseSandbox {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.close();
        }
    }
}

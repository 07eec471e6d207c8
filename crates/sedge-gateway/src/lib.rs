//! sedge's HTTP API, compatible with the OpenFaaS gateway so its clients
//! (faas-cli, dashboards, scripts) work unchanged.
//!
//! Routes only: each handler parses, calls the store or the runtime, and maps
//! the outcome through [`error`], the one error-to-status map. Metrics live
//! in [`metrics`]; the one namespace a node has, in [`namespace`]. The binary builds the tokio runtime and calls [`serve`],
//! which runs the routes in [`server`], the HTTP/1 loop that bounds every
//! connection (timeouts, header caps, the connection cap).
//!
//! Neighbours: `sedge-store` (registry, bundles), `sedge-runtime` (pools,
//! invocation), `sedge-core` (specs, error kinds).

pub mod auth;
pub mod cluster;
pub mod deps;
pub mod error;
pub mod locks;
pub mod metrics;
pub mod namespace;
mod routes;
mod secrets;
pub mod server;
pub mod shared_secrets;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use sedge_core::FunctionName;
use sedge_runtime::{Pool, Runtime};
use sedge_store::{FunctionRecord, SecretStore, StagedBundle, Store, TempPath};

pub use auth::Access;
pub use error::ApiError;
pub use routes::body::BodyMemory;
pub use routes::inquiry_answer;
pub use server::ServerConfig;

/// Everything a request may touch.
pub struct Node {
    pub store: Arc<Store>,
    pub runtime: Arc<Runtime>,
    pub metrics: metrics::Metrics,
    /// Largest bundle upload accepted.
    pub max_bundle: usize,
    /// What deploys, removals and secret changes wait for (per function;
    /// invocations never wait on them).
    pub locks: locks::DeployLocks,
    /// Bundle uploads being received or unpacked, node-wide.
    pub uploads: Arc<tokio::sync::Semaphore>,
    pub max_uploads: usize,
    /// Why the last redeploy of a function did not replace it, by name.
    pub deploy_errors: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// Bytes of invocation bodies held in memory at once, node-wide.
    pub body_memory: BodyMemory,
    /// Whether `/system/` asks for the admin credential.
    pub access: Access,
    /// Whether `/metrics` is served without credentials.
    pub metrics_open: bool,
    pub secrets: Arc<SecretStore>,
    pub tokens: auth::Tokens,
    /// Installs functions' requirements.txt / package.json; without it a
    /// folder that has one is refused.
    pub deps: Option<Arc<sedge_deps::Builder>>,
    /// Stores and runs asynchronous calls and tasks; without it they are refused.
    pub queue: Option<Arc<sedge_queue::Queue>>,
    /// The functions' MQTT, NATS and cron triggers, for their states.
    pub triggers: Option<Arc<sedge_triggers::Triggers>>,
    /// The cluster this node is one of (`serve --cluster`); set once, after
    /// the node is built, since the cluster deploys through the node.
    pub cluster: std::sync::OnceLock<Arc<dyn cluster::Cluster>>,
}

impl Node {
    pub fn new(store: Arc<Store>, runtime: Arc<Runtime>, secrets: Arc<SecretStore>, access: Access) -> Self {
        Self {
            store,
            runtime,
            metrics: metrics::Metrics::default(),
            max_bundle: 512 * 1024 * 1024,
            locks: locks::DeployLocks::default(),
            uploads: Arc::new(tokio::sync::Semaphore::new(2)),
            max_uploads: 2,
            deploy_errors: std::sync::Mutex::default(),
            body_memory: BodyMemory::new(BodyMemory::DEFAULT),
            access,
            metrics_open: true,
            secrets,
            tokens: auth::Tokens::default(),
            deps: None,
            queue: None,
            triggers: None,
            cluster: std::sync::OnceLock::new(),
        }
    }

    /// Installs functions' own dependencies with `builder`.
    pub fn with_deps(mut self, builder: Arc<sedge_deps::Builder>) -> Self {
        self.deps = Some(builder);
        self
    }

    /// The largest archive accepted and how many are received at once.
    pub fn with_upload_limits(mut self, max_bundle: u64, max_uploads: usize) -> Self {
        self.max_bundle = usize::try_from(max_bundle).unwrap_or(usize::MAX);
        self.max_uploads = max_uploads.max(1);
        self.uploads = Arc::new(tokio::sync::Semaphore::new(self.max_uploads));
        self
    }

    /// Why the last redeploy of `name` was not installed, if it failed.
    pub fn last_deploy_error(&self, name: &str) -> Option<String> {
        self.deploy_errors.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    fn set_deploy_error(&self, name: &str, error: Option<String>) {
        let mut errors = self.deploy_errors.lock().unwrap_or_else(|p| p.into_inner());
        match error {
            Some(e) => errors.insert(name.to_owned(), e),
            None => errors.remove(name),
        };
    }
}

pub fn router(node: Arc<Node>) -> Router {
    routes::router(node.clone()).with_state(node)
}

/// Serves the API on `listener` within `config`'s limits until `shutdown`
/// completes, then stops accepting and lets open requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::run(listener, router(node), config, shutdown).await
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal("store task", e))?
}

/// How a deploy ended.
pub struct Deployed {
    /// Whether the function existed before.
    pub existed: bool,
    pub record: FunctionRecord,
    /// The new version is warming in the background and replaces the old
    /// one only once a worker of it has loaded.
    pub pending: bool,
    /// The bundle is the one already serving: nothing was replaced.
    pub unchanged: bool,
}

/// Deploys a bundle held in memory (`sedge serve --deploy`); see [`deploy_file`].
pub async fn deploy(node: &Arc<Node>, name: FunctionName, archive: Vec<u8>, wait: bool) -> Result<Deployed, ApiError> {
    let store = node.store.clone();
    let file = blocking(move || {
        let mut file = store.upload_file()?;
        std::io::Write::write_all(&mut file, &archive).map_err(|e| ApiError::internal("writing the upload", e))?;
        Ok(file.into_temp_path())
    })
    .await?;
    deploy_file(node, name, file, wait, None).await
}

/// Deploys the bundle (a tar.gz of a function folder) in `archive` as
/// function `name`.
///
/// A new function is stored and serves at once (with `wait`, only once a
/// worker has loaded it). A new version of an existing function replaces
/// the old only once a worker of it has loaded: with `wait` the caller
/// learns the outcome; without, it warms in the background and on failure
/// the old version keeps serving and the error is kept for describe. The
/// store is committed only when the new version serves, so a restart
/// serves what served before it. The folder's own dependencies are
/// installed first (their output also goes to `progress`); a failed install
/// refuses the version.
pub async fn deploy_file(
    node: &Arc<Node>,
    name: FunctionName,
    archive: TempPath,
    wait: bool,
    progress: Option<deps::Progress>,
) -> Result<Deployed, ApiError> {
    let guard = node.locks.function(name.as_str()).await;
    let old = node.runtime.get(name.as_str());
    let staged = {
        let _folders = node.locks.folders().await;
        let store = node.store.clone();
        blocking(move || Ok(store.stage(&name, archive)?)).await?
    };
    // A missing secret is told before a build, not after it.
    if let Err(e) = secrets::check(node, &staged.record.spec) {
        discard(node, staged).await;
        return Err(e);
    }
    let serving_it = old.as_ref().is_some_and(|o| *o.dir() == staged.record.dir);
    let env = if serving_it {
        None
    } else {
        match deps::install(node, &staged.record.spec, &staged.record.dir, progress.as_ref()).await {
            Ok(env) => env,
            Err(e) => {
                let name = staged.record.spec.name.to_string();
                discard(node, staged).await;
                if old.is_some() {
                    node.set_deploy_error(&name, Some(e.message.clone()));
                }
                return Err(e);
            }
        }
    };
    let deps = env.map(|e| e.modules);
    // From here to serving, no secret may change under this deploy.
    let secrets_guard = node.locks.using_secrets().await;
    if let Err(e) = secrets::prepare(node, &staged.record.spec).await {
        discard(node, staged).await;
        deps::release(node, deps).await;
        return Err(e);
    }
    if let Some(serving) = old.as_ref().filter(|o| *o.dir() == staged.record.dir) {
        // Content-addressed: the same folder is the same bundle. Its workers
        // keep serving; the staged copy is the serving one, so only the
        // upload goes.
        node.set_deploy_error(serving.spec().name.as_str(), None);
        let record = staged.record.clone();
        drop(staged);
        return Ok(Deployed { existed: true, record, pending: false, unchanged: true });
    }
    let pool = match node.runtime.prepare(staged.record.spec.clone(), staged.record.dir.clone(), deps.clone()) {
        Ok(pool) => pool,
        Err(e) => {
            let e = ApiError::from(e);
            let name = staged.record.spec.name.to_string();
            discard(node, staged).await;
            if old.is_some() {
                node.set_deploy_error(&name, Some(e.message.clone()));
            }
            deps::release(node, deps).await;
            return Err(e);
        }
    };
    let existed = old.is_some();
    if old.is_none() && !wait {
        let record = switch(node, staged, pool, None).await?;
        return Ok(Deployed { existed, record, pending: false, unchanged: false });
    }
    if wait {
        let record = warm_and_switch(node, staged, pool, old).await?;
        return Ok(Deployed { existed, record, pending: false, unchanged: false });
    }
    let record = staged.record.clone();
    let node = node.clone();
    tokio::spawn(async move {
        let _guards = (guard, secrets_guard);
        let name = staged.record.spec.name.to_string();
        if let Err(e) = warm_and_switch(&node, staged, pool, old).await {
            tracing::warn!(
                "the new version of {name} was not installed, the previous one keeps serving: {}",
                e.message
            );
        }
    });
    Ok(Deployed { existed, record, pending: true, unchanged: false })
}

/// Drops a staged version that will not serve (its folder, unless in use).
async fn discard(node: &Arc<Node>, staged: StagedBundle) {
    let name = staged.record.spec.name.to_string();
    let _folders = node.locks.folders().await;
    let store = node.store.clone();
    if let Err(e) = blocking(move || Ok(store.discard(staged)?)).await {
        tracing::warn!("removing the refused version of {name}: {}", e.message);
    }
}

/// Starts a worker of the new version; only if it loads does it replace the
/// old one. Either way the outcome is kept for describe.
async fn warm_and_switch(
    node: &Arc<Node>,
    staged: StagedBundle,
    pool: Arc<Pool>,
    old: Option<Arc<Pool>>,
) -> Result<FunctionRecord, ApiError> {
    let name = staged.record.spec.name.to_string();
    if let Err(e) = pool.warm().await {
        node.runtime.discard(&pool).await;
        discard(node, staged).await;
        let message = e.to_string();
        node.set_deploy_error(&name, Some(message.clone()));
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message));
    }
    switch(node, staged, pool, old).await
}

/// Commits the staged version and makes it serve; the old version's folder
/// goes once its workers have finished.
async fn switch(
    node: &Arc<Node>,
    staged: StagedBundle,
    pool: Arc<Pool>,
    old: Option<Arc<Pool>>,
) -> Result<FunctionRecord, ApiError> {
    let store = node.store.clone();
    let record = match blocking(move || Ok(store.commit(staged)?)).await {
        Ok(r) => r,
        Err(e) => {
            node.runtime.discard(&pool).await;
            return Err(e);
        }
    };
    node.runtime.install(pool);
    node.set_deploy_error(record.spec.name.as_str(), None);
    if let Err(e) = secrets::settle(node, &record.spec).await {
        // The new version serves with what it needs; only leftovers remain.
        tracing::warn!("removing secrets {} no longer names: {}", record.spec.name, e.message);
    }
    if let Some(old) = old {
        retire(node.clone(), old);
    }
    Ok(record)
}

/// Waits for a replaced pool to finish what it accepted, then removes its
/// folder unless the current version uses the same bundle.
pub(crate) fn retire(node: Arc<Node>, old: Arc<Pool>) {
    tokio::spawn(async move {
        old.drain(old.spec().limits.timeout + Duration::from_secs(1)).await;
        // Deploys stage into content-addressed folders (one function's
        // bundle is its own: the manifest names it); holding its lock keeps
        // a deploy of it from reusing this folder while it is removed.
        let _function = node.locks.function(old.spec().name.as_str()).await;
        let _folders = node.locks.folders().await;
        let store = node.store.clone();
        let dir = old.dir().clone();
        match blocking(move || Ok(store.release(&dir)?)).await {
            Ok(true) => tracing::debug!("removed the folder of a replaced version of {}", old.spec().name),
            Ok(false) => {}
            Err(e) => tracing::warn!("removing the folder of a replaced version of {}: {}", old.spec().name, e.message),
        }
        deps::release(&node, old.deps().cloned()).await;
    });
}

/// Removes function `name` from this node: the store, its pool (which
/// finishes what it accepted), its secrets. Whether the store had it.
pub async fn remove(node: &Arc<Node>, name: &FunctionName) -> Result<bool, ApiError> {
    let _function = node.locks.function(name.as_str()).await;
    let _secrets = node.locks.using_secrets().await;
    let store = node.store.clone();
    let n = name.clone();
    let existed = blocking(move || Ok(store.remove(&n)?)).await?;
    if let Some(old) = node.runtime.get(name.as_str()) {
        // Its folder goes once its workers are done, not at the next start.
        retire(node.clone(), old);
    }
    node.runtime.remove(name.as_str());
    secrets::forget(node, name).await?;
    Ok(existed)
}

/// Starts serving every function the store holds, as after a restart.
pub async fn restore(node: &Arc<Node>) -> Result<usize, ApiError> {
    let store = node.store.clone();
    let records = blocking(move || {
        let swept = store.sweep()?;
        if swept > 0 {
            tracing::info!("removed {swept} unused bundle folders");
        }
        Ok(store.list()?)
    })
    .await?;
    for r in &records {
        // One function's missing secret must not keep the others down.
        let prepared = match secrets::prepare(node, &r.spec).await {
            Ok(()) => secrets::settle(node, &r.spec).await,
            Err(e) => Err(e),
        };
        if let Err(e) = prepared {
            tracing::error!("function {}: {}", r.spec.name, e.message);
        }
        let deps = match deps::install(node, &r.spec, &r.dir, None).await {
            Ok(env) => env.map(|e| e.modules),
            Err(e) => {
                // Served anyway, so the failure shows where the function is looked at.
                tracing::error!("function {}: {}", r.spec.name, e.message);
                node.set_deploy_error(r.spec.name.as_str(), Some(e.message));
                None
            }
        };
        match node.runtime.prepare(r.spec.clone(), r.dir.clone(), deps) {
            Ok(pool) => node.runtime.install(pool),
            Err(e) => {
                // Kept in the store: the node may run it again once it has the engine.
                tracing::error!("function {}: {e}", r.spec.name);
                node.set_deploy_error(r.spec.name.as_str(), Some(e.to_string()));
            }
        }
    }
    deps::sweep(node).await;
    Ok(records.len())
}

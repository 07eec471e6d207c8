//! sedge's HTTP API, compatible with the OpenFaaS gateway so its clients
//! (faas-cli, dashboards, scripts) work unchanged.
//!
//! Routes only: each handler parses, calls the store or the runtime, and maps
//! the outcome through [`error`], the one error-to-status map. Metrics live
//! in [`metrics`]. The binary builds the tokio runtime and calls [`serve`],
//! which runs the routes in [`server`], the HTTP/1 loop that bounds every
//! connection (timeouts, header caps, the connection cap).
//!
//! Neighbours: `sedge-store` (registry, bundles), `sedge-runtime` (pools,
//! invocation), `sedge-core` (specs, error kinds).

pub mod auth;
pub mod error;
pub mod metrics;
mod routes;
mod secrets;
pub mod server;

use std::future::Future;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::Router;
use sedge_core::FunctionName;
use sedge_runtime::Runtime;
use sedge_store::{FunctionRecord, SecretStore, Store};

pub use auth::Access;
pub use error::ApiError;
pub use routes::body::BodyMemory;
pub use server::ServerConfig;

/// Everything a request may touch.
pub struct Node {
    pub store: Arc<Store>,
    pub runtime: Arc<Runtime>,
    pub metrics: metrics::Metrics,
    /// Largest bundle upload accepted.
    pub max_bundle: usize,
    /// Deploys and removals run one at a time; invocations never wait on it.
    pub deploy_lock: tokio::sync::Mutex<()>,
    /// Bytes of invocation bodies held in memory at once, node-wide.
    pub body_memory: BodyMemory,
    /// Whether `/system/` asks for the admin credential.
    pub access: Access,
    /// Whether `/metrics` is served without credentials.
    pub metrics_open: bool,
    pub secrets: Arc<SecretStore>,
    pub tokens: auth::Tokens,
}

impl Node {
    pub fn new(store: Arc<Store>, runtime: Arc<Runtime>, secrets: Arc<SecretStore>, access: Access) -> Self {
        Self {
            store,
            runtime,
            metrics: metrics::Metrics::default(),
            max_bundle: 512 * 1024 * 1024,
            deploy_lock: tokio::sync::Mutex::new(()),
            body_memory: BodyMemory::new(BodyMemory::DEFAULT),
            access,
            metrics_open: true,
            secrets,
            tokens: auth::Tokens::default(),
        }
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

/// Deploys a bundle (a tar.gz of a function folder) as function `name`.
///
/// The new version replaces the old only once it is stored (and, with
/// `wait`, once a worker has loaded it), so a failed deploy leaves the
/// previous version serving. Returns whether the function existed before.
pub async fn deploy(
    node: &Arc<Node>,
    name: FunctionName,
    archive: Vec<u8>,
    wait: bool,
) -> Result<(bool, FunctionRecord), ApiError> {
    let _guard = node.deploy_lock.lock().await;
    let existed = node.runtime.get(name.as_str()).is_some();
    let store = node.store.clone();
    let staged = blocking(move || Ok(store.stage(&name, archive)?)).await?;
    secrets::prepare(node, &staged.record.spec).await?;
    let pool = node.runtime.prepare(staged.record.spec.clone(), staged.record.dir.clone());
    if wait {
        if let Err(e) = pool.warm().await {
            pool.drain(std::time::Duration::ZERO).await;
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()));
        }
    }
    let store = node.store.clone();
    let record = blocking(move || Ok(store.commit(staged)?)).await?;
    node.runtime.install(pool);
    Ok((existed, record))
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
        if let Err(e) = secrets::prepare(node, &r.spec).await {
            // One function's missing secret must not keep the others down.
            tracing::error!("function {}: {}", r.spec.name, e.message);
        }
        let pool = node.runtime.prepare(r.spec.clone(), r.dir.clone());
        node.runtime.install(pool);
    }
    Ok(records.len())
}

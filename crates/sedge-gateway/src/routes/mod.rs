//! The route table.

mod async_calls;
pub(crate) mod body;
mod calls;
mod cluster_views;
mod functions;
mod invoke;
mod logs;
mod nodes;
mod oip;
mod origin;
mod secrets;
mod ui;
mod unserved;
mod upload;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{any, get, post, put};
use axum::{Json, Router};

use crate::namespace::NAMESPACE;
use crate::{ApiError, Node};

pub use cluster_views::inquiry_answer;

pub type Shared = State<Arc<Node>>;

pub fn router(node: Arc<Node>) -> Router<Arc<Node>> {
    let admin = || axum::middleware::from_fn_with_state(node.clone(), crate::auth::require_admin);
    // Everything under /system/ needs the admin credential, loopback included.
    let mut system = Router::new()
        .route("/system/info", get(info))
        // `faas-cli namespace list`: a node has one namespace.
        .route("/system/namespaces", get(|| async { Json([NAMESPACE]) }))
        .route(
            "/system/functions",
            get(functions::list).delete(functions::remove).post(functions::deploy_image).put(functions::deploy_image),
        )
        .route("/system/function/{name}", get(functions::describe))
        .route("/system/scale-function/{name}", post(functions::scale))
        .route("/system/bundles/{name}", put(functions::deploy_bundle))
        .route("/system/function/{name}/token", post(functions::rotate_token))
        .route("/system/secrets", get(secrets::list).post(secrets::create).put(secrets::update).delete(secrets::remove))
        .route("/system/logs", get(logs::logs))
        .route("/system/calls", get(calls::list))
        .route("/system/calls/purge", post(calls::purge))
        .route("/system/calls/{id}", get(calls::show))
        .route("/system/calls/{id}/retry", post(calls::retry))
        .route("/system/tasks", post(calls::submit_tasks))
        .route("/system/tasks/batch-status", post(calls::batch_status))
        .route("/system/tasks/{id}", get(calls::task))
        .route("/system/stats", get(ui::stats))
        .route("/system/nodes", get(nodes::list));
    for path in unserved::OPENFAAS_ONLY.iter().filter(|p| p.starts_with("/system/")) {
        system = system.route(path, unserved::openfaas_only());
    }
    let system = system
        // A namespace other than the one there is fails before the route runs.
        .route_layer(axum::middleware::from_fn(crate::namespace::query_namespace))
        .route_layer(admin());
    let metrics_route = if node.metrics_open {
        Router::new().route("/metrics", get(metrics))
    } else {
        Router::new().route("/metrics", get(metrics)).route_layer(admin())
    };
    let mut router = Router::new();
    for path in unserved::OPENFAAS_ONLY.iter().filter(|p| !p.starts_with("/system/")) {
        router = router.route(path, unserved::openfaas_only());
    }
    router
        .route("/healthz", get(|| async { "OK" }))
        .route("/ui", get(ui::to_index))
        .route("/ui/", get(ui::index))
        .route("/ui/{file}", get(ui::file))
        .merge(system)
        .merge(metrics_route)
        .route("/function/{name}", any(invoke::invoke_root))
        .route("/function/{name}/", any(invoke::invoke_root))
        .route("/function/{name}/{*path}", any(invoke::invoke_path))
        // The Open Inference Protocol (KServe v2) over model functions.
        .route("/v2", get(oip::server))
        .route("/v2/health/live", get(oip::health))
        .route("/v2/health/ready", get(oip::health))
        .route("/v2/models/{name}", get(oip::metadata))
        .route("/v2/models/{name}/ready", get(oip::ready))
        .route("/v2/models/{name}/infer", post(oip::infer))
        .route("/v2/models/{name}/versions/{version}", get(oip::metadata_of))
        .route("/v2/models/{name}/versions/{version}/ready", get(oip::ready_of))
        .route("/v2/models/{name}/versions/{version}/infer", post(oip::infer_of))
        .route("/async-function/{name}", any(async_calls::submit_root))
        .route("/async-function/{name}/", any(async_calls::submit_root))
        .route("/async-function/{name}/{*path}", any(async_calls::submit_path))
        // Body limits are enforced per route: each function's own max_body
        // on invoke, the node's bundle limit on deploy.
        .layer(DefaultBodyLimit::disable())
        .method_not_allowed_fallback(unserved::method_not_allowed)
        .fallback(unserved::no_such_route)
        .layer(axum::middleware::from_fn(origin::same_origin_only))
        // Outermost, so refusals by the layers above are counted too.
        .layer(axum::middleware::from_fn_with_state(node, crate::metrics::track))
}

const VERSION: &str = env!("CARGO_PKG_VERSION");
const SHA: &str = match option_env!("SEDGE_GIT_SHA") {
    Some(s) => s,
    None => "unknown",
};

async fn info() -> impl IntoResponse {
    let version = serde_json::json!({ "release": VERSION, "sha": SHA });
    Json(serde_json::json!({
        "provider": { "provider": "sedge", "orchestration": "processes", "version": version },
        "version": version,
        "arch": std::env::consts::ARCH,
    }))
}

async fn metrics(State(node): Shared) -> Result<impl IntoResponse, ApiError> {
    let calls = match node.queue.clone() {
        Some(queue) => {
            let totals = queue.totals();
            let counts = crate::blocking(move || queue.counts().map_err(async_calls::store_error)).await?;
            Some(crate::metrics::CallSnapshot { counts, totals, now_ms: sedge_queue::now_ms() })
        }
        None => None,
    };
    let triggers = node.triggers.as_ref().map(|t| t.states()).unwrap_or_default();
    let mut text =
        node.metrics.render(&node.runtime, calls.as_ref(), &triggers).map_err(|e| ApiError::internal("metrics", e))?;
    if let Some(cluster) = node.cluster.get() {
        text.push_str(&cluster.metrics_text());
    }
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text))
}

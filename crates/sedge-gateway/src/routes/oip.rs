//! The Open Inference Protocol (KServe v2) over model functions
//! (`runtime = "onnx"`): a function is a model of the same name with one
//! version, "1". Health and server metadata are the node's; a model's
//! metadata, readiness and infer reach its function behind the same invoke
//! credential, admission, body limits and error map as `/function/NAME`.
//!
//! Clients of the protocol (tritonclient among them) send no Content-Type,
//! read health as "exactly 200", and treat any other status of a model's
//! `ready` as "not ready" (400, as Triton answers it).

use axum::body::HttpBody;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sedge_onnx::serve::{INFER_PATH, METADATA_PATH, VERSION};
use sedge_runtime::Pool;

use super::invoke::{self, Refusal, Refused};
use super::Shared;
use crate::ApiError;

/// `GET /v2/health/live` and `/v2/health/ready`: the node answers, so it
/// serves; an empty 200 is what clients look for.
pub async fn health() -> StatusCode {
    StatusCode::OK
}

/// `GET /v2`: the server's metadata.
pub async fn server() -> impl IntoResponse {
    Json(serde_json::json!({
        "name": "sedge",
        "version": super::VERSION,
        "extensions": ["binary_tensor_data"],
    }))
}

pub async fn metadata(State(node): Shared, Path(name): Path<String>, req: Request) -> Response {
    to_model(&node, &name, None, req, METADATA_PATH).await
}

pub async fn metadata_of(State(node): Shared, Path((name, version)): Path<(String, String)>, req: Request) -> Response {
    to_model(&node, &name, Some(&version), req, METADATA_PATH).await
}

pub async fn infer(State(node): Shared, Path(name): Path<String>, req: Request) -> Response {
    to_model(&node, &name, None, req, INFER_PATH).await
}

pub async fn infer_of(State(node): Shared, Path((name, version)): Path<(String, String)>, req: Request) -> Response {
    to_model(&node, &name, Some(&version), req, INFER_PATH).await
}

pub async fn ready(State(node): Shared, Path(name): Path<String>, req: Request) -> Response {
    readiness(&node, &name, None, req).await
}

pub async fn ready_of(State(node): Shared, Path((name, version)): Path<(String, String)>, req: Request) -> Response {
    readiness(&node, &name, Some(&version), req).await
}

/// Sends `req` to the model function `raw` names, at `path` inside it; in
/// a cluster, to a node that runs it when this one does not (or is full),
/// the body as it came, binary tensors and their header included.
async fn to_model(node: &crate::Node, raw: &str, version: Option<&str>, req: Request, path: &str) -> Response {
    if let Some((cluster, local)) = invoke::elsewhere(node, raw) {
        if let Err(refused) = placed_model(cluster, raw, version, local.as_deref(), !req.body().is_end_stream()).await {
            return *refused;
        }
        return invoke::clustered(node, cluster, raw, local, path.to_owned(), req).await;
    }
    let mut req = req;
    let (name, pool) = match model(node, raw, version, &mut req) {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    invoke::forward(node, &name, &pool, path.to_owned(), req).await
}

/// 200 once the model is loaded: loading it now if it was scaled to zero,
/// so a client that waits for "ready" then infers without a cold start.
/// In a cluster, a node that does not run it asks one that does for the
/// model's metadata, which loads it there.
async fn readiness(node: &crate::Node, raw: &str, version: Option<&str>, req: Request) -> Response {
    if let Some((cluster, local)) = invoke::elsewhere(node, raw) {
        if let Err(refused) = placed_model(cluster, raw, version, local.as_deref(), !req.body().is_end_stream()).await {
            return *refused;
        }
        let answer = invoke::clustered(node, cluster, raw, local, METADATA_PATH.to_owned(), req).await;
        if answer.status() == StatusCode::OK {
            return StatusCode::OK.into_response();
        }
        let status = answer.status();
        let text = match axum::body::to_bytes(answer.into_body(), 64 * 1024).await {
            Ok(b) => serde_json::from_slice::<serde_json::Value>(&b)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&b).into_owned()),
            Err(e) => e.to_string(),
        };
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::NOT_FOUND {
            return ApiError::new(status, text).into_response();
        }
        return ApiError::bad_request(format!("model {raw} is not ready: {text}")).into_response();
    }
    let mut req = req;
    let (name, pool) = match model(node, raw, version, &mut req) {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    match pool.warm().await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => ApiError::bad_request(format!("model {name} is not ready: {e}")).into_response(),
    }
}

/// In a cluster: refuses a request for a function the cluster has that is
/// not a model (or not at `version`); one it does not have goes on, to be
/// answered 404 as by a single node. The cluster's spec is read as the
/// call will read it (from the registry's leader when this node's copy
/// lags), so a function this node has not heard of yet is checked too.
async fn placed_model(
    cluster: &dyn crate::cluster::Cluster,
    raw: &str,
    version: Option<&str>,
    local: Option<&Pool>,
    unread: bool,
) -> Result<(), Refusal> {
    let Ok(name) = crate::namespace::strip(raw) else { return Ok(()) };
    let refuse = |error| Box::new(Refused::with(error, unread).into_response());
    match local {
        Some(pool) => is_model(name, pool.spec(), version).map_err(refuse),
        None => match cluster.lookup(name).await {
            Some(spec) => is_model(name, &spec, version).map_err(refuse),
            None => Ok(()),
        },
    }
}

/// The function behind model `raw` (version `version`), when it exists,
/// the caller may invoke it, and it is a model.
fn model(
    node: &crate::Node,
    raw: &str,
    version: Option<&str>,
    req: &mut Request,
) -> Result<(String, std::sync::Arc<Pool>), Refusal> {
    let (name, pool) = invoke::find(node, raw, req)?;
    is_model(&name, pool.spec(), version).map_err(|error| Box::new(Refused::new(error, req).into_response()))?;
    Ok((name, pool))
}

/// Whether function `name` of `spec` is a model served at `version`.
fn is_model(name: &str, spec: &sedge_core::FunctionSpec, version: Option<&str>) -> Result<(), ApiError> {
    let runtime = spec.runtime;
    if !runtime.serves_models() {
        return Err(ApiError::bad_request(format!(
            "{name} is not a model function (runtime {}); the inference protocol serves runtime = \"onnx\" functions",
            runtime.as_str()
        )));
    }
    if let Some(v) = version.filter(|v| *v != VERSION) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("model {name} has no version {v:?}; it has version {VERSION}"),
        ));
    }
    Ok(())
}

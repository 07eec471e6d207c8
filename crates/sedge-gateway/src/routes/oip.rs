//! The Open Inference Protocol (KServe v2) over model functions
//! (`runtime = "onnx"`): a function is a model of the same name with one
//! version, "1". Health and server metadata are the node's; a model's
//! metadata, readiness and infer reach its function behind the same invoke
//! credential, admission, body limits and error map as `/function/NAME`.
//!
//! Clients of the protocol (tritonclient among them) send no Content-Type,
//! read health as "exactly 200", and treat any other status of a model's
//! `ready` as "not ready" (400, as Triton answers it).

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

/// Sends `req` to the model function `raw` names, at `path` inside it.
async fn to_model(node: &crate::Node, raw: &str, version: Option<&str>, req: Request, path: &str) -> Response {
    let mut req = req;
    let (name, pool) = match model(node, raw, version, &mut req) {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    invoke::forward(node, &name, &pool, path.to_owned(), req).await
}

/// 200 once the model is loaded: loading it now if it was scaled to zero,
/// so a client that waits for "ready" then infers without a cold start.
async fn readiness(node: &crate::Node, raw: &str, version: Option<&str>, req: Request) -> Response {
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

/// The function behind model `raw` (version `version`), when it exists,
/// the caller may invoke it, and it is a model.
fn model(
    node: &crate::Node,
    raw: &str,
    version: Option<&str>,
    req: &mut Request,
) -> Result<(String, std::sync::Arc<Pool>), Refusal> {
    let (name, pool) = invoke::find(node, raw, req)?;
    let runtime = pool.spec().runtime;
    if !runtime.serves_models() {
        let error = ApiError::bad_request(format!(
            "{name} is not a model function (runtime {}); the inference protocol serves runtime = \"onnx\" functions",
            runtime.as_str()
        ));
        return Err(Box::new(Refused::new(error, req).into_response()));
    }
    if let Some(v) = version.filter(|v| *v != VERSION) {
        let error = ApiError::new(
            StatusCode::NOT_FOUND,
            format!("model {name} has no version {v:?}; it has version {VERSION}"),
        );
        return Err(Box::new(Refused::new(error, req).into_response()));
    }
    Ok((name, pool))
}

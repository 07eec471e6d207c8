//! `/async-function/{name}[/{path..}]` (what `faas-cli invoke --async`
//! calls): the request is stored durably and answered `202 Accepted` with
//! its `X-Call-Id`; the node runs it later (sedge-queue).

use axum::body::HttpBody;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sedge_queue::{CallKind, NewCall, QueueError, StoreError};

use super::body::Held;
use super::invoke::{find, read_function_body, Refused};
use super::Shared;
use crate::ApiError;

pub async fn submit_root(State(node): Shared, Path(name): Path<String>, req: Request) -> Response {
    submit(&node, &name, "/".to_owned(), req).await
}

pub async fn submit_path(State(node): Shared, Path((name, path)): Path<(String, String)>, req: Request) -> Response {
    submit(&node, &name, format!("/{path}"), req).await
}

/// An id a caller may choose: what fits a header and a file name.
pub(super) fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("{what} {id:?}: expected 1 to 128 letters, digits, '-', '_', '.' or ':'")))
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// The refusal a queue error gets.
pub(super) fn queue_error(e: QueueError) -> ApiError {
    match e {
        QueueError::DiskFull { .. } => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string()),
        QueueError::Stopping | QueueError::Busy => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        QueueError::Store(e) => store_error(e),
    }
}

pub(super) fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::IdTaken(_) | StoreError::NotFinished { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        StoreError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
        StoreError::Full => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string()),
        StoreError::Db(_) | StoreError::Io { .. } => ApiError::internal("call store", e),
    }
}

pub(super) fn no_queue() -> ApiError {
    ApiError::new(StatusCode::NOT_IMPLEMENTED, "this node runs without a call store: asynchronous calls are off")
}

/// What a caller asks of an asynchronous call beyond the request itself.
struct Asked {
    id: Option<String>,
    key: Option<String>,
    callback: Option<String>,
}

fn asked(headers: &HeaderMap) -> Result<Asked, ApiError> {
    let id = header(headers, "x-call-id");
    let key = header(headers, "idempotency-key").or_else(|| header(headers, "x-idempotency-key"));
    let callback = header(headers, "x-callback-url");
    for (what, value) in [("X-Call-Id", &id), ("Idempotency-Key", &key)] {
        if let Some(v) = value {
            check_id(what, v)?;
        }
    }
    if let Some(url) = &callback {
        sedge_queue::callback::check_url(url).map_err(ApiError::bad_request)?;
    }
    Ok(Asked { id, key, callback })
}

/// The call as it will be stored: the request as it will reach the
/// function, which sees the call's id as OpenFaaS's functions do; the
/// callback address is the node's business.
fn new_call(
    name: String,
    parts: &axum::http::request::Parts,
    path: String,
    body: bytes::Bytes,
    asked: Asked,
) -> NewCall {
    let id = asked.id.unwrap_or_else(sedge_queue::store::new_id);
    let mut headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "x-callback-url" | "x-call-id"))
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    headers.push(("x-call-id".to_owned(), id.clone()));
    NewCall {
        function: name,
        kind: CallKind::Http,
        id: Some(id),
        key: asked.key,
        request: sedge_queue::Request {
            method: parts.method.to_string(),
            path,
            query: parts.uri.query().unwrap_or_default().to_owned(),
            headers,
            body,
        },
        callback_url: asked.callback,
    }
}

fn accepted(a: &sedge_queue::Accepted) -> Response {
    let mut response =
        (StatusCode::ACCEPTED, Json(serde_json::json!({ "id": a.id, "duplicate": a.duplicate }))).into_response();
    if let Ok(v) = HeaderValue::from_str(&a.id) {
        response.headers_mut().insert("x-call-id", v);
    }
    response
}

/// Stores a call in the cluster from a task of its own, so a caller that
/// hangs up mid-way leaves no half-stored call behind.
async fn submit_to_cluster(
    cluster: &std::sync::Arc<dyn crate::cluster::Cluster>,
    call: NewCall,
) -> Result<sedge_queue::Accepted, ApiError> {
    let cluster = cluster.clone();
    tokio::spawn(async move { cluster.calls().submit(call).await })
        .await
        .unwrap_or_else(|e| Err(ApiError::internal("storing the call", e)))
}

/// In a cluster: the call goes to the cluster's work queue (JetStream),
/// for any node that runs the function (docs/cluster.md).
async fn clustered(
    node: &crate::Node,
    cluster: &std::sync::Arc<dyn crate::cluster::Cluster>,
    raw: &str,
    path: String,
    mut req: Request,
) -> Response {
    let unread = !req.body().is_end_stream();
    let refuse = |error: ApiError| Refused::with(error, unread).into_response();
    let name = match crate::namespace::strip(raw) {
        Ok(n) => n.to_owned(),
        Err(e) => return refuse(e),
    };
    let spec = match node.runtime.get(&name) {
        Some(pool) => Some(pool.spec().clone()),
        None => cluster.lookup(&name).await,
    };
    let Some(spec) = spec else {
        return refuse(ApiError::not_found(&name));
    };
    crate::shared_secrets::token_for_call(node, cluster.as_ref(), &name, spec.auth.invoke).await;
    if let Some(refused) = crate::auth::gate_invoke(node, &name, spec.auth.invoke, req.headers_mut()) {
        return refused;
    }
    let (parts, body) = req.into_parts();
    let asked = match asked(&parts.headers) {
        Ok(a) => a,
        Err(e) => return refuse(e),
    };
    let mut held = Held::default();
    let body = match super::invoke::read_body_for(node, &spec, &name, body, &mut held).await {
        Ok(b) => b,
        Err(e) => return refuse(e),
    };
    let call = new_call(name, &parts, path, body, asked);
    let submitted = submit_to_cluster(cluster, call).await;
    drop(held);
    match submitted {
        Ok(a) => accepted(&a),
        Err(e) => e.into_response(),
    }
}

async fn submit(node: &crate::Node, raw: &str, path: String, req: Request) -> Response {
    let mut req = req;
    if let Some(cluster) = node.cluster.get() {
        return clustered(node, cluster, raw, path, req).await;
    }
    let Some(queue) = node.queue.clone() else { return Refused::new(no_queue(), &req).into_response() };
    let (name, pool) = match find(node, raw, &mut req) {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let (parts, body) = req.into_parts();
    let unread = !body.is_end_stream();
    let refuse = |error: ApiError| Refused::with(error, unread).into_response();
    let asked = match asked(&parts.headers) {
        Ok(a) => a,
        Err(e) => return refuse(e),
    };
    let mut held = Held::default();
    let body = match read_function_body(node, &pool, &name, body, &mut held).await {
        Ok(b) => b,
        Err(e) => return refuse(e),
    };
    let call = new_call(name, &parts, path, body, asked);
    let submitted = queue.submit(vec![call]).await;
    drop(held);
    match submitted.map(|mut v| v.pop()) {
        Ok(Some(Ok(a))) => accepted(&a),
        Ok(Some(Err(e))) => store_error(e).into_response(),
        Ok(None) => ApiError::internal("call store", "no answer for the call").into_response(),
        Err(e) => queue_error(e).into_response(),
    }
}

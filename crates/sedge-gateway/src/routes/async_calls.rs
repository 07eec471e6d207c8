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

/// In a cluster: the call goes to the cluster's work queue (JetStream),
/// for any node that runs the function (docs/cluster.md).
async fn clustered(
    node: &crate::Node,
    cluster: &dyn crate::cluster::Cluster,
    raw: &str,
    path: String,
    mut req: Request,
) -> Response {
    let unread = !req.body().is_end_stream();
    let name = match crate::namespace::strip(raw) {
        Ok(n) => n.to_owned(),
        Err(e) => return Refused::with(e, unread).into_response(),
    };
    let spec = match node.runtime.get(&name) {
        Some(pool) => Some(pool.spec().clone()),
        None => cluster.lookup(&name).await,
    };
    let Some(spec) = spec else {
        return Refused::with(ApiError::not_found(&name), unread).into_response();
    };
    if let Some(refused) = crate::auth::gate_invoke(node, &name, spec.auth.invoke, req.headers_mut()) {
        return refused;
    }
    for unsupported in ["x-callback-url", "x-call-id", "idempotency-key", "x-idempotency-key"] {
        if req.headers().contains_key(unsupported) {
            let error = ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                format!("{unsupported} is not taken by a cluster node yet: read the result with GET /system/calls/ID"),
            );
            return Refused::with(error, unread).into_response();
        }
    }
    let (parts, body) = req.into_parts();
    let mut held = Held::default();
    let body = match super::invoke::read_body_for(node, &spec, &name, body, &mut held).await {
        Ok(b) => b,
        Err(e) => return Refused::with(e, unread).into_response(),
    };
    let inv = super::invoke::invocation(&parts, path, body.into());
    let submitted = cluster.submit_call(&name, inv).await;
    drop(held);
    match submitted {
        Ok(id) => {
            let mut response =
                (StatusCode::ACCEPTED, Json(serde_json::json!({ "id": id, "duplicate": false }))).into_response();
            if let Ok(v) = HeaderValue::from_str(&id) {
                response.headers_mut().insert("x-call-id", v);
            }
            response
        }
        Err(e) => e.into_response(),
    }
}

async fn submit(node: &crate::Node, raw: &str, path: String, req: Request) -> Response {
    let Some(queue) = node.queue.clone() else { return Refused::new(no_queue(), &req).into_response() };
    let mut req = req;
    if let Some(cluster) = node.cluster.get() {
        return clustered(node, cluster.as_ref(), raw, path, req).await;
    }
    let (name, pool) = match find(node, raw, &mut req) {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let (parts, body) = req.into_parts();
    let unread = !body.is_end_stream();
    let refuse = |error: ApiError| Refused::with(error, unread).into_response();
    let given = header(&parts.headers, "x-call-id");
    let key = header(&parts.headers, "idempotency-key").or_else(|| header(&parts.headers, "x-idempotency-key"));
    let callback = header(&parts.headers, "x-callback-url");
    for (what, value) in [("X-Call-Id", &given), ("Idempotency-Key", &key)] {
        if let Some(v) = value {
            if let Err(e) = check_id(what, v) {
                return refuse(e);
            }
        }
    }
    if let Some(url) = &callback {
        if let Err(problem) = sedge_queue::callback::check_url(url) {
            return refuse(ApiError::bad_request(problem));
        }
    }
    let mut held = Held::default();
    let body = match read_function_body(node, &pool, &name, body, &mut held).await {
        Ok(b) => b,
        Err(e) => return refuse(e),
    };
    let id = given.clone().unwrap_or_else(sedge_queue::store::new_id);
    // The function sees the call's id as OpenFaaS's functions do; the
    // callback address is the node's business.
    let mut headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "x-callback-url" | "x-call-id"))
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    headers.push(("x-call-id".to_owned(), id.clone()));
    let call = NewCall {
        function: name,
        kind: CallKind::Http,
        id: Some(id),
        key,
        request: sedge_queue::Request {
            method: parts.method.to_string(),
            path,
            query: parts.uri.query().unwrap_or_default().to_owned(),
            headers,
            body: body.into(),
        },
        callback_url: callback,
    };
    let accepted = queue.submit(vec![call]).await;
    drop(held);
    let accepted = match accepted.map(|mut v| v.pop()) {
        Ok(Some(Ok(a))) => a,
        Ok(Some(Err(e))) => return store_error(e).into_response(),
        Ok(None) => return ApiError::internal("call store", "no answer for the call").into_response(),
        Err(e) => return queue_error(e).into_response(),
    };
    let mut response =
        (StatusCode::ACCEPTED, Json(serde_json::json!({ "id": accepted.id, "duplicate": accepted.duplicate })))
            .into_response();
    if let Ok(v) = HeaderValue::from_str(&accepted.id) {
        response.headers_mut().insert("x-call-id", v);
    }
    response
}

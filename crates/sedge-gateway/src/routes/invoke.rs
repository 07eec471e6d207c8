//! `/function/{name}[/{path..}]`: any method; the method, path, query and
//! headers reach the function. `name.openfaas-fn` (what faas-cli sends)
//! resolves to `name`: a node has one namespace, and another is not found.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, HttpBody};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sedge_core::{Invocation, InvokeError, Reply};
use sedge_runtime::Pool;

use super::body::{read_body, BodyError, Held};
use super::Shared;
use crate::ApiError;

pub async fn invoke_root(State(node): Shared, Path(name): Path<String>, req: Request) -> Response {
    run(&node, &name, "/".to_owned(), req).await
}

pub async fn invoke_path(State(node): Shared, Path((name, path)): Path<(String, String)>, req: Request) -> Response {
    run(&node, &name, format!("/{path}"), req).await
}

async fn run(node: &crate::Node, raw: &str, path: String, req: Request) -> Response {
    let mut req = req;
    if let Some((cluster, local)) = elsewhere(node, raw) {
        return clustered(node, cluster, raw, local, path, req).await;
    }
    match find(node, raw, &mut req) {
        Ok((name, pool)) => forward(node, &name, &pool, path, req).await,
        Err(refused) => *refused,
    }
}

/// In a cluster, when this node does not run function `raw` or has no
/// room for it: the cluster, and the local pool if there is one.
pub(super) fn elsewhere<'a>(
    node: &'a crate::Node,
    raw: &str,
) -> Option<(&'a dyn crate::cluster::Cluster, Option<Arc<Pool>>)> {
    let cluster = node.cluster.get()?;
    let local = crate::namespace::strip(raw).ok().and_then(|n| node.runtime.get(n));
    let room = local.as_ref().is_some_and(|p| {
        let (inflight, capacity) = p.load();
        inflight < capacity
    });
    (!room).then_some((cluster.as_ref(), local))
}

/// A request refused before it ran, answered as is (boxed: a response is large).
pub(super) type Refusal = Box<Response>;

/// The function `raw` names, if it exists and the caller may invoke it
/// (the invoke credential is taken off the headers); else the refusal.
pub(super) fn find(node: &crate::Node, raw: &str, req: &mut Request) -> Result<(String, Arc<Pool>), Refusal> {
    let unread = !req.body().is_end_stream();
    let name = match crate::namespace::strip(raw) {
        Ok(name) => name,
        Err(error) => return Err(Box::new(Refused { error, unread }.into_response())),
    };
    // Unknown names get no metrics series: clients must not be able to
    // grow the metrics without bound.
    let Some(pool) = node.runtime.get(name) else {
        return Err(Box::new(Refused { error: ApiError::not_found(name), unread }.into_response()));
    };
    if let Some(refused) = crate::auth::gate_invoke(node, name, pool.spec().auth.invoke, req.headers_mut()) {
        return Err(Box::new(close_if(unread, refused)));
    }
    Ok((name.to_owned(), pool))
}

/// Runs `req` on `pool` at `path` inside the function, counted in the
/// function's metrics.
pub(super) async fn forward(node: &crate::Node, name: &str, pool: &Pool, path: String, req: Request) -> Response {
    let started = Instant::now();
    // Counted from here on, and ended exactly once: with the answer's
    // status, or as abandoned if the caller goes away first.
    let flight = node.metrics.start(name);
    let mut response = match call(node, pool, name, path, req).await {
        Ok(reply) => reply_response(reply),
        Err(e) => e.into_response(),
    };
    flight.finish(response.status().as_u16());
    if let Ok(v) = HeaderValue::from_str(&format!("{:.6}", started.elapsed().as_secs_f64())) {
        response.headers_mut().insert("x-duration-seconds", v);
    }
    response
}

/// A call of a function this node does not run, or has no room for: sent
/// to another node that runs it; when all of those are full, queued here
/// if this node runs it (429 only when its queue is full too).
pub(super) async fn clustered(
    node: &crate::Node,
    cluster: &dyn crate::cluster::Cluster,
    raw: &str,
    local: Option<Arc<Pool>>,
    path: String,
    mut req: Request,
) -> Response {
    let unread = !req.body().is_end_stream();
    let name = match crate::namespace::strip(raw) {
        Ok(name) => name.to_owned(),
        Err(error) => return Refused { error, unread }.into_response(),
    };
    let spec = match local.as_ref() {
        Some(pool) => Some(pool.spec().clone()),
        None => cluster.lookup(&name).await,
    };
    let Some(spec) = spec else {
        return Refused { error: ApiError::not_found(&name), unread }.into_response();
    };
    crate::shared_secrets::token_for_call(node, cluster, &name, spec.auth.invoke).await;
    if let Some(refused) = crate::auth::gate_invoke(node, &name, spec.auth.invoke, req.headers_mut()) {
        return close_if(unread, refused);
    }
    let started = Instant::now();
    let flight = node.metrics.start(&name);
    let (parts, body) = req.into_parts();
    if let Some(size) = body.size_hint().exact().filter(|n| *n > spec.limits.max_body) {
        let error =
            ApiError::from(InvokeError::PayloadTooLarge { function: name.clone(), size, limit: spec.limits.max_body });
        let response = Refused { error, unread }.into_response();
        flight.finish(response.status().as_u16());
        return response;
    }
    let mut held = Held::default();
    let body = match read_body_for(node, &spec, &name, body, &mut held).await {
        Ok(b) => b,
        Err(error) => {
            let response = Refused { error, unread }.into_response();
            flight.finish(response.status().as_u16());
            return response;
        }
    };
    let inv = invocation(&parts, path, body);
    let answer = match (cluster.forward(&name, inv.clone(), spec.limits.timeout).await, &local) {
        // Every other node is full too: queued here, as a single node would.
        (Err(InvokeError::QueueFull { .. }), Some(pool)) => match pool.admit() {
            Ok(admission) => admission.invoke(inv).await,
            Err(e) => Err(e),
        },
        (other, _) => other,
    };
    drop(held);
    let mut response = match answer {
        Ok(reply) => reply_response(reply),
        Err(e) => ApiError::from(e).into_response(),
    };
    flight.finish(response.status().as_u16());
    if let Ok(v) = HeaderValue::from_str(&format!("{:.6}", started.elapsed().as_secs_f64())) {
        response.headers_mut().insert("x-duration-seconds", v);
    }
    response
}

/// A refusal; `unread` when the request's body was not read to its end.
pub(super) struct Refused {
    error: ApiError,
    unread: bool,
}

impl Refused {
    pub(super) fn new(error: ApiError, req: &Request) -> Self {
        Self { error, unread: !req.body().is_end_stream() }
    }

    /// A refusal once the request is taken apart; `unread` as its body was.
    pub(super) fn with(error: ApiError, unread: bool) -> Self {
        Self { error, unread }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        close_if(self.unread, self.error.into_response())
    }
}

/// A refusal with the body still on the wire closes the connection, so the
/// rest is never parsed as the connection's next request.
/// The invocation an HTTP request makes: its method, the path below the
/// function, its query and its headers (those that are text), and `body`.
pub(crate) fn invocation(parts: &axum::http::request::Parts, path: String, body: bytes::Bytes) -> Invocation {
    Invocation {
        method: parts.method.to_string(),
        path,
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
        body,
    }
}

fn close_if(unread: bool, mut response: Response) -> Response {
    if unread {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Refuses what can be refused before a byte of the body is read (too
/// large by its declared length, no room in the function's queue), then
/// reads the body within `max_body` and the node's body memory.
async fn call(node: &crate::Node, pool: &Pool, name: &str, path: String, req: Request) -> Result<Reply, Refused> {
    let (parts, body) = req.into_parts();
    let unread = !body.is_end_stream();
    let refuse = |error: ApiError| Refused { error, unread };
    if let Some(size) = body.size_hint().exact().filter(|n| *n > pool.spec().limits.max_body) {
        return Err(refuse(too_large(pool, name, size)));
    }
    let admission = pool.admit().map_err(|e| refuse(e.into()))?;
    let mut held = Held::default();
    let body = read_function_body(node, pool, name, body, &mut held).await.map_err(refuse)?;
    let inv = invocation(&parts, path, body);
    let reply = admission.invoke(inv).await;
    // The body's bytes count against the node's memory until the
    // invocation that holds them has ended.
    drop(held);
    reply.map_err(|e| Refused { error: e.into(), unread: false })
}

fn too_large(pool: &Pool, name: &str, size: u64) -> ApiError {
    ApiError::from(InvokeError::PayloadTooLarge { function: name.to_owned(), size, limit: pool.spec().limits.max_body })
}

/// Reads a request body for a call of the function: within its `max_body`
/// (a declared length over it is refused before a byte is read) and the
/// node's body memory, each refusal named. The body's progress timeout
/// restarts at every byte; the function's timeout bounds the whole read, so
/// a client trickling a byte at a time cannot hold a queue place (or the
/// node's body memory) beyond it.
pub(super) async fn read_function_body(
    node: &crate::Node,
    pool: &Pool,
    name: &str,
    body: Body,
    held: &mut Held,
) -> Result<bytes::Bytes, ApiError> {
    read_body_for(node, pool.spec(), name, body, held).await
}

/// [`read_function_body`] by the function's spec, for a function that may
/// run on another node.
pub(super) async fn read_body_for(
    node: &crate::Node,
    spec: &sedge_core::FunctionSpec,
    name: &str,
    body: Body,
    held: &mut Held,
) -> Result<bytes::Bytes, ApiError> {
    let within = spec.limits.timeout;
    let read = tokio::time::timeout(within, read_body(body, spec.limits.max_body, &node.body_memory, held))
        .await
        .map_err(|_| ApiError::body_late(within))?;
    read.map_err(|e| match e {
        BodyError::Over(size) => ApiError::from(InvokeError::PayloadTooLarge {
            function: name.to_owned(),
            size,
            limit: spec.limits.max_body,
        }),
        BodyError::NoMemory => ApiError::body_memory_full(node.body_memory.budget()),
        BodyError::Stalled(after) => ApiError::body_stalled(after),
        BodyError::Broken(msg) => ApiError::bad_request(format!("could not read the request body: {msg}")),
    })
}

fn reply_response(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = Response::new(Body::from(reply.body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (k, v) in reply.headers {
        let lower = k.to_ascii_lowercase();
        // The connection's framing is the gateway's business, not the function's.
        if matches!(lower.as_str(), "content-length" | "transfer-encoding" | "connection" | "keep-alive") {
            continue;
        }
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(lower.as_bytes()), HeaderValue::from_str(&v)) {
            headers.append(k, v);
        }
    }
    response
}

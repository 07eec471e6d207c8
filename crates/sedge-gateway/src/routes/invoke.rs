//! `/function/{name}[/{path..}]`: any method; the method, path, query and
//! headers reach the function. `name.namespace` (what faas-cli sends)
//! resolves to `name`: a node has one namespace.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sedge_core::{Invocation, InvokeError, Reply};
use sedge_runtime::Pool;

use super::body::{read_capped, Capped};
use super::Shared;
use crate::ApiError;

pub async fn invoke_root(State(node): Shared, Path(name): Path<String>, req: Request) -> Response {
    run(&node, &name, "/".to_owned(), req).await
}

pub async fn invoke_path(State(node): Shared, Path((name, path)): Path<(String, String)>, req: Request) -> Response {
    run(&node, &name, format!("/{path}"), req).await
}

/// `hello.openfaas-fn` → `hello`.
fn function_name(raw: &str) -> &str {
    raw.split_once('.').map_or(raw, |(name, _namespace)| name)
}

async fn run(node: &crate::Node, raw: &str, path: String, req: Request) -> Response {
    let name = function_name(raw);
    let started = Instant::now();
    // Unknown names get no metrics series: clients must not be able to
    // grow the metrics without bound.
    let Some(pool) = node.runtime.get(name) else { return ApiError::not_found(name).into_response() };
    let mut req = req;
    if let Some(refused) = crate::auth::gate_invoke(node, name, pool.spec().auth.invoke, req.headers_mut()) {
        return refused;
    }
    let mut response = match call(&pool, name, path, req).await {
        Ok(reply) => reply_response(reply),
        Err(e) => e.into_response(),
    };
    node.metrics.observe(name, response.status().as_u16(), started.elapsed());
    if let Ok(v) = HeaderValue::from_str(&format!("{:.6}", started.elapsed().as_secs_f64())) {
        response.headers_mut().insert("x-duration-seconds", v);
    }
    response
}

async fn call(pool: &Pool, name: &str, path: String, req: Request) -> Result<Reply, ApiError> {
    let (parts, body) = req.into_parts();
    let limit = pool.spec().limits.max_body;
    let too_large = |size: u64| InvokeError::PayloadTooLarge { function: name.to_owned(), size, limit };
    let body = read_capped(body, limit)
        .await
        .map_err(|e| match e {
            Capped::Over(size) => ApiError::from(too_large(size)),
            Capped::Broken(msg) => ApiError::bad_request(format!("could not read the request body: {msg}")),
        })?
        .into();
    let headers =
        parts.headers.iter().filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned()))).collect();
    let inv = Invocation {
        method: parts.method.to_string(),
        path,
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers,
        body,
    };
    Ok(pool.invoke(inv).await?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_suffix_is_dropped() {
        assert_eq!(function_name("hello.openfaas-fn"), "hello");
        assert_eq!(function_name("hello"), "hello");
    }
}

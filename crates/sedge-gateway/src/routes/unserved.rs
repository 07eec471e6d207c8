//! Answers for what the node does not serve, each saying which case it is:
//! an OpenFaaS gateway route sedge has not got (501), a method a route
//! does not take (405, with `Allow`), or no route at all (404).

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::routing::{any, MethodRouter};

use crate::ApiError;

/// Routes OpenFaaS's gateway and faas-provider serve that sedge does not.
pub const OPENFAAS_ONLY: [&str; 4] = [
    // Alertmanager's webhook, which scales OpenFaaS functions.
    "/system/alert",
    "/system/telemetry",
    // Namespaces are created, changed and removed there; a node has one.
    "/system/namespace/",
    "/system/namespace/{name}",
];

/// The handler for one of [`OPENFAAS_ONLY`]: any method.
pub fn openfaas_only<S: Clone + Send + Sync + 'static>() -> MethodRouter<S> {
    any(|method: Method, path: MatchedPath| async move {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            format!("sedge does not serve OpenFaaS's {method} {} yet", path.as_str()),
        )
    })
}

/// A route that exists, asked with a method it does not take.
pub async fn method_not_allowed(req: Request) -> ApiError {
    let path = req.extensions().get::<MatchedPath>().map_or_else(|| req.uri().path(), MatchedPath::as_str);
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{path} does not take {}; the Allow header lists the methods it takes", req.method()),
    )
}

pub async fn no_such_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

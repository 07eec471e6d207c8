//! A node has one namespace, named as OpenFaaS names its default. Clients
//! written for OpenFaaS name it (`?namespace=`, a body's `namespace`,
//! `NAME.NAMESPACE`); naming another is answered 404 rather than read as
//! the one there is, so a script aimed at a namespace that is not here
//! learns so instead of acting on the wrong functions.

use axum::extract::{Query, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::ApiError;

pub const NAMESPACE: &str = "openfaas-fn";

/// The answer for a namespace this node does not have.
pub fn unknown(given: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no such namespace: {given} (sedge has one: {NAMESPACE})"))
}

/// Absent or empty means the default, as in OpenFaaS.
pub fn check(given: Option<&str>) -> Result<(), ApiError> {
    match given {
        None | Some("" | NAMESPACE) => Ok(()),
        Some(other) => Err(unknown(other)),
    }
}

/// `NAME` or `NAME.NAMESPACE` (what faas-cli sends) → `NAME`.
pub fn strip(raw: &str) -> Result<&str, ApiError> {
    match raw.split_once('.') {
        None => Ok(raw),
        Some((name, ns)) => check(Some(ns)).map(|()| name),
    }
}

/// `/system/` routes: a `?namespace=` naming another namespace is refused
/// before the route runs.
pub async fn query_namespace(req: Request, next: Next) -> Response {
    // Any other query problem is the route's own to report.
    if let Ok(Query(pairs)) = Query::<Vec<(String, String)>>::try_from_uri(req.uri()) {
        for (k, v) in &pairs {
            if k == "namespace" {
                if let Err(e) = check(Some(v)) {
                    return e.into_response();
                }
            }
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_namespace_may_be_named_or_left_out() {
        for ok in [None, Some(""), Some("openfaas-fn")] {
            assert!(check(ok).is_ok(), "{ok:?}");
        }
        let e = check(Some("staging")).expect_err("another namespace");
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.message, "no such namespace: staging (sedge has one: openfaas-fn)");
    }

    #[test]
    fn a_namespace_suffix_is_dropped_only_when_it_is_the_one_there_is() {
        assert_eq!(strip("hello").ok(), Some("hello"));
        assert_eq!(strip("hello.openfaas-fn").ok(), Some("hello"));
        assert_eq!(strip("hello.").ok(), Some("hello"));
        let e = strip("hello.dev").expect_err("another namespace");
        assert!(e.message.contains("no such namespace: dev"), "{}", e.message);
    }
}

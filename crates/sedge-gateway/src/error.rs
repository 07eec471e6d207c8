//! The one place where a failure becomes an HTTP status and a JSON
//! `{"error": ...}` body. Internal details (database, I/O) are logged and
//! answered with a generic message; what the user caused is named.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sedge_core::InvokeError;
use sedge_store::{BundleError, SecretError, StoreError};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(name: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("function {name} not found"))
    }

    /// The node's memory for request bodies is taken by other requests.
    pub fn body_memory_full(budget: u64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the node holds its limit of {budget} bytes of request bodies in memory; try again shortly"),
        )
    }

    /// The client stopped sending its request body.
    pub fn body_stalled(after: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body sent nothing for {}", humantime::format_duration(after)),
        )
    }

    /// A body that kept trickling in but did not arrive whole in time.
    pub fn body_late(within: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive whole within {}", humantime::format_duration(within)),
        )
    }

    /// A failure the caller cannot fix: logged in full, answered briefly.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!("{context}: {err}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{context}: internal error, see the node's log"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(serde_json::json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS || self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

pub fn invoke_status(e: &InvokeError) -> StatusCode {
    match e {
        InvokeError::NotFound(_) => StatusCode::NOT_FOUND,
        InvokeError::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
        InvokeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        InvokeError::Crashed { .. }
        | InvokeError::StartFailed { .. }
        | InvokeError::AnswerTooLarge { .. }
        | InvokeError::OutOfMemory { .. } => StatusCode::BAD_GATEWAY,
        InvokeError::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        InvokeError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        InvokeError::ShuttingDown(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A runtime kind this node has no engine for: the deploy is refused.
impl From<sedge_runtime::NoEngine> for ApiError {
    fn from(e: sedge_runtime::NoEngine) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
    }
}

impl From<InvokeError> for ApiError {
    fn from(e: InvokeError) -> Self {
        Self::new(invoke_status(&e), e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Bundle(BundleError::TooLarge(_)) => Self::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
            StoreError::Bundle(BundleError::Io(_)) => Self::internal("unpacking the bundle", e),
            StoreError::Bundle(_) | StoreError::Manifest(_) | StoreError::NameMismatch { .. } => {
                Self::bad_request(e.to_string())
            }
            StoreError::Locked(_) | StoreError::Dir { .. } | StoreError::Db(_) | StoreError::Corrupt { .. } => {
                Self::internal("store", e)
            }
        }
    }
}

impl From<sedge_deps::DepsError> for ApiError {
    fn from(e: sedge_deps::DepsError) -> Self {
        if e.is_users() {
            Self::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        } else {
            Self::internal("installing the function's dependencies", e)
        }
    }
}

impl From<SecretError> for ApiError {
    fn from(e: SecretError) -> Self {
        match e {
            SecretError::Exists(_) => Self::new(StatusCode::CONFLICT, e.to_string()),
            SecretError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, e.to_string()),
            SecretError::TooLarge { .. } => Self::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
            SecretError::EmptyPassword(_) | SecretError::Io { .. } | SecretError::Random(_) => {
                Self::internal("secret store", e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_invoke_error_has_its_status() {
        let f = || "f".to_owned();
        let cases = [
            (InvokeError::NotFound(f()), 404),
            (InvokeError::QueueFull { function: f(), limit: 1 }, 429),
            (InvokeError::Timeout { function: f(), timeout_ms: 1 }, 504),
            (InvokeError::Crashed { function: f(), status: "exit status: 3".into() }, 502),
            (InvokeError::StartFailed { function: f(), message: "x".into() }, 502),
            (InvokeError::Failed { function: f(), message: "x".into() }, 500),
            (InvokeError::PayloadTooLarge { function: f(), size: 2, limit: 1 }, 413),
            (InvokeError::AnswerTooLarge { function: f(), size: Some(2), limit: 1 }, 502),
            (InvokeError::OutOfMemory { function: f(), limit: 1 }, 502),
            (InvokeError::ShuttingDown(f()), 503),
        ];
        for (e, code) in cases {
            assert_eq!(invoke_status(&e).as_u16(), code, "{e}");
        }
    }

    #[test]
    fn body_refusals_have_their_status_and_retry_after_when_it_helps() {
        let full = ApiError::body_memory_full(10).into_response();
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(full.headers().get(header::RETRY_AFTER).map(|v| v.as_bytes()), Some(&b"1"[..]));
        let stalled = ApiError::body_stalled(std::time::Duration::from_secs(30));
        assert_eq!(stalled.status, StatusCode::REQUEST_TIMEOUT);
        assert!(stalled.message.contains("30s"), "{}", stalled.message);
    }

    #[test]
    fn bundle_errors_name_the_problem_with_their_status() {
        let unsafe_entry = BundleError::UnsafeEntry { path: "x/y".into(), reason: "its folder x is a link".into() };
        let cases = [
            (StoreError::Bundle(unsafe_entry), 400, "\"x/y\""),
            (StoreError::Bundle(BundleError::TooLarge("it unpacks to more than 5 bytes".into())), 413, "5 bytes"),
            (StoreError::Bundle(BundleError::NotAnArchive("bad gzip".into())), 400, "tar.gz"),
            (StoreError::Bundle(BundleError::NoManifest), 400, "sedge.toml"),
            (StoreError::Bundle(BundleError::Io(std::io::Error::other("disk full"))), 500, "internal"),
        ];
        for (e, code, says) in cases {
            let a = ApiError::from(e);
            assert_eq!(a.status.as_u16(), code, "{}", a.message);
            assert!(a.message.contains(says), "{:?} should say {says:?}", a.message);
        }
    }
}

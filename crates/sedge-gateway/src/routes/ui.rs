//! The dashboard at `/ui/`: a page and its scripts, compiled into the
//! binary so the node serves them with no network and no files beside it.
//!
//! The assets are the same on every node and hold nothing secret, so they
//! are served to anyone; every figure the page shows comes from `/system/`
//! with the admin credential the page's login form asks for (see
//! docs/security.md, "The dashboard"). `/system/stats` is the one route
//! added for it: the node's own invocation counters as JSON.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use serde_json::json;

use super::Shared;
use crate::ApiError;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset { name: "index.html", content_type: "text/html; charset=utf-8", body: include_str!("../../ui/index.html") },
    Asset { name: "app.js", content_type: "text/javascript; charset=utf-8", body: include_str!("../../ui/app.js") },
    Asset { name: "chart.js", content_type: "text/javascript; charset=utf-8", body: include_str!("../../ui/chart.js") },
    Asset { name: "style.css", content_type: "text/css; charset=utf-8", body: include_str!("../../ui/style.css") },
];

/// Scripts and styles from the node only, no inline script, no framing: a
/// function's answer shown in the page is text, never markup that runs.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(name: &str) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.name == name) else {
        return ApiError::new(StatusCode::NOT_FOUND, format!("the dashboard has no file {name:?}")).into_response();
    };
    let mut resp = a.body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // A new binary brings new assets; a browser must not keep the old ones.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

pub async fn index() -> Response {
    asset("index.html")
}

pub async fn file(Path(name): Path<String>) -> Response {
    asset(&name)
}

pub async fn to_index() -> Redirect {
    Redirect::permanent("/ui/")
}

/// `GET /system/stats`: each function's ended invocations (count, failures,
/// seconds, latency buckets) since the node started, and when they were read.
pub async fn stats(State(node): Shared) -> Json<serde_json::Value> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    // A node is standalone until clustering exists; the page says so.
    Json(json!({
        "nowMs": now_ms,
        "cluster": null,
        "functions": node.metrics.invocation_totals(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_served_with_its_type_and_policy() {
        for a in ASSETS {
            let resp = asset(a.name);
            assert_eq!(resp.status(), StatusCode::OK, "{}", a.name);
            assert_eq!(resp.headers()[header::CONTENT_TYPE], a.content_type);
            assert!(resp.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        }
        assert_eq!(asset("../Cargo.toml").status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn the_page_loads_only_its_own_scripts() {
        let index = ASSETS[0].body;
        // Inline scripts would be refused by the policy; external ones need the network.
        assert!(!index.contains("<script>"));
        assert!(!index.contains("http://") && !index.contains("https://"));
    }
}

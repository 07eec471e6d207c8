//! The management API answers only its own clients: a web page on another
//! origin can make a browser send simple cross-origin requests (a form
//! post, a `fetch` in no-cors mode) to a node on the same network, so any
//! `/system/` request a browser marks as cross-origin is refused.

use axum::extract::Request;
use axum::http::uri::{Authority, Scheme};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::ApiError;

pub async fn same_origin_only(req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/system/") {
        if let Some(why) = cross_origin(req.headers()) {
            return ApiError::new(StatusCode::FORBIDDEN, why).into_response();
        }
    }
    next.run(req).await
}

/// Why the request is from another origin, if it is. Clients that are not
/// browsers (the CLI, faas-cli, curl) send neither header.
fn cross_origin(headers: &HeaderMap) -> Option<String> {
    let refused = "the management API (/system/) refuses cross-origin browser requests";
    if headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site")) {
        return Some(format!("{refused} (Sec-Fetch-Site: cross-site)"));
    }
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().unwrap_or("?");
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if host.is_some_and(|host| same_host(text, host)) {
        return None;
    }
    Some(format!("{refused}: Origin {text} is not this node ({})", host.unwrap_or("no Host header")))
}

/// Whether `origin` (`scheme://host[:port]`) names the same host and port
/// as the `Host` header, a missing port being the scheme's default.
fn same_host(origin: &str, host: &str) -> bool {
    let (Ok(origin), Ok(host)) = (origin.parse::<Uri>(), host.parse::<Authority>()) else { return false };
    let Some(authority) = origin.authority() else { return false };
    let default = if origin.scheme() == Some(&Scheme::HTTPS) { 443 } else { 80 };
    authority.host().eq_ignore_ascii_case(host.host())
        && authority.port_u16().unwrap_or(default) == host.port_u16().unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn same_origin_and_non_browser_requests_pass() {
        assert_eq!(cross_origin(&headers(&[("host", "10.0.0.5:8080")])), None);
        assert_eq!(cross_origin(&headers(&[("host", "10.0.0.5:8080"), ("origin", "http://10.0.0.5:8080")])), None);
        assert_eq!(cross_origin(&headers(&[("host", "Node.local"), ("origin", "http://node.local:80")])), None);
        assert_eq!(cross_origin(&headers(&[("host", "node"), ("sec-fetch-site", "same-origin")])), None);
    }

    #[test]
    fn other_origins_are_refused() {
        let cases: [&[(&str, &str)]; 5] = [
            &[("host", "10.0.0.5:8080"), ("origin", "http://evil.example")],
            &[("host", "10.0.0.5:8080"), ("origin", "http://10.0.0.5:3000")],
            &[("host", "10.0.0.5:8080"), ("origin", "null")],
            &[("origin", "http://10.0.0.5:8080")],
            &[("host", "10.0.0.5:8080"), ("sec-fetch-site", "cross-site")],
        ];
        for case in cases {
            let why = cross_origin(&headers(case));
            assert!(why.as_deref().is_some_and(|w| w.contains("cross-origin")), "{case:?}: {why:?}");
        }
    }

    proptest::proptest! {
        /// Any header bytes a client sends are judged without a panic, and
        /// an origin naming the Host it came with always passes.
        #[test]
        fn any_headers_are_judged_and_the_own_origin_passes(
            origin in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            host in "[a-z0-9.-]{1,20}(:[0-9]{1,5})?",
            https in proptest::bool::ANY,
        ) {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, host.parse().expect("host header"));
            if let Ok(v) = axum::http::HeaderValue::from_bytes(&origin) {
                h.insert(header::ORIGIN, v);
                let _ = cross_origin(&h);
            }
            let scheme = if https { "https" } else { "http" };
            if let Ok(v) = format!("{scheme}://{host}").parse() {
                h.insert(header::ORIGIN, v);
                if format!("{scheme}://{host}").parse::<Uri>().is_ok_and(|u| u.authority().is_some()) {
                    proptest::prop_assert_eq!(cross_origin(&h), None);
                }
            }
        }
    }
}

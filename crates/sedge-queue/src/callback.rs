//! Delivering a finished call's result to its `X-Callback-Url`, the way
//! OpenFaaS's queue-worker does: a POST of the function's answer with its
//! headers and `X-Call-Id`, `X-Function-Name`, `X-Function-Status`,
//! `X-Duration-Seconds`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use crate::store::Call;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Bytes of a receiver's answer read before the connection is dropped.
const MAX_ANSWER_READ: usize = 64 * 1024;

pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector)
}

/// Why a callback URL is refused at submission.
pub fn check_url(url: &str) -> Result<(), String> {
    let uri: Uri = url.parse().map_err(|_| format!("X-Callback-Url {url:?} is not a URL"))?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some_and(|h| !h.is_empty()) => Ok(()),
        Some("https") => {
            Err(format!("X-Callback-Url {url:?}: this node posts callbacks over plain http only; give an http:// URL"))
        }
        _ => Err(format!("X-Callback-Url {url:?}: expected an http:// URL with a host")),
    }
}

/// Headers of the function's answer that describe the connection, not the answer.
fn hop_by_hop(name: &str) -> bool {
    matches!(name, "content-length" | "transfer-encoding" | "connection" | "keep-alive" | "host")
}

/// Posts `call`'s result; `Ok` when the receiver answered 2xx.
pub async fn deliver(client: &HttpClient, call: &Call, timeout: Duration) -> Result<(), String> {
    let url = call.callback_url.as_deref().ok_or("no callback URL")?;
    let uri: Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    let mut req = Request::builder().method(Method::POST).uri(uri);
    for (k, v) in &call.reply_headers {
        let lower = k.to_ascii_lowercase();
        if hop_by_hop(&lower) || lower.starts_with("x-call-id") || lower.starts_with("x-function-") {
            continue;
        }
        req = req.header(lower, v);
    }
    let status = call.status.unwrap_or(500);
    let duration = call.duration_ms.unwrap_or(0) as f64 / 1000.0;
    req = req
        .header("x-call-id", &call.id)
        .header("x-function-name", &call.function)
        .header("x-function-status", status.to_string())
        .header("x-duration-seconds", format!("{duration:.6}"));
    let body = call.reply_body.clone().unwrap_or_default();
    let req = req.body(Full::new(body)).map_err(|e| format!("building the request: {e}"))?;
    let sent = async {
        let resp = client.request(req).await.map_err(|e| format!("POST {url}: {e}"))?;
        let code = resp.status();
        // Read a short answer so the connection can be reused; a long one
        // is cut off (the connection closes), never held.
        let mut body = resp.into_body();
        let mut read = 0usize;
        while read <= MAX_ANSWER_READ {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                _ => break,
            }
        }
        if code.is_success() {
            Ok(())
        } else {
            Err(format!("POST {url}: the receiver answered {}", code.as_u16()))
        }
    };
    match tokio::time::timeout(timeout, sent).await {
        Ok(r) => r,
        Err(_) => Err(format!("POST {url}: no answer within {} s", timeout.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_with_a_host() {
        assert!(check_url("http://127.0.0.1:9000/cb").is_ok());
        assert!(check_url("https://example.org/cb").expect_err("https").contains("plain http"));
        assert!(check_url("ftp://x/").is_err());
        assert!(check_url("not a url").is_err());
        assert!(check_url("/relative").is_err());
    }
}

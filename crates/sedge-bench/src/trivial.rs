//! A trivial HTTP/1.1 server: the target for measuring the generator's own
//! ceiling (next to `wrk`), and for the tests, with delays and failures on
//! demand, chosen by path:
//!
//! - `/delay/MS`: answers 200 after MS milliseconds
//! - `/status/CODE`: answers CODE
//! - `/every/N/CODE`: every N-th request to the server answers CODE, the rest 200
//! - `/echo`: answers the request body
//! - `/close`: closes the connection without answering
//! - `/close-every/N`: every N-th request closes the connection, the rest 200
//! - anything else: 200 `ok`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Serves until the task is dropped or the listener fails.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    let hits = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let hits = hits.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, hits.clone()));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

#[derive(Debug)]
struct Close;

impl std::fmt::Display for Close {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("closing without an answer")
    }
}

impl std::error::Error for Close {}

fn reply(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp
}

async fn answer(req: Request<Incoming>, hits: Arc<AtomicU64>) -> Result<Response<Full<Bytes>>, Close> {
    let n = hits.fetch_add(1, Ordering::Relaxed) + 1;
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let num = |i: usize| parts.get(i).and_then(|p| p.parse::<u64>().ok());
    Ok(match parts.first().copied() {
        Some("delay") => {
            tokio::time::sleep(Duration::from_millis(num(1).unwrap_or(0))).await;
            reply(200, "ok")
        }
        Some("status") => {
            let code = num(1).and_then(|c| u16::try_from(c).ok()).unwrap_or(200);
            reply(code, format!("status {code}"))
        }
        Some("every") => match (num(1).filter(|&k| k > 0), num(2).and_then(|c| u16::try_from(c).ok())) {
            (Some(k), Some(code)) if n.is_multiple_of(k) => reply(code, format!("status {code}")),
            _ => reply(200, "ok"),
        },
        Some("echo") => {
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            reply(200, body)
        }
        Some("close") => return Err(Close),
        Some("close-every") if num(1).is_some_and(|k| k > 0 && n.is_multiple_of(k)) => return Err(Close),
        _ => reply(200, "ok"),
    })
}

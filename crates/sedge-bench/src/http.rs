//! The HTTP/1.1 client side: a target URL resolved once, and one keep-alive
//! connection per simulated user that reconnects after a failure.
//!
//! hyper's low-level `client::conn` is used rather than a pooled client so
//! that each user owns exactly one connection, as a real user (or `wrk`)
//! would, and so that a connect failure can be told apart from the rest.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::BenchError;
use crate::outcome::Outcome;

/// A plain-HTTP URL, its address resolved once so that name lookups stay
/// out of the measured path.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: String,
    pub addr: SocketAddr,
    authority: HeaderValue,
    path: Uri,
}

impl Endpoint {
    pub async fn resolve(url: &str) -> Result<Self, BenchError> {
        let bad = |reason: &str| BenchError::Url { url: url.to_owned(), reason: reason.to_owned() };
        let uri: Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(bad("https is not supported; give a plain http:// URL")),
            _ => return Err(bad("expected http://HOST[:PORT]/PATH")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| bad(&format!("cannot resolve {host}: {e}")))?
            .next()
            .ok_or_else(|| bad(&format!("{host} has no address")))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        Ok(Self {
            url: url.to_owned(),
            addr,
            authority: HeaderValue::from_str(authority.as_str()).map_err(|e| bad(&e.to_string()))?,
            path: path.parse().map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?,
        })
    }
}

/// The request every call of a load run sends.
#[derive(Debug, Clone)]
pub struct RequestTemplate {
    method: Method,
    path: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl RequestTemplate {
    /// `headers` are (name, value) pairs as the user gave them; a body
    /// without a content type gets `application/json` when it parses as JSON.
    pub fn new(
        endpoint: &Endpoint,
        method: &str,
        headers: &[(String, String)],
        body: Bytes,
        keep_alive: bool,
    ) -> Result<Self, BenchError> {
        let bad = |reason: String| BenchError::Url { url: endpoint.url.clone(), reason };
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| bad(format!("invalid method {method:?}")))?;
        let mut map = HeaderMap::new();
        map.insert(HOST, endpoint.authority.clone());
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.trim().as_bytes()).map_err(|_| bad(format!("invalid header {k:?}")))?;
            let value = HeaderValue::from_str(v.trim()).map_err(|_| bad(format!("invalid value for header {k}")))?;
            map.append(name, value);
        }
        if !body.is_empty() && !map.contains_key(CONTENT_TYPE) {
            let json = serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok();
            let kind = if json { "application/json" } else { "application/octet-stream" };
            map.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
        }
        if !keep_alive {
            map.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        Ok(Self { method, path: endpoint.path.clone(), headers: map, body })
    }

    fn build(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.path.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// An answer: status, body size, and the body itself when asked to keep it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub bytes: u64,
    pub body: Vec<u8>,
}

/// Why no answer came. The classes match [`Outcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Connect,
    Timeout,
    Io,
}

impl From<Failure> for Outcome {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Connect => Outcome::Connect,
            Failure::Timeout => Outcome::Timeout,
            Failure::Io => Outcome::Io,
        }
    }
}

/// The connection's state machine, polled inside the user's own task.
type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// An open connection: the handle requests go through, and the future that
/// does the socket work for it.
struct Link {
    sender: SendRequest<Full<Bytes>>,
    driver: Driver,
    /// The driver has completed and must not be polled again.
    finished: bool,
}

impl Link {
    /// Whether the connection is still usable: polls the driver once, so a
    /// close by the server since the last request is noticed before
    /// anything is sent on it.
    async fn alive(&mut self) -> bool {
        if !self.finished {
            self.finished = std::future::poll_fn(|cx| Poll::Ready(self.driver.as_mut().poll(cx).is_ready())).await;
        }
        !self.finished && self.sender.ready().await.is_ok()
    }
}

/// One user's connection to one endpoint.
///
/// The connection is driven in the user's task rather than a task of its
/// own: a request then costs no hand-over between tasks, which raises the
/// generator's ceiling by a good part.
pub struct Conn {
    addr: SocketAddr,
    keep_alive: bool,
    link: Option<Link>,
}

impl Conn {
    pub fn new(addr: SocketAddr, keep_alive: bool) -> Self {
        Self { addr, keep_alive, link: None }
    }

    /// Sends the request and reads the whole answer within `timeout`
    /// (connecting first if needed). After a failure the connection is
    /// dropped, so the next call starts on a fresh one.
    pub async fn call(
        &mut self,
        request: &RequestTemplate,
        keep_body: bool,
        timeout: Duration,
    ) -> Result<Answer, Failure> {
        let result = match tokio::time::timeout(timeout, self.exchange(request, keep_body)).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Timeout),
        };
        if result.is_err() || !self.keep_alive {
            self.link = None;
        }
        result
    }

    async fn exchange(&mut self, request: &RequestTemplate, keep_body: bool) -> Result<Answer, Failure> {
        // A keep-alive connection the server has closed shows up here, before
        // anything is sent: reconnecting is not a failure.
        let alive = match &mut self.link {
            Some(link) => link.alive().await,
            None => false,
        };
        if !alive {
            self.link = Some(connect(self.addr).await?);
        }
        let Link { sender, driver, finished } = self.link.as_mut().ok_or(Failure::Connect)?;
        let work = async {
            let resp = sender.send_request(request.build()).await.map_err(|_| Failure::Io)?;
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut bytes = 0u64;
            let mut kept = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|_| Failure::Io)?;
                if let Some(data) = frame.data_ref() {
                    bytes += data.len() as u64;
                    if keep_body {
                        kept.extend_from_slice(data);
                    }
                }
            }
            Ok(Answer { status, bytes, body: kept })
        };
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                () = driver.as_mut(), if !*finished => {
                    // The connection ended; the exchange now fails or
                    // finishes with what was already read.
                    *finished = true;
                }
                result = &mut work => return result,
            }
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<Link, Failure> {
    let stream = TcpStream::connect(addr).await.map_err(|_| Failure::Connect)?;
    // Small requests and answers: Nagle's delay would be measured as latency.
    let _ = stream.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|_| Failure::Connect)?;
    let driver: Driver = Box::pin(async move {
        let _ = conn.await;
    });
    Ok(Link { sender, driver, finished: false })
}

/// One request outside any load run (management calls, cold starts).
pub async fn once(
    url: &str,
    method: &str,
    headers: &[(String, String)],
    body: Bytes,
    timeout: Duration,
) -> Result<Answer, BenchError> {
    let endpoint = Endpoint::resolve(url).await?;
    let request = RequestTemplate::new(&endpoint, method, headers, body, false)?;
    let mut conn = Conn::new(endpoint.addr, false);
    conn.call(&request, true, timeout).await.map_err(|f| {
        let why = match f {
            Failure::Connect => "cannot connect",
            Failure::Timeout => "no answer in time",
            Failure::Io => "connection broken",
        };
        BenchError::Node(format!("{method} {url}: {why}"))
    })
}

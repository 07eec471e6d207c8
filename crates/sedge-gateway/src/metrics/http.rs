//! Every request the node answers: `http_requests_total` and
//! `http_request_duration_seconds` by `method`, `path` and `status`, the
//! names and labels OpenFaaS's gateway gave its request figures.
//!
//! `path` is the route as declared (`/function/{name}`,
//! `/system/function/{name}`), `unmatched` for a path no route takes, and
//! `method` one of HTTP's own or `OTHER`: a client choosing paths and
//! methods must not be able to grow the metrics without bound. The time is
//! until the answer's head is ready; a followed log's stream is not timed.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{HistogramVec, IntCounterVec, DEFAULT_BUCKETS};

use super::invocations::CLIENT_GONE;
use super::{counters, histograms};
use crate::Node;

/// The `path` of a request no route took.
pub const UNMATCHED: &str = "unmatched";

pub struct HttpFigures {
    total: IntCounterVec,
    seconds: HistogramVec,
}

const LABELS: [&str; 3] = ["method", "path", "status"];

impl Default for HttpFigures {
    fn default() -> Self {
        Self {
            total: counters("http_requests_total", "HTTP requests answered, by method, route and status", &LABELS),
            seconds: histograms(
                "http_request_duration_seconds",
                "Seconds spent answering HTTP requests, by method, route and status",
                &LABELS,
                DEFAULT_BUCKETS.to_vec(),
            ),
        }
    }
}

impl HttpFigures {
    pub fn collect(&self) -> Vec<MetricFamily> {
        [self.total.collect(), self.seconds.collect()].concat()
    }
}

/// Middleware: counts and times each request once it is answered (or
/// dropped: a request whose client went away counts with status 499).
pub async fn track(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let path = req.extensions().get::<MatchedPath>().map_or(UNMATCHED, |p| p.as_str()).to_owned();
    let mut seen =
        Seen { node: node.clone(), method: method_label(req.method()), path, began: Instant::now(), done: false };
    let response = next.run(req).await;
    seen.record(response.status().as_u16());
    response
}

/// A request not yet counted; counted once, at its answer or its drop.
struct Seen {
    node: Arc<Node>,
    method: &'static str,
    path: String,
    began: Instant,
    done: bool,
}

impl Seen {
    fn record(&mut self, status: u16) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let status = status.to_string();
        let labels = [self.method, self.path.as_str(), status.as_str()];
        let figures = &self.node.metrics.http;
        figures.total.with_label_values(&labels).inc();
        figures.seconds.with_label_values(&labels).observe(self.began.elapsed().as_secs_f64());
    }
}

impl Drop for Seen {
    fn drop(&mut self) {
        self.record(CLIENT_GONE);
    }
}

fn method_label(m: &Method) -> &'static str {
    const KNOWN: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"];
    KNOWN.into_iter().find(|k| *k == m.as_str()).unwrap_or("OTHER")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_http_s_own_count_as_other() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let made_up = Method::from_bytes(b"BREW").expect("a token");
        assert_eq!(method_label(&made_up), "OTHER");
    }
}

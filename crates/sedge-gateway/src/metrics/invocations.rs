//! Function invocations under the OpenFaaS gateway's names:
//! `gateway_function_invocation_started` when one begins,
//! `gateway_function_invocation_total` and `gateway_functions_seconds`
//! (by status code) when it ends. Every start is ended exactly once, so
//! in-flight panels (started − total) stay true.

use std::time::Instant;

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{HistogramVec, IntCounterVec};

use super::{counters, histograms, series_name};

/// The code an invocation ends with when its caller went away before the
/// answer (nginx's "client closed request"): the request's future was
/// dropped, and no status was ever sent.
pub const CLIENT_GONE: u16 = 499;

pub struct Invocations {
    started: IntCounterVec,
    total: IntCounterVec,
    seconds: HistogramVec,
}

impl Default for Invocations {
    fn default() -> Self {
        // Latency buckets from 1 ms to 60 s: hello calls land low, model
        // inference and cold starts in the middle, timeouts at the top.
        let buckets = vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
        Self {
            // OpenFaaS's name, without `_total`: dashboards query it so.
            started: counters(
                "gateway_function_invocation_started",
                "Function invocations started (started minus gateway_function_invocation_total is in flight)",
                &["function_name"],
            ),
            total: counters(
                "gateway_function_invocation_total",
                "Function invocations ended, by status code (499: the caller went away first)",
                &["function_name", "code"],
            ),
            seconds: histograms(
                "gateway_functions_seconds",
                "Function invocation time in seconds, by status code",
                &["function_name", "code"],
                buckets,
            ),
        }
    }
}

impl Invocations {
    pub fn start(&self, function: &str) -> InFlight<'_> {
        let function = series_name(function);
        self.started.with_label_values(&[&function]).inc();
        InFlight { figures: self, function, began: Instant::now(), ended: false }
    }

    pub fn collect(&self) -> Vec<MetricFamily> {
        [self.started.collect(), self.total.collect(), self.seconds.collect()].concat()
    }
}

/// An invocation counted as started and not yet as ended.
pub struct InFlight<'a> {
    figures: &'a Invocations,
    function: String,
    began: Instant,
    ended: bool,
}

impl InFlight<'_> {
    /// Counts the invocation as ended with `code`.
    pub fn finish(mut self, code: u16) {
        self.end(code);
    }

    fn end(&mut self, code: u16) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let code = code.to_string();
        let labels = [self.function.as_str(), code.as_str()];
        self.figures.total.with_label_values(&labels).inc();
        self.figures.seconds.with_label_values(&labels).observe(self.began.elapsed().as_secs_f64());
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.end(CLIENT_GONE);
    }
}

//! Function invocations under the OpenFaaS gateway's names:
//! `gateway_function_invocation_started` when one begins,
//! `gateway_function_invocation_total` and `gateway_functions_seconds`
//! (by status code) when it ends. Every start is ended exactly once, so
//! in-flight panels (started − total) stay true.

use std::collections::BTreeMap;
use std::time::Instant;

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{HistogramVec, IntCounterVec};

use serde::Serialize;

use super::{counters, histograms, series_name};
use crate::namespace::NAMESPACE;

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

    /// The ended invocations of each function so far, by function name
    /// (without the namespace suffix): what the dashboard charts as rates.
    pub fn totals(&self) -> BTreeMap<String, FunctionTotals> {
        let mut out: BTreeMap<String, FunctionTotals> = BTreeMap::new();
        for family in self.seconds.collect() {
            for m in family.get_metric() {
                let label = |name: &str| m.get_label().iter().find(|l| l.name() == name).map(|l| l.value().to_owned());
                let (Some(series), Some(code)) = (label("function_name"), label("code")) else { continue };
                let function = series.strip_suffix(&format!(".{NAMESPACE}")).unwrap_or(&series).to_owned();
                let h = m.get_histogram();
                let t = out.entry(function).or_default();
                let count = h.get_sample_count();
                t.count += count;
                t.seconds += h.get_sample_sum();
                if code.parse::<u16>().is_ok_and(|c| c >= 500) {
                    t.errors += count;
                }
                *t.codes.entry(code).or_default() += count;
                let buckets = h.get_bucket();
                if t.buckets.is_empty() {
                    t.buckets = buckets.iter().map(|b| (b.upper_bound(), 0)).collect();
                }
                for (sum, b) in t.buckets.iter_mut().zip(buckets) {
                    sum.1 += b.cumulative_count();
                }
            }
        }
        out
    }
}

/// One function's ended invocations, summed over status codes.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct FunctionTotals {
    pub count: u64,
    /// Those that ended with a status of 500 or more: the function failed,
    /// timed out or could not run.
    pub errors: u64,
    pub seconds: f64,
    pub codes: BTreeMap<String, u64>,
    /// Cumulative counts at or under each upper bound (seconds).
    pub buckets: Vec<(f64, u64)>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_codes_and_count_failures_by_function() {
        let figures = Invocations::default();
        figures.start("a").finish(200);
        figures.start("a").finish(200);
        figures.start("a").finish(502);
        figures.start("b").finish(404);
        drop(figures.start("b"));
        let totals = figures.totals();
        let a = &totals["a"];
        assert_eq!((a.count, a.errors), (3, 1));
        assert_eq!(a.codes.get("200"), Some(&2));
        assert_eq!(a.buckets.last().map(|b| b.1), Some(3));
        let b = &totals["b"];
        // 404 is the caller's mistake, 499 the caller leaving: neither is a failure.
        assert_eq!((b.count, b.errors), (2, 0));
        assert_eq!(b.codes.get("499"), Some(&1));
    }
}

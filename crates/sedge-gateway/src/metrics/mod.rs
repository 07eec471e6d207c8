//! Prometheus metrics in the text format 0.0.4, the one `/metrics` serves:
//! the OpenFaaS gateway's families under its names and labels (so its
//! dashboards and alerts work), the HTTP request figures it had, and
//! sedge's own queue, worker and cold-start figures.
//!
//! - [`invocations`]: each function call, counted when it starts and when it
//!   ends (started − ended = in flight);
//! - [`http`]: every request by method, route and status;
//! - [`runtime`]: the per-function figures read from the runtime at scrape
//!   time;
//! - [`calls`]: asynchronous calls, read from the call store at scrape time;
//! - [`triggers`]: trigger connections and messages, read from their states.
//!
//! Every `function_name` label reads `NAME.openfaas-fn`, as OpenFaaS's
//! gateway labels its functions (see [`series_name`]).

mod calls;
mod http;
mod invocations;
mod runtime;
mod triggers;

use std::sync::Mutex;

use prometheus::proto::MetricFamily;
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, TextEncoder};
use sedge_runtime::Runtime;

pub use calls::CallSnapshot;
pub use http::track;
pub use invocations::{FunctionTotals, InFlight};

use crate::namespace::NAMESPACE;

/// The Content-Type of what [`Metrics::render`] writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A function's `function_name` label: `NAME.openfaas-fn`, the form
/// OpenFaaS's gateway writes, so queries written for it find sedge's series.
pub fn series_name(function: &str) -> String {
    format!("{function}.{NAMESPACE}")
}

#[derive(Default)]
pub struct Metrics {
    invocations: invocations::Invocations,
    http: http::HttpFigures,
    runtime: runtime::RuntimeFigures,
    calls: calls::CallFigures,
    triggers: triggers::TriggerFigures,
    /// A scrape refreshes the runtime figures in place: one at a time, so
    /// none reads another's half-refreshed families.
    scrape: Mutex<()>,
}

impl Metrics {
    /// Counts an invocation of `function` as started; it counts as ended
    /// when the returned guard is finished or dropped.
    pub fn start(&self, function: &str) -> InFlight<'_> {
        self.invocations.start(function)
    }

    /// Each function's ended invocations so far.
    pub fn invocation_totals(&self) -> std::collections::BTreeMap<String, FunctionTotals> {
        self.invocations.totals()
    }

    /// Refreshes the per-function figures from the runtime, then encodes all.
    pub fn render(
        &self,
        runtime: &Runtime,
        calls: Option<&CallSnapshot>,
        triggers: &[sedge_triggers::TriggerState],
    ) -> Result<String, prometheus::Error> {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.runtime.refresh(runtime);
        if let Some(snap) = calls {
            self.calls.refresh(snap);
        }
        self.triggers.refresh(triggers);
        encode(&self.families())
    }

    /// Every family with at least one series, in a fixed order.
    fn families(&self) -> Vec<MetricFamily> {
        let mut all = [
            self.invocations.collect(),
            self.http.collect(),
            self.runtime.collect(),
            self.calls.collect(),
            self.triggers.collect(),
        ]
        .concat();
        // A family with no series yet has nothing to say (and the encoder
        // refuses it).
        all.retain(|f| !f.get_metric().is_empty());
        all
    }
}

fn encode(families: &[MetricFamily]) -> Result<String, prometheus::Error> {
    let mut out = Vec::new();
    TextEncoder::new().encode(families, &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

// The names and labels below are constants, so building a family can fail
// only through a bug in this module, which the tests below would catch.

fn counters(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric name and labels")
}

fn gauges(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric name and labels")
}

fn histograms(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("a valid metric name and labels")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_named_as_sampled_with_its_help_and_no_eof() {
        let m = Metrics::default();
        m.start("hello").finish(200);
        drop(m.start("hello"));
        let text = encode(&m.families()).expect("encodes");
        assert!(text.contains("# TYPE gateway_function_invocation_total counter\n"), "{text}");
        assert!(text.contains("# HELP gateway_function_invocation_total "), "{text}");
        assert!(text.contains("# TYPE gateway_function_invocation_started counter\n"), "{text}");
        assert!(text.contains("# TYPE gateway_functions_seconds histogram\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        let started = r#"gateway_function_invocation_started{function_name="hello.openfaas-fn"} 2"#;
        assert!(text.contains(started), "{text}");
        for code in ["200", "499"] {
            let line =
                format!(r#"gateway_function_invocation_total{{code="{code}",function_name="hello.openfaas-fn"}} 1"#);
            assert!(text.contains(&line), "missing {line} in {text}");
        }
    }
}

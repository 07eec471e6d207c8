//! Per-function figures the runtime keeps, read at scrape time: replicas
//! (OpenFaaS's `gateway_service_count`), queue depth, workers by state, and
//! the node-lifetime totals of cold starts, spare starts and OOM kills,
//! and what holds the node's memory budget; for models served in the node,
//! their runs, the requests those runs answered, and histograms of queue
//! waits and run times (kept by the runtime in fixed buckets, turned into
//! Prometheus histograms here).

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use prometheus::core::Collector;
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec};
use sedge_core::figures::HistogramSnapshot;
use sedge_runtime::Runtime;

use super::{counters, gauges, histograms, series_name};

pub struct RuntimeFigures {
    services: IntGaugeVec,
    queued: IntGaugeVec,
    workers: IntGaugeVec,
    cold_starts: IntCounterVec,
    spare_starts: IntCounterVec,
    oom_kills: IntCounterVec,
    desired: IntGaugeVec,
    cpu_waits: IntCounterVec,
    memory_waits: IntCounterVec,
    /// The node's memory budget and what holds it, by kind of process.
    memory_budget: IntGaugeVec,
    /// Observed as the runtime reports starts, never reset: a histogram's
    /// counts only grow.
    cold_start: HistogramVec,
    model_runs: IntCounterVec,
    model_requests: IntCounterVec,
    /// Read from the runtime's own buckets at each scrape.
    model_histograms: Mutex<Vec<MetricFamily>>,
}

const MODEL_QUEUED: (&str, &str) = (
    "sedge_model_queue_seconds",
    "Time a request to a model served in the node waited in its queue, from arriving there to the start of its run",
);
const MODEL_RUN: (&str, &str) =
    ("sedge_model_run_seconds", "Time one run of a model served in the node took in ONNX Runtime, for the whole batch");

impl Default for RuntimeFigures {
    fn default() -> Self {
        let f = &["function_name"];
        Self {
            // OpenFaaS's name, `_count` and all: dashboards query it so.
            services: gauges("gateway_service_count", "Workers (replicas) per function, ready or starting", f),
            queued: gauges("sedge_queue_depth", "Requests waiting for a worker", f),
            workers: gauges("sedge_workers", "Workers by state (ready, starting, busy)", &["function_name", "state"]),
            cold_starts: counters("sedge_cold_starts_total", "Workers started since the node began", f),
            spare_starts: counters(
                "sedge_spare_starts_total",
                "Cold starts served by a waiting spare interpreter since the node began",
                f,
            ),
            oom_kills: counters(
                "sedge_oom_kills_total",
                "Workers the kernel killed for going past their memory limit since the node began",
                f,
            ),
            desired: gauges(
                "sedge_desired_workers",
                "Workers the scaling policy wants, before the node's CPU and memory budgets (compare gateway_service_count)",
                f,
            ),
            cpu_waits: counters(
                "sedge_cpu_budget_waits_total",
                "Requests that queued while the node's CPU budget held the function below what its policy wanted",
                f,
            ),
            memory_waits: counters(
                "sedge_memory_budget_waits_total",
                "Requests that queued while the node's memory budget held the function below what its policy wanted",
                f,
            ),
            memory_budget: gauges(
                "sedge_memory_budget_bytes",
                "The node's memory budget (kind=\"budget\", serve --memory) and what holds it: workers at their memory limit, zygotes, standbys and spares at what they were measured to use (kind)",
                &["kind"],
            ),
            cold_start: histograms(
                "sedge_cold_start_seconds",
                "Where workers' starts went, by phase: process (interpreter and shim, a spare taken or a fork), imports (the function's module, model loads excluded), model (loading models), first_answer",
                &["function_name", "phase"],
                vec![0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.04, 0.06, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            ),
            model_runs: counters(
                "sedge_model_runs_total",
                "Runs of a model served in the node (runtime = \"onnx\") since the node began; with batching a run answers several requests",
                f,
            ),
            model_requests: counters(
                "sedge_model_requests_total",
                "Requests (HTTP, the inference protocol and sedge.infer calls) a model's runs answered since the node began",
                f,
            ),
            model_histograms: Mutex::default(),
        }
    }
}

impl RuntimeFigures {
    /// Sets every family from the runtime. The totals are the runtime's own
    /// node-lifetime counts, so they only grow.
    pub fn refresh(&self, runtime: &Runtime) {
        // Functions removed since the last scrape must not linger.
        for family in [&self.services, &self.queued, &self.workers, &self.desired, &self.memory_budget] {
            family.reset();
        }
        let used = runtime.memory_use("");
        if let Some(budget) = used.budget {
            self.memory_budget.with_label_values(&["budget"]).set(i64::try_from(budget).unwrap_or(i64::MAX));
        }
        for (kind, bytes) in &used.node {
            self.memory_budget.with_label_values(&[kind]).set(i64::try_from(*bytes).unwrap_or(i64::MAX));
        }
        for family in [
            &self.cold_starts,
            &self.spare_starts,
            &self.oom_kills,
            &self.cpu_waits,
            &self.memory_waits,
            &self.model_runs,
            &self.model_requests,
        ] {
            family.reset();
        }
        let (mut queued, mut run) = (Vec::new(), Vec::new());
        for name in runtime.names() {
            let Some(pool) = runtime.get(&name) else { continue };
            let stats = pool.stats();
            let label = series_name(&name);
            let f = [label.as_str()];
            self.services.with_label_values(&f).set(i64::from(stats.ready + stats.starting));
            self.queued.with_label_values(&f).set(i64::from(stats.queued));
            self.desired.with_label_values(&f).set(i64::from(stats.desired));
            for (state, n) in [("ready", stats.ready), ("starting", stats.starting), ("busy", stats.busy)] {
                self.workers.with_label_values(&[label.as_str(), state]).set(i64::from(n));
            }
            let shared = runtime.shared(&name);
            for start in shared.cold.take_unread() {
                for (phase, took) in start.phases() {
                    self.cold_start.with_label_values(&[label.as_str(), phase]).observe(took.as_secs_f64());
                }
            }
            for (family, total) in [
                (&self.cold_starts, &shared.cold_starts),
                (&self.spare_starts, &shared.spare_starts),
                (&self.oom_kills, &*shared.oom_kills),
                (&self.cpu_waits, &shared.cpu_waits),
                (&self.memory_waits, &shared.memory_waits),
            ] {
                family.with_label_values(&f).inc_by(total.load(Ordering::Relaxed));
            }
            let model = &shared.model;
            let runs = model.runs.load(Ordering::Relaxed);
            if runs > 0 {
                self.model_runs.with_label_values(&f).inc_by(runs);
                self.model_requests.with_label_values(&f).inc_by(model.requests.load(Ordering::Relaxed));
                queued.push(histogram_series(&label, &model.queued.snapshot()));
                run.push(histogram_series(&label, &model.run.snapshot()));
            }
        }
        *self.model_histograms.lock().unwrap_or_else(|p| p.into_inner()) =
            [histogram_family(MODEL_QUEUED, queued), histogram_family(MODEL_RUN, run)].concat();
    }

    pub fn collect(&self) -> Vec<MetricFamily> {
        [
            self.services.collect(),
            self.queued.collect(),
            self.workers.collect(),
            self.cold_starts.collect(),
            self.spare_starts.collect(),
            self.oom_kills.collect(),
            self.desired.collect(),
            self.cpu_waits.collect(),
            self.memory_waits.collect(),
            self.memory_budget.collect(),
            self.cold_start.collect(),
            self.model_runs.collect(),
            self.model_requests.collect(),
            self.model_histograms.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        ]
        .concat()
    }
}

/// One function's series of a histogram kept by the runtime.
fn histogram_series(function: &str, snap: &HistogramSnapshot) -> proto::Metric {
    let mut label = proto::LabelPair::default();
    label.set_name("function_name".to_owned());
    label.set_value(function.to_owned());
    let buckets = snap
        .buckets
        .iter()
        .map(|&(bound, below)| {
            let mut b = proto::Bucket::default();
            b.set_upper_bound(bound);
            b.set_cumulative_count(below);
            b
        })
        .collect();
    let mut h = proto::Histogram::default();
    h.set_sample_count(snap.count);
    h.set_sample_sum(snap.sum_seconds);
    h.set_bucket(buckets);
    let mut m = proto::Metric::default();
    m.set_label(vec![label]);
    m.set_histogram(h);
    m
}

/// A histogram family of `series`; none when there are none (the encoder
/// refuses an empty family).
fn histogram_family((name, help): (&str, &str), series: Vec<proto::Metric>) -> Vec<MetricFamily> {
    if series.is_empty() {
        return Vec::new();
    }
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(MetricType::HISTOGRAM);
    family.set_metric(series);
    vec![family]
}

//! Prometheus metrics: the OpenFaaS gateway's names (so its dashboards and
//! alerts work), plus sedge's own queue, worker and cold-start figures.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sedge_runtime::Runtime;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub function_name: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FnLabels {
    pub function_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub function_name: String,
    pub state: &'static str,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    invocations: Family<CallLabels, Counter>,
    seconds: Family<CallLabels, Histogram>,
    services: Family<FnLabels, Gauge>,
    queued: Family<FnLabels, Gauge>,
    workers: Family<WorkerLabels, Gauge>,
    cold_starts: Family<FnLabels, Counter>,
    spare_starts: Family<FnLabels, Counter>,
    oom_kills: Family<FnLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let invocations = Family::<CallLabels, Counter>::default();
        // Latency buckets from 1 ms to 60 s: hello calls land low, model
        // inference and cold starts in the middle, timeouts at the top.
        let seconds = Family::<CallLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
        });
        let services = Family::<FnLabels, Gauge>::default();
        let queued = Family::<FnLabels, Gauge>::default();
        let workers = Family::<WorkerLabels, Gauge>::default();
        let cold_starts = Family::<FnLabels, Counter>::default();
        let spare_starts = Family::<FnLabels, Counter>::default();
        let oom_kills = Family::<FnLabels, Counter>::default();
        registry.register("gateway_function_invocation", "Function invocations by status code", invocations.clone());
        registry.register("gateway_functions_seconds", "Function invocation time, seconds", seconds.clone());
        registry.register("gateway_service_count", "Workers (replicas) per function", services.clone());
        registry.register("sedge_queue_depth", "Requests waiting for a worker", queued.clone());
        registry.register("sedge_workers", "Workers by state (ready, starting, busy)", workers.clone());
        registry.register("sedge_cold_starts", "Workers started since the node began", cold_starts.clone());
        registry.register(
            "sedge_spare_starts",
            "Cold starts served by a waiting spare interpreter",
            spare_starts.clone(),
        );
        registry.register(
            "sedge_oom_kills",
            "Workers the kernel killed for going past their memory limit",
            oom_kills.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            invocations,
            seconds,
            services,
            queued,
            workers,
            cold_starts,
            spare_starts,
            oom_kills,
        }
    }
}

impl Metrics {
    pub fn observe(&self, function: &str, code: u16, took: Duration) {
        let labels = CallLabels { function_name: function.to_owned(), code: code.to_string() };
        self.invocations.get_or_create(&labels).inc();
        self.seconds.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// Refreshes the per-function gauges from the runtime, then encodes all.
    pub fn render(&self, runtime: &Runtime) -> Result<String, std::fmt::Error> {
        let names = runtime.names();
        // Functions removed since the last scrape must not linger.
        self.services.clear();
        self.queued.clear();
        self.workers.clear();
        for name in &names {
            let Some(pool) = runtime.get(name) else { continue };
            let stats = pool.stats();
            let f = FnLabels { function_name: name.clone() };
            self.services.get_or_create(&f).set(i64::from(stats.ready + stats.starting));
            self.queued.get_or_create(&f).set(i64::from(stats.queued));
            for (state, n) in [("ready", stats.ready), ("starting", stats.starting), ("busy", stats.busy)] {
                self.workers.get_or_create(&WorkerLabels { function_name: name.clone(), state }).set(i64::from(n));
            }
            let shared = runtime.shared(name);
            for (family, total) in [
                (&self.cold_starts, &shared.cold_starts),
                (&self.spare_starts, &shared.spare_starts),
                (&self.oom_kills, &*shared.oom_kills),
            ] {
                let total = total.load(std::sync::atomic::Ordering::Relaxed);
                family.get_or_create(&f).inner().store(total, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let mut out = String::new();
        encode(&mut out, &self.registry.lock().unwrap_or_else(|p| p.into_inner()))?;
        Ok(out)
    }
}

//! Asynchronous calls, read from the call store at scrape time: calls by
//! state, the age of the oldest queued, and the node-lifetime totals of
//! retries, dead-lettered calls and callbacks given up.

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts};
use sedge_queue::{Counts, Totals};

use super::{counters, gauges, series_name};

/// What one scrape reads of the queue.
pub struct CallSnapshot {
    pub counts: Vec<Counts>,
    pub totals: Totals,
    pub now_ms: i64,
}

pub struct CallFigures {
    calls: IntGaugeVec,
    oldest: GaugeVec,
    retries: IntCounterVec,
    dead: IntCounterVec,
    callbacks_failed: IntCounterVec,
}

impl Default for CallFigures {
    fn default() -> Self {
        let f = &["function_name"];
        Self {
            calls: gauges(
                "sedge_async_calls",
                "Stored asynchronous calls by state (queued, running, done, failed)",
                &["function_name", "state"],
            ),
            oldest: GaugeVec::new(
                Opts::new("sedge_async_oldest_queued_seconds", "Age of the oldest queued asynchronous call"),
                f,
            )
            .expect("a valid metric name and labels"),
            retries: counters(
                "sedge_async_retries_total",
                "Attempts of asynchronous calls queued again since the node began",
                f,
            ),
            dead: counters(
                "sedge_async_dead_lettered_total",
                "Asynchronous calls given up (the dead-letter list) since the node began",
                f,
            ),
            callbacks_failed: counters(
                "sedge_async_callbacks_failed_total",
                "Callbacks given up after all their attempts since the node began",
                f,
            ),
        }
    }
}

impl CallFigures {
    pub fn refresh(&self, snap: &CallSnapshot) {
        self.calls.reset();
        self.oldest.reset();
        for c in &snap.counts {
            let label = series_name(&c.function);
            for (state, n) in [("queued", c.queued), ("running", c.running), ("done", c.done), ("failed", c.failed)] {
                self.calls.with_label_values(&[label.as_str(), state]).set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            let age = c.oldest_queued_ms.map_or(0.0, |at| (snap.now_ms - at).max(0) as f64 / 1000.0);
            self.oldest.with_label_values(&[label.as_str()]).set(age);
        }
        for (family, totals) in [
            (&self.retries, &snap.totals.retries),
            (&self.dead, &snap.totals.dead_lettered),
            (&self.callbacks_failed, &snap.totals.callbacks_failed),
        ] {
            family.reset();
            for (function, n) in totals {
                family.with_label_values(&[series_name(function).as_str()]).inc_by(*n);
            }
        }
    }

    pub fn collect(&self) -> Vec<MetricFamily> {
        [
            self.calls.collect(),
            self.oldest.collect(),
            self.retries.collect(),
            self.dead.collect(),
            self.callbacks_failed.collect(),
        ]
        .concat()
    }
}

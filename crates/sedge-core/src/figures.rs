//! Figures a busy part of the node adds to as it works and the gateway
//! reads when it is scraped: lock-free counters and fixed-bucket latency
//! histograms, so recording costs a few atomic additions and nothing
//! grows between scrapes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds, in seconds, of the buckets model figures are kept in:
/// from a tenth of a millisecond (a small model's run) to ten seconds.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Durations counted into fixed buckets, as Prometheus histograms are.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, and one past the last (+Inf); not cumulative.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, observations at or below it), ascending.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    /// Buckets with these upper bounds (seconds, ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum_nanos: AtomicU64::new(0) }
    }

    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let i = self.bounds.partition_point(|b| *b < seconds);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far and their sum in seconds, without the buckets.
    pub fn count_and_sum(&self) -> (u64, f64) {
        let count = self.counts.iter().map(|n| n.load(Ordering::Relaxed)).sum();
        (count, self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9)
    }

    /// The counts so far; an observation being recorded meanwhile may be
    /// in the sum and not yet in its bucket, which the next read makes good.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut below = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, n) in self.bounds.iter().zip(self.counts.iter()) {
            below += n.load(Ordering::Relaxed);
            buckets.push((*bound, below));
        }
        let count = below + self.counts[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot { buckets, count, sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9 }
    }
}

/// What a model served in the node has done: how long requests waited in
/// its queue, how long its runs took, and how many requests its runs
/// answered (more than the runs when batching stacks them).
#[derive(Debug)]
pub struct ModelFigures {
    pub runs: AtomicU64,
    pub requests: AtomicU64,
    /// Time from a request entering the queue to the start of its run.
    pub queued: Histogram,
    /// One run's time in the engine, for the whole batch.
    pub run: Histogram,
}

impl Default for ModelFigures {
    fn default() -> Self {
        Self {
            runs: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            queued: Histogram::new(LATENCY_BUCKETS),
            run: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

impl ModelFigures {
    /// One run of `requests` requests that took `took`.
    pub fn ran(&self, requests: usize, took: Duration) {
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(requests as u64, Ordering::Relaxed);
        self.run.observe(took);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them_and_count_cumulatively() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.001, 2), (0.01, 3)]);
        assert_eq!(s.count, 4);
        assert!((s.sum_seconds - 1.0065).abs() < 1e-9, "{}", s.sum_seconds);
        assert_eq!(h.count_and_sum(), (4, s.sum_seconds));
    }

    #[test]
    fn a_run_counts_its_requests() {
        let f = ModelFigures::default();
        f.ran(3, Duration::from_millis(8));
        f.ran(1, Duration::from_millis(7));
        assert_eq!(f.runs.load(Ordering::Relaxed), 2);
        assert_eq!(f.requests.load(Ordering::Relaxed), 4);
        assert_eq!(f.run.snapshot().count, 2);
    }
}

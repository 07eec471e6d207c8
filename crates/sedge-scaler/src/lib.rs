//! Autoscaling policy for one function's worker pool, as a pure function of
//! recent load, the function's scale config and a clock passed in.
//!
//! Demand is in-flight plus queued requests. The pool grows at once towards
//! demand / concurrency (bounded by `max`) and shrinks only after demand has
//! stayed lower for the whole `idle` period, down to `min` (zero allowed).
//! `sedge-runtime` records samples into a [`LoadWindow`] on every arrival and
//! departure and on a periodic tick, and asks [`desired_workers`] what to do.
//! Time is a `Duration` since any fixed origin, so tests simulate it.

use std::collections::VecDeque;
use std::time::Duration;

/// The scale settings the policy needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleConfig {
    pub min: u32,
    pub max: u32,
    pub concurrency: u32,
    pub idle: Duration,
}

/// An operator's `scale --replicas N`, which overrides the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// Autoscale between `min` and `max`.
    Auto,
    /// Hold exactly this many workers (at least one).
    Exactly(u32),
}

/// Peak demand per time bucket over a sliding window, so memory stays
/// bounded however many requests arrive.
#[derive(Debug, Clone)]
pub struct LoadWindow {
    bucket: Duration,
    /// (bucket start, peak demand in it), oldest first.
    buckets: VecDeque<(Duration, u32)>,
}

impl LoadWindow {
    pub fn new(bucket: Duration) -> Self {
        Self { bucket: bucket.max(Duration::from_millis(1)), buckets: VecDeque::new() }
    }

    pub fn record(&mut self, now: Duration, demand: u32) {
        let start = bucket_start(now, self.bucket);
        match self.buckets.back_mut() {
            Some((t, peak)) if *t == start => *peak = (*peak).max(demand),
            _ => self.buckets.push_back((start, demand)),
        }
    }

    /// Highest demand seen in buckets that overlap `[since, ∞)`.
    pub fn peak_since(&self, since: Duration) -> u32 {
        self.buckets.iter().filter(|(t, _)| *t + self.bucket > since).map(|(_, d)| *d).max().unwrap_or(0)
    }

    /// Drops buckets that ended before `before`.
    pub fn forget_before(&mut self, before: Duration) {
        while self.buckets.front().is_some_and(|(t, _)| *t + self.bucket <= before) {
            self.buckets.pop_front();
        }
    }

    /// Forgets everything, as after an operator scales to zero.
    pub fn clear(&mut self) {
        self.buckets.clear();
    }
}

fn bucket_start(now: Duration, bucket: Duration) -> Duration {
    let n = now.as_nanos() / bucket.as_nanos();
    Duration::from_nanos(u64::try_from(n * bucket.as_nanos()).unwrap_or(u64::MAX))
}

/// Workers needed to serve `demand` requests at once.
pub fn workers_for(demand: u32, concurrency: u32) -> u32 {
    demand.div_ceil(concurrency.max(1))
}

/// How many workers the pool should have now.
pub fn desired_workers(cfg: &ScaleConfig, pin: Pin, window: &LoadWindow, now: Duration) -> u32 {
    if let Pin::Exactly(n) = pin {
        return n;
    }
    let peak = window.peak_since(now.saturating_sub(cfg.idle));
    workers_for(peak, cfg.concurrency).clamp(cfg.min, cfg.max.max(cfg.min))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: Duration = Duration::from_secs(1);

    fn cfg(min: u32, max: u32, concurrency: u32) -> ScaleConfig {
        ScaleConfig { min, max, concurrency, idle: 60 * SEC }
    }

    #[test]
    fn idle_function_sits_at_min() {
        let w = LoadWindow::new(SEC);
        assert_eq!(desired_workers(&cfg(0, 4, 1), Pin::Auto, &w, 100 * SEC), 0);
        assert_eq!(desired_workers(&cfg(2, 4, 1), Pin::Auto, &w, 100 * SEC), 2);
    }

    #[test]
    fn a_request_at_zero_wakes_one_worker_at_once() {
        let mut w = LoadWindow::new(SEC);
        w.record(10 * SEC, 1);
        assert_eq!(desired_workers(&cfg(0, 4, 1), Pin::Auto, &w, 10 * SEC), 1);
    }

    #[test]
    fn grows_with_demand_over_concurrency_up_to_max() {
        let mut w = LoadWindow::new(SEC);
        w.record(SEC, 5);
        assert_eq!(desired_workers(&cfg(0, 10, 2), Pin::Auto, &w, SEC), 3);
        w.record(SEC, 50);
        assert_eq!(desired_workers(&cfg(0, 10, 2), Pin::Auto, &w, SEC), 10);
    }

    #[test]
    fn shrinks_only_after_a_whole_idle_period() {
        let c = cfg(0, 8, 1);
        let mut w = LoadWindow::new(SEC);
        w.record(Duration::ZERO, 4);
        for t in 1..=59u32 {
            w.record(t * SEC, 1);
            assert_eq!(desired_workers(&c, Pin::Auto, &w, t * SEC), 4, "at {t}s");
        }
        w.record(61 * SEC, 1);
        assert_eq!(desired_workers(&c, Pin::Auto, &w, 61 * SEC), 1);
        // Quiet for a full idle period: back to zero.
        assert_eq!(desired_workers(&c, Pin::Auto, &w, 122 * SEC), 0);
    }

    #[test]
    fn pin_overrides_the_policy() {
        let mut w = LoadWindow::new(SEC);
        w.record(SEC, 100);
        assert_eq!(desired_workers(&cfg(0, 8, 1), Pin::Exactly(2), &w, SEC), 2);
    }

    #[test]
    fn window_memory_is_bounded_by_buckets() {
        let mut w = LoadWindow::new(SEC);
        for i in 0..10_000u64 {
            w.record(Duration::from_millis(i), 1);
        }
        assert_eq!(w.buckets.len(), 10);
        w.forget_before(5 * SEC);
        assert_eq!(w.buckets.len(), 5);
    }

    proptest! {
        #[test]
        fn always_within_bounds(min in 0u32..5, extra in 0u32..5, conc in 1u32..8,
                                samples in proptest::collection::vec((0u64..600, 0u32..100), 0..50), now in 0u64..700) {
            let c = cfg(min, min + extra.max(1), conc);
            let mut w = LoadWindow::new(SEC);
            let mut samples = samples;
            samples.sort();
            for (t, d) in samples { w.record(SEC * u32::try_from(t).unwrap_or(0), d); }
            let n = desired_workers(&c, Pin::Auto, &w, SEC * u32::try_from(now).unwrap_or(0));
            prop_assert!(n >= c.min && n <= c.max);
        }
    }
}

//! Autoscaling policy for one function's worker pool, as a pure function of
//! recent load, the function's scale config and a clock passed in, and the
//! node-wide CPU and memory budgets ([`budget`]) the pools share.
//!
//! Demand is in-flight plus queued requests. The policy follows Knative's
//! KPA: the *stable* want is the average demand over the stable window
//! (60 s, or `idle` when shorter) over the target in-flight per worker; the
//! *panic* want is the peak demand over the panic window (a tenth of the
//! stable one). When the panic want reaches twice the workers there are,
//! the pool panics: it grows to the panic want at once and does not shrink
//! until a whole stable window has passed without a reason to panic. Growth
//! is capped per second ([`ScaleConfig::max_scale_up_rate`]); the last
//! worker goes only after `idle` without any demand (the scale-to-zero
//! grace). `sedge-runtime` records samples into a [`LoadWindow`] on every
//! arrival and departure and on a periodic tick, and asks an [`Autoscaler`]
//! what to do. Time is a `Duration` since any fixed origin, so tests
//! simulate it.

pub mod budget;

use std::collections::VecDeque;
use std::time::Duration;

/// The longest stable window (Knative's default).
pub const STABLE_WINDOW: Duration = Duration::from_secs(60);
/// The panic window, as a share of the stable one (Knative: 10 %).
pub const PANIC_SHARE: u32 = 10;
/// How far over the workers there are the panic want must be to panic.
pub const PANIC_THRESHOLD: f64 = 2.0;
/// How many times the workers of a second ago the pool may grow to in one
/// second: 1 → 2 → 4 → 8, so a burst does not start `max` interpreters at
/// once on a node that has cores for two.
pub const MAX_SCALE_UP_RATE: f64 = 2.0;

/// The scale settings the policy needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleConfig {
    pub min: u32,
    pub max: u32,
    pub concurrency: u32,
    /// In-flight requests per worker the policy aims at (at most `concurrency`).
    pub target: f64,
    /// Shrinking waits this long; the last worker goes after this long with
    /// no demand at all.
    pub idle: Duration,
    pub max_scale_up_rate: f64,
}

impl ScaleConfig {
    /// The defaults for a function: the target is its concurrency.
    pub fn new(min: u32, max: u32, concurrency: u32, idle: Duration) -> Self {
        Self {
            min,
            max,
            concurrency,
            target: f64::from(concurrency.max(1)),
            idle,
            max_scale_up_rate: MAX_SCALE_UP_RATE,
        }
    }

    /// The stable window: 60 s, or `idle` when that is shorter, so a pool
    /// told to shrink after 5 s does.
    pub fn stable_window(&self) -> Duration {
        STABLE_WINDOW.min(self.idle).max(Duration::from_secs(1))
    }

    pub fn panic_window(&self) -> Duration {
        (self.stable_window() / PANIC_SHARE).max(Duration::from_secs(1))
    }
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

    /// Average of the buckets' peaks over the `span` that ends at `now`; a
    /// bucket with no sample in it counts as the one before it (demand is
    /// recorded whenever it changes), and time before the first sample as
    /// no demand.
    pub fn average(&self, now: Duration, span: Duration) -> f64 {
        let n = u32::try_from(span.as_nanos() / self.bucket.as_nanos()).unwrap_or(u32::MAX).max(1);
        let step = self.bucket;
        let first = bucket_start(now, step).saturating_sub(step * (n - 1));
        let mut buckets = self.buckets.iter().peekable();
        let mut carried = 0u32;
        let mut sum = 0u64;
        for k in 0..n {
            let at = first + step * k;
            while let Some((_, d)) = buckets.next_if(|(t, _)| *t <= at) {
                carried = *d;
            }
            sum += u64::from(carried);
        }
        sum as f64 / f64::from(n)
    }

    /// Drops buckets that ended before `before`, keeping the last of them
    /// (it carries into the buckets after it).
    pub fn forget_before(&mut self, before: Duration) {
        while self.buckets.len() > 1 && self.buckets.get(1).is_some_and(|(t, _)| *t + self.bucket <= before) {
            self.buckets.pop_front();
        }
        if self.buckets.len() == 1 && self.buckets.front().is_some_and(|(t, d)| *d == 0 && *t + self.bucket <= before) {
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

/// Workers for an average (or peak) demand at `target` in flight each.
fn workers_at(demand: f64, target: f64) -> u32 {
    let n = (demand / target.max(f64::EPSILON) - 1e-9).ceil();
    if n <= 0.0 {
        0
    } else if n >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        n as u32
    }
}

/// What the policy decided, and why, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub desired: u32,
    pub panicking: bool,
    /// The scale-up rate held the pool below what demand asked for.
    pub rate_limited: bool,
}

/// The policy's memory between decisions: whether it is panicking, and the
/// workers the scale-up rate counts from.
#[derive(Debug, Clone, Default)]
pub struct Autoscaler {
    /// The last time the panic condition held.
    panic_seen: Option<Duration>,
    /// The desired count while panicking, which only grows.
    panic_desired: u32,
    /// (start of the current second, workers at its start).
    rate_base: Option<(Duration, u32)>,
}

impl Autoscaler {
    /// How many workers the pool should have now, with `current` ready or
    /// starting.
    pub fn decide(
        &mut self,
        cfg: &ScaleConfig,
        pin: Pin,
        window: &LoadWindow,
        now: Duration,
        current: u32,
    ) -> Decision {
        if let Pin::Exactly(n) = pin {
            self.panic_seen = None;
            return Decision { desired: n, panicking: false, rate_limited: false };
        }
        let target = cfg.target.clamp(f64::EPSILON, f64::from(cfg.concurrency.max(1)));
        let stable = workers_at(window.average(now, cfg.stable_window()), target);
        let panic = workers_at(f64::from(window.peak_since(now.saturating_sub(cfg.panic_window()))), target);
        if panic > 0 && f64::from(panic) >= PANIC_THRESHOLD * f64::from(current) {
            if self.panic_seen.is_none() {
                self.panic_desired = current;
            }
            self.panic_seen = Some(now);
        }
        let panicking = self.panic_seen.is_some_and(|at| now.saturating_sub(at) < cfg.stable_window());
        let mut want = if panicking {
            self.panic_desired = self.panic_desired.max(panic).max(stable);
            self.panic_desired
        } else {
            self.panic_seen = None;
            stable
        };
        // The scale-to-zero grace: the last worker stays while there was
        // any demand within `idle`.
        if want == 0 && window.peak_since(now.saturating_sub(cfg.idle)) > 0 {
            want = 1;
        }
        let want = want.clamp(cfg.min, cfg.max.max(cfg.min));
        // The rate counts from the workers at the start of this second.
        let second = Duration::from_secs(now.as_secs());
        let base = match self.rate_base {
            Some((at, n)) if at == second => n,
            _ => {
                self.rate_base = Some((second, current));
                current
            }
        };
        let limit = (f64::from(base.max(1)) * cfg.max_scale_up_rate.max(1.0)).ceil();
        let limit = if limit >= f64::from(u32::MAX) { u32::MAX } else { limit as u32 };
        // `min` is held whatever the rate.
        let desired = if want > current { want.min(limit.max(current)).max(cfg.min) } else { want };
        Decision { desired, panicking, rate_limited: desired < want }
    }
}

#[cfg(test)]
mod tests;

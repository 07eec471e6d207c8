//! From samples to the figures a report shows: counts, success rate,
//! throughput and latency percentiles (HdrHistogram, 3 significant digits).
//!
//! Latency figures cover successful requests only: a timeout's "latency" is
//! the timeout itself and a refused connection's is near zero, so mixing
//! them in would describe the client's settings rather than the target.
//! Failures are counted by class instead.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::outcome::{Outcome, Sample};

/// Highest latency the histogram tells apart: an hour, in microseconds.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Latency of the successful requests, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// The figures of one step (or of several steps taken together).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub successes: u64,
    /// Successes over all requests, 0..1 (1 when there were none).
    pub success_rate: f64,
    /// Successful answers per second of the run.
    pub throughput: f64,
    pub elapsed_s: f64,
    /// `None` when nothing succeeded.
    pub latency_ms: Option<Latency>,
    /// Failures by class ([`Outcome::as_str`]); absent classes are omitted.
    pub errors: BTreeMap<String, u64>,
}

impl Summary {
    /// Several runs taken together: latencies over every sample, throughput
    /// as all successes over all the runs' time.
    pub fn of_runs<'a>(runs: impl IntoIterator<Item = (&'a [Sample], Duration)>) -> Self {
        let mut hist = new_histogram();
        let (mut count, mut successes, mut elapsed) = (0u64, 0u64, Duration::ZERO);
        let mut errors = BTreeMap::new();
        for (samples, took) in runs {
            elapsed += took;
            for s in samples {
                count += 1;
                if s.outcome.is_ok() {
                    successes += 1;
                    hist.saturating_record(s.latency_us.max(1));
                } else {
                    *errors.entry(s.outcome.as_str().to_owned()).or_insert(0) += 1;
                }
            }
        }
        let secs = elapsed.as_secs_f64();
        Self {
            count,
            successes,
            success_rate: if count == 0 { 1.0 } else { successes as f64 / count as f64 },
            throughput: if secs > 0.0 { successes as f64 / secs } else { 0.0 },
            elapsed_s: secs,
            latency_ms: (successes > 0).then(|| Latency {
                mean: hist.mean() / 1000.0,
                p50: ms(hist.value_at_quantile(0.50)),
                p90: ms(hist.value_at_quantile(0.90)),
                p95: ms(hist.value_at_quantile(0.95)),
                p99: ms(hist.value_at_quantile(0.99)),
                max: ms(hist.max()),
            }),
            errors,
        }
    }

    pub fn of_run(samples: &[Sample], elapsed: Duration) -> Self {
        Self::of_runs([(samples, elapsed)])
    }

    /// Failures of one class.
    pub fn errors_of(&self, outcome: Outcome) -> u64 {
        self.errors.get(outcome.as_str()).copied().unwrap_or(0)
    }

    /// "timeout 3, http_5xx 2", or "-" when none failed.
    pub fn errors_text(&self) -> String {
        if self.errors.is_empty() {
            return "-".into();
        }
        self.errors.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    }
}

fn new_histogram() -> Histogram<u64> {
    // Bounds and precision are constants known to be valid.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The latency distribution of successful samples as (milliseconds,
/// fraction at or below) points, at most `points` of them, for CDF charts.
pub fn cdf<'a>(samples: impl IntoIterator<Item = &'a Sample>, points: usize) -> Vec<(f64, f64)> {
    let mut lat: Vec<u64> = samples.into_iter().filter(|s| s.outcome.is_ok()).map(|s| s.latency_us).collect();
    if lat.is_empty() || points == 0 {
        return Vec::new();
    }
    lat.sort_unstable();
    let n = lat.len();
    let step = n.div_ceil(points).max(1);
    let mut out: Vec<(f64, f64)> =
        (step - 1..n).step_by(step).map(|i| (ms(lat[i]), (i + 1) as f64 / n as f64)).collect();
    if out.last().is_none_or(|&(_, f)| f < 1.0) {
        out.push((ms(lat[n - 1]), 1.0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(latency_ms: u64, outcome: Outcome) -> Sample {
        Sample { user: 0, send_us: 0, latency_us: latency_ms * 1000, status: 200, bytes: 2, outcome }
    }

    #[test]
    fn percentiles_cover_successes_and_errors_are_counted_by_class() {
        let mut samples: Vec<Sample> = (1..=100).map(|i| sample(i, Outcome::Ok)).collect();
        samples.push(sample(5000, Outcome::Timeout));
        samples.push(sample(0, Outcome::Http5xx));
        let s = Summary::of_run(&samples, Duration::from_secs(2));
        assert_eq!((s.count, s.successes), (102, 100));
        assert!((s.throughput - 50.0).abs() < 1e-9);
        let l = s.latency_ms.clone().expect("latency");
        assert!((l.p50 - 50.0).abs() < 0.1, "{l:?}");
        assert!((l.p99 - 99.0).abs() < 0.1, "{l:?}");
        assert!((l.max - 100.0).abs() < 0.1, "{l:?}");
        assert!((l.mean - 50.5).abs() < 0.1, "{l:?}");
        assert_eq!(s.errors_of(Outcome::Timeout), 1);
        assert_eq!(s.errors_of(Outcome::Http5xx), 1);
        assert_eq!(s.errors_text(), "http_5xx 1, timeout 1");
    }

    #[test]
    fn nothing_succeeded_means_no_latency() {
        let s = Summary::of_run(&[sample(1, Outcome::Connect)], Duration::from_secs(1));
        assert_eq!(s.latency_ms, None);
        assert_eq!(s.success_rate, 0.0);
    }

    #[test]
    fn cdf_is_monotone_and_ends_at_one() {
        let samples: Vec<Sample> = (1..=1000).map(|i| sample(i, Outcome::Ok)).collect();
        let points = cdf(&samples, 50);
        assert!(points.len() <= 51);
        assert!(points.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(points.last().map(|p| p.1), Some(1.0));
    }
}

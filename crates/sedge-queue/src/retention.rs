//! How long finished calls' results are kept: for a time, and within a
//! total size. Pure: the store lists finished calls oldest first and
//! removes as many as [`to_remove`] says.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Results older than this go.
    pub keep: Duration,
    /// The stored bytes (requests and answers) of finished calls at most;
    /// past it the oldest go first.
    pub max_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self { keep: Duration::from_secs(24 * 3600), max_bytes: 256 * 1024 * 1024 }
    }
}

impl Retention {
    /// How often to sweep: a quarter of the time results are kept, from
    /// once a second to once a minute.
    pub fn sweep_every(&self) -> Duration {
        (self.keep / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

/// How many of `finished` (finish time in ms since the epoch and size in
/// bytes, oldest first) to remove at `now_ms`.
pub fn to_remove(finished: &[(i64, u64)], now_ms: i64, r: &Retention) -> usize {
    let keep_ms = i64::try_from(r.keep.as_millis()).unwrap_or(i64::MAX);
    let old = finished.iter().take_while(|(at, _)| now_ms.saturating_sub(*at) > keep_ms).count();
    let mut total: u64 = finished[old..].iter().map(|(_, size)| size).sum();
    let mut n = old;
    while total > r.max_bytes && n < finished.len() {
        total -= finished[n].1;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn old_results_go() {
        let r = Retention { keep: Duration::from_secs(3600), max_bytes: u64::MAX };
        let finished = [(0, 10), (HOUR, 10), (2 * HOUR, 10)];
        assert_eq!(to_remove(&finished, HOUR + 1, &r), 1);
        assert_eq!(to_remove(&finished, 2 * HOUR + 1, &r), 2);
        assert_eq!(to_remove(&finished, 4 * HOUR, &r), 3);
        assert_eq!(to_remove(&finished, HOUR, &r), 0);
    }

    #[test]
    fn sweeps_follow_the_time_kept() {
        let r = |secs| Retention { keep: Duration::from_secs(secs), max_bytes: 0 };
        assert_eq!(r(2).sweep_every(), Duration::from_secs(1));
        assert_eq!(r(120).sweep_every(), Duration::from_secs(30));
        assert_eq!(r(86400).sweep_every(), Duration::from_secs(60));
    }

    #[test]
    fn past_the_size_bound_the_oldest_go_first() {
        let r = Retention { keep: Duration::from_secs(3600), max_bytes: 25 };
        let finished = [(10, 10), (20, 10), (30, 10)];
        assert_eq!(to_remove(&finished, 40, &r), 1);
        let r = Retention { max_bytes: 5, ..r };
        assert_eq!(to_remove(&finished, 40, &r), 3);
        assert_eq!(to_remove(&[], 40, &r), 0);
    }
}

//! The wait before reconnecting to a broker that went away. Pure.

use std::time::Duration;

/// Doubling from `base` to `cap`, randomised between half and all of it so
/// nodes that lost one broker together do not all return at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    pub base: Duration,
    pub cap: Duration,
}

impl Reconnect {
    pub const BROKERS: Reconnect = Reconnect { base: Duration::from_millis(250), cap: Duration::from_secs(30) };

    /// The wait after `failures` failed connections in a row (1 for the first).
    pub fn delay(&self, failures: u32, rng: &mut fastrand::Rng) -> Duration {
        let full = self.full(failures);
        let half = full / 2;
        half + Duration::from_millis(rng.u64(0..=u64::try_from((full - half).as_millis()).unwrap_or(u64::MAX)))
    }

    /// The wait before jitter.
    pub fn full(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.base.saturating_mul(1 << doublings).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let r = Reconnect::BROKERS;
        assert_eq!(r.full(1), Duration::from_millis(250));
        assert_eq!(r.full(2), Duration::from_millis(500));
        assert_eq!(r.full(5), Duration::from_secs(4));
        assert_eq!(r.full(100), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_between_half_and_all() {
        let r = Reconnect::BROKERS;
        let mut rng = fastrand::Rng::with_seed(7);
        for failures in 1..12 {
            for _ in 0..50 {
                let d = r.delay(failures, &mut rng);
                assert!(d >= r.full(failures) / 2 && d <= r.full(failures), "{failures}: {d:?}");
            }
        }
    }
}

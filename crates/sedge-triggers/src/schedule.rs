//! When a cron trigger fires next. Pure: the time comes in as a value.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The first firing strictly after `now`, or `None` if there is none.
pub fn next_after(cron: &croner::Cron, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&now, false).ok()
}

/// How long to sleep from `now` until `next` (zero if it has passed).
pub fn wait(now: DateTime<Utc>, next: DateTime<Utc>) -> Duration {
    (next - now).to_std().unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use sedge_core::trigger::parse_cron;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 3, h, m, s).single().expect("a valid time")
    }

    #[test]
    fn every_five_minutes_fires_on_the_next_multiple() {
        let cron = parse_cron("*/5 * * * *").expect("valid");
        assert_eq!(next_after(&cron, at(10, 1, 30)), Some(at(10, 5, 0)));
        // Strictly after: a firing time itself moves on to the next one.
        assert_eq!(next_after(&cron, at(10, 5, 0)), Some(at(10, 10, 0)));
        assert_eq!(
            next_after(&cron, at(23, 59, 0)),
            Some(Utc.with_ymd_and_hms(2026, 12, 4, 0, 0, 0).single().expect("valid"))
        );
    }

    #[test]
    fn a_sixth_field_counts_seconds() {
        let cron = parse_cron("*/10 * * * * *").expect("valid");
        assert_eq!(next_after(&cron, at(10, 0, 1)), Some(at(10, 0, 10)));
        let cron = parse_cron("30 0 12 * * *").expect("valid");
        assert_eq!(next_after(&cron, at(10, 0, 0)), Some(at(12, 0, 30)));
    }

    #[test]
    fn wait_is_the_gap_or_zero() {
        assert_eq!(wait(at(10, 0, 0), at(10, 0, 5)), Duration::from_secs(5));
        assert_eq!(wait(at(10, 0, 5), at(10, 0, 0)), Duration::ZERO);
    }
}

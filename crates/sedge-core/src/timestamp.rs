//! RFC 3339 times as clients send them: faas-cli's `logs --since` sends
//! its local time with its offset (`2024-05-01T14:00:00+02:00`), others
//! UTC (`...Z`). A query string may turn the `+` into a space, which is
//! read as `+` again.

use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected an RFC 3339 time like 2024-05-01T12:00:00Z or 2024-05-01T14:00:00+02:00, found {0:?}")]
pub struct BadTimestamp(pub String);

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction]` followed by `Z` or `±HH:MM`.
pub fn parse_rfc3339(text: &str) -> Result<SystemTime, BadTimestamp> {
    let bad = || BadTimestamp(text.to_owned());
    let (local, offset) = split_zone(text).ok_or_else(bad)?;
    let as_utc = humantime::parse_rfc3339(&format!("{local}Z")).map_err(|_| bad())?;
    // The local reading is UTC shifted by the offset: undo the shift.
    let shifted = if offset.east { as_utc.checked_sub(offset.by) } else { as_utc.checked_add(offset.by) };
    shifted.ok_or_else(bad)
}

struct Offset {
    east: bool,
    by: Duration,
}

/// The local part and its offset from UTC.
fn split_zone(text: &str) -> Option<(&str, Offset)> {
    if let Some(local) = text.strip_suffix(['Z', 'z']) {
        return Some((local, Offset { east: true, by: Duration::ZERO }));
    }
    let cut = text.len().checked_sub(6)?;
    let (local, zone) = (text.get(..cut)?, text.get(cut..)?);
    let zone = zone.as_bytes();
    let east = match zone[0] {
        b'+' | b' ' => true,
        b'-' => false,
        _ => return None,
    };
    if zone[3] != b':' {
        return None;
    }
    let (hours, minutes) = (two_digits(&zone[1..3])?, two_digits(&zone[4..6])?);
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some((local, Offset { east, by: Duration::from_secs(u64::from(hours) * 3600 + u64::from(minutes) * 60) }))
}

fn two_digits(b: &[u8]) -> Option<u8> {
    match b {
        [t @ b'0'..=b'9', u @ b'0'..=b'9'] => Some((t - b'0') * 10 + (u - b'0')),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).expect("a UTC time")
    }

    #[test]
    fn utc_and_offsets_name_the_same_instant() {
        let utc = at("2024-05-01T12:00:00Z");
        for text in [
            "2024-05-01T12:00:00Z",
            "2024-05-01T12:00:00z",
            "2024-05-01T14:00:00+02:00",
            "2024-05-01T14:00:00 02:00",
            "2024-05-01T07:30:00-04:30",
            "2024-05-01T12:00:00+00:00",
        ] {
            assert_eq!(parse_rfc3339(text), Ok(utc), "{text}");
        }
        assert_eq!(parse_rfc3339("2024-05-01T12:00:00.25Z"), Ok(utc + Duration::from_millis(250)));
        assert_eq!(parse_rfc3339("2024-05-01T12:00:00.5+01:00"), Ok(at("2024-05-01T11:00:00.5Z")));
    }

    #[test]
    fn anything_else_is_refused_with_what_was_given() {
        for text in [
            "",
            "2s",
            "yesterday",
            "2024-05-01",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00+2:00",
            "2024-05-01T12:00:00+24:00",
            "2024-05-01T12:00:00+01:60",
            "2024-05-01T12:00:00+01-00",
            "2024-13-01T12:00:00Z",
            "2024-05-01 12:00:00Z",
            "1969-12-31T23:00:00-01:00x",
            "é2024-05-01T12:00:00",
        ] {
            let e = parse_rfc3339(text).expect_err(text);
            assert!(e.to_string().contains(&format!("{text:?}")), "{e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = parse_rfc3339(&s);
        }

        #[test]
        fn every_offset_round_trips(secs in 100_000u64..4_000_000_000, east: bool, h in 0u64..24, m in 0u64..60) {
            let utc = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            let by = Duration::from_secs(h * 3600 + m * 60);
            let Some(local) = (if east { utc.checked_add(by) } else { utc.checked_sub(by) }) else { return Ok(()) };
            let base = humantime::format_rfc3339_seconds(local).to_string();
            let text = format!("{}{}{h:02}:{m:02}", base.trim_end_matches('Z'), if east { '+' } else { '-' });
            proptest::prop_assert_eq!(parse_rfc3339(&text), Ok(utc), "{}", text);
        }
    }
}

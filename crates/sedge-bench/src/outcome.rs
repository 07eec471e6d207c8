//! How one request ended, and the per-request row the generator records.

/// Every request ends in exactly one class; only [`Outcome::Ok`] counts as a
/// success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// A 2xx answer (whose body contains the expected text, when one is given).
    Ok,
    /// The TCP connection (or the HTTP handshake) could not be made.
    Connect,
    /// No whole answer within the request timeout.
    Timeout,
    /// The connection broke mid-request or the answer was not valid HTTP.
    Io,
    Http4xx,
    Http5xx,
    /// 1xx or 3xx: the target redirects or speaks a protocol we do not follow.
    HttpOther,
    /// 2xx, but the body lacks the expected text.
    BodyMismatch,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Ok,
        Outcome::Connect,
        Outcome::Timeout,
        Outcome::Io,
        Outcome::Http4xx,
        Outcome::Http5xx,
        Outcome::HttpOther,
        Outcome::BodyMismatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Connect => "connect",
            Outcome::Timeout => "timeout",
            Outcome::Io => "io",
            Outcome::Http4xx => "http_4xx",
            Outcome::Http5xx => "http_5xx",
            Outcome::HttpOther => "http_other",
            Outcome::BodyMismatch => "body_mismatch",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// The class of an answer by its status alone.
    pub fn of_status(status: u16) -> Self {
        match status {
            200..=299 => Outcome::Ok,
            400..=499 => Outcome::Http4xx,
            500..=599 => Outcome::Http5xx,
            _ => Outcome::HttpOther,
        }
    }

    pub fn is_ok(self) -> bool {
        self == Outcome::Ok
    }
}

/// One request as recorded: who sent it, when, how long it took and how it
/// ended. Times are microseconds; `send_us` counts from the start of the
/// load run (in open loop, from the intended send time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub user: u32,
    pub send_us: u64,
    pub latency_us: u64,
    /// 0 when no answer came.
    pub status: u16,
    /// Body bytes received.
    pub bytes: u64,
    pub outcome: Outcome,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_statuses_classify() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
        assert_eq!(Outcome::of_status(204), Outcome::Ok);
        assert_eq!(Outcome::of_status(404), Outcome::Http4xx);
        assert_eq!(Outcome::of_status(503), Outcome::Http5xx);
        assert_eq!(Outcome::of_status(302), Outcome::HttpOther);
    }
}

//! A function's `[async]` table: how calls queued through `/async-function`
//! and `/system/tasks` are retried and how many run at once.

use std::time::Duration;

use serde::Deserialize;

/// Attempts by default: the first and two retries, as AWS Lambda does for
/// asynchronous events.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// A queued call older than this is given up (dead-lettered), retries or not.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(6 * 3600);
const MAX_MAX_ATTEMPTS: u32 = 100;
const MAX_MAX_AGE: Duration = Duration::from_secs(14 * 24 * 3600);

/// One kind of failed attempt that `retry_on` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryClass {
    /// The function's own answer (or the node's) with this status.
    Status(u16),
    /// Any answer of 400 to 499.
    Any4xx,
    /// Any answer of 500 to 599.
    Any5xx,
    /// The call went past the function's timeout.
    Timeout,
    /// The worker died during the call (crash, out of memory).
    Crash,
}

impl RetryClass {
    /// What a manifest may write: `"429"`, `"4xx"`, `"5xx"`, `"timeout"`, `"crash"`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "timeout" => Some(Self::Timeout),
            "crash" => Some(Self::Crash),
            "4xx" => Some(Self::Any4xx),
            "5xx" => Some(Self::Any5xx),
            code if code.len() == 3 => code.parse().ok().filter(|c| (400..600).contains(c)).map(Self::Status),
            _ => None,
        }
    }

    pub fn as_string(&self) -> String {
        match self {
            Self::Status(code) => code.to_string(),
            Self::Any4xx => "4xx".into(),
            Self::Any5xx => "5xx".into(),
            Self::Timeout => "timeout".into(),
            Self::Crash => "crash".into(),
        }
    }
}

/// The defaults: busy, unavailable, bad gateway and gateway timeout
/// answers, timeouts and crashes; never the function's own 4xx or 500,
/// which a retry would only repeat.
pub const DEFAULT_RETRY_ON: [RetryClass; 6] = [
    RetryClass::Status(429),
    RetryClass::Status(502),
    RetryClass::Status(503),
    RetryClass::Status(504),
    RetryClass::Timeout,
    RetryClass::Crash,
];

/// The locked form of `[async]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncSpec {
    pub max_attempts: u32,
    pub max_age: Duration,
    pub retry_on: Vec<RetryClass>,
    /// Queued calls of this function run at once at most; `None` leaves the
    /// node to choose (half the function's capacity, at least one), so
    /// synchronous callers keep the rest.
    pub concurrency: Option<u32>,
}

impl Default for AsyncSpec {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_age: DEFAULT_MAX_AGE,
            retry_on: DEFAULT_RETRY_ON.to_vec(),
            concurrency: None,
        }
    }
}

impl AsyncSpec {
    /// Queued calls running at once for a function of `capacity` concurrent calls.
    pub fn concurrency_for(&self, capacity: u32) -> u32 {
        self.concurrency.unwrap_or((capacity / 2).max(1))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAsync {
    max_attempts: Option<i64>,
    max_age: Option<String>,
    retry_on: Option<Vec<String>>,
    concurrency: Option<i64>,
}

impl RawAsync {
    /// The checked table, or the field at fault (`async.…`) and the problem.
    pub(crate) fn check(self) -> Result<AsyncSpec, (String, String)> {
        let fail = |field: &str, problem: String| Err((format!("async.{field}"), problem));
        let mut spec = AsyncSpec::default();
        if let Some(n) = self.max_attempts {
            match u32::try_from(n) {
                Ok(n) if (1..=MAX_MAX_ATTEMPTS).contains(&n) => spec.max_attempts = n,
                _ => {
                    return fail(
                        "max_attempts",
                        format!("expected a whole number from 1 to {MAX_MAX_ATTEMPTS}, found {n}"),
                    )
                }
            }
        }
        if let Some(text) = self.max_age {
            match humantime::parse_duration(&text) {
                Ok(d) if d.is_zero() => return fail("max_age", "must be longer than zero".into()),
                Ok(d) if d > MAX_MAX_AGE => return fail("max_age", "must be at most 14 days".into()),
                Ok(d) => spec.max_age = d,
                Err(_) => {
                    return fail(
                        "max_age",
                        format!("expected a duration like \"10m\", \"6h\" or \"2days\", found {text:?}"),
                    )
                }
            }
        }
        if let Some(list) = self.retry_on {
            let mut classes = Vec::with_capacity(list.len());
            for (i, text) in list.iter().enumerate() {
                let Some(class) = RetryClass::parse(text) else {
                    return fail(
                        &format!("retry_on[{i}]"),
                        format!("expected a status from 400 to 599, \"4xx\", \"5xx\", \"timeout\" or \"crash\", found {text:?}"),
                    );
                };
                if !classes.contains(&class) {
                    classes.push(class);
                }
            }
            spec.retry_on = classes;
        }
        if let Some(n) = self.concurrency {
            match u32::try_from(n) {
                Ok(n) if (1..=1024).contains(&n) => spec.concurrency = Some(n),
                _ => return fail("concurrency", format!("expected a whole number from 1 to 1024, found {n}")),
            }
        }
        Ok(spec)
    }
}

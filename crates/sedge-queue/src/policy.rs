//! What happens after an attempt: done, retried after a delay, or given up
//! (dead-lettered). Pure: time comes in as values, jitter from a seeded RNG.

use std::time::Duration;

use sedge_core::{AsyncSpec, InvokeError, RetryClass};

/// How one attempt ended, as far as retrying cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// The answer's status: the function's own, or the node's for a failure.
    pub status: u16,
    pub failure: Option<Failure>,
}

/// An attempt that produced no answer of the function's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    Crash,
}

impl Attempt {
    pub fn answered(status: u16) -> Self {
        Self { status, failure: None }
    }

    /// The attempt an invocation error stands for, with the status the
    /// gateway would answer a synchronous caller.
    pub fn from_error(e: &InvokeError) -> Self {
        let (status, failure) = match e {
            InvokeError::Timeout { .. } => (504, Some(Failure::Timeout)),
            InvokeError::Crashed { .. } | InvokeError::OutOfMemory { .. } => (502, Some(Failure::Crash)),
            InvokeError::QueueFull { .. } => (429, None),
            // Not started yet or stopping: the function may well be there soon.
            InvokeError::StartFailed { .. } | InvokeError::ShuttingDown(_) => (503, None),
            InvokeError::AnswerTooLarge { .. } => (502, None),
            InvokeError::PayloadTooLarge { .. } => (413, None),
            InvokeError::NotFound(_) => (404, None),
            InvokeError::Failed { .. } => (500, None),
        };
        Self { status, failure }
    }

    pub fn succeeded(&self) -> bool {
        self.failure.is_none() && self.status < 400
    }

    fn matches(&self, class: RetryClass) -> bool {
        match class {
            RetryClass::Timeout => self.failure == Some(Failure::Timeout),
            RetryClass::Crash => self.failure == Some(Failure::Crash),
            // A timeout or crash carries the status the node gave it; only
            // the classes above name those.
            _ if self.failure.is_some() => false,
            RetryClass::Status(code) => self.status == code,
            RetryClass::Any4xx => (400..500).contains(&self.status),
            RetryClass::Any5xx => (500..600).contains(&self.status),
        }
    }

    pub fn retryable(&self, retry_on: &[RetryClass]) -> bool {
        retry_on.iter().any(|c| self.matches(*c))
    }
}

/// What an attempt leaves to record: how it ended for the retry policy,
/// and the answer (the function's, or the node's JSON error with its text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub attempt: Attempt,
    pub headers: Vec<(String, String)>,
    pub body: bytes::Bytes,
    pub error: Option<String>,
}

impl Outcome {
    pub fn of(result: Result<sedge_core::Reply, InvokeError>) -> Self {
        match result {
            Ok(reply) => {
                Self { attempt: Attempt::answered(reply.status), headers: reply.headers, body: reply.body, error: None }
            }
            Err(e) => {
                let text = e.to_string();
                let (headers, body) = error_answer(&text);
                Self { attempt: Attempt::from_error(&e), headers, body, error: Some(text) }
            }
        }
    }
}

/// The answer a call the node failed keeps: `{"error": message}` as JSON.
pub fn error_answer(message: &str) -> (Vec<(String, String)>, bytes::Bytes) {
    let body = bytes::Bytes::from(serde_json::json!({ "error": message }).to_string());
    (vec![("content-type".to_owned(), "application/json".to_owned())], body)
}

/// Exponential back-off with equal jitter: the n-th retry waits between
/// half and all of `base × 2ⁿ⁻¹`, capped, so retries of calls that failed
/// together spread out instead of arriving together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub const CALLS: Backoff = Backoff { base: Duration::from_secs(1), cap: Duration::from_secs(300) };

    /// The wait before retry `retry` (1 for the first retry).
    pub fn delay(&self, retry: u32, rng: &mut fastrand::Rng) -> Duration {
        let doublings = retry.saturating_sub(1).min(30);
        let full = self.base.saturating_mul(1u32 << doublings).min(self.cap);
        let half = full / 2;
        half + half.mul_f64(rng.f64())
    }
}

/// What to do with a call after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Done,
    Retry {
        after: Duration,
    },
    /// To the dead-letter list, with why.
    GiveUp {
        reason: String,
    },
}

/// Decides after attempt number `attempts` (1 for the first) of a call
/// queued `age` ago.
pub fn after_attempt(
    spec: &AsyncSpec,
    attempt: &Attempt,
    attempts: u32,
    age: Duration,
    backoff: &Backoff,
    rng: &mut fastrand::Rng,
) -> Next {
    if attempt.succeeded() {
        return Next::Done;
    }
    if !attempt.retryable(&spec.retry_on) {
        let what = match attempt.failure {
            Some(Failure::Timeout) => "a timeout".to_owned(),
            Some(Failure::Crash) => "a crash".to_owned(),
            None => format!("status {}", attempt.status),
        };
        return Next::GiveUp { reason: format!("{what} is not retried ([async] retry_on)") };
    }
    if attempts >= spec.max_attempts {
        return Next::GiveUp { reason: format!("failed all {attempts} attempts ([async] max_attempts)") };
    }
    let after = backoff.delay(attempts, rng);
    if age + after > spec.max_age {
        return Next::GiveUp { reason: too_old(spec) };
    }
    Next::Retry { after }
}

/// A queued call not yet started past its `max_age` is given up without running.
pub fn expired(spec: &AsyncSpec, age: Duration) -> Option<String> {
    (age > spec.max_age).then(|| too_old(spec))
}

fn too_old(spec: &AsyncSpec) -> String {
    format!("older than {} ([async] max_age)", humantime::format_duration(spec.max_age))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AsyncSpec {
        AsyncSpec::default()
    }

    #[test]
    fn errors_become_attempts_with_the_sync_status() {
        let t = InvokeError::Timeout { function: "f".into(), timeout_ms: 1 };
        assert_eq!(Attempt::from_error(&t), Attempt { status: 504, failure: Some(Failure::Timeout) });
        let c = InvokeError::Crashed { function: "f".into(), status: "signal 9".into() };
        assert_eq!(Attempt::from_error(&c).failure, Some(Failure::Crash));
        assert_eq!(Attempt::from_error(&InvokeError::QueueFull { function: "f".into(), limit: 1 }).status, 429);
    }

    #[test]
    fn default_retries_busy_and_unavailable_and_failures_not_the_functions_own_errors() {
        let on = spec().retry_on;
        for status in [429, 502, 503, 504] {
            assert!(Attempt::answered(status).retryable(&on), "{status}");
        }
        for status in [400, 404, 422, 500] {
            assert!(!Attempt::answered(status).retryable(&on), "{status}");
        }
        assert!(Attempt { status: 504, failure: Some(Failure::Timeout) }.retryable(&on));
        assert!(Attempt { status: 502, failure: Some(Failure::Crash) }.retryable(&on));
    }

    #[test]
    fn classes_match_what_they_name() {
        let crash = Attempt { status: 502, failure: Some(Failure::Crash) };
        assert!(!crash.retryable(&[RetryClass::Status(502)]), "502 names the answer, not a crash");
        assert!(!crash.retryable(&[RetryClass::Any5xx]));
        assert!(Attempt::answered(500).retryable(&[RetryClass::Any5xx]));
        assert!(Attempt::answered(418).retryable(&[RetryClass::Any4xx]));
        assert!(!Attempt::answered(418).retryable(&[RetryClass::Timeout]));
    }

    #[test]
    fn an_outcome_keeps_the_answer_or_the_nodes_error() {
        let ok = Outcome::of(Ok(sedge_core::Reply {
            status: 201,
            headers: vec![("x".into(), "y".into())],
            body: bytes::Bytes::from_static(b"made"),
        }));
        assert_eq!((ok.attempt, ok.body.as_ref(), ok.error), (Attempt::answered(201), &b"made"[..], None));
        let t = Outcome::of(Err(InvokeError::Timeout { function: "f".into(), timeout_ms: 5 }));
        assert_eq!(t.attempt.failure, Some(Failure::Timeout));
        let text = t.error.expect("error text");
        let body: serde_json::Value = serde_json::from_slice(&t.body).expect("json");
        assert_eq!(body["error"], text.as_str());
        assert_eq!(t.headers, vec![("content-type".to_owned(), "application/json".to_owned())]);
    }

    #[test]
    fn backoff_doubles_within_jitter_and_stops_at_the_cap() {
        let b = Backoff { base: Duration::from_secs(1), cap: Duration::from_secs(10) };
        let mut rng = fastrand::Rng::with_seed(7);
        for (retry, full) in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (40, 10.0)] {
            for _ in 0..50 {
                let d = b.delay(retry, &mut rng).as_secs_f64();
                assert!(d >= full / 2.0 && d <= full, "retry {retry}: {d}");
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_delays_and_jitter_spreads_them() {
        let b = Backoff::CALLS;
        let run = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (1..6).map(|n| b.delay(n, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn decisions_follow_attempts_and_age() {
        let s = AsyncSpec { max_attempts: 3, max_age: Duration::from_secs(60), ..spec() };
        let b = Backoff { base: Duration::from_secs(1), cap: Duration::from_secs(30) };
        let mut rng = fastrand::Rng::with_seed(3);
        let busy = Attempt::answered(503);
        let young = Duration::from_secs(1);
        assert_eq!(after_attempt(&s, &Attempt::answered(200), 1, young, &b, &mut rng), Next::Done);
        assert!(
            matches!(after_attempt(&s, &busy, 1, young, &b, &mut rng), Next::Retry { after } if after <= Duration::from_secs(1))
        );
        assert!(
            matches!(after_attempt(&s, &busy, 2, young, &b, &mut rng), Next::Retry { after } if after >= Duration::from_secs(1))
        );
        match after_attempt(&s, &busy, 3, young, &b, &mut rng) {
            Next::GiveUp { reason } => assert!(reason.contains("all 3 attempts"), "{reason}"),
            other => panic!("{other:?}"),
        }
        match after_attempt(&s, &busy, 1, Duration::from_secs(60), &b, &mut rng) {
            Next::GiveUp { reason } => assert!(reason.contains("older than 1m"), "{reason}"),
            other => panic!("{other:?}"),
        }
        match after_attempt(&s, &Attempt::answered(500), 1, young, &b, &mut rng) {
            Next::GiveUp { reason } => assert!(reason.contains("status 500 is not retried"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_call_that_waited_too_long_expires_before_running() {
        let s = AsyncSpec { max_age: Duration::from_secs(3600), ..spec() };
        assert_eq!(expired(&s, Duration::from_secs(3599)), None);
        assert_eq!(expired(&s, Duration::from_secs(3601)).as_deref(), Some("older than 1h ([async] max_age)"));
    }
}

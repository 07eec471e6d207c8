//! The load generator: N users against one endpoint, in closed or open loop.
//!
//! Closed loop: each user sends its next request when the last one has been
//! answered (plus an optional think time), so the offered load adapts to
//! the target, as with `wrk`, `hey` or `oha`.
//!
//! Open loop: requests are due at a fixed rate whether or not earlier ones
//! have been answered; the users take the due requests in turn. Latency is
//! counted from the time a request was *due*, not from when a free user got
//! round to sending it, so a target that falls behind shows its queueing
//! delay instead of hiding it (coordinated omission).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::BenchError;
use crate::http::{Conn, Endpoint, RequestTemplate};
use crate::outcome::{Outcome, Sample};

/// After a refused connection a closed-loop user waits this long, so a dead
/// target is not hammered with tens of thousands of connects a second.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// No request is sent after this long; those in flight are awaited.
    After(Duration),
    /// This many requests in all, across users.
    Requests(u64),
}

/// Everything one load run needs.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub url: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Concurrent users, each with its own connection.
    pub users: u32,
    pub stop: Stop,
    /// Open loop: requests per second across all users. `None`: closed loop.
    pub rate: Option<f64>,
    /// Closed loop: pause between an answer and the user's next request.
    pub think: Duration,
    pub timeout: Duration,
    /// Text a 2xx body must contain to count as a success.
    pub expect: Option<String>,
    pub keep_alive: bool,
}

impl LoadPlan {
    /// A closed-loop GET with keep-alive, 30 s timeout, no body.
    pub fn new(url: impl Into<String>, users: u32, stop: Stop) -> Self {
        Self {
            url: url.into(),
            method: "GET".into(),
            headers: Vec::new(),
            body: Bytes::new(),
            users,
            stop,
            rate: None,
            think: Duration::ZERO,
            timeout: Duration::from_secs(30),
            expect: None,
            keep_alive: true,
        }
    }
}

/// Every request of a run, in send order, and how long the run took (until
/// the last answer).
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub samples: Vec<Sample>,
    pub elapsed: Duration,
}

struct Shared {
    endpoint: Endpoint,
    request: RequestTemplate,
    plan: LoadPlan,
    expect: Option<Vec<u8>>,
    start: Instant,
    /// Requests claimed so far; in open loop, the index of the next due slot.
    claimed: AtomicU64,
}

pub async fn run(plan: &LoadPlan) -> Result<LoadResult, BenchError> {
    let invalid = |reason: &str| BenchError::Url { url: plan.url.clone(), reason: reason.to_owned() };
    if plan.users == 0 {
        return Err(invalid("users must be at least 1"));
    }
    if let Some(rate) = plan.rate {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(invalid("the rate must be a positive number of requests per second"));
        }
    }
    let endpoint = Endpoint::resolve(&plan.url).await?;
    let request = RequestTemplate::new(&endpoint, &plan.method, &plan.headers, plan.body.clone(), plan.keep_alive)?;
    let shared = Arc::new(Shared {
        endpoint,
        request,
        expect: plan.expect.as_ref().map(|e| e.as_bytes().to_vec()),
        plan: plan.clone(),
        start: Instant::now(),
        claimed: AtomicU64::new(0),
    });
    let users: Vec<_> = (0..plan.users).map(|id| tokio::spawn(user(shared.clone(), id))).collect();
    let mut samples = Vec::new();
    for handle in users {
        match handle.await {
            Ok(rows) => samples.extend(rows),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {}
        }
    }
    let elapsed = shared.start.elapsed();
    samples.sort_by_key(|s| s.send_us);
    Ok(LoadResult { samples, elapsed })
}

async fn user(sh: Arc<Shared>, id: u32) -> Vec<Sample> {
    let plan = &sh.plan;
    let mut conn = Conn::new(sh.endpoint.addr, plan.keep_alive);
    let mut rows = Vec::new();
    loop {
        let n = sh.claimed.fetch_add(1, Ordering::Relaxed);
        if matches!(plan.stop, Stop::Requests(max) if n >= max) {
            break;
        }
        let due = match plan.rate {
            Some(rate) => sh.start + Duration::from_secs_f64(n as f64 / rate),
            None => Instant::now(),
        };
        if matches!(plan.stop, Stop::After(d) if due.duration_since(sh.start) >= d) {
            break;
        }
        if plan.rate.is_some() {
            tokio::time::sleep_until(due.into()).await;
        }
        let result = conn.call(&sh.request, sh.expect.is_some(), plan.timeout).await;
        let latency = due.elapsed();
        let (status, bytes, outcome) = match result {
            Ok(answer) => {
                let mut outcome = Outcome::of_status(answer.status);
                if outcome.is_ok() && !sh.expect.as_deref().is_none_or(|e| contains(&answer.body, e)) {
                    outcome = Outcome::BodyMismatch;
                }
                (answer.status, answer.bytes, outcome)
            }
            Err(failure) => (0, 0, failure.into()),
        };
        rows.push(Sample {
            user: id,
            send_us: micros(due.duration_since(sh.start)),
            latency_us: micros(latency),
            status,
            bytes,
            outcome,
        });
        if plan.rate.is_none() {
            if outcome == Outcome::Connect {
                tokio::time::sleep(CONNECT_BACKOFF).await;
            }
            if !plan.think.is_zero() {
                tokio::time::sleep(plan.think).await;
            }
        }
    }
    rows
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_text_is_a_substring_match() {
        assert!(contains(b"{\"digit\": 3}", b"digit"));
        assert!(contains(b"anything", b""));
        assert!(!contains(b"dig", b"digit"));
    }
}

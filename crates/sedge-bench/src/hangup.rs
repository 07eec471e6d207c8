//! `sedge bench hangups`: clients that hang up mid-request (after sending
//! all of their body, or part of it) beside clients that stay for their
//! answers — how cameras and phones on a flaky network behave. What counts
//! is that the staying clients never see a 5xx and that the function's
//! workers are not restarted; the command reports both.
//!
//! The schedule (who leaves when, after how many bytes) is pure and seeded,
//! so a run can be repeated; the sockets are at the edge in [`run`].

use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::error::BenchError;
use crate::http::{self, Endpoint};

#[derive(Debug, Clone)]
pub struct HangupPlan {
    pub url: String,
    pub body: Bytes,
    pub rounds: u32,
    /// Clients per round that hang up.
    pub leavers: u32,
    /// Clients per round that wait for their answers.
    pub stayers: u32,
    /// A leaver closes its socket after a delay in this range.
    pub leave_after: (Duration, Duration),
    /// Calls made one by one after the rounds.
    pub steady: u32,
    pub timeout: Duration,
    pub seed: u64,
}

/// One leaver: how much of the body it sends before waiting and closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leave {
    pub sent: usize,
    pub after: Duration,
}

/// Answers by class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusCounts {
    pub ok: u32,
    pub client_error: u32,
    pub server_error: u32,
    /// No HTTP answer at all (connection refused, broken, timed out).
    pub failed: u32,
}

impl StatusCounts {
    fn add(&mut self, status: Option<u16>) {
        match status {
            Some(200..=399) => self.ok += 1,
            Some(400..=499) => self.client_error += 1,
            Some(_) => self.server_error += 1,
            None => self.failed += 1,
        }
    }

    pub fn total(&self) -> u32 {
        self.ok + self.client_error + self.server_error + self.failed
    }
}

#[derive(Debug, Clone, Default)]
pub struct HangupResult {
    pub leavers: u32,
    pub stayed: StatusCounts,
    pub steady: StatusCounts,
}

/// A seeded generator; a benchmark needs variety, not secrecy.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        if n == 0 {
            0
        } else {
            (self.0 >> 33) % n
        }
    }
}

/// Who leaves when, round by round: every other leaver sends its whole body
/// (so its request reaches a worker), the rest stop at a random byte.
pub fn schedule(plan: &HangupPlan) -> Vec<Vec<Leave>> {
    let mut rng = Lcg(plan.seed);
    let (lo, hi) = plan.leave_after;
    let span = u64::try_from(hi.saturating_sub(lo).as_micros()).unwrap_or(u64::MAX);
    (0..plan.rounds)
        .map(|_| {
            (0..plan.leavers)
                .map(|i| {
                    let len = plan.body.len();
                    let sent = if i % 2 == 0 { len } else { rng.below(len as u64 + 1) as usize };
                    Leave { sent, after: lo + Duration::from_micros(rng.below(span.saturating_add(1))) }
                })
                .collect()
        })
        .collect()
}

fn request_head(endpoint: &Endpoint, len: usize) -> String {
    let path = endpoint.url.split_once("://").and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..])).unwrap_or("/");
    format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n",
        endpoint.addr
    )
}

async fn leave(endpoint: Endpoint, body: Bytes, how: Leave) {
    let Ok(mut s) = TcpStream::connect(endpoint.addr).await else { return };
    let head = request_head(&endpoint, body.len());
    if s.write_all(head.as_bytes()).await.is_ok() {
        let _ = s.write_all(&body[..how.sent]).await;
    }
    tokio::time::sleep(how.after).await;
    // Dropping the socket is the hang-up.
}

async fn stay(url: String, body: Bytes, timeout: Duration) -> Option<u16> {
    http::once(&url, "POST", &[], body, timeout).await.ok().map(|a| a.status)
}

pub async fn run(plan: &HangupPlan) -> Result<HangupResult, BenchError> {
    let endpoint = Endpoint::resolve(&plan.url).await?;
    let mut result = HangupResult::default();
    for round in schedule(plan) {
        let mut leavers = tokio::task::JoinSet::new();
        for how in round {
            leavers.spawn(leave(endpoint.clone(), plan.body.clone(), how));
            result.leavers += 1;
        }
        let mut stayers = tokio::task::JoinSet::new();
        for _ in 0..plan.stayers {
            stayers.spawn(stay(plan.url.clone(), plan.body.clone(), plan.timeout));
        }
        while let Some(status) = stayers.join_next().await {
            result.stayed.add(status.ok().flatten());
        }
        while leavers.join_next().await.is_some() {}
    }
    for _ in 0..plan.steady {
        result.steady.add(stay(plan.url.clone(), plan.body.clone(), plan.timeout).await);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> HangupPlan {
        HangupPlan {
            url: "http://127.0.0.1:1/function/f".into(),
            body: Bytes::from(vec![0u8; 1000]),
            rounds: 30,
            leavers: 16,
            stayers: 2,
            leave_after: (Duration::from_millis(5), Duration::from_millis(60)),
            steady: 4,
            timeout: Duration::from_secs(1),
            seed: 7,
        }
    }

    #[test]
    fn the_schedule_is_seeded_and_within_its_bounds() {
        let p = plan();
        let s = schedule(&p);
        assert_eq!(s, schedule(&p), "same seed, same schedule");
        assert_eq!(s.len(), 30);
        for round in &s {
            assert_eq!(round.len(), 16);
            for (i, l) in round.iter().enumerate() {
                assert!(l.after >= Duration::from_millis(5) && l.after <= Duration::from_millis(60), "{l:?}");
                assert!(l.sent <= 1000);
                if i % 2 == 0 {
                    assert_eq!(l.sent, 1000, "every other leaver sends it all");
                }
            }
        }
        assert!(s.iter().flatten().any(|l| l.sent < 1000), "some stop part-way");
        let other = HangupPlan { seed: 8, ..p };
        assert_ne!(schedule(&other), s);
    }

    #[test]
    fn statuses_are_counted_by_class() {
        let mut c = StatusCounts::default();
        for s in [Some(200), Some(204), Some(429), Some(502), None] {
            c.add(s);
        }
        assert_eq!(c, StatusCounts { ok: 2, client_error: 1, server_error: 1, failed: 1 });
        assert_eq!(c.total(), 5);
    }
}

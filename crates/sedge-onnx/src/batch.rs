//! Dynamic batching, as a pure policy over a queue: requests that arrive
//! within `max_delay` of the oldest waiting one are stacked into one run of
//! up to `max_batch`. Time is passed in, never read, so the policy is tested
//! with hand-set instants; the model's dispatcher applies its decisions.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The batching settings in force (`max_batch` 1 is no batching).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub max_batch: usize,
    pub max_delay: Duration,
    /// Requests waiting at most; more are refused (429).
    pub queue: usize,
}

/// A request waiting for a run.
#[derive(Debug)]
pub struct Waiting<T> {
    pub item: T,
    pub arrived: Instant,
    /// Past it the caller has given up: answered 504, never run.
    pub deadline: Instant,
}

/// What the dispatcher does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Take this many from the front and run them as one batch.
    Run(usize),
    /// Nothing to run before this instant (or before an instance frees up).
    WaitUntil(Instant),
    /// Nothing waits.
    Idle,
}

/// The queue of requests for one model.
#[derive(Debug)]
pub struct Queue<T> {
    policy: Policy,
    waiting: VecDeque<Waiting<T>>,
}

impl<T> Queue<T> {
    pub fn new(policy: Policy) -> Self {
        Self { policy, waiting: VecDeque::new() }
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Adds a request, or gives it back when the queue is full.
    pub fn push(&mut self, item: T, now: Instant, deadline: Instant) -> Result<(), T> {
        if self.waiting.len() >= self.policy.queue {
            return Err(item);
        }
        self.waiting.push_back(Waiting { item, arrived: now, deadline });
        Ok(())
    }

    /// Removes the requests whose callers' deadlines have passed.
    pub fn expire(&mut self, now: Instant) -> Vec<T> {
        // Looked at before every run: nothing is moved unless someone is late.
        if self.waiting.iter().all(|w| w.deadline > now) {
            return Vec::new();
        }
        let mut gone = Vec::new();
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        for w in self.waiting.drain(..) {
            if w.deadline <= now {
                gone.push(w.item);
            } else {
                kept.push_back(w);
            }
        }
        self.waiting = kept;
        gone
    }

    /// Removes the requests `gone` says no one waits for any more, so they
    /// take no place in the queue or in a batch.
    pub fn forget(&mut self, gone: impl Fn(&T) -> bool) -> usize {
        let before = self.waiting.len();
        self.waiting.retain(|w| !gone(&w.item));
        before - self.waiting.len()
    }

    /// What to do at `now` with `free` instances able to run a batch.
    pub fn decide(&self, now: Instant, free: usize) -> Decision {
        let Some(oldest) = self.waiting.front() else { return Decision::Idle };
        let ready_at = oldest.arrived + self.policy.max_delay;
        let full = self.waiting.len() >= self.policy.max_batch;
        let next_deadline = self.waiting.iter().map(|w| w.deadline).min().unwrap_or(ready_at);
        if free == 0 {
            // Nothing can run; wake to expire whoever gives up first.
            return Decision::WaitUntil(next_deadline);
        }
        if full || now >= ready_at {
            return Decision::Run(self.waiting.len().min(self.policy.max_batch));
        }
        Decision::WaitUntil(ready_at.min(next_deadline))
    }

    /// Takes the front `n` requests.
    pub fn take(&mut self, n: usize) -> Vec<T> {
        let n = n.min(self.waiting.len());
        self.waiting.drain(..n).map(|w| w.item).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_batch: usize, delay_ms: u64) -> Policy {
        Policy { max_batch, max_delay: Duration::from_millis(delay_ms), queue: 4 }
    }

    fn later(t: Instant, ms: u64) -> Instant {
        t + Duration::from_millis(ms)
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_request_waits_at_most_max_delay() {
        let t0 = Instant::now();
        let mut q = Queue::new(policy(8, 2));
        q.push("a", t0, later(t0, 1000)).expect("room");
        assert_eq!(q.decide(t0, 1), Decision::WaitUntil(later(t0, 2)));
        assert_eq!(q.decide(later(t0, 1), 1), Decision::WaitUntil(later(t0, 2)));
        assert_eq!(q.decide(later(t0, 2), 1), Decision::Run(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_runs_at_once_and_the_rest_waits_for_the_next() {
        let t0 = Instant::now();
        let mut q = Queue::new(Policy { queue: 16, ..policy(3, 50) });
        for i in 0..5 {
            q.push(i, t0, later(t0, 1000)).expect("room");
        }
        assert_eq!(q.decide(t0, 1), Decision::Run(3));
        assert_eq!(q.take(3), [0, 1, 2]);
        // Two left, arrived at t0: they wait out the delay from their arrival.
        assert_eq!(q.decide(later(t0, 10), 1), Decision::WaitUntil(later(t0, 50)));
        assert_eq!(q.decide(later(t0, 50), 1), Decision::Run(2));
    }

    #[tokio::test(start_paused = true)]
    async fn without_batching_a_request_runs_as_soon_as_an_instance_is_free() {
        let t0 = Instant::now();
        let mut q = Queue::new(policy(1, 0));
        q.push("a", t0, later(t0, 1000)).expect("room");
        assert_eq!(q.decide(t0, 1), Decision::Run(1));
        assert_eq!(q.decide(t0, 0), Decision::WaitUntil(later(t0, 1000)), "busy: wake for its deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_whose_deadline_passes_while_queued_is_not_run() {
        let t0 = Instant::now();
        let mut q = Queue::new(policy(8, 100));
        q.push("late", t0, later(t0, 5)).expect("room");
        q.push("patient", t0, later(t0, 1000)).expect("room");
        assert_eq!(q.decide(t0, 1), Decision::WaitUntil(later(t0, 5)), "wake when the first gives up");
        assert_eq!(q.expire(later(t0, 5)), ["late"]);
        assert_eq!(q.take(8), ["patient"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_is_bounded() {
        let t0 = Instant::now();
        let mut q = Queue::new(policy(8, 1));
        for i in 0..4 {
            q.push(i, t0, later(t0, 10)).expect("room");
        }
        assert_eq!(q.push(9, t0, later(t0, 10)), Err(9));
        assert_eq!(q.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_when_empty() {
        let q: Queue<u8> = Queue::new(policy(8, 1));
        assert_eq!(q.decide(Instant::now(), 2), Decision::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_no_one_waits_for_leave_and_free_their_places() {
        let t0 = Instant::now();
        let mut q = Queue::new(Policy { queue: 3, ..policy(2, 50) });
        for i in 0..3 {
            q.push(i, t0, later(t0, 1000)).expect("room");
        }
        assert!(q.push(3, t0, later(t0, 1000)).is_err(), "full");
        assert_eq!(q.forget(|i| *i == 0), 1);
        // The two left make a full batch; the freed place takes another.
        assert_eq!(q.decide(t0, 1), Decision::Run(2));
        q.push(3, t0, later(t0, 1000)).expect("a place again");
        assert_eq!(q.take(2), [1, 2]);
    }
}

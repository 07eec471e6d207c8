use super::*;
use proptest::prelude::*;

const SEC: Duration = Duration::from_secs(1);

fn cfg(min: u32, max: u32, concurrency: u32) -> ScaleConfig {
    ScaleConfig::new(min, max, concurrency, 300 * SEC)
}

/// Drives the policy as the pool does: demand recorded once a second (the
/// tick), the pool taking the decision at once.
struct Sim {
    cfg: ScaleConfig,
    window: LoadWindow,
    scaler: Autoscaler,
    workers: u32,
    now: Duration,
}

impl Sim {
    fn new(cfg: ScaleConfig) -> Self {
        Self { cfg, window: LoadWindow::new(SEC), scaler: Autoscaler::default(), workers: 0, now: Duration::ZERO }
    }

    /// One second at `demand`; the workers after the decision.
    fn second(&mut self, demand: u32) -> u32 {
        self.window.record(self.now, demand);
        let d = self.scaler.decide(&self.cfg, Pin::Auto, &self.window, self.now, self.workers);
        self.workers = d.desired;
        self.now += SEC;
        self.workers
    }

    fn seconds(&mut self, n: u32, demand: u32) -> Vec<u32> {
        (0..n).map(|_| self.second(demand)).collect()
    }
}

#[test]
fn idle_function_sits_at_min() {
    let w = LoadWindow::new(SEC);
    let mut a = Autoscaler::default();
    assert_eq!(a.decide(&cfg(0, 4, 1), Pin::Auto, &w, 100 * SEC, 0).desired, 0);
    assert_eq!(a.decide(&cfg(2, 4, 1), Pin::Auto, &w, 100 * SEC, 0).desired, 2);
}

#[test]
fn a_request_at_zero_wakes_one_worker_at_once() {
    let mut w = LoadWindow::new(SEC);
    w.record(10 * SEC, 1);
    let d = Autoscaler::default().decide(&cfg(0, 4, 1), Pin::Auto, &w, 10 * SEC, 0);
    assert_eq!(d, Decision { desired: 1, panicking: true, rate_limited: false });
}

#[test]
fn a_burst_panics_and_grows_at_the_capped_rate_up_to_max() {
    let mut sim = Sim::new(cfg(0, 10, 1));
    assert_eq!(sim.second(1), 1);
    sim.seconds(10, 1);
    // 64 users arrive: 1 → 2 → 4 → 8 → 10, one doubling a second.
    assert_eq!(sim.seconds(5, 64), vec![2, 4, 8, 10, 10]);
}

#[test]
fn the_target_sets_workers_per_in_flight_request() {
    let mut c = cfg(0, 10, 4);
    c.target = 2.0;
    let mut sim = Sim::new(c);
    sim.seconds(10, 6);
    assert_eq!(sim.workers, 3);
}

#[test]
fn panic_holds_the_pool_for_a_stable_window_then_the_average_shrinks_it() {
    let mut c = cfg(0, 8, 1);
    c.idle = 60 * SEC;
    let mut sim = Sim::new(c);
    sim.seconds(20, 1);
    let grown = sim.seconds(4, 8);
    assert_eq!(grown.last(), Some(&8));
    // Demand falls to one: no shrinking while panicking (60 s from the
    // last time the panic condition held).
    let after = sim.seconds(57, 1);
    assert!(after.iter().all(|&n| n == 8), "{after:?}");
    // Then the stable average (a few seconds at 8 in the last minute) rules.
    let later = sim.seconds(70, 1);
    assert_eq!(later.last(), Some(&1), "{later:?}");
    assert!(later.windows(2).all(|w| w[1] <= w[0]), "shrinks steadily: {later:?}");
}

#[test]
fn a_steady_load_is_served_by_the_stable_average_without_panic() {
    let mut sim = Sim::new(cfg(0, 8, 1));
    sim.seconds(90, 3);
    let d = sim.scaler.decide(&sim.cfg, Pin::Auto, &sim.window, sim.now, sim.workers);
    assert_eq!(d, Decision { desired: 3, panicking: false, rate_limited: false });
    // Going from 3 to 5 is under twice 3: no panic, the average climbs.
    let up = sim.seconds(60, 5);
    assert_eq!(up.last(), Some(&5));
    assert!(up[0] < 5, "the stable want follows the average: {up:?}");
}

#[test]
fn the_last_worker_goes_only_after_idle_without_demand() {
    let mut c = cfg(0, 4, 1);
    c.idle = 30 * SEC;
    let mut sim = Sim::new(c);
    sim.second(1);
    let quiet = sim.seconds(40, 0);
    let gone = quiet.iter().position(|&n| n == 0).expect("scaled to zero");
    assert!((29..=31).contains(&gone), "at zero after {gone}s: {quiet:?}");
}

#[test]
fn a_short_idle_shortens_the_stable_window() {
    let c = ScaleConfig::new(0, 4, 1, 5 * SEC);
    assert_eq!(c.stable_window(), 5 * SEC);
    assert_eq!(c.panic_window(), SEC);
    assert_eq!(cfg(0, 4, 1).stable_window(), 60 * SEC);
    assert_eq!(cfg(0, 4, 1).panic_window(), 6 * SEC);
}

#[test]
fn the_rate_limit_is_reported() {
    let mut w = LoadWindow::new(SEC);
    w.record(5 * SEC, 40);
    let d = Autoscaler::default().decide(&cfg(0, 40, 1), Pin::Auto, &w, 5 * SEC, 1);
    assert_eq!(d, Decision { desired: 2, panicking: true, rate_limited: true });
}

#[test]
fn several_decisions_within_a_second_share_one_rate_allowance() {
    let mut w = LoadWindow::new(SEC);
    let mut a = Autoscaler::default();
    let c = cfg(0, 40, 1);
    w.record(5 * SEC, 40);
    assert_eq!(a.decide(&c, Pin::Auto, &w, 5 * SEC, 2).desired, 4);
    // The pool now has 4, still within the same second: no further growth.
    assert_eq!(a.decide(&c, Pin::Auto, &w, 5 * SEC + SEC / 2, 4).desired, 4);
    assert_eq!(a.decide(&c, Pin::Auto, &w, 6 * SEC, 4).desired, 8);
}

#[test]
fn pin_overrides_the_policy() {
    let mut w = LoadWindow::new(SEC);
    w.record(SEC, 100);
    assert_eq!(Autoscaler::default().decide(&cfg(0, 8, 1), Pin::Exactly(2), &w, SEC, 0).desired, 2);
}

#[test]
fn window_memory_is_bounded_by_buckets() {
    let mut w = LoadWindow::new(SEC);
    for i in 0..10_000u64 {
        w.record(Duration::from_millis(i), 1);
    }
    assert_eq!(w.buckets.len(), 10);
    w.forget_before(5 * SEC);
    // The bucket just before the cut stays: it carries into the next.
    assert_eq!(w.buckets.len(), 6);
}

#[test]
fn the_average_carries_the_last_sample_over_empty_buckets() {
    let mut w = LoadWindow::new(SEC);
    w.record(Duration::ZERO, 4);
    w.record(2 * SEC, 0);
    // Buckets 0..4: 4, 4 (carried), 0, 0 → 2.0.
    assert!((w.average(3 * SEC, 4 * SEC) - 2.0).abs() < 1e-9);
    // Before any sample counts as nothing.
    let mut late = LoadWindow::new(SEC);
    late.record(9 * SEC, 10);
    assert!((late.average(9 * SEC, 10 * SEC) - 1.0).abs() < 1e-9);
}

proptest! {
    #[test]
    fn always_within_bounds(min in 0u32..5, extra in 0u32..5, conc in 1u32..8,
                            samples in proptest::collection::vec((0u64..600, 0u32..100), 0..50),
                            now in 0u64..700, current in 0u32..12) {
        let c = cfg(min, min + extra.max(1), conc);
        let mut w = LoadWindow::new(SEC);
        let mut samples = samples;
        samples.sort();
        for (t, d) in samples { w.record(SEC * u32::try_from(t).unwrap_or(0), d); }
        let d = Autoscaler::default().decide(&c, Pin::Auto, &w, SEC * u32::try_from(now).unwrap_or(0), current);
        prop_assert!(d.desired <= c.max);
        // Above `current` only when demand asks, and at the capped rate.
        if d.desired > current { prop_assert!(d.desired <= (current.max(1) * 2).max(c.min)); }
        prop_assert!(d.desired >= c.min);
    }

    #[test]
    fn a_load_never_gets_fewer_workers_than_it_needs_once_settled(demand in 1u32..40, conc in 1u32..4) {
        let mut sim = Sim::new(cfg(0, 64, conc));
        sim.seconds(70, demand);
        prop_assert_eq!(sim.workers, workers_for(demand, conc));
    }
}

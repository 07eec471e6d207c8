//! The node's CPU and memory shared among its functions, as plain values:
//! the pool asks here how many workers it may have once every function's
//! wish is known.
//!
//! CPU: a CPU-bound function says how much of a core each worker keeps
//! busy (`[scale] cpu`); the cores left to functions (the node's, less
//! those the in-process models hold) are shared max-min fairly among what
//! the functions want, so a function asking for little gets all of it and
//! the rest split what remains evenly. A function that wants a worker
//! always gets one, even on a node whose cores are all taken: a function
//! that cannot run at all would only turn its callers away.
//!
//! Memory: every process the node starts for functions holds a part of
//! the node's memory budget (a worker, a zygote, its standby, a spare), and
//! one starts only if what it holds fits in what the node has left, so the
//! node is never pushed into swap or the kernel's OOM killer. When it does
//! not fit, what ranks lower may be given up for it ([`make_room`]): spares
//! first, then standbys, then zygotes, never a worker; a spare, standby or
//! zygote is never worth stopping a worker for, and those kept ahead of
//! demand (spares, standbys) never stop each other.

/// Max-min fair shares of `total` among `wants` (same order): every want at
/// or under the equal share is met in full, and what those leave is split
/// again among the rest, until nothing is left or every want is met.
pub fn fair_shares(total: f64, wants: &[f64]) -> Vec<f64> {
    let mut shares = vec![0.0; wants.len()];
    let mut open: Vec<usize> = (0..wants.len()).filter(|&i| wants[i] > 0.0).collect();
    let mut left = total.max(0.0);
    while !open.is_empty() && left > f64::EPSILON {
        let each = left / open.len() as f64;
        let (met, unmet): (Vec<usize>, Vec<usize>) = open.iter().partition(|&&i| wants[i] - shares[i] <= each);
        if met.is_empty() {
            for &i in &unmet {
                shares[i] += each;
            }
            break;
        }
        for &i in &met {
            left -= wants[i] - shares[i];
            shares[i] = wants[i];
        }
        open = unmet;
    }
    shares
}

/// One function's wish for CPU-bound workers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuClaim {
    /// Workers the scaling policy wants.
    pub want: u32,
    /// Cores one busy worker keeps busy (> 0).
    pub cpu: f64,
}

/// Workers each claim may have with `cores` free for functions: the fair
/// share of the cores over the cores one worker takes, rounded down, at
/// least one for a claim that wants any, never more than it wants.
pub fn cpu_grants(cores: f64, claims: &[CpuClaim]) -> Vec<u32> {
    let wants: Vec<f64> = claims.iter().map(|c| f64::from(c.want) * c.cpu.max(f64::EPSILON)).collect();
    let shares = fair_shares(cores, &wants);
    claims
        .iter()
        .zip(shares)
        .map(|(c, share)| {
            if c.want == 0 {
                return 0;
            }
            // A hair of tolerance: 2.0 / 1.0 must give 2 after the additions above.
            let fits = (share / c.cpu.max(f64::EPSILON) + 1e-9).floor();
            let fits = if fits >= f64::from(c.want) { c.want } else { fits as u32 };
            fits.clamp(1, c.want)
        })
        .collect()
}

/// Whether a worker that may use `need` bytes can start while workers
/// already count `used` against the node's `budget` (`None`: unbounded).
/// The first worker of a function that has none is held to the same rule:
/// an OOM kill on the node would take others' workers with it.
pub fn memory_allows(budget: Option<u64>, used: u64, need: u64) -> bool {
    budget.is_none_or(|b| used.saturating_add(need) <= b)
}

/// What a process the node started for functions is, in the order of
/// sacrifice when memory is short: the first is given up first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Holder {
    /// An interpreter started ahead of any function's need.
    Spare,
    /// A worker forked ahead of demand from a zygote, warmed up.
    Standby,
    /// A function's template process, which its workers fork from.
    Zygote,
    /// A worker serving (or about to serve) a function.
    Worker,
}

impl Holder {
    pub const ALL: [Holder; 4] = [Holder::Worker, Holder::Zygote, Holder::Standby, Holder::Spare];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spare => "spare",
            Self::Standby => "standby",
            Self::Zygote => "zygote",
            Self::Worker => "worker",
        }
    }

    /// Only what ranks strictly lower may be given up for a process:
    /// spares and standbys are both work done ahead, and neither is worth
    /// the other.
    fn rank(self) -> u8 {
        match self {
            Self::Spare | Self::Standby => 0,
            Self::Zygote => 1,
            Self::Worker => 2,
        }
    }
}

/// A part of the node's memory held by one process (or one pool's workers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub holder: Holder,
    pub bytes: u64,
    /// It could be stopped now to free its bytes (a zygote that workers
    /// forked from still live in is not: stopping it would end them).
    pub expendable: bool,
}

/// Which of `held` (by index) to give up so that a `holder` needing `need`
/// bytes fits in `budget`, or `None` if it cannot fit even so. Nothing is
/// given up when it fits already; otherwise the lowest in the order of
/// sacrifice goes first and, within one kind, the largest (the fewest
/// processes stopped); only expendable parts ranking below `holder` are
/// given up, and none when giving them all up would not be enough.
pub fn make_room(budget: Option<u64>, held: &[Held], need: u64, holder: Holder) -> Option<Vec<usize>> {
    let Some(budget) = budget else { return Some(Vec::new()) };
    let used: u64 = held.iter().map(|h| h.bytes).fold(0, u64::saturating_add);
    if memory_allows(Some(budget), used, need) {
        return Some(Vec::new());
    }
    let mut candidates: Vec<usize> =
        (0..held.len()).filter(|&i| held[i].expendable && held[i].holder.rank() < holder.rank()).collect();
    candidates.sort_by_key(|&i| (held[i].holder, std::cmp::Reverse(held[i].bytes), i));
    let mut left = used;
    let mut given = Vec::new();
    for i in candidates {
        if memory_allows(Some(budget), left, need) {
            break;
        }
        left -= held[i].bytes;
        given.push(i);
    }
    memory_allows(Some(budget), left, need).then_some(given)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn held(holder: Holder, bytes: u64) -> Held {
        Held { holder, bytes, expendable: true }
    }

    #[test]
    fn nothing_is_given_up_while_it_fits() {
        let all = [held(Holder::Worker, 300), held(Holder::Spare, 100)];
        assert_eq!(make_room(Some(1000), &all, 600, Holder::Worker), Some(vec![]));
        assert_eq!(make_room(None, &all, u64::MAX, Holder::Spare), Some(vec![]));
    }

    #[test]
    fn a_worker_gives_up_spares_then_standbys_then_zygotes() {
        let all = [
            held(Holder::Zygote, 40),
            held(Holder::Worker, 128),
            held(Holder::Standby, 20),
            held(Holder::Spare, 10),
            held(Holder::Spare, 12),
        ];
        // 210 held of 300: a worker of 128 needs 38 more, the spares give 22.
        assert_eq!(make_room(Some(300), &all, 128, Holder::Worker), Some(vec![4, 3, 2]));
        // 62 more: the standby is not enough, the zygote goes too.
        assert_eq!(make_room(Some(276), &all, 128, Holder::Worker), Some(vec![4, 3, 2, 0]));
    }

    #[test]
    fn a_zygote_may_displace_what_is_kept_ahead_but_not_a_worker() {
        let all = [held(Holder::Worker, 128), held(Holder::Spare, 100)];
        assert_eq!(make_room(Some(260), &all, 128, Holder::Zygote), Some(vec![1]));
        assert_eq!(make_room(Some(200), &all, 128, Holder::Zygote), None, "the worker stays, so nothing goes");
    }

    #[test]
    fn what_is_kept_ahead_never_displaces_anything() {
        let all = [held(Holder::Worker, 128), held(Holder::Spare, 10)];
        assert_eq!(make_room(Some(200), &all, 128, Holder::Standby), None);
        assert_eq!(make_room(Some(200), &all, 128, Holder::Spare), None);
        assert_eq!(make_room(Some(300), &all, 128, Holder::Standby), Some(vec![]));
    }

    #[test]
    fn a_zygote_its_workers_live_in_is_not_given_up() {
        let all = [held(Holder::Worker, 128), Held { holder: Holder::Zygote, bytes: 40, expendable: false }];
        assert_eq!(make_room(Some(256), &all, 128, Holder::Worker), None);
    }

    fn claim(want: u32, cpu: f64) -> CpuClaim {
        CpuClaim { want, cpu }
    }

    #[test]
    fn small_wants_are_met_and_the_rest_split_evenly() {
        assert_eq!(fair_shares(4.0, &[1.0, 5.0, 5.0]), vec![1.0, 1.5, 1.5]);
        assert_eq!(fair_shares(4.0, &[1.0, 1.0]), vec![1.0, 1.0]);
        assert_eq!(fair_shares(0.0, &[1.0]), vec![0.0]);
    }

    #[test]
    fn one_function_alone_gets_every_core() {
        assert_eq!(cpu_grants(2.0, &[claim(4, 1.0)]), vec![2]);
        assert_eq!(cpu_grants(2.0, &[claim(4, 0.5)]), vec![4]);
    }

    #[test]
    fn two_busy_functions_share_the_cores_fairly() {
        assert_eq!(cpu_grants(2.0, &[claim(4, 1.0), claim(4, 1.0)]), vec![1, 1]);
        assert_eq!(cpu_grants(4.0, &[claim(1, 1.0), claim(8, 1.0)]), vec![1, 3]);
    }

    #[test]
    fn a_function_that_wants_a_worker_gets_one_even_with_no_core_free() {
        assert_eq!(cpu_grants(0.0, &[claim(3, 1.0), claim(0, 1.0)]), vec![1, 0]);
        assert_eq!(cpu_grants(2.0, &[claim(1, 1.0), claim(1, 1.0), claim(1, 1.0)]), vec![1, 1, 1]);
    }

    #[test]
    fn memory_is_refused_past_the_budget() {
        assert!(memory_allows(None, u64::MAX, 1));
        assert!(memory_allows(Some(1024), 512, 512));
        assert!(!memory_allows(Some(1024), 513, 512));
        assert!(!memory_allows(Some(100), 0, 101), "not even a first worker");
    }

    fn any_holder() -> impl Strategy<Value = Holder> {
        prop_oneof![Just(Holder::Spare), Just(Holder::Standby), Just(Holder::Zygote), Just(Holder::Worker)]
    }

    proptest! {
        #[test]
        fn making_room_fits_the_budget_and_gives_up_only_what_ranks_lower(
            budget in 0u64..2000,
            parts in proptest::collection::vec((any_holder(), 0u64..400, any::<bool>()), 0..10),
            need in 0u64..600,
            holder in any_holder(),
        ) {
            let held: Vec<Held> = parts.iter().map(|&(holder, bytes, expendable)| Held { holder, bytes, expendable }).collect();
            let total: u64 = held.iter().map(|h| h.bytes).sum();
            match make_room(Some(budget), &held, need, holder) {
                Some(given) => {
                    let freed: u64 = given.iter().map(|&i| held[i].bytes).sum();
                    prop_assert!(total - freed + need <= budget);
                    for &i in &given {
                        prop_assert!(held[i].expendable && held[i].holder.rank() < holder.rank());
                    }
                    // Not one more than needed: without the last, it would not fit.
                    if let Some(&last) = given.last() {
                        prop_assert!(total - freed + held[last].bytes + need > budget);
                    }
                }
                None => {
                    let could: u64 = held.iter()
                        .filter(|h| h.expendable && h.holder.rank() < holder.rank())
                        .map(|h| h.bytes).sum();
                    prop_assert!(total - could + need > budget);
                }
            }
        }

        #[test]
        fn shares_never_exceed_the_total_or_a_want(total in 0.0f64..16.0,
                                                   wants in proptest::collection::vec(0.0f64..8.0, 0..8)) {
            let shares = fair_shares(total, &wants);
            let sum: f64 = shares.iter().sum();
            prop_assert!(sum <= total + 1e-9);
            for (s, w) in shares.iter().zip(&wants) {
                prop_assert!(*s <= *w + 1e-9 && *s >= 0.0);
            }
            // Nothing left unshared while a want is unmet.
            let unmet = shares.iter().zip(&wants).any(|(s, w)| *s + 1e-9 < *w);
            if unmet { prop_assert!(sum >= total - 1e-6); }
        }

        #[test]
        fn busy_cpu_bound_workers_never_exceed_the_cores(cores in 1u32..8,
                                                          wants in proptest::collection::vec(0u32..10, 1..6)) {
            let claims: Vec<CpuClaim> = wants.iter().map(|&w| claim(w, 1.0)).collect();
            let grants = cpu_grants(f64::from(cores), &claims);
            let wanting = wants.iter().filter(|&&w| w > 0).count() as u32;
            let total: u32 = grants.iter().sum();
            // Past the cores only by the one-worker floor of each function.
            prop_assert!(total <= cores.max(wanting));
            for (g, w) in grants.iter().zip(&wants) { prop_assert!(g <= w); }
        }
    }
}

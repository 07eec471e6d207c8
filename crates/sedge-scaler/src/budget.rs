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
//! Memory: a worker starts only if what it may use fits in what the node
//! has left, so the pool never starts the worker that would push the node
//! into swap or the kernel's OOM killer.

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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    proptest! {
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

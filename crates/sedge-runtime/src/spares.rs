//! Spare workers: one interpreter of a language kept started and waiting, so
//! that a cold start (a request at zero workers, a pool growing) pays only
//! for loading the user's module, not for the interpreter's own start-up.
//! A spare is taken by the first pool that needs one and replaced at once.
//!
//! A sandboxed worker sees only its own function's bundle and carries its
//! function's limits from its first instruction, so a spare cannot be
//! shared between functions: with a sandbox, spares are kept per function
//! version (started in its sandbox, with its limits) instead of one for
//! the language, and dropped with the version they were started for.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::Notify;

use crate::budget::{Claim, Holder, DEFAULT_WORKER_MEMORY};
use crate::process::{Spare, SpareTarget};
use crate::RuntimeConfig;

/// The spares of one language (one interpreter and shim).
pub struct Spares {
    config: Arc<RuntimeConfig>,
    /// Named in messages: `python`, `node`.
    language: &'static str,
    program: String,
    shim: PathBuf,
    state: Mutex<State>,
    /// Wakes those waiting for a spare that is starting.
    started: Notify,
}

/// Which spares are interchangeable: any (unsandboxed), or those of one
/// function version's bundle.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpareKey {
    dir: Option<PathBuf>,
}

#[derive(Default)]
struct State {
    ready: HashMap<SpareKey, Spare>,
    /// Spares starting, with their part of the node's memory budget.
    starting: HashMap<SpareKey, u64>,
    /// Versions gone while their spare was starting: it is dropped on arrival.
    forgotten: HashSet<PathBuf>,
    closed: bool,
}

impl Spares {
    pub fn new(config: Arc<RuntimeConfig>, language: &'static str, program: String, shim: PathBuf) -> Arc<Self> {
        Arc::new(Self { config, language, program, shim, state: Mutex::default(), started: Notify::new() })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key for spares that a function with bundle `target` may take.
    fn key(&self, target: &SpareTarget) -> SpareKey {
        let sandboxed = self.config.sandbox.is_some();
        SpareKey { dir: sandboxed.then(|| target.files.bundle.clone()) }
    }

    /// The waiting spare for `target`; if one is starting, it is awaited,
    /// since starting another process would cost the same and compete for
    /// the CPU. `None` when there is none. No replacement starts: the
    /// caller [`Self::fill`]s once its worker is up, so that what its
    /// start made (a zygote) counts against the memory budget first.
    pub async fn take(self: &Arc<Self>, target: &SpareTarget) -> Option<Spare> {
        let key = self.key(target);
        // The one awaited is claimed meanwhile: the caller's pool already
        // counts the worker it is to become.
        let mut claim: Option<Claim> = None;
        loop {
            let notified = self.started.notified();
            {
                let mut st = self.lock();
                if let Some(spare) = st.ready.remove(&key) {
                    return Some(spare);
                }
                let &hold = st.starting.get(&key)?;
                if claim.as_ref().is_none_or(|c| c.hold() != hold) {
                    claim = Some(self.config.budget.claim(hold));
                }
            }
            notified.await;
        }
    }

    /// Starts a spare (for `target`'s version, when sandboxed) unless one
    /// is waiting or starting, or the node's memory budget has no room for
    /// it (a spare never displaces anything: it is only work done ahead).
    pub fn fill(self: &Arc<Self>, target: &SpareTarget) {
        if !self.config.spares {
            return;
        }
        let key = self.key(target);
        let busy = |st: &State| st.closed || st.ready.contains_key(&key) || st.starting.contains_key(&key);
        if busy(&self.lock()) {
            return;
        }
        // Held while it starts at the most the kernel lets it take: the
        // function's limit (sandboxed), or what a worker counts as.
        let (function, limit) = match &key.dir {
            Some(_) => (Some(target.function.as_str()), target.limits.memory.unwrap_or(DEFAULT_WORKER_MEMORY)),
            None => (None, DEFAULT_WORKER_MEMORY),
        };
        let Some(hold) = self.config.budget.hold(Holder::Spare, function, limit) else {
            tracing::debug!("no spare {} worker: the node's memory budget has no room for it", self.language);
            return;
        };
        {
            let mut st = self.lock();
            // A forgotten spare still starting stays forgotten: its folder
            // may have been removed and unpacked again since it started, and
            // it would see the old one.
            if busy(&st) {
                return;
            }
            st.starting.insert(key.clone(), hold.id());
        }
        let me = self.clone();
        let target = key.dir.is_some().then(|| target.clone());
        tokio::spawn(async move {
            let started = Spare::start(&me.program, &me.shim, &me.config, target.as_ref()).await;
            let measure = {
                let mut st = me.lock();
                st.starting.remove(&key);
                let gone = key.dir.as_ref().is_some_and(|d| st.forgotten.remove(d));
                match started {
                    // Dropping a spare (closed meanwhile) ends its process.
                    Ok(mut spare) if !st.closed && !gone => {
                        let measure = (spare.measure(), hold.id());
                        spare.keep(Some(hold));
                        st.ready.insert(key.clone(), spare);
                        Some(measure)
                    }
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!("could not start a spare {} worker: {e}", me.language);
                        None
                    }
                }
            };
            me.started.notify_waiters();
            // Measured once it can be taken, so that no cold start waits
            // for the walk of `/proc`; until then it is held at its limit.
            if let Some((measure, hold)) = measure {
                let bytes = measure.await;
                let st = me.lock();
                if let Some(h) = held(&st, &key, hold) {
                    h.settle(bytes, give_up(Arc::downgrade(&me), key, hold));
                }
            }
        });
    }

    /// What a spare's part of the budget is given up by: the spare waiting
    /// under `key` is stopped, if it is still the one holding `hold`.
    fn remove_held(&self, key: &SpareKey, hold: u64) {
        let mut st = self.lock();
        if held(&st, key, hold).is_some() {
            // Dropped outside the lock: its hold goes back to the budget.
            let spare = st.ready.remove(key);
            drop(st);
            drop(spare);
        }
    }

    /// Ends the spares kept for one version's bundle (it is being replaced
    /// or removed). One still starting is dropped when it arrives unused.
    pub fn forget(&self, dir: &std::path::Path) {
        let mut st = self.lock();
        st.ready.retain(|k, _| k.dir.as_deref() != Some(dir));
        if st.starting.keys().any(|k| k.dir.as_deref() == Some(dir)) {
            st.forgotten.insert(dir.to_owned());
        }
    }

    /// Ends every spare and starts no more.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.ready.clear();
        drop(st);
        self.started.notify_waiters();
    }
}

/// The hold `hold` of the spare waiting under `key`, if it still waits.
fn held<'a>(st: &'a State, key: &SpareKey, hold: u64) -> Option<&'a crate::budget::MemoryHold> {
    st.ready.get(key).and_then(Spare::hold).filter(|h| h.id() == hold)
}

/// Stops the spare under `key` holding `hold` when the budget needs its room.
fn give_up(spares: Weak<Spares>, key: SpareKey, hold: u64) -> crate::budget::GiveUp {
    Box::new(move || {
        if let Some(spares) = spares.upgrade() {
            spares.remove_held(&key, hold);
        }
    })
}

//! The zygotes of a language's function versions (Python only): once a
//! version's first worker has loaded its module, a zygote of that version
//! starts in the background ([`crate::process::zygote`]), and from then on
//! its workers are forked from it rather than started. A version whose
//! module cannot be forked safely is remembered as such and keeps starting
//! fresh processes. A zygote lives as long as its version (it is what makes
//! a scale from zero cheap) and goes with it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::budget::{Holder, DEFAULT_WORKER_MEMORY};
use crate::engine::{ExitNotice, LogSink, Version};
use crate::process::zygote::{Recipe, Started, Zygote};
use crate::process::{Launch, Ready};
use crate::RuntimeConfig;

/// How long a zygote may take to load its module.
const ZYGOTE_START: Duration = Duration::from_secs(120);

enum Entry {
    Starting,
    Ready(Arc<Zygote>),
    /// Unforkable (or its start failed): workers start fresh.
    Refused,
}

pub struct Zygotes {
    config: Arc<RuntimeConfig>,
    program: String,
    shim: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: HashMap<PathBuf, Entry>,
    /// Versions gone while their zygote was starting.
    forgotten: HashSet<PathBuf>,
    closed: bool,
}

impl Zygotes {
    pub fn new(config: Arc<RuntimeConfig>, program: String, shim: PathBuf) -> Arc<Self> {
        Arc::new(Self { config, program, shim, state: Mutex::default() })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ready zygote of the version at `bundle`, if any.
    pub fn get(&self, bundle: &Path) -> Option<Arc<Zygote>> {
        let mut st = self.lock();
        match st.entries.get(bundle) {
            Some(Entry::Ready(z)) if z.is_alive() => Some(z.clone()),
            Some(Entry::Ready(_)) => {
                // Gone: the next worker that starts fresh makes another.
                st.entries.remove(bundle);
                None
            }
            _ => None,
        }
    }

    /// Starts a zygote for `version` unless it has one (or cannot), and
    /// the node's memory budget has room for it, spares and standbys given
    /// up; without room, the next worker that starts fresh asks again.
    pub fn ensure(self: &Arc<Self>, version: &Version, log: LogSink) {
        let bundle = version.files.bundle.clone();
        let busy = |st: &State| st.closed || st.entries.contains_key(&bundle);
        if busy(&self.lock()) {
            return;
        }
        // Held at the function's limit while its module loads, the most
        // the kernel lets it take (under the sandbox it has the limits).
        let limit = version.spec.limits.memory.unwrap_or(DEFAULT_WORKER_MEMORY);
        let Some(hold) = self.config.budget.hold(Holder::Zygote, Some(version.spec.name.as_str()), limit) else {
            log.line(format!(
                "no zygote for now: the node's memory budget ({}) has no room for one (up to {}); workers start fresh",
                self.config.budget.memory().map_or_else(|| "unbounded".to_owned(), sedge_core::invocation::mebibytes),
                sedge_core::invocation::mebibytes(limit),
            ));
            return;
        };
        {
            let mut st = self.lock();
            if busy(&st) {
                return;
            }
            st.forgotten.remove(&bundle);
            st.entries.insert(bundle.clone(), Entry::Starting);
        }
        let me = self.clone();
        let version = version.clone();
        tokio::spawn(async move {
            let launch = Launch {
                program: &me.program,
                shim: &me.shim,
                files: &version.files,
                log: log.clone(),
                oom_kills: version.counters.oom_kills.clone(),
                config: &me.config,
                ready: Ready { by: Instant::now() + ZYGOTE_START, within: ZYGOTE_START },
                exited: ExitNotice::new(|| {}),
                models: None,
            };
            let recipe = Recipe {
                spec: version.spec.clone(),
                config: me.config.clone(),
                oom_kills: version.counters.oom_kills.clone(),
                log: log.clone(),
            };
            let give_up = give_up(Arc::downgrade(&me), bundle.clone(), hold.id());
            let started = Zygote::start(&version.spec, launch, recipe, hold).await;
            let entry = match started {
                Ok(Started::Ready(z)) => {
                    log.line("zygote ready: further workers fork from it".to_owned());
                    Entry::Ready(Arc::from(z))
                }
                Ok(Started::Unforkable(reason)) => {
                    log.line(format!("workers start fresh, not from a zygote: {reason}"));
                    Entry::Refused
                }
                Err(e) => {
                    log.line(format!("workers start fresh, the zygote failed to start: {e}"));
                    Entry::Refused
                }
            };
            let mut st = me.lock();
            if st.closed || st.forgotten.remove(&bundle) {
                // Dropping a zygote ends its process (outside the lock: its
                // hold goes back to the budget).
                drop(st);
                drop(entry);
                return;
            }
            let ready = match &entry {
                Entry::Ready(z) => Some(z.clone()),
                _ => None,
            };
            if let Some(z) = &ready {
                z.settle(give_up);
            }
            st.entries.insert(bundle, entry);
            drop(st);
            // Only once it is settled: its standby then finds the zygote
            // held at its size, not at its limit.
            if let Some(z) = ready {
                z.prepare_standby();
            }
        });
    }

    /// What a zygote's part of the budget is given up by: the zygote of
    /// `bundle` is dropped (and so ended), if it is still the one holding
    /// `hold`. It is only given up while no worker forked from it lives.
    fn remove_held(&self, bundle: &Path, hold: u64) {
        let mut st = self.lock();
        if let Some(Entry::Ready(z)) = st.entries.get(bundle) {
            if z.hold_id() == hold {
                let gone = st.entries.remove(bundle);
                drop(st);
                drop(gone);
            }
        }
    }

    /// Ends the zygote of the version at `bundle` (replaced or removed).
    pub fn forget(&self, bundle: &Path) {
        let mut st = self.lock();
        if let Some(Entry::Starting) = st.entries.remove(bundle) {
            st.forgotten.insert(bundle.to_owned());
        }
    }

    /// Ends every zygote and starts no more.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.entries.clear();
    }
}

/// Ends the zygote of `bundle` holding `hold` when the budget needs its room.
fn give_up(zygotes: Weak<Zygotes>, bundle: PathBuf, hold: u64) -> crate::budget::GiveUp {
    Box::new(move || {
        if let Some(zygotes) = zygotes.upgrade() {
            zygotes.remove_held(&bundle, hold);
        }
    })
}

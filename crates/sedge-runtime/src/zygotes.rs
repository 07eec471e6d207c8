//! The zygotes of a language's function versions (Python only): once a
//! version's first worker has loaded its module, a zygote of that version
//! starts in the background ([`crate::process::zygote`]), and from then on
//! its workers are forked from it rather than started. A version whose
//! module cannot be forked safely is remembered as such and keeps starting
//! fresh processes. A zygote lives as long as its version (it is what makes
//! a scale from zero cheap) and goes with it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

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

    /// Starts a zygote for `version` unless it has one (or cannot).
    pub fn ensure(self: &Arc<Self>, version: &Version, log: LogSink) {
        let bundle = version.files.bundle.clone();
        {
            let mut st = self.lock();
            if st.closed || st.entries.contains_key(&bundle) {
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
            let started = Zygote::start(&version.spec, launch, recipe).await;
            let entry = match started {
                Ok(Started::Ready(z)) => {
                    log.line("zygote ready: further workers fork from it".to_owned());
                    let z: Arc<Zygote> = Arc::from(z);
                    z.prepare_standby();
                    Entry::Ready(z)
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
                // Dropping a zygote ends its process.
                return;
            }
            st.entries.insert(bundle, entry);
        });
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

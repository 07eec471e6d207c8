//! Spare workers: one interpreter per language kept started and waiting, so
//! that a cold start (a request at zero workers, a pool growing) pays only
//! for loading the user's module, not for the interpreter's own start-up.
//! A spare is taken by the first pool that needs one and replaced at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use sedge_core::RuntimeKind;
use tokio::sync::Notify;

use crate::process::Spare;
use crate::RuntimeConfig;

pub struct Spares {
    config: Arc<RuntimeConfig>,
    state: Mutex<State>,
    /// Wakes those waiting for a spare that is starting.
    started: Notify,
}

#[derive(Default)]
struct State {
    ready: HashMap<RuntimeKind, Spare>,
    starting: HashSet<RuntimeKind>,
    closed: bool,
}

impl Spares {
    pub fn new(config: Arc<RuntimeConfig>) -> Arc<Self> {
        Arc::new(Self { config, state: Mutex::default(), started: Notify::new() })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The waiting spare for `kind`; if one is starting, it is awaited, since
    /// starting another process would cost the same and compete for the
    /// CPU. `None` when there is none. A replacement starts at once.
    pub async fn take(self: &Arc<Self>, kind: RuntimeKind) -> Option<Spare> {
        let spare = loop {
            let notified = self.started.notified();
            {
                let mut st = self.lock();
                if let Some(spare) = st.ready.remove(&kind) {
                    break Some(spare);
                }
                if !st.starting.contains(&kind) {
                    break None;
                }
            }
            notified.await;
        };
        self.fill(kind);
        spare
    }

    /// Starts a spare for `kind` unless one is waiting or starting.
    pub fn fill(self: &Arc<Self>, kind: RuntimeKind) {
        if !self.config.spares || !matches!(kind, RuntimeKind::Python | RuntimeKind::Node) {
            return;
        }
        {
            let mut st = self.lock();
            if st.closed || st.ready.contains_key(&kind) || !st.starting.insert(kind) {
                return;
            }
        }
        let me = self.clone();
        tokio::spawn(async move {
            let program = match kind {
                RuntimeKind::Node => me.config.node.clone(),
                _ => me.config.python.clone(),
            };
            let started = Spare::start(&program, &me.config.shim(kind), &me.config.groups).await;
            {
                let mut st = me.lock();
                st.starting.remove(&kind);
                match started {
                    // Dropping a spare (closed meanwhile) ends its process.
                    Ok(spare) if !st.closed => {
                        st.ready.insert(kind, spare);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("could not start a spare {} worker: {e}", kind.as_str()),
                }
            }
            me.started.notify_waiters();
        });
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

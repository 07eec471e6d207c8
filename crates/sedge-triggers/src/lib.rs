//! Events that call functions: messages on MQTT topics and cron schedules,
//! from the functions' `[[triggers]]`. Each event becomes a call in the
//! durable queue (`sedge-queue`), so a burst is absorbed, retried and never
//! lost once the queue has it; an MQTT message at QoS 1 or 2 is
//! acknowledged to its broker only after that.
//!
//! - [`schedule`] (pure): a cron trigger's next firing after a given time.
//! - [`backoff`] (pure): the wait before reconnecting to a broker.
//! - [`Triggers`] (this module): keeps one task per cron trigger and one
//!   connection per broker in step with the deployed functions.
//! - `mqtt`: the connection to one broker.
//!
//! Neighbours: `sedge-core` checks the manifest's `[[triggers]]`,
//! `sedge-queue` stores and runs the calls, `sedge-runtime` knows what is deployed.

pub mod backoff;
#[cfg(feature = "mqtt")]
mod mqtt;
pub mod schedule;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sedge_core::{TriggerSource, TriggerSpec};
use sedge_queue::{CallKind, NewCall, Queue, Request};
use sedge_runtime::Runtime;
use serde::Serialize;

/// How often the deployed functions are compared with the running triggers.
const RECONCILE: Duration = Duration::from_secs(1);

/// Node-wide settings: brokers a trigger without its own uses.
#[derive(Debug, Clone, Default)]
pub struct TriggersConfig {
    /// `mqtt://host:port` from `serve --mqtt`.
    pub mqtt: Option<String>,
    /// The node's MQTT client id: the same across restarts, so the broker
    /// keeps the node's session (and its messages) while it is down.
    pub client_id: String,
}

/// What a broker connection is doing, for `describe` and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BrokerState {
    pub url: String,
    pub connected: bool,
    /// Connections lost (or refused) since the node started.
    pub disconnects: u64,
    /// Messages queued as calls since the node started.
    pub messages: u64,
    /// Answers published to reply topics.
    pub replies: u64,
    pub last_error: Option<String>,
}

/// One function's subscription on a broker.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Subscription {
    pub function: String,
    pub filter: String,
    pub qos: u8,
    pub reply: Option<String>,
}

type Shared = Arc<Mutex<BTreeMap<String, BrokerState>>>;

pub struct Triggers {
    runtime: Arc<Runtime>,
    queue: Arc<Queue>,
    config: TriggersConfig,
    brokers: Shared,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Triggers {
    pub fn new(runtime: Arc<Runtime>, queue: Arc<Queue>, config: TriggersConfig) -> Arc<Self> {
        Arc::new(Self { runtime, queue, config, brokers: Arc::default() })
    }

    /// The brokers' states, by URL.
    pub fn brokers(&self) -> Vec<BrokerState> {
        lock(&self.brokers).values().cloned().collect()
    }

    /// Starts keeping the triggers in step with the deployed functions.
    pub fn start(self: &Arc<Self>) {
        tokio::spawn(self.clone().reconcile_loop());
    }

    /// The triggers of every deployed function.
    fn wanted(&self) -> Vec<(String, TriggerSpec)> {
        let mut out = Vec::new();
        for name in self.runtime.names() {
            if let Some(pool) = self.runtime.get(&name) {
                for t in &pool.spec().triggers {
                    out.push((name.clone(), t.clone()));
                }
            }
        }
        out
    }

    async fn reconcile_loop(self: Arc<Self>) {
        let mut crons: HashMap<(String, String), tokio::task::JoinHandle<()>> = HashMap::new();
        let mut brokers: HashMap<String, (BTreeSet<Subscription>, tokio::task::JoinHandle<()>)> = HashMap::new();
        let mut warned: BTreeSet<String> = BTreeSet::new();
        loop {
            let mut want_crons = BTreeSet::new();
            let mut want_brokers: BTreeMap<String, BTreeSet<Subscription>> = BTreeMap::new();
            for (function, t) in self.wanted() {
                match &t.source {
                    TriggerSource::Cron { schedule } => {
                        want_crons.insert((function, schedule.clone()));
                    }
                    TriggerSource::Mqtt { filter, qos, broker } => {
                        let Some(url) = broker.clone().or_else(|| self.config.mqtt.clone()) else {
                            if warned.insert(format!("mqtt {function}")) {
                                tracing::warn!(
                                    "{function} has an mqtt trigger on {filter:?} but no broker: start the node with --mqtt URL or give the trigger a broker"
                                );
                            }
                            continue;
                        };
                        want_brokers.entry(url).or_default().insert(Subscription {
                            function,
                            filter: filter.clone(),
                            qos: *qos,
                            reply: t.reply.clone(),
                        });
                    }
                    TriggerSource::Nats { subject, .. } => {
                        if warned.insert(format!("nats {function}")) {
                            tracing::warn!(
                                "{function} has a nats trigger on {subject:?}, which this node does not serve yet"
                            );
                        }
                    }
                }
            }
            crons.retain(|key, task| {
                let keep = want_crons.contains(key) && !task.is_finished();
                if !keep {
                    task.abort();
                }
                keep
            });
            for key in want_crons {
                if let std::collections::hash_map::Entry::Vacant(slot) = crons.entry(key) {
                    let (function, schedule) = slot.key().clone();
                    slot.insert(tokio::spawn(self.clone().cron_loop(function, schedule)));
                }
            }
            brokers.retain(|url, (subs, task)| {
                let keep = want_brokers.get(url) == Some(subs) && !task.is_finished();
                if !keep {
                    // Unacknowledged messages are the broker's still: it sends them again.
                    task.abort();
                }
                keep
            });
            lock(&self.brokers).retain(|url, _| want_brokers.contains_key(url));
            for (url, subs) in want_brokers {
                if brokers.contains_key(&url) {
                    continue;
                }
                lock(&self.brokers)
                    .entry(url.clone())
                    .or_insert_with(|| BrokerState { url: url.clone(), ..Default::default() });
                let task = self.clone().spawn_broker(url.clone(), subs.clone());
                brokers.insert(url, (subs, task));
            }
            tokio::time::sleep(RECONCILE).await;
        }
    }

    #[cfg(feature = "mqtt")]
    fn spawn_broker(self: Arc<Self>, url: String, subs: BTreeSet<Subscription>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(mqtt::run(self, url, subs.into_iter().collect()))
    }

    #[cfg(not(feature = "mqtt"))]
    fn spawn_broker(self: Arc<Self>, url: String, _subs: BTreeSet<Subscription>) -> tokio::task::JoinHandle<()> {
        self.update(&url, |b| b.last_error = Some("this node was built without MQTT".into()));
        tokio::spawn(async {})
    }

    fn update(&self, url: &str, f: impl FnOnce(&mut BrokerState)) {
        if let Some(state) = lock(&self.brokers).get_mut(url) {
            f(state);
        }
    }

    async fn cron_loop(self: Arc<Self>, function: String, schedule: String) {
        let cron = match sedge_core::trigger::parse_cron(&schedule) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("{function}: {e}");
                return;
            }
        };
        loop {
            let now = chrono::Utc::now();
            let Some(next) = schedule::next_after(&cron, now) else {
                tracing::warn!("{function}: the schedule {schedule:?} never fires again");
                return;
            };
            tokio::time::sleep(schedule::wait(now, next)).await;
            let fired = next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let call = NewCall {
                function: function.clone(),
                kind: CallKind::Http,
                id: None,
                // One call per firing, even if the node restarts within the second.
                key: Some(format!("cron:{schedule}:{fired}")),
                request: Request {
                    method: "POST".into(),
                    path: "/".into(),
                    query: String::new(),
                    headers: vec![("x-cron-schedule".into(), schedule.clone()), ("x-cron-time".into(), fired.clone())],
                    body: Bytes::new(),
                },
                callback_url: None,
            };
            match self.queue.submit(vec![call]).await {
                Ok(_) => tracing::debug!("{function}: cron {schedule:?} fired at {fired}"),
                Err(e) => tracing::warn!("{function}: cron {schedule:?} at {fired} not queued: {e}"),
            }
        }
    }
}

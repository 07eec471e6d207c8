//! Events that call functions: messages on MQTT topics and NATS subjects,
//! and cron schedules, from the functions' `[[triggers]]`. Each event
//! becomes a call in the durable queue (`sedge-queue`), so a burst is
//! absorbed, retried and never lost once the queue has it; an MQTT message
//! at QoS 1 or 2, and a JetStream message, is acknowledged only after that.
//!
//! - [`schedule`] (pure): a cron trigger's next firing after a given time.
//! - [`backoff`] (pure): the wait before reconnecting to a broker.
//! - [`Triggers`] (this module): keeps one task per cron trigger and one
//!   connection per broker in step with the deployed functions, and what
//!   each trigger is doing ([`TriggerState`]) for `describe` and metrics.
//! - `mqtt`: the connection to one broker.
//! - [`nats`]: a NATS connection and the subscriptions on it.
//!
//! Neighbours: `sedge-core` checks the manifest's `[[triggers]]`,
//! `sedge-queue` stores and runs the calls, `sedge-runtime` knows what is
//! deployed; `sedge-gateway` shows the states, `sedge serve` hands in the
//! NATS connection.

pub mod backoff;
#[cfg(feature = "mqtt")]
mod mqtt;
pub mod nats;
pub mod schedule;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use nats::{NatsLink, NatsSubscription};
use sedge_core::{TriggerSource, TriggerSpec};
use sedge_queue::{CallKind, CallState, NewCall, Queue, Request};
use sedge_runtime::Runtime;
use serde::Serialize;

/// How often the deployed functions are compared with the running triggers.
const RECONCILE: Duration = Duration::from_secs(1);

/// How often a call with a reply topic is looked at until it has finished.
const REPLY_POLL: Duration = Duration::from_millis(50);
/// A call not finished by then gets no reply published.
const REPLY_GIVE_UP: Duration = Duration::from_secs(3600);

/// Node-wide settings: brokers a trigger without its own uses.
#[derive(Debug, Clone, Default)]
pub struct TriggersConfig {
    /// `mqtt://host:port` from `serve --mqtt`.
    pub mqtt: Option<String>,
    /// The node's NATS connection (`serve --nats`, or a cluster's own).
    pub nats: Option<NatsLink>,
    /// The node's MQTT client id: the same across restarts, so the broker
    /// keeps the node's session (and its messages) while it is down.
    pub client_id: String,
}

/// What a broker connection is doing, for `describe` and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BrokerState {
    pub url: String,
    pub connected: bool,
    /// Failed connection attempts since the last success.
    pub attempts: u64,
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
    pub content_type: Option<String>,
}

type Shared = Arc<Mutex<BTreeMap<String, BrokerState>>>;

/// One trigger of one function.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct TriggerKey {
    function: String,
    kind: &'static str,
    pattern: String,
}

/// What one trigger has done since the node started.
#[derive(Debug, Clone, Default)]
struct Counters {
    messages: u64,
    last_message: Option<chrono::DateTime<chrono::Utc>>,
    replies: u64,
}

/// One trigger as `describe`, the dashboard and metrics show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TriggerState {
    pub function: String,
    pub kind: &'static str,
    /// Topic filter, subject or schedule.
    pub pattern: String,
    /// The broker or server it listens on (none for cron).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// `connected`, `reconnecting`, `connecting`, `no broker` or (cron) `scheduled`.
    pub state: &'static str,
    pub connected: bool,
    /// Failed connection attempts since the last success.
    pub attempts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Messages (or firings) queued as calls since the node started.
    pub messages: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_message: Option<String>,
    /// Answers published to reply topics.
    pub replies: u64,
}

pub struct Triggers {
    runtime: Arc<Runtime>,
    queue: Arc<Queue>,
    config: TriggersConfig,
    brokers: Shared,
    /// NATS connections by URL: the node's own and those triggers name.
    nats_links: Mutex<BTreeMap<String, NatsLink>>,
    counters: Mutex<HashMap<TriggerKey, Counters>>,
}

/// A connection's state in one word.
fn link_word(connected: bool, attempts: u64, disconnects: u64) -> &'static str {
    if connected {
        "connected"
    } else if attempts == 0 && disconnects == 0 {
        "connecting"
    } else {
        "reconnecting"
    }
}

/// The queued call an event makes: a POST to the function's root with the
/// event's headers and payload, and no callback (a reply, when wanted, is the
/// trigger's to publish).
fn event_call(function: &str, key: Option<String>, headers: Vec<(String, String)>, body: Bytes) -> NewCall {
    NewCall {
        function: function.to_owned(),
        kind: CallKind::Http,
        id: None,
        key,
        request: Request { method: "POST".into(), path: "/".into(), query: String::new(), headers, body },
        callback_url: None,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Triggers {
    pub fn new(runtime: Arc<Runtime>, queue: Arc<Queue>, config: TriggersConfig) -> Arc<Self> {
        let mut links = BTreeMap::new();
        if let Some(link) = &config.nats {
            links.insert(link.url().to_owned(), link.clone());
        }
        Arc::new(Self {
            runtime,
            queue,
            config,
            brokers: Arc::default(),
            nats_links: Mutex::new(links),
            counters: Mutex::default(),
        })
    }

    /// What every deployed function's triggers are doing, by function.
    pub fn states(&self) -> Vec<TriggerState> {
        let brokers = lock(&self.brokers).clone();
        let links = lock(&self.nats_links).clone();
        let counters = lock(&self.counters).clone();
        let mut out: Vec<TriggerState> = self
            .wanted()
            .into_iter()
            .map(|(function, t)| {
                let key = TriggerKey { function: function.clone(), kind: t.kind(), pattern: t.pattern().to_owned() };
                let c = counters.get(&key).cloned().unwrap_or_default();
                let mut state = TriggerState {
                    function,
                    kind: t.kind(),
                    pattern: key.pattern,
                    broker: None,
                    state: "no broker",
                    connected: false,
                    attempts: 0,
                    last_error: None,
                    messages: c.messages,
                    last_message: c.last_message.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                    replies: c.replies,
                };
                match &t.source {
                    TriggerSource::Cron { .. } => state.state = "scheduled",
                    TriggerSource::Mqtt { broker, .. } => {
                        state.broker = broker.clone().or_else(|| self.config.mqtt.clone());
                        if state.broker.is_some() {
                            state.state = "connecting";
                        }
                        if let Some(b) = state.broker.as_ref().and_then(|url| brokers.get(url)) {
                            state.connected = b.connected;
                            state.attempts = b.attempts;
                            state.last_error = b.last_error.clone();
                            state.state = link_word(b.connected, b.attempts, b.disconnects);
                        }
                    }
                    TriggerSource::Nats { server, .. } => {
                        state.broker = server.clone().or_else(|| self.config.nats.as_ref().map(|l| l.url().to_owned()));
                        if state.broker.is_some() {
                            state.state = "connecting";
                        }
                        if let Some(link) = state.broker.as_ref().and_then(|url| links.get(url)) {
                            let l = link.state();
                            state.connected = l.connected;
                            state.attempts = l.attempts;
                            state.last_error = l.last_error;
                            state.state = link_word(l.connected, l.attempts, l.disconnects);
                        }
                    }
                }
                state
            })
            .collect();
        out.sort_by(|a, b| (&a.function, a.kind, &a.pattern).cmp(&(&b.function, b.kind, &b.pattern)));
        out
    }

    /// One more message (or firing) of a trigger queued.
    fn counted(&self, function: &str, kind: &'static str, pattern: &str) {
        let key = TriggerKey { function: function.to_owned(), kind, pattern: pattern.to_owned() };
        let mut counters = lock(&self.counters);
        let c = counters.entry(key).or_default();
        c.messages += 1;
        c.last_message = Some(chrono::Utc::now());
    }

    /// One more answer published for a trigger.
    fn replied(&self, function: &str, kind: &'static str, pattern: &str) {
        let key = TriggerKey { function: function.to_owned(), kind, pattern: pattern.to_owned() };
        lock(&self.counters).entry(key).or_default().replies += 1;
    }

    /// The answer of a queued call once it has finished (done or given
    /// up), or `None` if it is gone or takes longer than an hour.
    async fn finished(&self, id: &str) -> Option<nats::Answer> {
        let start = tokio::time::Instant::now();
        while start.elapsed() < REPLY_GIVE_UP {
            tokio::time::sleep(REPLY_POLL).await;
            let call = match self.queue.store().get(id) {
                Ok(Some(call)) => call,
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!("reading call {id} for its reply: {e}");
                    continue;
                }
            };
            if matches!(call.state, CallState::Done | CallState::Failed) {
                return Some(nats::Answer {
                    status: call.status.unwrap_or(0),
                    body: call.reply_body.unwrap_or_default(),
                });
            }
        }
        None
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
        let mut nats_subs: HashMap<(String, NatsSubscription), tokio::task::JoinHandle<()>> = HashMap::new();
        let mut warned: BTreeSet<String> = BTreeSet::new();
        loop {
            let mut want_crons = BTreeSet::new();
            let mut want_brokers: BTreeMap<String, BTreeSet<Subscription>> = BTreeMap::new();
            let mut want_nats: BTreeSet<(String, NatsSubscription)> = BTreeSet::new();
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
                            content_type: t.content_type.clone(),
                        });
                    }
                    TriggerSource::Nats { subject, server } => {
                        let url = server.clone().or_else(|| self.config.nats.as_ref().map(|l| l.url().to_owned()));
                        let Some(url) = url else {
                            if warned.insert(format!("nats {function}")) {
                                tracing::warn!(
                                    "{function} has a nats trigger on {subject:?} but no server: start the node with --nats URL or give the trigger a server"
                                );
                            }
                            continue;
                        };
                        want_nats.insert((
                            url,
                            NatsSubscription {
                                function,
                                subject: subject.clone(),
                                reply: t.reply.clone(),
                                content_type: t.content_type.clone(),
                            },
                        ));
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
            nats_subs.retain(|key, task| {
                let keep = want_nats.contains(key) && !task.is_finished();
                if !keep {
                    // Unacknowledged JetStream messages are sent again to the next consumer.
                    task.abort();
                }
                keep
            });
            for (url, sub) in want_nats {
                if nats_subs.contains_key(&(url.clone(), sub.clone())) {
                    continue;
                }
                let Some(link) = self.nats_link(&url, &mut warned).await else { continue };
                let task = tokio::spawn(nats::run(self.clone(), link, sub.clone()));
                nats_subs.insert((url, sub), task);
            }
            tokio::time::sleep(RECONCILE).await;
        }
    }

    /// The connection to a NATS server, made (in the background) the first
    /// time a trigger names it.
    async fn nats_link(&self, url: &str, warned: &mut BTreeSet<String>) -> Option<NatsLink> {
        if let Some(link) = lock(&self.nats_links).get(url) {
            return Some(link.clone());
        }
        match NatsLink::connect(url).await {
            Ok(link) => {
                lock(&self.nats_links).insert(url.to_owned(), link.clone());
                Some(link)
            }
            Err(e) => {
                // Tried again each round; said once.
                if warned.insert(format!("nats server {url}")) {
                    tracing::warn!("NATS server {url}: {e}");
                }
                None
            }
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
            // One call per firing, even if the node restarts within the second.
            let key = Some(format!("cron:{schedule}:{fired}"));
            let headers = vec![("x-cron-schedule".into(), schedule.clone()), ("x-cron-time".into(), fired.clone())];
            let call = event_call(&function, key, headers, Bytes::new());
            match self.queue.submit(vec![call]).await {
                Ok(_) => {
                    self.counted(&function, "cron", &schedule);
                    tracing::debug!("{function}: cron {schedule:?} fired at {fired}")
                }
                Err(e) => tracing::warn!("{function}: cron {schedule:?} at {fired} not queued: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::link_word;

    #[test]
    fn a_link_is_connecting_until_it_has_failed_or_been_lost() {
        assert_eq!(link_word(true, 0, 3), "connected");
        assert_eq!(link_word(false, 0, 0), "connecting");
        assert_eq!(link_word(false, 2, 0), "reconnecting");
        assert_eq!(link_word(false, 0, 1), "reconnecting");
    }
}

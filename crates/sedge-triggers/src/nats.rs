//! NATS subjects: a connection ([`NatsLink`]) the node hands to its
//! triggers, and one subscription per `nats` trigger on it.
//!
//! A subject some JetStream stream stores is read through a durable pull
//! consumer, and each message is acknowledged only once its call is on
//! disk, so it is processed at least once across a node's crash. Any other
//! subject is a plain core-NATS subscription: a message published while
//! the node is away, or lost with it before it was stored, is gone
//! (at most once), as core NATS itself promises.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_nats::{Client, ConnectOptions, HeaderMap};
use bytes::Bytes;
use sedge_queue::QueueError;
use tokio_stream::StreamExt;

use crate::backoff::Reconnect;
use crate::{lock, Triggers};

/// How long the server waits for an acknowledgement before it sends a
/// JetStream message again (to this node after a restart, or to another).
const ACK_WAIT: Duration = Duration::from_secs(10);
/// Messages a JetStream consumer hands out unacknowledged at once.
const MAX_ACK_PENDING: i64 = 512;
/// How often a subscription waiting for its connection looks again.
const CONNECTED_POLL: Duration = Duration::from_millis(200);

/// What a NATS connection is doing, kept from its events.
#[derive(Debug, Default)]
struct Health {
    /// Connection attempts since the last success.
    attempts: u64,
    last_error: Option<String>,
    disconnects: u64,
}

/// A connection to a NATS server, shared by every subscription on it.
#[derive(Clone)]
pub struct NatsLink {
    url: String,
    client: Client,
    /// Filled by the connection's events when this node made it; a client
    /// handed in from elsewhere tells only whether it is connected.
    health: Arc<Mutex<Health>>,
}

impl std::fmt::Debug for NatsLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsLink").field("url", &self.url).finish_non_exhaustive()
    }
}

/// A connection's state as `describe` and metrics show it.
#[derive(Debug, Clone, Default)]
pub struct LinkState {
    pub connected: bool,
    pub attempts: u64,
    pub last_error: Option<String>,
    pub disconnects: u64,
}

impl NatsLink {
    /// Connects to `url` (`nats://host:port`) in the background: this
    /// returns at once, the node starts while the server is away, and the
    /// connection is made and made again with back-off for as long as the
    /// node runs.
    pub async fn connect(url: &str) -> Result<Self, async_nats::ConnectError> {
        let health: Arc<Mutex<Health>> = Arc::default();
        let (on_delay, on_event) = (health.clone(), health.clone());
        let client = ConnectOptions::new()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .reconnect_delay_callback(move |attempts| {
                lock(&on_delay).attempts = attempts as u64;
                match attempts {
                    0 | 1 => Duration::ZERO,
                    n => Reconnect::BROKERS.delay(u32::try_from(n - 1).unwrap_or(u32::MAX), &mut fastrand::Rng::new()),
                }
            })
            .event_callback(move |event| {
                let health = on_event.clone();
                async move {
                    let mut h = lock(&health);
                    match event {
                        async_nats::Event::Connected => {
                            h.attempts = 0;
                            h.last_error = None;
                        }
                        async_nats::Event::Disconnected => h.disconnects += 1,
                        async_nats::Event::ClientError(e) => h.last_error = Some(e.to_string()),
                        async_nats::Event::ServerError(e) => h.last_error = Some(e.to_string()),
                        _ => {}
                    }
                }
            })
            .connect(address(url))
            .await?;
        Ok(Self { url: url.to_owned(), client, health })
    }

    /// A connection made elsewhere (a cluster's own), shared with the triggers.
    pub fn from_client(url: &str, client: Client) -> Self {
        Self { url: url.to_owned(), client, health: Arc::default() }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn state(&self) -> LinkState {
        let h = lock(&self.health);
        LinkState {
            connected: self.connected(),
            attempts: h.attempts,
            last_error: h.last_error.clone(),
            disconnects: h.disconnects,
        }
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

/// async-nats takes `host:port` or `nats://host:port`; `tcp://` is ours.
fn address(url: &str) -> String {
    match url.strip_prefix("tcp://") {
        Some(rest) => format!("nats://{rest}"),
        None => url.to_owned(),
    }
}

/// One function's `nats` trigger.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct NatsSubscription {
    pub function: String,
    pub subject: String,
    pub reply: Option<String>,
    pub content_type: Option<String>,
}

/// Runs one subscription until aborted: JetStream when a stream stores the
/// subject, else core NATS; started again after the subscription breaks.
pub(crate) async fn run(triggers: Arc<Triggers>, link: NatsLink, sub: NatsSubscription) {
    let mut failures = 0u32;
    let mut rng = fastrand::Rng::new();
    loop {
        // The server's INFO (whether it runs JetStream) arrives just after
        // the connection counts as made.
        while !link.connected() || link.client.server_info().server_id.is_empty() {
            tokio::time::sleep(CONNECTED_POLL).await;
        }
        let outcome = if link.client.server_info().jetstream {
            let js = jetstream::new(link.client.clone());
            match js.stream_by_subject(sub.subject.clone()).await {
                Ok(stream) => consume_stream(&triggers, &link, &sub, &js, &stream).await,
                Err(e) if e.kind() == jetstream::context::GetStreamByNameErrorKind::NotFound => {
                    subscribe_core(&triggers, &link, &sub).await
                }
                Err(e) => Err(format!("looking up the JetStream stream of {:?}: {e}", sub.subject)),
            }
        } else {
            subscribe_core(&triggers, &link, &sub).await
        };
        failures = match outcome {
            Ok(()) => 1,
            Err(e) => {
                tracing::warn!("{}: nats trigger on {:?} at {}: {e}", sub.function, sub.subject, link.url);
                failures.saturating_add(1)
            }
        };
        tokio::time::sleep(Reconnect::BROKERS.delay(failures, &mut rng)).await;
    }
}

/// A plain subscription; async-nats makes it again on every reconnection.
async fn subscribe_core(triggers: &Arc<Triggers>, link: &NatsLink, sub: &NatsSubscription) -> Result<(), String> {
    let mut messages = link.client.subscribe(sub.subject.clone()).await.map_err(|e| format!("subscribing: {e}"))?;
    tracing::info!("{}: subscribed to {:?} on {} (core NATS: at most once)", sub.function, sub.subject, link.url);
    while let Some(message) = messages.next().await {
        // Stored one after another: core NATS hands messages in order and
        // buffers what the node has not taken yet.
        let accepted = match store(triggers, sub, &message, None, || async {}).await {
            Stored::Yes(accepted) => accepted,
            Stored::Stopping => return Ok(()),
            Stored::Refused => continue,
        };
        triggers.counted(&sub.function, "nats", &sub.subject);
        spawn_replies(triggers, link, sub, &message, accepted);
    }
    Err("the subscription ended".into())
}

/// A durable pull consumer on the stream that stores the subject.
async fn consume_stream(
    triggers: &Arc<Triggers>,
    link: &NatsLink,
    sub: &NatsSubscription,
    js: &jetstream::Context,
    stream_name: &str,
) -> Result<(), String> {
    let stream = js.get_stream(stream_name).await.map_err(|e| format!("opening stream {stream_name}: {e}"))?;
    let name = consumer_name(&sub.function, &sub.subject);
    let consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                description: Some(format!("sedge function {} (trigger on {})", sub.function, sub.subject)),
                filter_subject: sub.subject.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: MAX_ACK_PENDING,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("creating consumer {name} on stream {stream_name}: {e}"))?;
    let mut messages = consumer.messages().await.map_err(|e| format!("reading consumer {name}: {e}"))?;
    tracing::info!(
        "{}: consuming {:?} on {} through stream {stream_name}, durable consumer {name} (at least once)",
        sub.function,
        sub.subject,
        link.url
    );
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ACK_PENDING as usize));
    while let Some(next) = messages.next().await {
        let message = match next {
            Ok(m) => m,
            Err(e) if e.kind() == pull::MessagesErrorKind::MissingHeartbeat => {
                // Seen while the server is away; the stream goes on once it is back.
                continue;
            }
            Err(e) => return Err(format!("consumer {name}: {e}")),
        };
        let Ok(slot) = slots.clone().acquire_owned().await else { return Ok(()) };
        let (triggers, link, sub, stream_name) = (triggers.clone(), link.clone(), sub.clone(), stream_name.to_owned());
        tokio::spawn(async move {
            take_stored(&triggers, &link, &sub, &stream_name, message).await;
            drop(slot);
        });
    }
    Err(format!("consumer {name} ended"))
}

/// Queues one JetStream message, then acknowledges it. The stream's
/// sequence number is the call's idempotency key, so a message sent again
/// (its acknowledgement was lost with the node) is not queued twice.
async fn take_stored(
    triggers: &Arc<Triggers>,
    link: &NatsLink,
    sub: &NatsSubscription,
    stream: &str,
    message: jetstream::Message,
) {
    let (seq, redelivered) = match message.info() {
        Ok(info) => (Some(info.stream_sequence), info.delivered > 1),
        Err(_) => (None, false),
    };
    let key = seq.map(|s| format!("nats:{stream}:{s}"));
    let mut extra = vec![("x-nats-stream".to_owned(), stream.to_owned())];
    if let Some(s) = seq {
        extra.push(("x-nats-sequence".to_owned(), s.to_string()));
    }
    extra.push(("x-nats-redelivered".to_owned(), redelivered.to_string()));
    let inner = &message.message;
    let progress = || async {
        // Still not stored: keep the server from handing it to someone else meanwhile.
        let _ = message.ack_with(AckKind::Progress).await;
    };
    let accepted = match store_with(triggers, sub, inner, key, extra, progress).await {
        Stored::Yes(accepted) => accepted,
        // Left unacknowledged: the server sends it again after the restart.
        Stored::Stopping => return,
        Stored::Refused => {
            // It would be refused every time: stop the server sending it.
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    if let Err(e) = message.ack().await {
        tracing::warn!("{}: acknowledging a message on {:?}: {e}", sub.function, inner.subject);
    }
    triggers.counted(&sub.function, "nats", &sub.subject);
    // A JetStream message's reply subject is its acknowledgement's, not a
    // requester's: only the trigger's own reply template is answered.
    if !accepted.duplicate {
        spawn_template_reply(triggers, link, sub, inner.subject.as_str(), accepted.id);
    }
}

async fn store<F, Fut>(
    triggers: &Triggers,
    sub: &NatsSubscription,
    message: &async_nats::Message,
    key: Option<String>,
    progress: F,
) -> Stored
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut extra = Vec::new();
    if let Some(reply) = &message.reply {
        extra.push(("x-nats-reply".to_owned(), reply.to_string()));
    }
    store_with(triggers, sub, message, key, extra, progress).await
}

/// What became of a message handed to the queue.
enum Stored {
    Yes(sedge_queue::store::Accepted),
    /// The node is stopping: the message was not stored.
    Stopping,
    /// The store refused this call itself (not the disk): it never will.
    Refused,
}

/// Stores the message as a call, trying again while the disk is full or
/// busy.
async fn store_with<F, Fut>(
    triggers: &Triggers,
    sub: &NatsSubscription,
    message: &async_nats::Message,
    key: Option<String>,
    extra: Vec<(String, String)>,
    progress: F,
) -> Stored
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let headers = request_headers(message, extra, sub.content_type.as_deref());
    let call = crate::event_call(&sub.function, key, headers, message.payload.clone());
    let mut wait = Duration::from_millis(100);
    loop {
        match triggers.queue.submit(vec![call.clone()]).await {
            Ok(mut results) => {
                return match results.pop() {
                    Some(Ok(accepted)) => Stored::Yes(accepted),
                    Some(Err(e)) => {
                        tracing::warn!("{}: a message on {:?} was refused: {e}", sub.function, message.subject);
                        Stored::Refused
                    }
                    None => Stored::Refused,
                }
            }
            Err(QueueError::Stopping) => return Stored::Stopping,
            Err(e) => {
                tracing::warn!("{}: a message on {:?} is not stored yet: {e}", sub.function, message.subject);
                progress().await;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Headers the node sets itself; a message's own headers of these names are dropped.
const OWN_HEADERS: [&str; 4] = ["content-length", "host", "transfer-encoding", "connection"];

/// The call's headers: the subject (and reply subject, stream, sequence)
/// under `X-Nats-*`, then the message's own headers as they came, except
/// the node's own names and `X-Nats-*`, which a publisher cannot forge.
fn request_headers(
    message: &async_nats::Message,
    extra: Vec<(String, String)>,
    content_type: Option<&str>,
) -> Vec<(String, String)> {
    let mut headers = vec![("x-nats-subject".to_owned(), message.subject.to_string())];
    headers.extend(extra);
    let mut typed = false;
    if let Some(map) = &message.headers {
        headers.extend(message_headers(map).into_iter().filter(|(name, _)| {
            let keep =
                !name.starts_with("x-nats-") && !name.starts_with("x-call-") && !OWN_HEADERS.contains(&name.as_str());
            typed |= keep && name == "content-type";
            keep
        }));
    }
    if !typed {
        headers.push(("content-type".to_owned(), content_type.unwrap_or("application/octet-stream").to_owned()));
    }
    headers
}

fn message_headers(map: &HeaderMap) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, values) in map.iter() {
        let name = name.to_string().to_ascii_lowercase();
        for value in values {
            out.push((name.clone(), value.as_str().to_owned()));
        }
    }
    out
}

/// A consumer name from the function and subject: NATS forbids `.`, `*`,
/// `>` and spaces in names, so the subject is hashed into it.
fn consumer_name(function: &str, subject: &str) -> String {
    // FNV-1a: the same on every build and platform, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in subject.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let safe: String =
        function.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    format!("sedge_{safe}_{hash:016x}")
}

/// Answers a core message: to its reply subject (a request) and to the
/// trigger's reply template, once the call has finished.
fn spawn_replies(
    triggers: &Arc<Triggers>,
    link: &NatsLink,
    sub: &NatsSubscription,
    message: &async_nats::Message,
    accepted: sedge_queue::store::Accepted,
) {
    let mut targets: Vec<String> = message.reply.iter().map(|r| r.to_string()).collect();
    if let Some(template) = &sub.reply {
        targets.push(sedge_core::trigger::expand_reply(template, &message.subject, &sub.function));
    }
    spawn_publish(triggers, link, sub, accepted.id, targets);
}

fn spawn_template_reply(triggers: &Arc<Triggers>, link: &NatsLink, sub: &NatsSubscription, subject: &str, id: String) {
    let targets: Vec<String> =
        sub.reply.iter().map(|t| sedge_core::trigger::expand_reply(t, subject, &sub.function)).collect();
    spawn_publish(triggers, link, sub, id, targets);
}

fn spawn_publish(triggers: &Arc<Triggers>, link: &NatsLink, sub: &NatsSubscription, id: String, targets: Vec<String>) {
    if targets.is_empty() {
        return;
    }
    let (triggers, client, function, subject) =
        (triggers.clone(), link.client.clone(), sub.function.clone(), sub.subject.clone());
    tokio::spawn(async move {
        let Some(answer) = triggers.finished(&id).await else { return };
        for target in targets {
            let mut headers = HeaderMap::new();
            headers.insert("X-Sedge-Status", answer.status.to_string().as_str());
            headers.insert("X-Call-Id", id.as_str());
            // Buffered by the client while the server is away, sent when it is back.
            match client.publish_with_headers(target.clone(), headers, answer.body.clone()).await {
                Ok(()) => triggers.replied(&function, "nats", &subject),
                Err(e) => tracing::warn!("{function}: publishing the answer of {id} to {target:?}: {e}"),
            }
        }
    });
}

/// A finished call's answer.
pub(crate) struct Answer {
    pub status: u16,
    pub body: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_are_stable_and_legal() {
        let a = consumer_name("cam-classify", "cam.frames.>");
        assert_eq!(a, consumer_name("cam-classify", "cam.frames.>"));
        assert_ne!(a, consumer_name("cam-classify", "cam.frames.*"));
        assert!(a.starts_with("sedge_cam-classify_"));
        assert!(!a.contains(['.', '*', '>', ' ']));
    }

    #[test]
    fn a_publisher_cannot_forge_the_nodes_headers() {
        let mut map = HeaderMap::new();
        map.insert("X-Nats-Subject", "forged");
        map.insert("X-Call-Id", "forged");
        map.insert("Content-Type", "image/png");
        map.insert("Camera", "3");
        let message = async_nats::Message {
            subject: "cam.frames".into(),
            reply: None,
            payload: Bytes::from_static(b"x"),
            headers: Some(map),
            status: None,
            description: None,
            length: 1,
        };
        let headers = request_headers(&message, vec![], Some("text/plain"));
        assert_eq!(headers.iter().filter(|(n, _)| n == "x-nats-subject").count(), 1);
        assert!(headers.contains(&("x-nats-subject".into(), "cam.frames".into())));
        assert!(!headers.iter().any(|(n, _)| n == "x-call-id"));
        assert!(headers.contains(&("content-type".into(), "image/png".into())));
        assert!(headers.contains(&("camera".into(), "3".into())));
        assert_eq!(headers.iter().filter(|(n, _)| n == "content-type").count(), 1);
    }
}

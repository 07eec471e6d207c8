//! Asynchronous calls in a cluster: a JetStream work-queue stream
//! (`SEDGE_CALLS`, subject `sedge.calls.FUNCTION`) in place of the node's
//! SQLite queue, with each call's state in the `sedge-calls` bucket.
//!
//! The node that accepts a call creates its record (`c.ID`, an atomic
//! create, so a chosen id is taken once cluster-wide; an idempotency key is
//! an atomic create of `k.FUNCTION.KEY` first), then publishes a small
//! message naming the call and its round, and answers 202 only once
//! JetStream has it. Every node running the function pulls from one durable
//! consumer per function, only while it has room. Before running it reads
//! the record: a call already finished is not run again (a redelivery after
//! its result was recorded), a message of an earlier round (the call was
//! retried by hand since) is dropped. The attempt is marked `running`, its
//! end written with the revision read, and only then is the message
//! acknowledged, or, for a retry the function's `[async]` policy allows
//! (`sedge_queue::policy`), given back with the back-off as its delay. A
//! finished call with a callback keeps its message (its ack wait extended)
//! until the callback is delivered or given up, so a node lost meanwhile
//! leaves the callback to the next.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, kv, object_store, AckKind};
use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use sedge_core::{Invocation, InvokeError};
use sedge_gateway::cluster::{ClusterCalls, Fut, StatusCode};
use sedge_gateway::ApiError;
use sedge_queue::callback::{self, HttpClient};
use sedge_queue::policy::{self, Backoff, Next, Outcome};
use sedge_queue::{Accepted, Call, CallKind, CallState, CallbackState, Filter, NewCall, QueueConfig, StoreError};
use serde::{Deserialize, Serialize};

use crate::membership::now_ms;
use crate::{Cluster, ClusterError};

pub(crate) const STREAM: &str = "SEDGE_CALLS";
pub(crate) const BUCKET: &str = "sedge-calls";
/// Bodies of calls too large to keep in their record.
const BODIES: &str = "sedge-call-bodies";
/// How long the cluster keeps a call after its last change.
const KEEP: Duration = Duration::from_secs(24 * 3600);
/// A function whose asynchronous calls may wait in the queue longer than
/// the cluster keeps a call's record would lose them silently: refused at
/// deploy instead, naming the field.
pub(crate) fn kept_long_enough(spec: &sedge_core::FunctionSpec) -> Result<(), ApiError> {
    let asked = spec.async_calls.max_age;
    if asked <= KEEP {
        return Ok(());
    }
    let text = |d: Duration| match d.as_secs() {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s => format!("{s}s"),
    };
    Err(ApiError::bad_request(format!(
        "async.max_age = {}: a cluster keeps an asynchronous call {}, so max_age is at most {} in a cluster",
        text(asked),
        text(KEEP),
        text(KEEP),
    )))
}

/// Past the function's timeout, how long a node may hold a call before
/// JetStream gives it to another.
const ACK_MARGIN: Duration = Duration::from_secs(5);
/// Bodies up to this size live in the record itself; larger ones in
/// `sedge-call-bodies`, so a record stays well within one NATS message.
const INLINE: usize = 64 * 1024;
/// Past the function's timeout, how long an attempt may take to read the
/// call's body and store its answer before the call is given back.
const BODIES_WITHIN: Duration = Duration::from_secs(120);
/// How often a node holding a call while it runs or posts the callback
/// tells JetStream it is still at it.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Why a stored body could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct BodyError {
    /// It is not kept any more (expired or removed): reading again is no use.
    gone: bool,
    message: String,
}

/// The buckets of the cluster's calls.
pub(crate) struct CallBuckets {
    records: kv::Store,
    /// Opened (or created) by the first call with a large body, so a
    /// cluster that has none keeps no stream for them.
    bodies: tokio::sync::OnceCell<object_store::ObjectStore>,
    js: jetstream::Context,
    replicas: usize,
}

/// A KV key token for any text: ASCII letters, digits, `-` and `_` as they
/// are, every other byte as `=XX`. `=` is not among the kept characters, so
/// two texts never share a token.
fn token(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_') {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

fn record_key(id: &str) -> String {
    format!("c.{}", token(id))
}

fn idempotency_key(function: &str, key: &str) -> String {
    format!("k.{}.{}", token(function), token(key))
}

fn subject(function: &str) -> String {
    format!("sedge.calls.{function}")
}

/// The object of a large answer, one per round: a retry by hand deletes
/// the last round's answer once the new round is queued, by when that
/// round may already have stored its own.
fn result_object(id: &str, round: u32) -> String {
    format!("result.{}.{round}", token(id))
}

/// How long an idempotency key may name a call that does not show before
/// it is taken over. Its holder stores the call right after the key, in
/// one request of JetStream's (which gives up after 5 s): past this, the
/// holder is gone or gave up without freeing the key.
const KEY_ORPHANED_AFTER: Duration = Duration::from_secs(15);

/// Who holds an idempotency key.
enum KeyHolder {
    /// The call being submitted, at this revision of the key.
    Us(u64),
    /// A call stored before, by its id.
    Call(String),
}

/// The message on the stream: which call, and which round of it (a retry
/// by hand starts a new round; a message of an older one is stale).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Queued {
    id: String,
    round: u32,
}

/// A body in a record: inline (base64), or an object in `sedge-call-bodies`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StoredBody {
    Inline(String),
    Object { name: String, len: u64 },
}

impl StoredBody {
    fn inline(body: &[u8]) -> Self {
        Self::Inline(base64::engine::general_purpose::STANDARD.encode(body))
    }

    fn object_name(&self) -> Option<&str> {
        match self {
            Self::Object { name, .. } => Some(name),
            Self::Inline(_) => None,
        }
    }
}

/// A call's state in the `sedge-calls` bucket: what `sedge_queue::Call`
/// holds on a single node, and the node and round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    pub id: String,
    pub function: String,
    pub task: bool,
    /// queued, running, done or failed.
    pub state: String,
    pub key: Option<String>,
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: StoredBody,
    pub callback_url: Option<String>,
    pub accepted_ms: u64,
    pub queued_ms: u64,
    pub not_before_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub round: u32,
    pub attempts: u32,
    pub node: Option<String>,
    pub status: Option<u16>,
    pub reply_headers: Vec<(String, String)>,
    pub reply_body: Option<StoredBody>,
    pub error: Option<String>,
    pub duration_ms: Option<u64>,
    /// none, pending, delivered or failed.
    pub callback: String,
    pub callback_attempts: u32,
    pub callback_error: Option<String>,
}

/// How an attempt ended, as the record keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Option<StoredBody>,
    /// The node's own description of a failure (not the function's answer).
    pub error: Option<String>,
    pub duration_ms: u64,
}

impl CallRecord {
    /// A call just accepted.
    pub fn queued(call: &NewCall, id: String, body: StoredBody, now: u64) -> Self {
        let r = &call.request;
        Self {
            id,
            function: call.function.clone(),
            task: call.kind == CallKind::Task,
            state: CallState::Queued.as_str().into(),
            key: call.key.clone(),
            method: r.method.clone(),
            path: r.path.clone(),
            query: r.query.clone(),
            headers: r.headers.clone(),
            body,
            callback_url: call.callback_url.clone(),
            accepted_ms: now,
            queued_ms: now,
            not_before_ms: now,
            started_ms: None,
            finished_ms: None,
            round: 0,
            attempts: 0,
            node: None,
            status: None,
            reply_headers: vec![],
            reply_body: None,
            error: None,
            duration_ms: None,
            callback: CallbackState::None.as_str().into(),
            callback_attempts: 0,
            callback_error: None,
        }
    }

    pub fn state(&self) -> CallState {
        CallState::parse(&self.state).unwrap_or(CallState::Queued)
    }

    pub fn finished(&self) -> bool {
        matches!(self.state(), CallState::Done | CallState::Failed)
    }

    fn callback_pending(&self) -> bool {
        CallbackState::parse(&self.callback) == CallbackState::Pending
    }

    /// An attempt starts on `node`.
    pub fn start(&mut self, node: &str, now: u64) {
        self.state = CallState::Running.as_str().into();
        self.attempts += 1;
        self.node = Some(node.to_owned());
        self.started_ms = Some(now);
    }

    /// Records what the retry policy decided after an attempt.
    pub fn end(&mut self, ended: Ended, next: &Next, now: u64) {
        self.status = Some(ended.status);
        match next {
            Next::Retry { after } => {
                self.state = CallState::Queued.as_str().into();
                self.not_before_ms = now + u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
                self.error = Some(ended.error.unwrap_or_else(|| format!("answered {}", ended.status)));
                return;
            }
            Next::Done => {
                self.state = CallState::Done.as_str().into();
                self.error = None;
            }
            Next::GiveUp { reason } => {
                self.state = CallState::Failed.as_str().into();
                self.error = Some(match ended.error {
                    Some(e) => format!("{e}; {reason}"),
                    None => format!("answered {}; {reason}", ended.status),
                });
            }
        }
        self.finished_ms = Some(now);
        self.reply_headers = ended.headers;
        self.reply_body = ended.body;
        self.duration_ms = Some(ended.duration_ms);
        if self.callback_url.is_some() {
            self.callback = CallbackState::Pending.as_str().into();
        }
    }

    /// A delivery of the callback: delivered, to be tried again, or given up.
    pub fn callback_tried(&mut self, outcome: Result<(), String>, most: u32) {
        self.callback_attempts += 1;
        let state = match &outcome {
            Ok(()) => CallbackState::Delivered,
            Err(_) if self.callback_attempts < most => CallbackState::Pending,
            Err(_) => CallbackState::Failed,
        };
        self.callback = state.as_str().into();
        self.callback_error = outcome.err();
    }

    /// Queued again by hand (`sedge calls retry`): as new, attempts from
    /// zero, its age from now, in a new round.
    pub fn retried(&mut self, now: u64) {
        self.state = CallState::Queued.as_str().into();
        self.round += 1;
        self.attempts = 0;
        self.queued_ms = now;
        self.not_before_ms = now;
        self.started_ms = None;
        self.finished_ms = None;
        self.status = None;
        self.reply_headers = vec![];
        self.reply_body = None;
        self.error = None;
        self.duration_ms = None;
        self.callback = CallbackState::None.as_str().into();
        self.callback_attempts = 0;
        self.callback_error = None;
    }

    /// The call as the gateway shows it, with the bodies given.
    pub fn call(&self, body: Bytes, reply: Option<Bytes>) -> Call {
        let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Call {
            id: self.id.clone(),
            seq: ms(self.accepted_ms),
            function: self.function.clone(),
            kind: if self.task { CallKind::Task } else { CallKind::Http },
            state: self.state(),
            attempts: self.attempts,
            request: self.invocation(body),
            callback_url: self.callback_url.clone(),
            accepted_ms: ms(self.accepted_ms),
            queued_ms: ms(self.queued_ms),
            not_before_ms: ms(self.not_before_ms),
            started_ms: self.started_ms.map(ms),
            finished_ms: self.finished_ms.map(ms),
            status: self.status,
            reply_headers: self.reply_headers.clone(),
            reply_body: reply,
            error: self.error.clone(),
            duration_ms: self.duration_ms.map(ms),
            callback: CallbackState::parse(&self.callback),
            callback_attempts: self.callback_attempts,
            callback_error: self.callback_error.clone(),
            node: self.node.clone(),
        }
    }

    fn invocation(&self, body: Bytes) -> Invocation {
        Invocation {
            method: self.method.clone(),
            path: self.path.clone(),
            query: self.query.clone(),
            headers: self.headers.clone(),
            body,
        }
    }

    fn in_filter(&self, filter: &Filter) -> bool {
        filter.function.as_ref().is_none_or(|f| *f == self.function) && filter.state.is_none_or(|s| s == self.state())
    }
}

pub(crate) async fn open(js: &jetstream::Context, replicas: usize) -> Result<CallBuckets, ClusterError> {
    open_stream(js, replicas).await?;
    let records = crate::open_kv(
        js,
        kv::Config { bucket: BUCKET.into(), num_replicas: replicas, history: 1, max_age: KEEP, ..Default::default() },
    )
    .await?;
    let records = leader_reads(js, records).await?;
    Ok(CallBuckets { records, bodies: tokio::sync::OnceCell::new(), js: js.clone(), replicas })
}

/// The calls bucket read from its stream's leader only. A follower a
/// little behind (as any replica answers a bucket's reads by default) says
/// "no such call" for one just stored, or shows the round before a retry:
/// the node pulling its message would then drop it as removed or stale,
/// and an accepted call would never run.
async fn leader_reads(js: &jetstream::Context, records: kv::Store) -> Result<kv::Store, ClusterError> {
    if !records.stream.cached_info().config.allow_direct {
        return Ok(records);
    }
    let what = "bucket sedge-calls";
    let mut config = records.stream.cached_info().config.clone();
    config.allow_direct = false;
    js.update_stream(config).await.map_err(|e| crate::js_error(what, e))?;
    js.get_key_value(BUCKET).await.map_err(|e| crate::js_error(what, e))
}

async fn open_stream(js: &jetstream::Context, replicas: usize) -> Result<(), ClusterError> {
    if js.get_stream(STREAM).await.is_ok() {
        return Ok(());
    }
    let config = jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec!["sedge.calls.>".into()],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        num_replicas: replicas,
        ..Default::default()
    };
    let created = js.create_stream(config).await;
    js.get_stream(STREAM).await.map(|_| ()).map_err(|e| match created {
        Err(c) => crate::js_error("stream SEDGE_CALLS", c),
        Ok(_) => crate::js_error("stream SEDGE_CALLS", e),
    })
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("the cluster could not {what}: {e}"))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, StoreError::NotFound(id.to_owned()).to_string())
}

fn encode(record: &CallRecord) -> Bytes {
    serde_json::to_vec(record).unwrap_or_default().into()
}

/// The client callbacks are posted with, shared by every call.
fn http() -> &'static HttpClient {
    static CLIENT: OnceLock<HttpClient> = OnceLock::new();
    CLIENT.get_or_init(callback::client)
}

fn rng() -> &'static Mutex<fastrand::Rng> {
    static RNG: OnceLock<Mutex<fastrand::Rng>> = OnceLock::new();
    RNG.get_or_init(|| Mutex::new(fastrand::Rng::new()))
}

fn jitter(backoff: &Backoff, n: u32) -> Duration {
    backoff.delay(n, &mut rng().lock().unwrap_or_else(|p| p.into_inner()))
}

/// Runs `work` while telling JetStream every [`PROGRESS_EVERY`] that the
/// message is still being handled, so its ack wait does not pass.
async fn with_progress<T>(message: &jetstream::Message, work: impl std::future::Future<Output = T>) -> T {
    let keep = async {
        loop {
            tokio::time::sleep(PROGRESS_EVERY).await;
            let _ = message.ack_with(AckKind::Progress).await;
        }
    };
    tokio::select! {
        out = work => out,
        never = keep => never,
    }
}

/// Counts a node's calls of one function running at once.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Self(n.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Cluster {
    fn records(&self) -> &kv::Store {
        &self.calls.records
    }

    async fn bodies(&self) -> Result<&object_store::ObjectStore, String> {
        let c = &self.calls;
        c.bodies
            .get_or_try_init(|| async {
                let config = object_store::Config {
                    bucket: BODIES.into(),
                    num_replicas: c.replicas,
                    max_age: KEEP,
                    ..Default::default()
                };
                crate::open_objects(&c.js, config).await.map_err(|e| e.to_string())
            })
            .await
    }

    async fn store_body(&self, name: String, body: &[u8]) -> Result<StoredBody, String> {
        if body.len() <= INLINE {
            return Ok(StoredBody::inline(body));
        }
        let mut reader = body;
        self.bodies().await?.put(name.as_str(), &mut reader).await.map_err(|e| format!("storing a body: {e}"))?;
        Ok(StoredBody::Object { name, len: body.len() as u64 })
    }

    async fn load_body(&self, body: &StoredBody) -> Result<Bytes, BodyError> {
        let unreadable = |message: String| BodyError { gone: false, message };
        match body {
            StoredBody::Inline(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(Bytes::from)
                .map_err(|e| BodyError { gone: true, message: format!("a stored body is not base64: {e}") }),
            StoredBody::Object { name, len } => {
                let mut object = self.bodies().await.map_err(unreadable)?.get(name.as_str()).await.map_err(|e| {
                    let gone = e.kind() == object_store::GetErrorKind::NotFound;
                    let message = if gone {
                        format!("the body of {len} bytes is no longer in {BODIES}")
                    } else {
                        format!("reading a body of {len} bytes from {BODIES}: {e}")
                    };
                    BodyError { gone, message }
                })?;
                let mut out = Vec::new();
                tokio::io::AsyncReadExt::read_to_end(&mut object, &mut out)
                    .await
                    .map_err(|e| unreadable(format!("reading a body of {len} bytes: {e}")))?;
                Ok(out.into())
            }
        }
    }

    async fn drop_bodies(&self, bodies: impl IntoIterator<Item = Option<&StoredBody>>) {
        let names: Vec<&str> = bodies.into_iter().flatten().filter_map(StoredBody::object_name).collect();
        if names.is_empty() {
            return;
        }
        let store = match self.bodies().await {
            Ok(s) => s,
            Err(e) => return tracing::debug!("cluster: deleting call bodies: {e}"),
        };
        for name in names {
            if let Err(e) = store.delete(name).await {
                tracing::debug!("cluster: deleting call body {name}: {e}");
            }
        }
    }

    /// The record of call `id` and its revision.
    async fn record(&self, id: &str) -> Result<Option<(CallRecord, u64)>, ApiError> {
        let entry = self.records().entry(record_key(id)).await.map_err(|e| unavailable("read the call", e))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else { return Ok(None) };
        let record = serde_json::from_slice(&entry.value)
            .map_err(|e| ApiError::internal("reading the call", format!("call {id}: {e}")))?;
        Ok(Some((record, entry.revision)))
    }

    async fn publish_call(&self, function: &str, queued: &Queued) -> Result<(), String> {
        let payload = serde_json::to_vec(queued).unwrap_or_default();
        let ack = self.js.publish(subject(function), payload.into()).await.map_err(|e| e.to_string())?;
        ack.await.map(|_| ()).map_err(|e| e.to_string())
    }

    async fn submit(&self, call: NewCall) -> Result<Accepted, ApiError> {
        let id = call.id.clone().unwrap_or_else(sedge_queue::store::new_id);
        // The key first, as one node checks it first: an atomic create, so
        // of two nodes given the same key at once only one stores a call.
        let mut key_entry = None;
        if let Some(key) = &call.key {
            let k = idempotency_key(&call.function, key);
            match self.take_key(&k, &id).await? {
                KeyHolder::Us(revision) => key_entry = Some((k, revision)),
                KeyHolder::Call(first) => return Ok(Accepted { id: first, duplicate: true }),
            }
        }
        let stored = self.store_new(&call, &id).await;
        if !matches!(stored, Ok(Accepted { duplicate: false, .. })) {
            if let Some((k, revision)) = &key_entry {
                // Only as this call took it: a key taken over since (this
                // node too slow, see `take_key`) is another call's now.
                let _ = self.records().purge_expect_revision(k.as_str(), Some(*revision)).await;
            }
        }
        stored
    }

    /// Creates idempotency key `k` for call `id`, or finds the call that
    /// holds it. The node that took a key may still be storing its call, or
    /// give up (and free the key): a holder whose call does not show yet is
    /// waited for. A key naming a call that has not shown for
    /// [`KEY_ORPHANED_AFTER`] was left by a node that died, or whose answer
    /// to taking it was lost, between the key and the call: it is taken over,
    /// with the revision read, so of several nodes only one does.
    async fn take_key(&self, k: &str, id: &str) -> Result<KeyHolder, ApiError> {
        let give_up = Instant::now() + 2 * KEY_ORPHANED_AFTER;
        // The holder's entry, and since when this node has seen it unchanged.
        let mut seen: Option<(u64, Instant)> = None;
        while Instant::now() < give_up {
            match self.records().create(k, id.to_owned().into()).await {
                Ok(revision) => return Ok(KeyHolder::Us(revision)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(unavailable("store the idempotency key", e)),
            }
            let entry = self.records().entry(k).await.map_err(|e| unavailable("read the idempotency key", e))?;
            if let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) {
                let first = String::from_utf8_lossy(&entry.value).into_owned();
                if self.record(&first).await?.is_some() {
                    return Ok(KeyHolder::Call(first));
                }
                match seen {
                    Some((revision, since)) if revision == entry.revision => {
                        if since.elapsed() >= KEY_ORPHANED_AFTER {
                            if let Ok(ours) = self.records().update(k, id.to_owned().into(), revision).await {
                                tracing::warn!(
                                    "cluster: idempotency key {k} named call {first}, never stored: taken over"
                                );
                                return Ok(KeyHolder::Us(ours));
                            }
                        }
                    }
                    _ => seen = Some((entry.revision, Instant::now())),
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(unavailable("store the idempotency key", "another node holds it and has not stored its call; try again"))
    }

    /// Stores call `id` (its record, then its body, then its message).
    async fn store_new(&self, call: &NewCall, id: &str) -> Result<Accepted, ApiError> {
        let body = &call.request.body;
        let slot = if body.len() <= INLINE {
            StoredBody::inline(body)
        } else {
            StoredBody::Object { name: format!("request.{}", token(id)), len: body.len() as u64 }
        };
        let record = CallRecord::queued(call, id.to_owned(), slot.clone(), now_ms());
        let key = record_key(id);
        match self.records().create(key.as_str(), encode(&record)).await {
            Ok(_) => {}
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                return match self.record(id).await? {
                    Some((other, _)) if other.function == call.function => {
                        Ok(Accepted { id: id.to_owned(), duplicate: true })
                    }
                    _ => Err(ApiError::new(StatusCode::CONFLICT, StoreError::IdTaken(id.to_owned()).to_string())),
                };
            }
            Err(e) => return Err(unavailable("store the call", e)),
        }
        let published = async {
            if let StoredBody::Object { name, .. } = &slot {
                self.store_body(name.clone(), body).await?;
            }
            self.publish_call(&call.function, &Queued { id: id.to_owned(), round: 0 }).await
        }
        .await;
        if let Err(e) = published {
            let _ = self.records().purge(key.as_str()).await;
            self.drop_bodies([Some(&slot)]).await;
            return Err(unavailable("queue the call", e));
        }
        Ok(Accepted { id: id.to_owned(), duplicate: false })
    }

    async fn get_call(&self, id: &str) -> Result<Option<Call>, ApiError> {
        let Some((record, _)) = self.record(id).await? else { return Ok(None) };
        // A body no longer kept shows as empty; the record still says how
        // the call went.
        let body = self.load_body(&record.body).await.unwrap_or_default();
        let reply = match &record.reply_body {
            Some(b) => Some(self.load_body(b).await.unwrap_or_default()),
            None => None,
        };
        Ok(Some(record.call(body, reply)))
    }

    /// Every record within `filter`, newest first, without bodies.
    async fn records_in(&self, filter: &Filter) -> Result<Vec<CallRecord>, ApiError> {
        let keys = self.records().keys().await.map_err(|e| unavailable("list the calls", e))?;
        // A key written while the listing runs comes again with its new
        // revision: each once.
        let keys: BTreeSet<String> =
            keys.filter_map(|k| async move { k.ok().filter(|k| k.starts_with("c.")) }).collect().await;
        let records = self.records();
        let mut found: Vec<CallRecord> = futures_util::stream::iter(keys)
            .map(|k| async move { records.get(k).await.ok().flatten() })
            .buffer_unordered(32)
            .filter_map(|v| async move { v.and_then(|v| serde_json::from_slice::<CallRecord>(&v).ok()) })
            .filter(|r| std::future::ready(r.in_filter(filter)))
            .collect()
            .await;
        found.sort_by(|a, b| b.accepted_ms.cmp(&a.accepted_ms).then_with(|| b.id.cmp(&a.id)));
        Ok(found)
    }

    async fn list_calls(&self, filter: Filter) -> Result<Vec<Call>, ApiError> {
        let mut found = self.records_in(&filter).await?;
        if let Some(limit) = filter.limit {
            found.truncate(limit as usize);
        }
        Ok(found.iter().map(|r| r.call(Bytes::new(), None)).collect())
    }

    async fn retry_call(&self, id: &str) -> Result<(), ApiError> {
        let Some((mut record, revision)) = self.record(id).await? else { return Err(not_found(id)) };
        if !record.finished() {
            let state = record.state().as_str();
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                StoreError::NotFinished { id: id.to_owned(), state }.to_string(),
            ));
        }
        if self.spec_of(&record.function).is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "function {} is no longer deployed in the cluster: no node would run call {id}",
                    record.function
                ),
            ));
        }
        if let StoredBody::Object { name, len } = &record.body {
            let kept = match self.bodies().await {
                Ok(store) => crate::holds(store, name.as_str()).await,
                Err(e) => return Err(unavailable("read the call's body", e)),
            };
            if !kept {
                return Err(ApiError::new(
                    StatusCode::GONE,
                    format!("call {id}'s body of {len} bytes is no longer kept; submit it again"),
                ));
            }
        }
        let before = record.clone();
        record.retried(now_ms());
        let key = record_key(id);
        let revision = self.records().update(key.as_str(), encode(&record), revision).await.map_err(|_| {
            ApiError::new(StatusCode::CONFLICT, format!("call {id} changed while being retried; try again"))
        })?;
        if let Err(e) = self.publish_call(&record.function, &Queued { id: id.to_owned(), round: record.round }).await {
            let _ = self.records().update(key.as_str(), encode(&before), revision).await;
            return Err(unavailable("queue the call again", e));
        }
        self.drop_bodies([before.reply_body.as_ref()]).await;
        Ok(())
    }

    async fn purge_calls(&self, filter: Filter) -> Result<usize, ApiError> {
        let found = self.records_in(&Filter { limit: None, ..filter }).await?;
        let mut removed = 0;
        for record in found.iter().filter(|r| r.finished() && !r.callback_pending()) {
            if let Err(e) = self.records().purge(record_key(&record.id)).await {
                return Err(unavailable(&format!("remove call {} ({removed} removed)", record.id), e));
            }
            if let Some(key) = &record.key {
                let _ = self.records().purge(idempotency_key(&record.function, key)).await;
            }
            self.drop_bodies([Some(&record.body), record.reply_body.as_ref()]).await;
            removed += 1;
        }
        Ok(removed)
    }

    /// Pulls calls of `name` while this node runs it and has room: fewer of
    /// them running than its `[async] concurrency`, and a free worker. It
    /// ends only when aborted with the function's subscription
    /// (`forward.rs`), which lives on meanwhile: a puller that gave up on
    /// its own (the stream not reachable while NATS elects a leader, the
    /// pool between two versions) would leave the function's queued calls
    /// to the other nodes, or to none.
    pub(crate) async fn run_calls(self: Arc<Self>, name: String) {
        let mut consumer = loop {
            match self.call_consumer(&name).await {
                Ok(c) => break c,
                Err(e) => tracing::warn!("cluster: the call consumer of {name}: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let mut ack_wait = consumer.cached_info().config.ack_wait;
        let running = Arc::new(AtomicUsize::new(0));
        loop {
            let Some(pool) = self.node().and_then(|n| n.runtime.get(&name)) else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            let spec = pool.spec();
            // A version with another timeout: the consumer's ack wait follows,
            // or a node lost mid-call would hold its calls for the old one.
            if spec.limits.timeout + ACK_MARGIN != ack_wait {
                match self.call_consumer(&name).await {
                    Ok(c) => consumer = c,
                    Err(e) => tracing::warn!("cluster: the call consumer of {name}: {e}"),
                }
                ack_wait = spec.limits.timeout + ACK_MARGIN;
            }
            let limit = spec.async_calls.concurrency_for(spec.scale.max.saturating_mul(spec.scale.concurrency));
            let (inflight, capacity) = pool.load();
            // A node leaving takes no more calls: those it holds finish
            // within its grace, the others go to the nodes that stay.
            let leaving = self.leaving.load(Ordering::Relaxed);
            if leaving || inflight >= capacity || running.load(Ordering::SeqCst) >= limit as usize {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let batch = consumer.fetch().max_messages(1).expires(Duration::from_secs(2)).messages().await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    // The consumer may be gone with its stream (deleted,
                    // or lost with the servers that held it): made again.
                    tracing::debug!("cluster: pulling calls of {name}: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if let Ok(c) = self.call_consumer(&name).await {
                        consumer = c;
                    }
                    continue;
                }
            };
            while let Some(message) = batch.next().await {
                let Ok(message) = message else { break };
                let slot = Slot::take(&running);
                let cluster = self.clone();
                let pool = pool.clone();
                tokio::spawn(async move { cluster.run_call(&pool, message, slot).await });
            }
        }
    }

    /// The durable consumer this node pulls calls of `name` from.
    async fn call_consumer(&self, name: &str) -> Result<jetstream::consumer::PullConsumer, String> {
        let pool = self.node().and_then(|n| n.runtime.get(name)).ok_or("the function is not running here")?;
        let stream = self.js.get_stream(STREAM).await.map_err(|e| format!("the call stream: {e}"))?;
        let config = pull::Config {
            durable_name: Some(format!("calls-{name}")),
            filter_subject: subject(name),
            ack_wait: pool.spec().limits.timeout + ACK_MARGIN,
            ..Default::default()
        };
        // Created, or updated to this version's ack wait.
        stream.create_consumer(config).await.map_err(|e| e.to_string())
    }

    async fn run_call(&self, pool: &sedge_runtime::Pool, message: jetstream::Message, slot: Slot) {
        let nak = |after: Duration| message.ack_with(AckKind::Nak(Some(after)));
        let queued: Queued = match serde_json::from_slice(&message.payload) {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!("cluster: dropping an unreadable call message: {e}");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let (mut record, mut revision) = match self.record(&queued.id).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                tracing::debug!("cluster: call {} was removed before it ran", queued.id);
                let _ = message.ack().await;
                return;
            }
            Err(e) => {
                tracing::debug!("cluster: call {}: {}", queued.id, e.message);
                let _ = nak(Duration::from_secs(1)).await;
                return;
            }
        };
        if record.round != queued.round {
            // Retried by hand since: that round has its own message.
            let _ = message.ack().await;
            return;
        }
        if record.state() == CallState::Running {
            // Another node started it within the ack wait: it may still be
            // at it. Past the ack wait, that attempt was cut off.
            let wait = pool.spec().limits.timeout + ACK_MARGIN;
            let since = Duration::from_millis(now_ms().saturating_sub(record.started_ms.unwrap_or(0)));
            if since < wait {
                let _ = nak(wait - since).await;
                return;
            }
        }
        if !record.finished() {
            // An attempt can outlast the ack wait (large bodies read and
            // stored besides the function's own timeout): the message is
            // held meanwhile, or JetStream would give it to another node,
            // which, once the wait has passed, would run the call again.
            // Held within bounds: an object store that stops answering
            // gives the call back rather than keep it here for good.
            let most = pool.spec().limits.timeout + BODIES_WITHIN;
            let attempt = with_progress(&message, self.attempt(pool, &mut record, &mut revision));
            let Some(next) = tokio::time::timeout(most, attempt).await.ok().flatten() else {
                let _ = nak(Duration::from_millis(200)).await;
                return;
            };
            let key = record_key(&record.id);
            match self.records().update(key.as_str(), encode(&record), revision).await {
                Ok(r) => revision = r,
                Err(e) => {
                    // Not recorded: the call is JetStream's to give again.
                    tracing::warn!("cluster: recording call {}: {e}", record.id);
                    let _ = nak(Duration::from_secs(1)).await;
                    return;
                }
            }
            if let Next::Retry { after } = next {
                let _ = nak(after).await;
                return;
            }
        }
        drop(slot);
        if record.callback_pending() && !with_progress(&message, self.deliver_callback(&mut record, revision)).await {
            // A delivery not recorded: the message comes back for it.
            let _ = nak(Duration::from_secs(1)).await;
            return;
        }
        if let Err(e) = message.ack().await {
            tracing::warn!("cluster: acknowledging call {}: {e}", record.id);
        }
    }

    /// One attempt of a call, its end written into `record` (not yet
    /// stored); `None` when the function has no room just now.
    async fn attempt(&self, pool: &sedge_runtime::Pool, record: &mut CallRecord, revision: &mut u64) -> Option<Next> {
        let spec = pool.spec().async_calls.clone();
        let now = now_ms();
        let age = Duration::from_millis(now.saturating_sub(record.queued_ms));
        let fail = |status: u16, reason: String| {
            let (headers, body) = policy::error_answer(&reason);
            Ended { status, headers, body: Some(StoredBody::inline(&body)), error: Some(reason), duration_ms: 0 }
        };
        if let Some(reason) = policy::expired(&spec, age) {
            record.end(fail(410, reason.clone()), &Next::GiveUp { reason }, now);
            return Some(Next::GiveUp { reason: String::new() });
        }
        let admission = match pool.admit() {
            Ok(a) => Ok(a),
            Err(InvokeError::QueueFull { .. } | InvokeError::ShuttingDown(_)) => return None,
            Err(e) => Err(e),
        };
        let unstarted = record.clone();
        record.start(&self.config.node_name, now);
        let key = record_key(&record.id);
        // Marked running with the revision read: of two nodes given the
        // same message, one goes on.
        *revision = self.records().update(key.as_str(), encode(record), *revision).await.ok()?;
        let body = match self.load_body(&record.body).await {
            Ok(b) => b,
            Err(e) if !e.gone => {
                // JetStream not answering just now (a leader being elected):
                // not an attempt; the call is given back as it was.
                tracing::warn!("cluster: call {}: {e}; given back", record.id);
                *record = unstarted;
                return Some(Next::Retry { after: Duration::from_secs(1) });
            }
            Err(e) => {
                let reason = format!("call {}: {e}", record.id);
                let next = Next::GiveUp { reason: "its body is gone".into() };
                record.end(fail(410, reason), &next, now_ms());
                return Some(next);
            }
        };
        let timeout = pool.spec().limits.timeout + Duration::from_secs(1);
        let started = Instant::now();
        let result = match admission {
            Ok(a) => tokio::time::timeout(timeout, a.invoke(record.invocation(body))).await.unwrap_or_else(|_| {
                Err(InvokeError::Timeout {
                    function: record.function.clone(),
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                })
            }),
            Err(e) => Err(e),
        };
        if matches!(result, Err(InvokeError::ShuttingDown(_))) {
            // The pool closed before a worker had it (this node stopping, a
            // new version in its place): not an attempt, as on one node.
            // Queued again as it was, for the next node to pull at once.
            *record = unstarted;
            return Some(Next::Retry { after: Duration::from_millis(200) });
        }
        let took = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let Outcome { attempt, headers, body, error } = Outcome::of(result);
        let next = {
            let mut rng = rng().lock().unwrap_or_else(|p| p.into_inner());
            policy::after_attempt(&spec, &attempt, record.attempts, age, &Backoff::CALLS, &mut rng)
        };
        let body = if matches!(next, Next::Retry { .. }) {
            None
        } else {
            match self.store_body(result_object(&record.id, record.round), &body).await {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::warn!("cluster: call {}: {e}; the answer is not kept", record.id);
                    None
                }
            }
        };
        record.end(Ended { status: attempt.status, headers, body, error, duration_ms: took }, &next, now_ms());
        Some(next)
    }

    /// Posts a finished call's result to its callback URL until delivered
    /// or given up, as one node does, each delivery recorded; whether the
    /// last one was.
    async fn deliver_callback(&self, record: &mut CallRecord, mut revision: u64) -> bool {
        let config = QueueConfig::default();
        let key = record_key(&record.id);
        let mut body = None;
        while record.callback_pending() {
            if record.callback_attempts > 0 {
                tokio::time::sleep(jitter(&config.callback_backoff, record.callback_attempts)).await;
            }
            // Read once for every try; one that cannot be read counts as a
            // failed delivery, never as an answer with an empty body.
            let loaded = match (&body, &record.reply_body) {
                (Some(b), _) => Ok(Bytes::clone(b)),
                (None, None) => Ok(Bytes::new()),
                (None, Some(stored)) => self.load_body(stored).await,
            };
            let outcome = match loaded {
                Ok(b) => {
                    body = Some(b.clone());
                    callback::deliver(http(), &record.call(Bytes::new(), Some(b)), config.callback_timeout).await
                }
                Err(e) => Err(format!("its result could not be read: {e}")),
            };
            record.callback_tried(outcome, config.callback_attempts);
            if CallbackState::parse(&record.callback) == CallbackState::Failed {
                tracing::warn!(
                    "cluster: callback of call {} given up after {} attempts: {}",
                    record.id,
                    record.callback_attempts,
                    record.callback_error.as_deref().unwrap_or_default()
                );
            }
            match self.records().update(key.as_str(), encode(record), revision).await {
                Ok(r) => revision = r,
                Err(e) => {
                    tracing::warn!("cluster: recording the callback of call {}: {e}", record.id);
                    return false;
                }
            }
        }
        true
    }
}

impl ClusterCalls for Cluster {
    fn submit(&self, call: NewCall) -> Fut<'_, Result<Accepted, ApiError>> {
        Box::pin(Cluster::submit(self, call))
    }

    fn get(&self, id: &str) -> Fut<'_, Result<Option<Call>, ApiError>> {
        let id = id.to_owned();
        Box::pin(async move { self.get_call(&id).await })
    }

    fn list(&self, filter: Filter) -> Fut<'_, Result<Vec<Call>, ApiError>> {
        Box::pin(self.list_calls(filter))
    }

    fn retry(&self, id: &str) -> Fut<'_, Result<(), ApiError>> {
        let id = id.to_owned();
        Box::pin(async move { self.retry_call(&id).await })
    }

    fn purge(&self, filter: Filter) -> Fut<'_, Result<usize, ApiError>> {
        Box::pin(self.purge_calls(filter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_max_age_past_what_the_cluster_keeps_is_refused_naming_the_field() {
        let spec = |extra: &str| {
            let text = format!("name = \"f\"\nruntime = \"python\"\nhandler = \"main.handle\"\n{extra}");
            sedge_core::FunctionSpec::parse("sedge.toml", &text).expect("a valid manifest")
        };
        assert!(kept_long_enough(&spec("")).is_ok());
        assert!(kept_long_enough(&spec("[async]\nmax_age = \"24h\"\n")).is_ok());
        let refused = kept_long_enough(&spec("[async]\nmax_age = \"3d\"\n")).expect_err("3 days is past 24 h");
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert!(
            refused.message.contains("async.max_age = 72h") && refused.message.contains("at most 24h"),
            "{}",
            refused.message
        );
    }

    fn new_call(callback: Option<&str>) -> NewCall {
        NewCall {
            function: "f".into(),
            kind: CallKind::Http,
            id: Some("id-1".into()),
            key: Some("k:1".into()),
            request: Invocation {
                method: "POST".into(),
                path: "/".into(),
                query: "a=1".into(),
                headers: vec![("x-call-id".into(), "id-1".into())],
                body: Bytes::from_static(b"hi"),
            },
            callback_url: callback.map(str::to_owned),
        }
    }

    fn answered(status: u16) -> Ended {
        Ended { status, headers: vec![], body: Some(StoredBody::inline(b"out")), error: None, duration_ms: 7 }
    }

    #[test]
    fn tokens_keep_plain_characters_and_escape_the_rest_unambiguously() {
        assert_eq!(token("abc-DEF_09"), "abc-DEF_09");
        assert_eq!(token("a.b:c"), "a=2Eb=3Ac");
        assert_ne!(token("a:"), token("a=3A"));
        assert_eq!(record_key("x.y"), "c.x=2Ey");
        assert_eq!(idempotency_key("f", "k:1"), "k.f.k=3A1");
        assert_ne!(result_object("x", 0), result_object("x", 1), "each round its own answer");
    }

    #[test]
    fn a_record_round_trips_as_json_and_shows_as_a_queued_call() {
        let r = CallRecord::queued(&new_call(None), "id-1".into(), StoredBody::inline(b"hi"), 1000);
        let back: CallRecord = serde_json::from_slice(&encode(&r)).expect("json");
        assert_eq!(back, r);
        let call = r.call(Bytes::from_static(b"hi"), None);
        assert_eq!(call.state, CallState::Queued);
        assert_eq!((call.accepted_ms, call.attempts), (1000, 0));
        assert_eq!(call.request.query, "a=1");
    }

    #[test]
    fn a_retry_requeues_without_finishing_and_a_final_answer_finishes() {
        let mut r =
            CallRecord::queued(&new_call(Some("http://127.0.0.1:1/cb")), "id-1".into(), StoredBody::inline(b""), 0);
        r.start("n1", 10);
        assert_eq!((r.state(), r.attempts), (CallState::Running, 1));
        r.end(answered(503), &Next::Retry { after: Duration::from_millis(1500) }, 20);
        assert_eq!(r.state(), CallState::Queued);
        assert_eq!(r.not_before_ms, 1520);
        assert!(!r.finished() && !r.callback_pending());
        r.start("n2", 1600);
        r.end(answered(200), &Next::Done, 1700);
        assert_eq!((r.state(), r.attempts, r.status), (CallState::Done, 2, Some(200)));
        assert_eq!(r.node.as_deref(), Some("n2"));
        assert!(r.callback_pending(), "a finished call with a URL has its callback pending");
        assert_eq!(r.finished_ms, Some(1700));
    }

    #[test]
    fn giving_up_is_failed_with_the_reason() {
        let mut r = CallRecord::queued(&new_call(None), "id-1".into(), StoredBody::inline(b""), 0);
        r.start("n1", 1);
        r.end(answered(500), &Next::GiveUp { reason: "status 500 is not retried".into() }, 2);
        assert_eq!(r.state(), CallState::Failed);
        assert_eq!(r.error.as_deref(), Some("answered 500; status 500 is not retried"));
        assert!(!r.callback_pending());
    }

    #[test]
    fn callbacks_are_tried_until_delivered_or_out_of_attempts() {
        let mut r =
            CallRecord::queued(&new_call(Some("http://127.0.0.1:1/cb")), "id-1".into(), StoredBody::inline(b""), 0);
        r.end(answered(200), &Next::Done, 1);
        r.callback_tried(Err("refused".into()), 2);
        assert!(r.callback_pending());
        r.callback_tried(Err("refused".into()), 2);
        assert_eq!(CallbackState::parse(&r.callback), CallbackState::Failed);
        let mut ok = r.clone();
        ok.callback = "pending".into();
        ok.callback_tried(Ok(()), 10);
        assert_eq!((CallbackState::parse(&ok.callback), ok.callback_error), (CallbackState::Delivered, None));
    }

    #[test]
    fn a_retry_by_hand_starts_a_new_round_from_zero() {
        let mut r =
            CallRecord::queued(&new_call(Some("http://127.0.0.1:1/cb")), "id-1".into(), StoredBody::inline(b""), 0);
        r.start("n1", 1);
        r.end(answered(500), &Next::GiveUp { reason: "x".into() }, 2);
        r.callback_tried(Ok(()), 10);
        r.retried(5000);
        assert_eq!((r.state(), r.round, r.attempts, r.queued_ms), (CallState::Queued, 1, 0, 5000));
        assert_eq!((r.status, r.reply_body.clone(), r.error.clone()), (None, None, None));
        assert_eq!(CallbackState::parse(&r.callback), CallbackState::None);
        assert_eq!(r.accepted_ms, 0, "accepted when first submitted");
    }

    #[test]
    fn filters_select_by_function_and_state() {
        let r = CallRecord::queued(&new_call(None), "id-1".into(), StoredBody::inline(b""), 0);
        assert!(r.in_filter(&Filter::default()));
        assert!(r.in_filter(&Filter { function: Some("f".into()), state: Some(CallState::Queued), limit: None }));
        assert!(!r.in_filter(&Filter { function: Some("g".into()), ..Filter::default() }));
        assert!(!r.in_filter(&Filter { state: Some(CallState::Done), ..Filter::default() }));
    }
}

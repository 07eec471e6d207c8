//! Asynchronous calls in a cluster: a JetStream work-queue stream
//! (`SEDGE_CALLS`, subject `sedge.calls.FUNCTION`) instead of the node's
//! SQLite queue. The node that accepts a call stores its state (`queued`) in
//! the `sedge-calls` bucket, then publishes it and answers 202 only once
//! JetStream has it. Every node running the function pulls from one durable
//! consumer per function (so each call goes to one of them), pulling only
//! while it has room; it runs the call, records the result in `sedge-calls`
//! and only then acknowledges the message. A node lost mid-call never
//! acknowledges it: JetStream gives it to another node once the ack wait
//! (the function's timeout and a margin) has passed, so nothing accepted is
//! lost; a call may so run twice.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use sedge_core::{Invocation, InvokeError};
use sedge_gateway::cluster::StatusCode;
use sedge_gateway::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::membership::now_ms;
use crate::wire::{self, CallMeta};
use crate::{Cluster, ClusterError};

pub(crate) const STREAM: &str = "SEDGE_CALLS";
pub(crate) const BUCKET: &str = "sedge-calls";
/// Past the function's timeout, how long a node may hold a call before
/// JetStream gives it to another.
const ACK_MARGIN: Duration = Duration::from_secs(5);

/// A call's state in the `sedge-calls` bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    pub id: String,
    pub function: String,
    /// queued, done or failed.
    pub state: String,
    pub accepted_ms: u64,
    #[serde(default)]
    pub finished_ms: Option<u64>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub attempts: u64,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body_base64: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

impl CallRecord {
    pub fn json(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "function": self.function,
            "kind": "http",
            "state": self.state,
            "attempts": self.attempts,
            "node": self.node,
            "accepted_at": time(Some(self.accepted_ms)),
            "finished_at": time(self.finished_ms),
            "status": self.status,
            "error": self.error,
        });
        if let Some(b64) = &self.body_base64 {
            let body = base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default();
            let mut result = serde_json::Map::new();
            result.insert("status".into(), json!(self.status));
            result.insert("headers".into(), json!(self.headers));
            match std::str::from_utf8(&body) {
                Ok(text) => result.insert("body".into(), json!(text)),
                Err(_) => result.insert("body_base64".into(), json!(b64)),
            };
            v["result"] = Value::Object(result);
        }
        v
    }
}

fn time(ms: Option<u64>) -> Value {
    match ms {
        Some(ms) => {
            json!(humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string())
        }
        None => Value::Null,
    }
}

fn subject(function: &str) -> String {
    format!("sedge.calls.{function}")
}

pub(crate) async fn open_stream(js: &jetstream::Context, replicas: usize) -> Result<(), ClusterError> {
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

impl Cluster {
    /// Stores an asynchronous call of `name` for the nodes that run it.
    pub(crate) async fn submit_call(&self, name: &str, inv: Invocation) -> Result<String, ApiError> {
        let spec = self.spec_of(name).ok_or_else(|| ApiError::not_found(name))?;
        let id = crate::forward::call_id(&self.config.node_name);
        let record = CallRecord {
            id: id.clone(),
            function: name.to_owned(),
            state: "queued".into(),
            accepted_ms: now_ms(),
            finished_ms: None,
            node: None,
            attempts: 0,
            status: None,
            headers: vec![],
            body_base64: None,
            error: None,
        };
        let unavailable = |what: &str, e: String| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("the cluster could not take the call ({what}): {e}"))
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        self.calls.create(id.as_str(), value.into()).await.map_err(|e| unavailable("its state", e.to_string()))?;
        let mut inv = inv;
        inv.headers.push(("x-call-id".into(), id.clone()));
        let (mut meta, body) = CallMeta::of(id.clone(), name, inv, spec.limits.timeout, &self.config.node_name);
        let header = serde_json::to_vec(&meta).map_or(0, |v| v.len());
        let mut body = body;
        let published = async {
            if !wire::fits(body.len(), header, self.max_payload()) {
                let object = format!("call-{id}");
                self.put_object(&object, &body).await?;
                meta.object = Some(object);
                body = Bytes::new();
            }
            let ack = self.js.publish(subject(name), wire::encode(&meta, &body)).await.map_err(|e| e.to_string())?;
            ack.await.map(|_| ()).map_err(|e| e.to_string())
        }
        .await;
        if let Err(e) = published {
            let _ = self.calls.delete(id.as_str()).await;
            return Err(unavailable("the queue", e));
        }
        Ok(id)
    }

    pub(crate) async fn call_record(&self, id: &str) -> Result<Option<Value>, ApiError> {
        let Some(v) = self.calls.get(id).await.map_err(|e| ApiError::internal("reading the call", e))? else {
            return Ok(None);
        };
        let record: CallRecord = serde_json::from_slice(&v).map_err(|e| ApiError::internal("reading the call", e))?;
        Ok(Some(record.json()))
    }

    /// Pulls calls of `name` while this node runs it and has room.
    pub(crate) async fn run_calls(self: Arc<Self>, name: String) {
        let Some(spec) = self.node().and_then(|n| n.runtime.get(&name)).map(|p| p.spec().clone()) else { return };
        let stream = match self.js.get_stream(STREAM).await {
            Ok(s) => s,
            Err(e) => return tracing::warn!("cluster: the call stream: {e}"),
        };
        let consumer = loop {
            let config = pull::Config {
                durable_name: Some(format!("calls-{name}")),
                filter_subject: subject(&name),
                ack_wait: spec.limits.timeout + ACK_MARGIN,
                ..Default::default()
            };
            match stream.get_or_create_consumer(&format!("calls-{name}"), config).await {
                Ok(c) => break c,
                Err(e) => tracing::warn!("cluster: the call consumer of {name}: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        loop {
            let Some(pool) = self.node().and_then(|n| n.runtime.get(&name)) else { return };
            let (inflight, capacity) = pool.load();
            if inflight >= capacity {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let batch = consumer.fetch().max_messages(1).expires(Duration::from_secs(2)).messages().await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!("cluster: pulling calls of {name}: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            while let Some(message) = batch.next().await {
                let Ok(message) = message else { break };
                let cluster = self.clone();
                let pool = pool.clone();
                tokio::spawn(async move { cluster.run_call(&pool, message).await });
            }
        }
    }

    async fn run_call(&self, pool: &sedge_runtime::Pool, message: jetstream::Message) {
        let (meta, body): (CallMeta, Bytes) = match wire::decode(&message.payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("cluster: dropping an unreadable call: {e}");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let attempts = message.info().map_or(1, |i| i.delivered as u64);
        let body = match &meta.object {
            Some(object) => match self.read_object(object).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("cluster: call {}: {e}", meta.id);
                    let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                    return;
                }
            },
            None => body,
        };
        let inv = Invocation { method: meta.method, path: meta.path, query: meta.query, headers: meta.headers, body };
        let outcome = tokio::time::timeout(Duration::from_millis(meta.timeout_ms), pool.invoke(inv)).await;
        let mut record = match self.calls.get(meta.id.as_str()).await {
            Ok(Some(v)) => match serde_json::from_slice::<CallRecord>(&v) {
                Ok(r) => r,
                Err(_) => return,
            },
            _ => {
                // Its state is not readable now: JetStream gives it again later.
                let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                return;
            }
        };
        record.attempts = attempts;
        record.node = Some(self.config.node_name.clone());
        record.finished_ms = Some(now_ms());
        match outcome {
            Ok(Err(InvokeError::QueueFull { .. })) => {
                let _ = message.ack_with(AckKind::Nak(Some(Duration::from_millis(200)))).await;
                return;
            }
            Ok(Ok(reply)) => {
                record.state = if reply.status < 500 { "done" } else { "failed" }.into();
                record.status = Some(reply.status);
                record.headers = reply.headers;
                record.body_base64 = Some(base64::engine::general_purpose::STANDARD.encode(&reply.body));
            }
            Ok(Err(e)) => {
                let e = ApiError::from(e);
                record.state = "failed".into();
                record.status = Some(e.status.as_u16());
                record.error = Some(e.message);
            }
            Err(_) => {
                record.state = "failed".into();
                record.status = Some(504);
                record.error = Some(format!("no answer within {} ms", meta.timeout_ms));
            }
        }
        let value = serde_json::to_vec(&record).unwrap_or_default();
        // Acknowledged only once the result is stored: until then the
        // call is JetStream's to give again.
        match self.calls.put(meta.id.as_str(), value.into()).await {
            Ok(_) => {
                if let Some(object) = &meta.object {
                    let _ = self.bodies.delete(object).await;
                }
                if let Err(e) = message.ack().await {
                    tracing::warn!("cluster: acknowledging call {}: {e}", meta.id);
                }
            }
            Err(e) => {
                tracing::warn!("cluster: storing the result of call {}: {e}", meta.id);
                let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
        }
    }
}

//! Calls between nodes over NATS request-reply.
//!
//! A node that runs a function subscribes to `sedge.fn.NAME` in the queue
//! group `sedge`, so NATS gives each call to one of them; every node also
//! listens on `sedge.node.NODE` for calls sent to it by name. A node with
//! no room answers `busy`: the caller then asks the other nodes that run
//! the function one by one, least loaded first, and answers 429 only when
//! all were busy. The caller's deadline travels with the call; a caller
//! that goes away (its client hung up) sends `sedge.cancel` with the
//! call's id, which ends the call where it runs if it is still waiting for
//! a worker (a call a worker already has runs to its end, as a local one
//! does: the worker is never left half-written to).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::client::RequestErrorKind;
use bytes::Bytes;
use futures_util::StreamExt;
use sedge_core::{FunctionName, FunctionSpec, Invocation, InvokeError, Reply};
use sedge_gateway::cluster::{Cluster as ClusterLink, Fut, StatusCode};
use sedge_gateway::ApiError;
use sedge_store::TempPath;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use crate::wire::{self, AnswerMeta, CallMeta};
use crate::{js_error, Cluster, ClusterError};

const QUEUE_GROUP: &str = "sedge";
const CANCEL: &str = "sedge.cancel";

fn function_subject(name: &str) -> String {
    format!("sedge.fn.{name}")
}

fn node_subject(node: &str) -> String {
    format!("sedge.node.{node}")
}

/// A forwarding node that finds no node serving the function tries again
/// after this, doubling up to [`NO_SERVER_MAX_PAUSE`], until its deadline.
const NO_SERVER_FIRST_PAUSE: Duration = Duration::from_millis(50);
const NO_SERVER_MAX_PAUSE: Duration = Duration::from_millis(500);
/// Past a forwarded call's timeout, how long moving its large bodies
/// through the object store may take before the caller is answered 504.
const TRANSFER_MARGIN: Duration = Duration::from_secs(5);

/// How one try of every way to a function ended.
enum Round {
    Answered(AnswerMeta, Bytes),
    Undecodable(String),
    TimedOut,
    /// No node took it: none answered, or every one said busy.
    NoneTook,
}

static CALLS: AtomicU64 = AtomicU64::new(0);

pub(crate) fn call_id(node: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{node}-{nanos:x}-{}", CALLS.fetch_add(1, Ordering::Relaxed))
}

/// Sends the cancel for a call whose caller went away before its answer.
struct CancelOnDrop {
    client: async_nats::Client,
    id: String,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let client = self.client.clone();
            let id = self.id.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = client.publish(CANCEL, id.into()).await;
                });
            }
        }
    }
}

impl Cluster {
    /// Keeps one queue subscription per function this node serves.
    pub(crate) async fn sync_subscriptions(self: &Arc<Self>) {
        let Some(node) = self.node() else { return };
        let names: BTreeSet<String> = node.runtime.names().into_iter().collect();
        let mut subs = self.subscriptions.lock().await;
        subs.retain(|name, task: &mut tokio::task::JoinHandle<()>| {
            let keep = names.contains(name) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for name in names {
            if subs.contains_key(&name) {
                continue;
            }
            match self.client.queue_subscribe(function_subject(&name), QUEUE_GROUP.to_owned()).await {
                Ok(sub) => {
                    let weak = Arc::downgrade(self);
                    let pull = tokio::spawn(self.clone().run_calls(name.clone()));
                    subs.insert(
                        name,
                        tokio::spawn(async move {
                            // The queued calls' puller ends with the subscription.
                            struct Abort(tokio::task::JoinHandle<()>);
                            impl Drop for Abort {
                                fn drop(&mut self) {
                                    self.0.abort();
                                }
                            }
                            let _pull = Abort(pull);
                            serve_subscription(weak, sub).await;
                        }),
                    );
                }
                Err(e) => tracing::warn!("cluster: subscribing for calls of {name}: {e}"),
            }
        }
    }

    /// Runs a call another node sent; `None` when it was cancelled.
    async fn serve_call(&self, message: &Bytes) -> Option<Bytes> {
        let me = self.config.node_name.clone();
        let (meta, body): (CallMeta, Bytes) = match wire::decode(message) {
            Ok(m) => m,
            Err(e) => return Some(self.error_answer(StatusCode::BAD_REQUEST, e.to_string())),
        };
        let busy = || {
            wire::encode(&AnswerMeta { node: me.clone(), busy: true, status: 429, headers: vec![], object: None }, b"")
        };
        let node = self.node()?;
        let Some(pool) = node.runtime.get(&meta.function) else { return Some(busy()) };
        // The place is taken before the body is fetched, so it is held while
        // the object store answers; dropped with this future, it is given back.
        let Ok(admission) = pool.admit_within_capacity() else { return Some(busy()) };
        let body = match &meta.object {
            Some(object) => match self.take_object(object).await {
                Ok(b) => b,
                Err(e) => return Some(self.error_answer(StatusCode::BAD_GATEWAY, e)),
            },
            None => body,
        };
        let inv = Invocation { method: meta.method, path: meta.path, query: meta.query, headers: meta.headers, body };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.running.lock().unwrap_or_else(|p| p.into_inner()).insert(meta.id.clone(), tx);
        let within = Duration::from_millis(meta.timeout_ms);
        let outcome = tokio::select! {
            r = tokio::time::timeout(within, admission.invoke(inv)) => Some(r),
            _ = rx => None,
        };
        self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&meta.id);
        self.figures.served_for_others.fetch_add(1, Ordering::Relaxed);
        match outcome? {
            Ok(Ok(reply)) => Some(self.reply_answer(reply).await),
            Ok(Err(InvokeError::QueueFull { .. })) => Some(busy()),
            Ok(Err(e)) => {
                let e = ApiError::from(e);
                Some(self.error_answer(e.status, e.message))
            }
            Err(_) => Some(self.error_answer(
                StatusCode::GATEWAY_TIMEOUT,
                format!("function {} did not answer within {} ms", meta.function, meta.timeout_ms),
            )),
        }
    }

    fn error_answer(&self, status: StatusCode, message: String) -> Bytes {
        let meta = AnswerMeta {
            node: self.config.node_name.clone(),
            busy: false,
            status: status.as_u16(),
            headers: vec![("content-type".into(), "application/json".into())],
            object: None,
        };
        wire::encode(&meta, json!({ "error": message }).to_string().as_bytes())
    }

    async fn reply_answer(&self, reply: Reply) -> Bytes {
        let mut meta = AnswerMeta {
            node: self.config.node_name.clone(),
            busy: false,
            status: reply.status,
            headers: reply.headers,
            object: None,
        };
        let header = serde_json::to_vec(&meta).map_or(0, |v| v.len());
        if wire::fits(reply.body.len(), header, self.max_payload()) {
            return wire::encode(&meta, &reply.body);
        }
        let name = call_id(&self.config.node_name);
        match self.put_object(&name, &reply.body).await {
            Ok(()) => {
                meta.object = Some(name);
                wire::encode(&meta, b"")
            }
            Err(e) => self.error_answer(StatusCode::BAD_GATEWAY, e),
        }
    }

    pub(crate) async fn put_object(&self, name: &str, body: &[u8]) -> Result<(), String> {
        let mut reader = body;
        self.bodies
            .put(name, &mut reader)
            .await
            .map(|_| ())
            .map_err(|e| format!("storing a large body in the cluster: {e}"))
    }

    /// Reads a body sent through the object store and deletes it.
    async fn take_object(&self, name: &str) -> Result<Bytes, String> {
        let out = self.read_object(name).await?;
        if let Err(e) = self.bodies.delete(name).await {
            tracing::debug!("cluster: deleting body {name}: {e}");
        }
        Ok(out)
    }

    /// Reads a body sent through the object store.
    pub(crate) async fn read_object(&self, name: &str) -> Result<Bytes, String> {
        let mut object =
            self.bodies.get(name).await.map_err(|e| format!("fetching a large body from the cluster: {e}"))?;
        let mut out = Vec::new();
        object.read_to_end(&mut out).await.map_err(|e| format!("fetching a large body from the cluster: {e}"))?;
        Ok(out.into())
    }

    /// The call sent to other nodes: the queue group first, then each node
    /// that runs it and did not say busy, least loaded first.
    pub(crate) async fn send(&self, name: &str, inv: Invocation, timeout: Duration) -> Result<Reply, InvokeError> {
        let deadline = Instant::now() + timeout;
        let me = self.config.node_name.clone();
        let id = call_id(&me);
        let (mut meta, body) = CallMeta::of(id.clone(), name, inv, timeout, &me);
        let header = serde_json::to_vec(&meta).map_or(0, |v| v.len());
        let mut body = body;
        if !wire::fits(body.len(), header, self.max_payload()) {
            self.put_object(&id, &body)
                .await
                .map_err(|message| InvokeError::Failed { function: name.to_owned(), message })?;
            meta.object = Some(id.clone());
            body = Bytes::new();
        }
        let mut guard = CancelOnDrop { client: self.client.clone(), id: id.clone(), armed: true };
        let mut busy: BTreeSet<String> = BTreeSet::new();
        let mut pause = NO_SERVER_FIRST_PAUSE;
        loop {
            match self.send_round(name, &mut meta, &body, deadline, &mut busy).await {
                Round::Answered(answer, tail) => {
                    guard.armed = false;
                    let body = match &answer.object {
                        Some(object) => self
                            .take_object(object)
                            .await
                            .map_err(|message| InvokeError::Failed { function: name.to_owned(), message })?,
                        None => tail,
                    };
                    self.figures.forwarded_ok.fetch_add(1, Ordering::Relaxed);
                    return Ok(Reply { status: answer.status, headers: answer.headers, body });
                }
                Round::Undecodable(message) => {
                    return Err(InvokeError::Failed { function: name.to_owned(), message });
                }
                Round::TimedOut => {
                    self.figures.forwarded_failed.fetch_add(1, Ordering::Relaxed);
                    return Err(InvokeError::Timeout {
                        function: name.to_owned(),
                        timeout_ms: timeout.as_millis() as u64,
                    });
                }
                Round::NoneTook => {}
            }
            // Busy nodes are an answer (429 or queued here). No node at all
            // is what the moments after a deploy or a NATS server's loss
            // look like (a subscription not yet known to every server, a
            // node's record not yet read): wait for one within the
            // caller's deadline, as long as the function is the cluster's.
            let left = deadline.saturating_duration_since(Instant::now());
            if !busy.is_empty() || left.is_zero() || self.spec_of(name).is_none() {
                break;
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(NO_SERVER_MAX_PAUSE);
        }
        // Nobody took it: the call is not running anywhere.
        guard.armed = false;
        if let Some(object) = &meta.object {
            let _ = self.bodies.delete(object).await;
        }
        self.figures.forwarded_failed.fetch_add(1, Ordering::Relaxed);
        if !busy.is_empty() {
            let limit = self.spec_of(name).map_or(0, |s| s.limits.queue);
            return Err(InvokeError::QueueFull { function: name.to_owned(), limit });
        }
        let message = if self.spec_of(name).is_none() {
            "it was removed from the cluster".to_owned()
        } else {
            format!(
                "no node of the cluster served it within its timeout of {} ms (`sedge nodes` shows where it runs)",
                timeout.as_millis()
            )
        };
        Err(InvokeError::StartFailed { function: name.to_owned(), message })
    }

    /// One try of every way to the function: the queue group, then each
    /// node whose record says it runs it and that did not say busy.
    async fn send_round(
        &self,
        name: &str,
        meta: &mut CallMeta,
        body: &Bytes,
        deadline: Instant,
        busy: &mut BTreeSet<String>,
    ) -> Round {
        let me = &self.config.node_name;
        let mut others: Vec<(f64, String)> = self
            .live_nodes()
            .into_iter()
            .filter(|n| n.name != *me && n.functions.iter().any(|f| f == name))
            .map(|n| (n.inflight as f64 / n.capacity.max(1) as f64, n.name))
            .collect();
        others.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        let subjects = std::iter::once(function_subject(name)).chain(
            others
                .into_iter()
                .map(|(_, n)| n)
                .filter(|n| !busy.contains(n))
                .map(|n| node_subject(&n))
                .collect::<Vec<_>>(),
        );
        for subject in subjects {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            meta.timeout_ms = left.as_millis() as u64;
            let payload = wire::encode(meta, body);
            let request = async_nats::Request::new().payload(payload).timeout(Some(left));
            match self.client.send_request(subject, request).await {
                Ok(message) => {
                    let (answer, tail): (AnswerMeta, Bytes) = match wire::decode(&message.payload) {
                        Ok(a) => a,
                        Err(e) => return Round::Undecodable(e.to_string()),
                    };
                    if answer.busy {
                        busy.insert(answer.node);
                        self.figures.forwarded_busy.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    return Round::Answered(answer, tail);
                }
                Err(e) if e.kind() == RequestErrorKind::NoResponders => continue,
                Err(e) if e.kind() == RequestErrorKind::TimedOut => return Round::TimedOut,
                Err(e) => {
                    tracing::warn!("cluster: forwarding a call of {name}: {e}");
                    continue;
                }
            }
        }
        Round::NoneTook
    }
}

async fn serve_subscription(cluster: std::sync::Weak<Cluster>, mut sub: async_nats::Subscriber) {
    while let Some(message) = sub.next().await {
        let Some(c) = cluster.upgrade() else { return };
        let Some(reply) = message.reply.clone() else { continue };
        tokio::spawn(async move {
            if let Some(answer) = c.serve_call(&message.payload).await {
                if let Err(e) = c.client.publish(reply, answer).await {
                    tracing::debug!("cluster: answering a forwarded call: {e}");
                }
            }
        });
    }
}

pub(crate) async fn start(cluster: &Arc<Cluster>) -> Result<(), ClusterError> {
    let direct = cluster
        .client
        .subscribe(node_subject(&cluster.config.node_name))
        .await
        .map_err(|e| js_error("subscribing", e))?;
    tokio::spawn(serve_subscription(Arc::downgrade(cluster), direct));
    let mut cancels = cluster.client.subscribe(CANCEL).await.map_err(|e| js_error("subscribing", e))?;
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        while let Some(message) = cancels.next().await {
            let Some(c) = weak.upgrade() else { return };
            let id = String::from_utf8_lossy(&message.payload).into_owned();
            let waiting = c.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            if let Some(tx) = waiting {
                let _ = tx.send(());
            }
        }
    });
    cluster.sync_subscriptions().await;
    Ok(())
}

impl ClusterLink for Cluster {
    fn nodes(&self) -> Fut<'_, Result<Value, ApiError>> {
        Box::pin(async move {
            let nodes: Vec<Value> = self.live_nodes().iter().map(crate::NodeInfo::public).collect();
            Ok(json!({ "clustered": true, "nodes": nodes }))
        })
    }

    fn deploy(
        &self,
        name: FunctionName,
        archive: TempPath,
        wait: bool,
    ) -> Fut<'_, Result<(StatusCode, Value), ApiError>> {
        Box::pin(self.publish(name, archive, wait))
    }

    fn remove(&self, name: FunctionName) -> Fut<'_, Result<bool, ApiError>> {
        Box::pin(self.unpublish(name))
    }

    fn spec(&self, name: &str) -> Option<FunctionSpec> {
        self.spec_of(name)
    }

    fn lookup(&self, name: &str) -> Fut<'_, Option<FunctionSpec>> {
        let name = name.to_owned();
        Box::pin(async move { self.lookup_spec(&name).await })
    }

    fn forward(&self, name: &str, inv: Invocation, timeout: Duration) -> Fut<'_, Result<Reply, InvokeError>> {
        let name = name.to_owned();
        // Bounded as a whole, the large bodies' object-store transfers
        // included: a stalled NATS must not hold the caller past its
        // timeout. Dropped, the call's guard tells the node running it to stop.
        Box::pin(async move {
            match tokio::time::timeout(timeout + TRANSFER_MARGIN, self.send(&name, inv, timeout)).await {
                Ok(answer) => answer,
                Err(_) => {
                    self.figures.forwarded_failed.fetch_add(1, Ordering::Relaxed);
                    Err(InvokeError::Timeout { function: name, timeout_ms: timeout.as_millis() as u64 })
                }
            }
        })
    }

    fn calls(&self) -> &dyn sedge_gateway::cluster::ClusterCalls {
        self
    }

    fn functions(&self) -> Vec<sedge_store::FunctionRecord> {
        self.registry_records()
    }

    fn ask(&self, question: Value, to: Option<Vec<String>>) -> Fut<'_, Vec<sedge_gateway::cluster::Asked>> {
        Box::pin(Cluster::ask(self, question, to))
    }

    fn pin(&self, name: &str, replicas: u32) -> Fut<'_, Result<(), ApiError>> {
        let name = name.to_owned();
        Box::pin(async move { self.set_pin(&name, replicas).await })
    }

    fn metrics_text(&self) -> String {
        let f = &self.figures;
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, v) in samples {
                out.push_str(&format!("{name}{labels} {v}\n"));
            }
        };
        family(
            "sedge_cluster_connected",
            "gauge",
            "Whether the node's NATS connection is up (1) or being re-established (0).",
            &[("", u64::from(f.connected.load(Ordering::Relaxed)))],
        );
        family(
            "sedge_cluster_disconnects_total",
            "counter",
            "Times the node lost its NATS connection.",
            &[("", f.disconnects.load(Ordering::Relaxed))],
        );
        family(
            "sedge_cluster_nodes",
            "gauge",
            "Nodes of the cluster heard from lately, this one included.",
            &[("", self.live_nodes().len() as u64)],
        );
        family(
            "sedge_cluster_forwarded_total",
            "counter",
            "Calls this node sent to other nodes, by outcome.",
            &[
                ("{outcome=\"answered\"}", f.forwarded_ok.load(Ordering::Relaxed)),
                ("{outcome=\"busy\"}", f.forwarded_busy.load(Ordering::Relaxed)),
                ("{outcome=\"failed\"}", f.forwarded_failed.load(Ordering::Relaxed)),
            ],
        );
        family(
            "sedge_cluster_served_total",
            "counter",
            "Calls other nodes sent that this node ran.",
            &[("", f.served_for_others.load(Ordering::Relaxed))],
        );
        out
    }
}

//! Questions a node asks the others about what they run (their functions'
//! replicas and counters, log lines, a scale pin), for the cluster-wide
//! management views. Each node answers on its own subject
//! `sedge.ask.NODE` over NATS request-reply, with the gateway's
//! [`sedge_gateway::inquiry_answer`]. Every node is asked at once and
//! given [`ANSWER_WITHIN`]: one that does not answer in time, or that the
//! membership has not heard from lately, is reported as such in its place,
//! so one lost node never fails a listing.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sedge_gateway::cluster::Asked;
use serde_json::{json, Value};

use crate::membership::now_ms;
use crate::{js_error, Cluster, ClusterError};

/// How long a node is given to answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// A node not heard from for longer than this is no longer shown at all
/// (between [`crate::GONE_AFTER`] and this, it is shown as gone).
const FORGET_AFTER: Duration = Duration::from_secs(60);

fn subject(node: &str) -> String {
    format!("sedge.ask.{node}")
}

impl Cluster {
    /// Asks every node known (or those in `to`) `question`; answers sorted by node.
    pub(crate) async fn ask(&self, question: Value, to: Option<Vec<String>>) -> Vec<Asked> {
        let now = now_ms();
        let me = self.config.node_name.clone();
        let mut known: Vec<crate::NodeInfo> = self
            .view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|n| n.name != me && now.saturating_sub(n.last_seen_ms) < FORGET_AFTER.as_millis() as u64)
            .cloned()
            .collect();
        known.push(self.own_record());
        if let Some(to) = &to {
            known.retain(|n| to.contains(&n.name));
        }
        known.sort_by(|a, b| a.name.cmp(&b.name));
        let payload = serde_json::to_vec(&question).unwrap_or_default();
        let asks = known.into_iter().map(|n| {
            let payload = payload.clone();
            let question = question.clone();
            let me = me.clone();
            async move {
                let answer = if n.name == me {
                    match self.node() {
                        Some(node) => Ok(sedge_gateway::inquiry_answer(&node, question, self.answer_room()).await),
                        None => Err("the node is stopping".to_owned()),
                    }
                } else if !n.alive(now) {
                    let ago = now.saturating_sub(n.last_seen_ms) / 1000;
                    Err(format!("gone: not heard from for {ago} s"))
                } else {
                    self.request(&n.name, payload).await
                };
                Asked { node: n.name, functions: n.functions, answer }
            }
        });
        futures_util::future::join_all(asks).await
    }

    async fn request(&self, node: &str, payload: Vec<u8>) -> Result<Value, String> {
        let request = async_nats::Request::new().payload(payload.into()).timeout(Some(ANSWER_WITHIN));
        match self.client.send_request(subject(node), request).await {
            Ok(message) => serde_json::from_slice(&message.payload).map_err(|e| format!("answered garbled JSON: {e}")),
            Err(e) if e.kind() == async_nats::client::RequestErrorKind::TimedOut => {
                Err(format!("did not answer within {} s", ANSWER_WITHIN.as_secs()))
            }
            Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
                Err("not listening (stopping, restarting, or a version without cluster views)".to_owned())
            }
            Err(e) => Err(format!("could not be asked: {e}")),
        }
    }

    /// Every function of the registry as a record of the local store has it.
    pub(crate) fn registry_records(&self) -> Vec<sedge_store::FunctionRecord> {
        let registry = self.registry.read().unwrap_or_else(|p| p.into_inner());
        registry
            .values()
            .map(|e| sedge_store::FunctionRecord {
                spec: e.spec.clone(),
                digest: e.record.digest.clone(),
                dir: std::path::PathBuf::new(),
                created_at: std::time::UNIX_EPOCH + Duration::from_millis(e.record.deployed_at_ms),
            })
            .collect()
    }

    /// The most JSON an answer may carry within one NATS message.
    fn answer_room(&self) -> usize {
        self.max_payload().saturating_sub(4096)
    }
}

pub(crate) async fn start(cluster: &Arc<Cluster>) -> Result<(), ClusterError> {
    let mut questions =
        cluster.client.subscribe(subject(cluster.name())).await.map_err(|e| js_error("subscribing", e))?;
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        while let Some(message) = questions.next().await {
            let Some(c) = weak.upgrade() else { return };
            let Some(reply) = message.reply.clone() else { continue };
            tokio::spawn(async move {
                let answer = match (serde_json::from_slice::<Value>(&message.payload), c.node()) {
                    (Ok(q), Some(node)) => sedge_gateway::inquiry_answer(&node, q, c.answer_room()).await,
                    (Err(e), _) => json!({ "error": format!("a question that is not JSON: {e}") }),
                    (_, None) => json!({ "error": "the node is stopping" }),
                };
                let body = serde_json::to_vec(&answer).unwrap_or_default();
                if let Err(e) = c.client.publish(reply, body.into()).await {
                    tracing::debug!("cluster: answering a question: {e}");
                }
            });
        }
    });
    Ok(())
}

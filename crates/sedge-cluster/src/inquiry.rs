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
        let others: Vec<crate::NodeInfo> =
            self.view.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let payload = serde_json::to_vec(&question).unwrap_or_default();
        let asks = chosen(others, self.own_record(), to.as_deref(), now_ms()).into_iter().map(|(n, reach)| {
            let payload = payload.clone();
            let question = question.clone();
            async move {
                let answer = match reach {
                    Reach::Here => match self.node() {
                        Some(node) => Ok(sedge_gateway::inquiry_answer(&node, question, self.answer_room()).await),
                        None => Err("the node is stopping".to_owned()),
                    },
                    Reach::Gone(ago) => Err(format!("gone: not heard from for {} s", ago / 1000)),
                    Reach::Ask => self.request(&n.name, payload).await,
                };
                Asked { node: n.name, functions: n.functions, answer }
            }
        });
        futures_util::future::join_all(asks).await
    }

    async fn request(&self, node: &str, payload: Vec<u8>) -> Result<Value, String> {
        let late = || format!("did not answer within {} s", ANSWER_WITHIN.as_secs());
        // The client's own timeout starts once the request is handed to
        // its connection, whose queue stops draining while NATS is out of reach:
        // the whole of it is bounded, so a listing never hangs.
        let request = async_nats::Request::new().payload(payload.into()).timeout(Some(ANSWER_WITHIN));
        let sent = tokio::time::timeout(ANSWER_WITHIN, self.client.send_request(subject(node), request)).await;
        let Ok(sent) = sent else { return Err(late()) };
        match sent {
            Ok(message) => serde_json::from_slice(&message.payload).map_err(|e| format!("answered garbled JSON: {e}")),
            Err(e) if e.kind() == async_nats::client::RequestErrorKind::TimedOut => Err(late()),
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

/// How a node is reached for a question.
#[derive(Debug, PartialEq)]
enum Reach {
    /// This node: answered in place.
    Here,
    /// Over NATS.
    Ask,
    /// Not heard from for this many milliseconds: not asked.
    Gone(u64),
}

/// The nodes a question goes to at `now` (ms): this one and the others
/// heard from within [`FORGET_AFTER`], only those in `to` when given, by name.
fn chosen(
    others: Vec<crate::NodeInfo>,
    own: crate::NodeInfo,
    to: Option<&[String]>,
    now: u64,
) -> Vec<(crate::NodeInfo, Reach)> {
    let forget = FORGET_AFTER.as_millis() as u64;
    let mut out: Vec<(crate::NodeInfo, Reach)> = others
        .into_iter()
        .filter(|n| n.name != own.name && now.saturating_sub(n.last_seen_ms) < forget)
        .map(|n| {
            let reach = if n.alive(now) { Reach::Ask } else { Reach::Gone(now.saturating_sub(n.last_seen_ms)) };
            (n, reach)
        })
        .collect();
    out.push((own, Reach::Here));
    if let Some(to) = to {
        out.retain(|(n, _)| to.contains(&n.name));
    }
    out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, last_seen_ms: u64) -> crate::NodeInfo {
        crate::NodeInfo {
            name: name.into(),
            labels: vec![],
            address: String::new(),
            functions: vec!["f".into()],
            inflight: 0,
            capacity: 1,
            last_seen: String::new(),
            last_seen_ms,
            runtimes: vec![],
            serving: Default::default(),
            refused: Default::default(),
        }
    }

    #[test]
    fn live_nodes_are_asked_quiet_ones_shown_gone_then_forgotten() {
        let now = 1_000_000;
        let others = vec![
            info("c", now - 1_000),
            info("b", now - 10_000),
            info("old", now - 120_000),
            // This node's own record as the bucket had it: not asked twice.
            info("me", now - 1_000),
        ];
        let got: Vec<(String, Reach)> =
            chosen(others, info("me", now), None, now).into_iter().map(|(n, r)| (n.name, r)).collect();
        assert_eq!(
            got,
            [("b".to_owned(), Reach::Gone(10_000)), ("c".to_owned(), Reach::Ask), ("me".to_owned(), Reach::Here)]
        );
    }

    #[test]
    fn only_the_nodes_named_are_asked_and_an_unknown_one_is_absent() {
        let now = 1_000_000;
        let to = ["c".to_owned(), "nope".to_owned()];
        let got = chosen(vec![info("c", now), info("b", now)], info("me", now), Some(&to), now);
        assert_eq!(got.iter().map(|(n, _)| n.name.as_str()).collect::<Vec<_>>(), ["c"]);
    }
}

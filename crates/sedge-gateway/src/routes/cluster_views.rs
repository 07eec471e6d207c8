//! The management views of a node that is one of a cluster: `GET
//! /system/functions` and `/system/function/NAME` list every function of
//! the registry with replicas and invocations summed over the nodes that
//! run it (and each node's share under `sedge.nodes`); `/system/logs`
//! merges the lines of every node that runs it, each marked with its node;
//! `POST /system/scale-function/NAME` pins the function on every node that
//! runs it. The node asks the others through [`Cluster::ask`]; a node that
//! does not answer in time is shown as such, never failing the whole view.
//! What a node answers when asked is [`inquiry_answer`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::functions;
use super::logs::{line_value, LogQuery, Pick};
use crate::cluster::{Asked, Cluster};
use crate::namespace::NAMESPACE;
use crate::{ApiError, Node};

/// What one node asks another about what it runs.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "ask", rename_all = "lowercase")]
enum Question {
    /// Every function this node holds (or only `name`), as its own
    /// `/system/functions` shows it.
    Functions {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// A function's log lines kept here that the query picks.
    Logs { name: String, query: LogQuery },
    /// Hold a function at `replicas` workers here.
    Scale { name: String, replicas: u32 },
}

fn question(q: &Question) -> Value {
    serde_json::to_value(q).unwrap_or(Value::Null)
}

/// What this node answers another's question (see [`Question`]); an
/// answer of at most about `max_bytes` of JSON: log lines beyond it are
/// left out, oldest first, and the answer says `truncated`.
pub async fn inquiry_answer(node: &Arc<Node>, question: Value, max_bytes: usize) -> Value {
    let q: Question = match serde_json::from_value(question) {
        Ok(q) => q,
        Err(e) => return json!({ "error": format!("not a question this node knows: {e}") }),
    };
    match q {
        Question::Functions { name } => match functions::records(node).await {
            Ok(mut all) => {
                if let Some(name) = name {
                    all.retain(|r| r.spec.name.as_str() == name);
                }
                let mut full: Vec<Value> = all.iter().map(|r| functions::status(node, r)).collect();
                // An invoke token stays with its node: the asking node
                // shows its own (see `functions`).
                for status in &mut full {
                    if let Some(token) = status.pointer_mut("/sedge/auth/token") {
                        *token = Value::Null;
                    }
                }
                let answer = json!({ "functions": full });
                if answer.to_string().len() <= max_bytes {
                    return answer;
                }
                // Too many functions for one message: only the figures the
                // asking node sums and shows per node.
                json!({ "functions": full.iter().map(figures_of).collect::<Vec<_>>(), "compact": true })
            }
            Err(e) => json!({ "error": e.message }),
        },
        Question::Logs { name, query } => {
            let pick = match Pick::parse(&query) {
                Ok(p) => p,
                Err(e) => return json!({ "error": e.message }),
            };
            if node.runtime.get(&name).is_none() {
                return json!({ "lines": [], "now": rfc3339_now() });
            }
            // Read before the lines: every line after it is in a later answer.
            let now = rfc3339_now();
            let lines = pick.kept(&node.runtime.shared(&name).logs);
            let (lines, truncated) = newest_within(lines.iter().map(line_value).collect(), max_bytes);
            json!({ "lines": lines, "truncated": truncated, "now": now })
        }
        Question::Scale { name, replicas } => match functions::pin(node, &name, i64::from(replicas)) {
            Ok(()) => json!({ "scaled": replicas }),
            Err(e) => json!({ "error": e.message, "status": e.status.as_u16() }),
        },
    }
}

/// A function's status cut to what a cluster listing takes from each node.
fn figures_of(status: &Value) -> Value {
    let mut out = json!({
        "name": status["name"],
        "image": status["image"],
        "lastDeployError": status["lastDeployError"],
    });
    for field in SUMMED {
        if let Some(v) = status.pointer(field) {
            let mut at = &mut out;
            let parts: Vec<&str> = field.trim_start_matches('/').split('/').collect();
            for part in &parts[..parts.len() - 1] {
                at = &mut at[*part];
            }
            at[parts[parts.len() - 1]] = v.clone();
        }
    }
    out
}

/// The newest of `lines` whose JSON fits in `max_bytes`, oldest first,
/// and whether any were left out.
fn newest_within(mut lines: Vec<Value>, max_bytes: usize) -> (Vec<Value>, bool) {
    let mut used = 0usize;
    let mut keep = lines.len();
    for l in lines.iter().rev() {
        let n = l.to_string().len() + 1;
        if used + n > max_bytes {
            break;
        }
        used += n;
        keep -= 1;
    }
    let truncated = keep > 0;
    lines.drain(..keep);
    (lines, truncated)
}

/// The registry's functions (only `only`, when given) as the cluster runs them.
pub(super) async fn functions(
    node: &Arc<Node>,
    cluster: &dyn Cluster,
    only: Option<&str>,
) -> Result<Vec<Value>, ApiError> {
    let only_named = |mut records: Vec<sedge_store::FunctionRecord>| {
        if let Some(name) = only {
            records.retain(|r| r.spec.name.as_str() == name);
        }
        records
    };
    let mut records = only_named(cluster.functions());
    if let Some(name) = only.filter(|_| records.is_empty()) {
        // This node's copy of the registry may lag a deploy answered by
        // another node: a lookup reads the record and keeps it in the copy.
        if cluster.lookup(name).await.is_some() {
            records = only_named(cluster.functions());
        }
    }
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let asked = cluster.ask(question(&Question::Functions { name: only.map(str::to_owned) }), None).await;
    let shown = records.iter().map(|r| {
        let name = r.spec.name.as_str();
        let mut status = combined(name, &r.digest, functions::status(node, r), &asked);
        // The token that works on the node asked, as on a single node.
        if let Some(token) = status.pointer_mut("/sedge/auth/token") {
            *token = json!(node.tokens.get(name).as_deref());
        }
        status
    });
    Ok(shown.collect())
}

/// Fields summed over the nodes, as JSON pointers into a function's status.
const SUMMED: [&str; 8] = [
    "/replicas",
    "/availableReplicas",
    "/invocationCount",
    "/sedge/workers/ready",
    "/sedge/workers/starting",
    "/sedge/workers/busy",
    "/sedge/queued",
    "/sedge/coldStarts",
];

/// Function `name` over the answers of the nodes: the status one node that
/// runs it gives (or `fallback`, from the registry, when none answered),
/// with the figures of [`SUMMED`] summed over the nodes that answered and
/// each node's share, answered or not, under `sedge.nodes`.
fn combined(name: &str, digest: &str, fallback: Value, asked: &[Asked]) -> Value {
    let mut shares = Vec::new();
    let mut statuses = Vec::new();
    for a in asked {
        match &a.answer {
            Ok(answer) => {
                let found = answer["functions"].as_array().and_then(|fs| fs.iter().find(|f| f["name"] == name));
                if let Some(status) = found {
                    shares.push(json!({
                        "node": a.node,
                        "answered": true,
                        "image": status["image"],
                        "replicas": status["replicas"],
                        "availableReplicas": status["availableReplicas"],
                        "invocationCount": status["invocationCount"],
                        "workers": status.pointer("/sedge/workers"),
                        "queued": status.pointer("/sedge/queued"),
                        "lastDeployError": status["lastDeployError"],
                    }));
                    statuses.push(status);
                } else if let Some(e) = answer["error"].as_str().filter(|_| a.functions.iter().any(|f| f == name)) {
                    shares.push(json!({ "node": a.node, "answered": false, "error": e }));
                }
            }
            Err(why) if a.functions.iter().any(|f| f == name) => {
                shares.push(json!({ "node": a.node, "answered": false, "error": why }));
            }
            Err(_) => {}
        }
    }
    // A compact answer (see `figures_of`) has only the figures: the base is
    // a full one, or the registry's.
    let full = statuses.iter().find(|s| s.pointer("/sedge/runtime").is_some());
    let mut out = full.map_or(fallback, |s| (*s).clone());
    for field in SUMMED {
        let total: u64 = statuses.iter().filter_map(|s| s.pointer(field).and_then(Value::as_u64)).sum();
        if let Some(v) = out.pointer_mut(field) {
            *v = json!(total);
        }
    }
    out["image"] = json!(digest);
    if let Some(sedge) = out.get_mut("sedge").and_then(Value::as_object_mut) {
        sedge.insert("nodes".into(), Value::Array(shares));
    }
    out
}

/// Pins `name` at `replicas` workers on every node that runs it, now
/// (each asked, so the answer says which took it) and later (the pin is
/// kept in the cluster).
pub(super) async fn scale(cluster: &dyn Cluster, name: &str, replicas: u32) -> Result<Value, ApiError> {
    cluster.pin(name, replicas).await?;
    let nodes = cluster.nodes().await?;
    let running: Vec<String> = nodes["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["functions"].as_array().is_some_and(|fs| fs.iter().any(|f| f == name)))
        .filter_map(|n| n["name"].as_str().map(str::to_owned))
        .collect();
    let asked = cluster.ask(question(&Question::Scale { name: name.to_owned(), replicas }), Some(running)).await;
    let shares: Vec<Value> = asked
        .iter()
        .map(|a| match &a.answer {
            Ok(v) if v.get("scaled").is_some() => json!({ "node": a.node, "scaled": true }),
            Ok(v) => json!({ "node": a.node, "scaled": false, "error": v["error"] }),
            Err(why) => json!({ "node": a.node, "scaled": false, "answered": false, "error": why }),
        })
        .collect();
    // A node that did not take it now takes it from the cluster's pins
    // once it hears them, as does a node that starts running it later.
    Ok(json!({ "name": name, "replicas": replicas, "nodes": shares }))
}

/// How often a follower of a cluster's log asks the nodes for new lines.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// `GET /system/logs` in a cluster.
pub(super) async fn logs(
    cluster: Arc<dyn Cluster>,
    name: String,
    query: LogQuery,
    pick: Pick,
) -> Result<Response, ApiError> {
    if cluster.lookup(&name).await.is_none() {
        return Err(ApiError::not_found(&name));
    }
    let to = query.node.clone().map(|n| vec![n]);
    let ask = Question::Logs { name: name.clone(), query: query.clone() };
    let asked_at = rfc3339_now();
    let asked = cluster.ask(question(&ask), to.clone()).await;
    if let Some(wanted) = &query.node {
        match asked.first() {
            None => {
                return Err(ApiError::new(
                    axum::http::StatusCode::NOT_FOUND,
                    format!("no node {wanted} in the cluster (`sedge nodes` lists them)"),
                ))
            }
            Some(Asked { answer: Err(why), .. }) => {
                return Err(ApiError::new(axum::http::StatusCode::GATEWAY_TIMEOUT, format!("node {wanted}: {why}")))
            }
            Some(_) => {}
        }
    }
    let mut follow = Follow::default();
    let mut first = follow.merge(&name, &asked);
    first.drain(..first.len().saturating_sub(pick.tail));
    follow.settle(&asked, &asked_at);
    let ndjson = [(header::CONTENT_TYPE, "application/x-ndjson")];
    let text = |lines: &[Value]| lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    if !pick.follow {
        return Ok((ndjson, text(&first)).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::convert::Infallible>>(16);
    tokio::spawn(async move {
        if tx.send(Ok(text(&first).into())).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(FOLLOW_EVERY) => {}
            }
            // Each round asks from the oldest of the nodes' last lines; the
            // lines already sent are skipped node by node.
            let mut query = query.clone();
            query.tail = None;
            query.since = follow.since();
            let ask = Question::Logs { name: name.clone(), query };
            let asked = tokio::select! {
                _ = tx.closed() => return,
                a = cluster.ask(question(&ask), to.clone()) => a,
            };
            let lines = follow.merge(&name, &asked);
            if !lines.is_empty() && tx.send(Ok(text(&lines).into())).await.is_err() {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok((ndjson, Body::from_stream(stream)).into_response())
}

/// What a follower of a cluster's log has sent of each node: the last
/// line's time and how many lines of that same time, so that the next
/// round (asked from that time on) sends each line once.
#[derive(Default)]
struct Follow {
    sent: BTreeMap<String, (String, usize)>,
    /// Nodes last said not to answer, so it is said once.
    silent: BTreeMap<String, String>,
}

impl Follow {
    /// The nodes' new lines merged by time, each marked with its node; a
    /// node that did not answer (and runs the function) as one line saying
    /// so, marked `unanswered`.
    fn merge(&mut self, name: &str, asked: &[Asked]) -> Vec<Value> {
        let mut out = Vec::new();
        let mut notes = Vec::new();
        for a in asked {
            let lines = match &a.answer {
                Ok(v) => match v["lines"].as_array() {
                    Some(lines) => {
                        self.silent.remove(&a.node);
                        if v["truncated"] == true {
                            notes.push(note(name, &a.node, "sent only its newest lines (the rest did not fit)"));
                        }
                        lines.clone()
                    }
                    None => {
                        let why = v["error"].as_str().unwrap_or("no lines in its answer").to_owned();
                        self.note_silent(name, &a.node, why, &mut notes);
                        continue;
                    }
                },
                Err(why) if a.functions.iter().any(|f| f == name) => {
                    self.note_silent(name, &a.node, why.clone(), &mut notes);
                    continue;
                }
                Err(_) => continue,
            };
            let (last, same) = self.sent.get(&a.node).cloned().unwrap_or_default();
            let mut skip = same;
            let mut newest = (last.clone(), same);
            for mut l in lines {
                let at = l["timestamp"].as_str().unwrap_or_default().to_owned();
                if at < last {
                    continue;
                }
                if at == last && skip > 0 {
                    skip -= 1;
                    continue;
                }
                newest = if at == newest.0 { (at, newest.1 + 1) } else { (at, 1) };
                l["node"] = json!(a.node);
                out.push(l);
            }
            self.sent.insert(a.node.clone(), newest);
        }
        // RFC 3339 with nanoseconds in UTC sorts as text.
        out.sort_by(|a, b| a["timestamp"].as_str().cmp(&b["timestamp"].as_str()));
        out.extend(notes);
        out
    }

    fn note_silent(&mut self, name: &str, node: &str, why: String, notes: &mut Vec<Value>) {
        if self.silent.get(node) != Some(&why) {
            notes.push(note(name, node, &format!("did not answer ({why}): its lines are missing")));
            self.silent.insert(node.to_owned(), why);
        }
    }

    /// After the first round, asked at `asked_at`: each node that answered
    /// has sent every line it had when it answered (or the tail of them),
    /// so the next rounds need nothing older from it. The time is the
    /// node's own, as its lines' are: a node whose clock is behind this
    /// one's must not have its next lines taken for old ones.
    fn settle(&mut self, asked: &[Asked], asked_at: &str) {
        for (node, (last, same)) in &mut self.sent {
            let answered = asked.iter().find(|a| &a.node == node).and_then(|a| a.answer.as_ref().ok());
            let now = answered.and_then(|v| v["now"].as_str()).unwrap_or(asked_at);
            if last.as_str() < now {
                *last = now.to_owned();
                *same = 0;
            }
        }
    }

    /// Where the next round starts: the oldest of the nodes' last lines.
    fn since(&self) -> Option<String> {
        self.sent.values().map(|(at, _)| at.clone()).filter(|at| !at.is_empty()).min()
    }
}

fn rfc3339_now() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

/// A line of sedge's own about `node`, not one the function wrote.
fn note(name: &str, node: &str, what: &str) -> Value {
    json!({
        "name": name,
        "namespace": NAMESPACE,
        "instance": "",
        "node": node,
        "timestamp": rfc3339_now(),
        "text": format!("node {node} {what}"),
        "unanswered": true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(node: &str, runs: &[&str], answer: Result<Value, &str>) -> Asked {
        Asked {
            node: node.into(),
            functions: runs.iter().map(|s| (*s).to_owned()).collect(),
            answer: answer.map_err(str::to_owned),
        }
    }

    fn status(name: &str, replicas: u64, invocations: u64) -> Value {
        json!({
            "name": name, "image": "sha256:old", "replicas": replicas, "availableReplicas": replicas,
            "invocationCount": invocations, "lastDeployError": null,
            "sedge": {
                "runtime": "python", "workers": { "ready": replicas, "starting": 0, "busy": 0 },
                "queued": 0, "coldStarts": 1,
            },
        })
    }

    #[test]
    fn figures_are_summed_over_the_nodes_that_answered_and_silent_ones_are_shown() {
        let all = [
            asked("a", &["f"], Ok(json!({ "functions": [status("f", 1, 3), status("g", 2, 0)] }))),
            asked("b", &[], Ok(json!({ "functions": [] }))),
            asked("c", &["f"], Ok(json!({ "functions": [status("f", 2, 4)] }))),
            asked("d", &["f"], Err("did not answer within 2s")),
            asked("e", &["g"], Err("did not answer within 2s")),
        ];
        let f = combined("f", "sha256:new", json!({}), &all);
        assert_eq!((&f["replicas"], &f["availableReplicas"], &f["invocationCount"]), (&json!(3), &json!(3), &json!(7)));
        assert_eq!(f.pointer("/sedge/workers/ready"), Some(&json!(3)));
        assert_eq!(f.pointer("/sedge/coldStarts"), Some(&json!(2)));
        assert_eq!(f["image"], "sha256:new");
        let nodes = f.pointer("/sedge/nodes").and_then(Value::as_array).expect("nodes");
        let shown: Vec<(&str, bool)> =
            nodes.iter().map(|n| (n["node"].as_str().unwrap_or(""), n["answered"] == true)).collect();
        assert_eq!(shown, [("a", true), ("c", true), ("d", false)]);
        assert_eq!(nodes[1]["invocationCount"], 4);
        assert_eq!(nodes[2]["error"], "did not answer within 2s");
    }

    #[test]
    fn questions_travel_as_tagged_json() {
        let q = question(&Question::Scale { name: "f".into(), replicas: 2 });
        assert_eq!(q, json!({ "ask": "scale", "name": "f", "replicas": 2 }));
        assert!(matches!(
            serde_json::from_value::<Question>(json!({ "ask": "functions" })),
            Ok(Question::Functions { name: None })
        ));
        let logs = question(&Question::Logs { name: "f".into(), query: LogQuery::default() });
        assert!(matches!(serde_json::from_value::<Question>(logs), Ok(Question::Logs { .. })));
        assert!(serde_json::from_value::<Question>(json!({ "ask": "reboot" })).is_err());
    }

    #[test]
    fn compact_answers_are_summed_like_full_ones_on_a_full_base() {
        let full = status("f", 1, 3);
        let compact = figures_of(&status("f", 2, 4));
        assert_eq!(compact.pointer("/sedge/workers/ready"), Some(&json!(2)));
        assert!(compact.pointer("/sedge/runtime").is_none());
        let all = [
            asked("a", &["f"], Ok(json!({ "functions": [compact], "compact": true }))),
            asked("b", &["f"], Ok(json!({ "functions": [full] }))),
        ];
        let f = combined("f", "sha256:new", json!({}), &all);
        assert_eq!((&f["replicas"], &f["invocationCount"]), (&json!(3), &json!(7)));
        assert_eq!(f.pointer("/sedge/runtime"), Some(&json!("python")));
        assert_eq!(f.pointer("/sedge/nodes").and_then(Value::as_array).map(Vec::len), Some(2));
    }

    #[test]
    fn a_function_no_node_answered_for_shows_the_registry_s_status_at_zero() {
        let fallback = status("f", 0, 0);
        let f = combined("f", "sha256:new", fallback, &[asked("d", &["f"], Err("gone"))]);
        assert_eq!((&f["replicas"], &f["invocationCount"]), (&json!(0), &json!(0)));
        assert_eq!(f.pointer("/sedge/nodes/0/answered"), Some(&json!(false)));
    }

    fn line(at: &str, text: &str) -> Value {
        json!({ "name": "f", "instance": "f-1", "timestamp": at, "text": text })
    }

    #[test]
    fn lines_are_merged_by_time_marked_with_their_node_and_sent_once_when_followed() {
        let t = |s: u32| format!("2026-12-04T03:00:{s:02}.000000000Z");
        let mut follow = Follow::default();
        let first = [
            asked("a", &["f"], Ok(json!({ "lines": [line(&t(1), "a1"), line(&t(3), "a3")] }))),
            asked("b", &["f"], Ok(json!({ "lines": [line(&t(2), "b2"), line(&t(3), "b3")] }))),
            asked("c", &["f"], Err("did not answer within 2s")),
        ];
        let out = follow.merge("f", &first);
        let seen: Vec<(String, String)> = out
            .iter()
            .map(|l| (l["node"].as_str().unwrap_or("").into(), l["text"].as_str().unwrap_or("").into()))
            .collect();
        assert_eq!(seen[..4].iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(), ["a1", "b2", "a3", "b3"]);
        assert_eq!(seen[0].0, "a");
        assert_eq!(out[4]["unanswered"], true);
        assert_eq!(out[4]["node"], "c");
        assert_eq!(follow.since(), Some(t(3)));
        // The next round from t(3): what was sent is not sent again; the
        // silent node is not said again.
        let next = [
            asked("a", &["f"], Ok(json!({ "lines": [line(&t(3), "a3"), line(&t(3), "a3b"), line(&t(4), "a4")] }))),
            asked("b", &["f"], Ok(json!({ "lines": [line(&t(3), "b3")] }))),
            asked("c", &["f"], Err("did not answer within 2s")),
        ];
        let out = follow.merge("f", &next);
        let texts: Vec<&str> = out.iter().map(|l| l["text"].as_str().unwrap_or("")).collect();
        assert_eq!(texts, ["a3b", "a4"]);
    }

    #[test]
    fn a_follower_asked_for_no_past_lines_gets_only_new_ones() {
        let t = |s: u32| format!("2026-12-04T03:00:{s:02}.000000000Z");
        let mut follow = Follow::default();
        // `tail=0`: the nodes sent nothing of their past.
        let first = [asked("a", &["f"], Ok(json!({ "lines": [] }))), asked("b", &["f"], Ok(json!({ "lines": [] })))];
        assert!(follow.merge("f", &first).is_empty());
        follow.settle(&first, &t(5));
        assert_eq!(follow.since(), Some(t(5)));
        let next = [
            asked("a", &["f"], Ok(json!({ "lines": [line(&t(1), "old"), line(&t(6), "new")] }))),
            asked("b", &["f"], Ok(json!({ "lines": [] }))),
        ];
        let out = follow.merge("f", &next);
        assert_eq!(out.iter().map(|l| l["text"].as_str().unwrap_or("")).collect::<Vec<_>>(), ["new"]);
    }

    #[test]
    fn a_follower_keeps_the_new_lines_of_a_node_whose_clock_is_behind() {
        let t = |s: u32| format!("2026-12-04T03:00:{s:02}.000000000Z");
        let mut follow = Follow::default();
        // Asked at 0:10 by this node's clock; b's clock says 0:02.
        let first = [
            asked("a", &["f"], Ok(json!({ "lines": [], "now": t(10) }))),
            asked("b", &["f"], Ok(json!({ "lines": [], "now": t(2) }))),
        ];
        assert!(follow.merge("f", &first).is_empty());
        follow.settle(&first, &t(10));
        let next = [
            asked("a", &["f"], Ok(json!({ "lines": [line(&t(11), "a-new")] }))),
            asked("b", &["f"], Ok(json!({ "lines": [line(&t(1), "b-old"), line(&t(3), "b-new")] }))),
        ];
        let out = follow.merge("f", &next);
        let texts: Vec<&str> = out.iter().map(|l| l["text"].as_str().unwrap_or("")).collect();
        assert_eq!(texts, ["b-new", "a-new"]);
    }

    #[test]
    fn an_answer_keeps_the_newest_lines_that_fit() {
        let lines: Vec<Value> = (0..10).map(|i| json!({ "n": i })).collect();
        let one = lines[0].to_string().len() + 1;
        let (kept, truncated) = newest_within(lines.clone(), one * 3);
        assert_eq!(kept, lines[7..]);
        assert!(truncated);
        assert_eq!(newest_within(lines.clone(), usize::MAX), (lines, false));
    }
}

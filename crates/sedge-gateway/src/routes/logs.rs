//! `GET /system/logs?name=NAME&tail=N&follow=BOOL&since=TIME&instance=ID`:
//! what faas-cli reads, a stream of JSON objects one per line (not an
//! array). `since` (RFC 3339, what `faas-cli logs --since=2s` turns into a
//! time) keeps the lines written at or after it; `tail` the last N of
//! those; `instance` one worker's. In a cluster the lines come from
//! every node that runs the function, or from `node=NAME` alone, each
//! marked with its node (`cluster_views.rs`).

use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use sedge_runtime::LogLine;
use serde::Deserialize;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;

use super::Shared;
use crate::namespace::{self, NAMESPACE};
use crate::ApiError;

/// Kept as text, so a bad value is refused with a message naming it.
#[derive(Debug, Deserialize, serde::Serialize, Default, Clone)]
pub struct LogQuery {
    pub(super) name: Option<String>,
    pub(super) tail: Option<String>,
    pub(super) follow: Option<String>,
    pub(super) since: Option<String>,
    pub(super) instance: Option<String>,
    /// In a cluster: only this node's lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) node: Option<String>,
}

/// Which lines a request asks for.
#[derive(Debug, PartialEq)]
pub(super) struct Pick {
    pub(super) since: Option<SystemTime>,
    pub(super) tail: usize,
    instance: Option<String>,
    pub(super) follow: bool,
}

impl Pick {
    pub(super) fn parse(q: &LogQuery) -> Result<Self, ApiError> {
        let since = match q.since.as_deref() {
            None | Some("") => None,
            Some(t) => Some(
                sedge_core::timestamp::parse_rfc3339(t)
                    .map_err(|e| ApiError::bad_request(format!("query parameter `since`: {e}")))?,
            ),
        };
        // faas-cli sends tail=-1 (or nothing) for "everything".
        let tail = match q.tail.as_deref() {
            None | Some("") => usize::MAX,
            Some(t) => match t.parse::<i64>() {
                Ok(n) if n < 0 => usize::MAX,
                Ok(n) => usize::try_from(n).unwrap_or(usize::MAX),
                Err(_) => {
                    return Err(ApiError::bad_request(format!(
                        "query parameter `tail`: expected a number of lines (-1 for all), found {t:?}"
                    )))
                }
            },
        };
        let follow = match q.follow.as_deref() {
            None | Some("" | "0" | "false" | "no") => false,
            Some("1" | "true" | "yes") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "query parameter `follow`: expected true or false, found {other:?}"
                )))
            }
        };
        let instance = q.instance.clone().filter(|i| !i.is_empty());
        Ok(Self { since, tail, instance, follow })
    }

    fn wants(&self, l: &LogLine) -> bool {
        self.since.is_none_or(|t| l.timestamp >= t) && self.instance.as_ref().is_none_or(|i| *i == l.instance)
    }

    /// The lines kept so far that it asks for, oldest first.
    pub(super) fn past(&self, lines: Vec<LogLine>) -> Vec<LogLine> {
        let kept: Vec<LogLine> = lines.into_iter().filter(|l| self.wants(l)).collect();
        self.tail_of(kept)
    }

    /// [`Pick::past`] of the lines `logs` keeps, copying only those it
    /// takes: a cluster's follower asks every second for the few new ones.
    pub(super) fn kept(&self, logs: &sedge_runtime::logs::FunctionLogs) -> Vec<LogLine> {
        self.tail_of(logs.matching(|l| self.wants(l)))
    }

    fn tail_of(&self, mut kept: Vec<LogLine>) -> Vec<LogLine> {
        kept.drain(..kept.len().saturating_sub(self.tail));
        kept
    }
}

/// A line as faas-cli reads it.
pub(super) fn line_value(l: &LogLine) -> serde_json::Value {
    serde_json::json!({
        "name": l.function,
        "namespace": NAMESPACE,
        "instance": l.instance,
        "timestamp": humantime::format_rfc3339_nanos(l.timestamp).to_string(),
        "text": l.text,
    })
}

fn line_json(l: &LogLine) -> String {
    format!("{}\n", line_value(l))
}

pub async fn logs(State(node): Shared, Query(q): Query<LogQuery>) -> Result<Response, ApiError> {
    let raw = q.name.as_deref().ok_or_else(|| ApiError::bad_request("query parameter `name` is required"))?;
    let name = namespace::strip(raw)?.to_owned();
    let pick = Pick::parse(&q)?;
    if let Some(cluster) = node.cluster.get() {
        return super::cluster_views::logs(cluster.clone(), name, q, pick).await;
    }
    if let Some(other) = &q.node {
        return Err(ApiError::bad_request(format!(
            "query parameter `node` ({other:?}): this node is not part of a cluster"
        )));
    }
    if node.runtime.get(&name).is_none() {
        return Err(ApiError::not_found(&name));
    }
    let logs = node.runtime.shared(&name);
    let ndjson = [(header::CONTENT_TYPE, "application/x-ndjson")];
    if !pick.follow {
        let text: String = pick.kept(&logs.logs).iter().map(line_json).collect();
        return Ok((ndjson, text).into_response());
    }
    let (past, rx) = logs.logs.follow(usize::MAX);
    let past = pick.past(past);
    let past = tokio_stream::iter(past.into_iter().map(|l| Ok::<_, std::convert::Infallible>(line_json(&l))));
    // A follower that falls behind skips lines rather than stalling writers.
    let live =
        BroadcastStream::new(rx).filter_map(move |r| r.ok().filter(|l| pick.wants(l))).map(|l| Ok(line_json(&l)));
    Ok((ndjson, Body::from_stream(past.chain(live))).into_response())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn query(pairs: &[(&str, &str)]) -> LogQuery {
        let get = |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned());
        LogQuery {
            name: get("name"),
            tail: get("tail"),
            follow: get("follow"),
            since: get("since"),
            instance: get("instance"),
            node: None,
        }
    }

    fn line(instance: &str, at: SystemTime) -> LogLine {
        LogLine { function: "f".into(), instance: instance.into(), timestamp: at, text: "x".into() }
    }

    #[test]
    fn faas_cli_s_query_is_understood() {
        let q = query(&[("since", "2024-05-01T14:00:00+02:00"), ("tail", "-1"), ("follow", "false")]);
        let p = Pick::parse(&q).expect("parses");
        let want = humantime::parse_rfc3339("2024-05-01T12:00:00Z").expect("time");
        assert_eq!(p, Pick { since: Some(want), tail: usize::MAX, instance: None, follow: false });
        assert_eq!(
            Pick::parse(&query(&[("tail", "5"), ("follow", "true")])).map(|p| (p.tail, p.follow)).ok(),
            Some((5, true))
        );
    }

    #[test]
    fn bad_values_are_refused_naming_the_parameter() {
        for (k, v) in [("since", "2s"), ("since", "yesterday"), ("tail", "ten"), ("follow", "maybe")] {
            let e = Pick::parse(&query(&[(k, v)])).expect_err(v);
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
            assert!(e.message.contains(&format!("`{k}`")) && e.message.contains(v), "{}", e.message);
        }
    }

    #[test]
    fn since_keeps_lines_at_or_after_it_then_tail_the_last_of_those() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let lines = vec![line("a", at(0)), line("b", at(1)), line("a", at(2)), line("a", at(3))];
        let pick = |since, tail, instance: Option<&str>| Pick {
            since,
            tail,
            instance: instance.map(str::to_owned),
            follow: false,
        };
        let times = |v: Vec<LogLine>| v.iter().map(|l| l.timestamp).collect::<Vec<_>>();
        assert_eq!(times(pick(Some(at(1)), usize::MAX, None).past(lines.clone())), [at(1), at(2), at(3)]);
        assert_eq!(times(pick(Some(at(1)), 1, None).past(lines.clone())), [at(3)]);
        assert_eq!(times(pick(None, 2, Some("a")).past(lines.clone())), [at(2), at(3)]);
        assert!(pick(Some(at(9)), usize::MAX, None).past(lines).is_empty());
    }

    #[test]
    fn the_lines_kept_are_picked_as_a_copy_of_them_all_would_be() {
        let logs = sedge_runtime::logs::FunctionLogs::default();
        for (instance, text) in [("f-1", "one"), ("f-2", "two"), ("f-1", "three"), ("f-1", "four")] {
            logs.push("f", instance, text.to_owned());
        }
        let texts = |v: Vec<LogLine>| v.into_iter().map(|l| l.text).collect::<Vec<_>>();
        let only = |instance: &str, tail| Pick { since: None, tail, instance: Some(instance.into()), follow: false };
        assert_eq!(texts(only("f-1", 2).kept(&logs)), ["three", "four"]);
        let second = logs.tail(usize::MAX)[1].timestamp;
        let since = Pick { since: Some(second), tail: usize::MAX, instance: None, follow: false };
        assert_eq!(texts(since.kept(&logs)), texts(since.past(logs.tail(usize::MAX))));
        assert!(texts(only("f-9", usize::MAX).kept(&logs)).is_empty());
    }
}

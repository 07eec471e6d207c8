//! `GET /system/logs?name=NAME&tail=N&follow=BOOL`: what faas-cli reads, a
//! stream of JSON objects one per line (not an array).

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use sedge_runtime::LogLine;
use serde::Deserialize;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;

use super::functions::NAMESPACE;
use super::Shared;
use crate::ApiError;

#[derive(Deserialize)]
pub struct LogQuery {
    name: Option<String>,
    tail: Option<i64>,
    follow: Option<String>,
}

fn line_json(l: &LogLine) -> String {
    let v = serde_json::json!({
        "name": l.function,
        "namespace": NAMESPACE,
        "instance": l.instance,
        "timestamp": humantime::format_rfc3339_nanos(l.timestamp).to_string(),
        "text": l.text,
    });
    format!("{v}\n")
}

pub async fn logs(State(node): Shared, Query(q): Query<LogQuery>) -> Result<Response, ApiError> {
    let raw = q.name.ok_or_else(|| ApiError::bad_request("query parameter `name` is required"))?;
    let name = raw.split_once('.').map_or(raw.as_str(), |(n, _)| n).to_owned();
    if node.runtime.get(&name).is_none() {
        return Err(ApiError::not_found(&name));
    }
    // faas-cli sends tail=-1 for "everything".
    let tail = match q.tail {
        Some(n) if n >= 0 => usize::try_from(n).unwrap_or(usize::MAX),
        _ => usize::MAX,
    };
    let follow = matches!(q.follow.as_deref(), Some("1" | "true" | "yes"));
    let logs = node.runtime.shared(&name);
    let ndjson = [(header::CONTENT_TYPE, "application/x-ndjson")];
    if !follow {
        let text: String = logs.logs.tail(tail).iter().map(line_json).collect();
        return Ok((ndjson, text).into_response());
    }
    let (past, rx) = logs.logs.follow(tail);
    let past = tokio_stream::iter(past.into_iter().map(|l| Ok::<_, std::convert::Infallible>(line_json(&l))));
    // A follower that falls behind skips lines rather than stalling writers.
    let live = BroadcastStream::new(rx).filter_map(|r| r.ok()).map(|l| Ok(line_json(&l)));
    Ok((ndjson, Body::from_stream(past.chain(live))).into_response())
}

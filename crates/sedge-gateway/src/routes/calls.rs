//! `/system/calls...`: the stored asynchronous calls (list, show, retry,
//! purge), and `/system/tasks...`: funcX-style tasks, which are calls
//! submitted in batches and read back as results or exceptions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use sedge_queue::{Call, CallKind, CallState, Filter, NewCall, Queue};
use serde::Deserialize;
use serde_json::{json, Value};

use super::async_calls::{check_id, no_queue, queue_error, store_error};
use super::body::{read_capped, Capped};
use super::Shared;
use crate::{blocking, ApiError, Node};

/// Largest task batch body: many small argument lists, not bulk data.
const MAX_TASKS_BODY: u64 = 64 * 1024 * 1024;
const MAX_TASKS: usize = 10_000;
/// Marks a task whose body the node made from `args` and `kwargs`, so its
/// answer is read back as a funcX result.
const TASK_HEADER: &str = "x-sedge-task";

fn queue(node: &Node) -> Result<Arc<Queue>, ApiError> {
    node.queue.clone().ok_or_else(no_queue)
}

/// The cluster, when the node is one of several: its calls, not the
/// node's own SQLite queue, are the ones shown and changed.
fn cluster(node: &Node) -> Option<&Arc<dyn crate::cluster::Cluster>> {
    node.cluster.get()
}

/// A call by id: the cluster's, or (for calls a node stored before it
/// joined) its own.
async fn find_call(node: &Node, id: &str) -> Result<Option<Call>, ApiError> {
    if let Some(c) = cluster(node) {
        if let Some(call) = c.calls().get(id).await? {
            return Ok(Some(call));
        }
        if node.queue.is_none() {
            return Ok(None);
        }
    }
    get_call(queue(node)?, id.to_owned()).await
}

fn time(ms: Option<i64>) -> Value {
    match ms.and_then(|ms| u64::try_from(ms).ok()) {
        Some(ms) => json!(humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()),
        None => Value::Null,
    }
}

/// A body as JSON: text when it is UTF-8, else base64 under another key.
fn body_fields(prefix: &str, body: &Bytes) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    match std::str::from_utf8(body) {
        Ok(text) => m.insert(prefix.to_owned(), json!(text)),
        Err(_) => m.insert(format!("{prefix}_base64"), json!(base64::engine::general_purpose::STANDARD.encode(body))),
    };
    m
}

fn summary(c: &Call) -> Value {
    let mut v = json!({
        "id": c.id,
        "function": c.function,
        "kind": c.kind,
        "state": c.state,
        "attempts": c.attempts,
        "accepted_at": time(Some(c.accepted_ms)),
        "started_at": time(c.started_ms),
        "finished_at": time(c.finished_ms),
        "next_attempt_at": if c.state == CallState::Queued { time(Some(c.not_before_ms)) } else { Value::Null },
        "status": c.status,
        "duration_seconds": c.duration_ms.map(|ms| ms as f64 / 1000.0),
        "error": c.error,
        "callback": c.callback_url.as_ref().map(|url| json!({
            "url": url,
            "state": c.callback,
            "attempts": c.callback_attempts,
            "error": c.callback_error,
        })),
    });
    if let Some(node) = &c.node {
        v["node"] = json!(node);
    }
    v
}

fn detail(c: &Call) -> Value {
    let mut v = summary(c);

    let mut request = serde_json::Map::new();
    request.insert("method".into(), json!(c.request.method));
    request.insert("path".into(), json!(c.request.path));
    request.insert("query".into(), json!(c.request.query));
    request.insert("headers".into(), json!(c.request.headers));
    request.extend(body_fields("body", &c.request.body));
    v["request"] = Value::Object(request);
    if let Some(body) = &c.reply_body {
        let mut result = serde_json::Map::new();
        result.insert("status".into(), json!(c.status));
        result.insert("headers".into(), json!(c.reply_headers));
        result.extend(body_fields("body", body));
        v["result"] = Value::Object(result);
    }
    v
}

#[derive(Deserialize)]
pub struct ListQuery {
    function: Option<String>,
    state: Option<String>,
    limit: Option<u32>,
}

fn filter(q: ListQuery) -> Result<Filter, ApiError> {
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(CallState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!("state {s:?}: expected one of queued, running, done, failed"))
        })?),
    };
    let function =
        q.function.filter(|f| !f.is_empty()).map(|f| f.strip_suffix(".openfaas-fn").unwrap_or(&f).to_owned());
    Ok(Filter { function, state, limit: q.limit })
}

pub async fn list(State(node): Shared, Query(q): Query<ListQuery>) -> Result<Json<Value>, ApiError> {
    let mut filter = filter(q)?;
    filter.limit = Some(filter.limit.unwrap_or(100).min(10_000));
    if let Some(c) = cluster(&node) {
        let calls = c.calls().list(filter).await?;
        return Ok(Json(Value::Array(calls.iter().map(summary).collect())));
    }
    let queue = queue(&node)?;
    let calls = blocking(move || queue.store().list(&filter).map_err(store_error)).await?;
    Ok(Json(Value::Array(calls.iter().map(summary).collect())))
}

async fn get_call(queue: Arc<Queue>, id: String) -> Result<Option<Call>, ApiError> {
    blocking(move || queue.store().get(&id).map_err(store_error)).await
}

pub async fn show(State(node): Shared, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    match find_call(&node, &id).await? {
        Some(c) => Ok(Json(detail(&c))),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("call {id} not found"))),
    }
}

pub async fn retry(State(node): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    if let Some(c) = cluster(&node) {
        // From a task of its own: a caller hanging up between the record's
        // new round and its message would leave the call queued with no
        // message, run by no node.
        let (c, again) = (c.clone(), id.clone());
        tokio::spawn(async move { c.calls().retry(&again).await })
            .await
            .unwrap_or_else(|e| Err(ApiError::internal("queueing the call again", e)))?;
        return Ok((StatusCode::ACCEPTED, Json(json!({ "id": id, "state": "queued" }))).into_response());
    }
    let queue = queue(&node)?;
    let again = id.clone();
    blocking(move || queue.retry(&again).map_err(store_error)).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": id, "state": "queued" }))).into_response())
}

pub async fn purge(State(node): Shared, Query(q): Query<ListQuery>) -> Result<Json<Value>, ApiError> {
    let filter = filter(q)?;
    if matches!(filter.state, Some(CallState::Queued | CallState::Running)) {
        return Err(ApiError::bad_request("only finished calls (done or failed) are purged"));
    }
    if let Some(c) = cluster(&node) {
        return Ok(Json(json!({ "removed": c.calls().purge(filter).await? })));
    }
    let queue = queue(&node)?;
    let removed = blocking(move || queue.store().purge(&filter).map_err(store_error)).await?;
    Ok(Json(json!({ "removed": removed })))
}

/// One task of a batch: a funcX call (`args`, `kwargs`) or a raw body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskIn {
    function: String,
    args: Option<Vec<Value>>,
    kwargs: Option<serde_json::Map<String, Value>>,
    /// A raw body: a string as is, any other JSON value as JSON.
    body: Option<Value>,
    content_type: Option<String>,
    /// Deduplicates resubmissions of the same task (per function).
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Batch {
    List(Vec<TaskIn>),
    Wrapped { tasks: Vec<TaskIn> },
}

/// The calls of a batch, in order; each function it names is looked up
/// once, however many of its tasks the batch holds.
async fn task_calls(node: &Node, tasks: Vec<TaskIn>) -> Result<Vec<NewCall>, ApiError> {
    let mut limits: HashMap<String, u64> = HashMap::new();
    let mut calls = Vec::with_capacity(tasks.len());
    for (i, t) in tasks.into_iter().enumerate() {
        let name = crate::namespace::strip(&t.function)
            .map_err(|e| ApiError::bad_request(format!("tasks[{i}]: {}", e.message)))?
            .to_owned();
        let limit = match limits.get(&name) {
            Some(limit) => *limit,
            None => {
                let limit = max_body(node, &name).await.ok_or_else(|| {
                    ApiError::new(StatusCode::NOT_FOUND, format!("tasks[{i}]: function {name} not found"))
                })?;
                limits.insert(name.clone(), limit);
                limit
            }
        };
        calls.push(task_call(i, name, limit, t)?);
    }
    Ok(calls)
}

/// Function `name`'s `max_body`: this node's pool's, or in a cluster the
/// registry's, read from its leader when this node's copy lags (as a call
/// of `/function/NAME` does), so a task of a function just deployed is not
/// refused as unknown.
async fn max_body(node: &Node, name: &str) -> Option<u64> {
    if let Some(pool) = node.runtime.get(name) {
        return Some(pool.spec().limits.max_body);
    }
    Some(cluster(node)?.lookup(name).await?.limits.max_body)
}

fn task_call(i: usize, name: String, limit: u64, t: TaskIn) -> Result<NewCall, ApiError> {
    let at = |problem: String| ApiError::bad_request(format!("tasks[{i}]: {problem}"));
    if let Some(key) = &t.idempotency_key {
        check_id(&format!("tasks[{i}].idempotency_key"), key)?;
    }
    let funcx = t.args.is_some() || t.kwargs.is_some();
    let (body, content_type) = match (funcx, t.body) {
        (true, Some(_)) => return Err(at("give either args/kwargs or body, not both".into())),
        (true, None) => {
            let payload = json!({ "args": t.args.unwrap_or_default(), "kwargs": t.kwargs.unwrap_or_default() });
            (Bytes::from(payload.to_string()), "application/json".to_owned())
        }
        (false, Some(Value::String(s))) => (Bytes::from(s), t.content_type.unwrap_or_else(|| "text/plain".into())),
        (false, Some(v)) => (Bytes::from(v.to_string()), t.content_type.unwrap_or_else(|| "application/json".into())),
        (false, None) => (Bytes::from_static(b"{}"), "application/json".to_owned()),
    };
    if body.len() as u64 > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("tasks[{i}]: the body of {} bytes is over function {name}'s max_body of {limit} bytes", body.len()),
        ));
    }
    let id = sedge_queue::store::new_id();
    let mut headers = vec![("content-type".to_owned(), content_type), ("x-call-id".to_owned(), id.clone())];
    if funcx {
        headers.push((TASK_HEADER.to_owned(), "funcx".to_owned()));
    }
    Ok(NewCall {
        function: name,
        kind: CallKind::Task,
        id: Some(id),
        key: t.idempotency_key,
        request: sedge_queue::Request { method: "POST".into(), path: "/".into(), query: String::new(), headers, body },
        callback_url: None,
    })
}

/// `POST /system/tasks`: a batch, stored in one transaction, ids in order.
pub async fn submit_tasks(State(node): Shared, req: Request<Body>) -> Result<Json<Value>, ApiError> {
    if cluster(&node).is_none() {
        queue(&node)?;
    }
    let bytes = read_capped(req.into_body(), MAX_TASKS_BODY).await.map_err(|e| match e {
        Capped::Over(_) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("a task batch is at most {MAX_TASKS_BODY} bytes"))
        }
        Capped::Broken(m) => ApiError::bad_request(format!("could not read the request body: {m}")),
    })?;
    let batch: Batch = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "expected a JSON array of tasks like [{{\"function\": \"NAME\", \"args\": [...], \"kwargs\": {{...}}}}] \
             or [{{\"function\": \"NAME\", \"body\": ...}}]: {e}"
        ))
    })?;
    let tasks = match batch {
        Batch::List(t) | Batch::Wrapped { tasks: t } => t,
    };
    if tasks.is_empty() || tasks.len() > MAX_TASKS {
        return Err(ApiError::bad_request(format!("a batch holds 1 to {MAX_TASKS} tasks, found {}", tasks.len())));
    }
    let calls = task_calls(&node, tasks).await?;
    if let Some(c) = cluster(&node) {
        return cluster_tasks(c, calls).await;
    }
    let accepted = queue(&node)?.submit(calls).await.map_err(queue_error)?;
    let ids = accepted.into_iter().map(|a| a.map(|a| a.id)).collect::<Result<Vec<_>, _>>().map_err(store_error)?;
    Ok(Json(json!({ "task_ids": ids })))
}

/// A batch stored in the cluster, task by task (JetStream has no
/// transaction over several calls): a failure names the tasks already
/// stored, which run. The whole batch is stored from a task of its own,
/// so a caller that hangs up mid-way leaves it stored as on one node,
/// not cut at whichever task its hang-up fell on.
async fn cluster_tasks(
    cluster: &Arc<dyn crate::cluster::Cluster>,
    calls: Vec<NewCall>,
) -> Result<Json<Value>, ApiError> {
    let cluster = cluster.clone();
    let stored = tokio::spawn(async move {
        let mut ids = Vec::with_capacity(calls.len());
        for (i, call) in calls.into_iter().enumerate() {
            match cluster.calls().submit(call).await {
                Ok(a) => ids.push(a.id),
                Err(e) if ids.is_empty() => return Err(ApiError::new(e.status, format!("tasks[{i}]: {}", e.message))),
                Err(e) => {
                    let message =
                        format!("tasks[{i}]: {}; tasks[0..{i}] were stored and run: {}", e.message, ids.join(", "));
                    return Err(ApiError::new(e.status, message));
                }
            }
        }
        Ok(ids)
    });
    let ids = stored.await.map_err(|e| ApiError::internal("storing the tasks", e))??;
    Ok(Json(json!({ "task_ids": ids })))
}

/// funcX's task states.
fn task_status(state: CallState) -> &'static str {
    match state {
        CallState::Queued => "waiting-for-launch",
        CallState::Running => "running",
        CallState::Done => "success",
        CallState::Failed => "failed",
    }
}

fn task_json(c: &Call) -> Value {
    let pending = matches!(c.state, CallState::Queued | CallState::Running);
    let mut v = json!({
        "task_id": c.id,
        "function": c.function,
        "status": task_status(c.state),
        "pending": pending,
        "attempts": c.attempts,
    });
    if pending {
        return v;
    }
    v["completion_t"] = json!(c.finished_ms.map(|ms| ms as f64 / 1000.0));
    let body = c.reply_body.clone().unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let funcx = c.request.headers.iter().any(|(k, _)| k == TASK_HEADER);
    if c.state == CallState::Done {
        v["result"] = match parsed {
            Some(Value::Object(mut m)) if funcx && m.contains_key("result") => m.remove("result").unwrap_or_default(),
            Some(other) => other,
            None => Value::String(String::from_utf8_lossy(&body).into_owned()),
        };
        return v;
    }
    let error = c.error.clone().unwrap_or_default();
    v["exception"] = match parsed {
        Some(Value::Object(m)) if m.contains_key("exception") => json!({
            "type": m.get("exception").cloned().unwrap_or_default(),
            "message": m.get("message").cloned().unwrap_or_default(),
            "traceback": m.get("traceback").cloned().unwrap_or_default(),
        }),
        Some(Value::Object(m)) if m.contains_key("error") => json!({
            "type": "TaskFailed",
            "message": m.get("error").cloned().unwrap_or_default(),
            "traceback": Value::Null,
        }),
        _ => json!({
            "type": "TaskFailed",
            "message": format!("{error}: {}", String::from_utf8_lossy(&body)),
            "traceback": Value::Null,
        }),
    };
    v["error"] = json!(error);
    v
}

/// Calls read from the cluster at once for one batch status.
const CLUSTER_READS: usize = 32;

async fn task_status_of(node: &Node, ids: Vec<String>) -> Result<Vec<(String, Option<Call>)>, ApiError> {
    if cluster(node).is_some() {
        // A few reads of the cluster's store each: up to MAX_TASKS of them
        // one after another would be as many round trips end to end.
        let found = futures_util::stream::iter(ids)
            .map(|id| async move {
                let call = find_call(node, &id).await?;
                Ok((id, call))
            })
            .buffered(CLUSTER_READS);
        return found.try_collect().await;
    }
    let queue = queue(node)?;
    blocking(move || ids.into_iter().map(|id| Ok((id.clone(), queue.store().get(&id).map_err(store_error)?))).collect())
        .await
}

/// `GET /system/tasks/ID`.
pub async fn task(State(node): Shared, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    match find_call(&node, &id).await? {
        Some(c) if c.kind == CallKind::Task => Ok(Json(task_json(&c))),
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, format!("task {id} not found"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchStatus {
    task_ids: Vec<String>,
}

/// `POST /system/tasks/batch-status` `{"task_ids": [...]}`: each id's
/// status and result, keyed by id; an unknown id says so.
pub async fn batch_status(State(node): Shared, body: Bytes) -> Result<Json<Value>, ApiError> {
    let ask: BatchStatus = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("expected {{\"task_ids\": [\"ID\", ...]}}: {e}")))?;
    if ask.task_ids.len() > MAX_TASKS {
        return Err(ApiError::bad_request(format!("at most {MAX_TASKS} ids at once, found {}", ask.task_ids.len())));
    }
    let found = task_status_of(&node, ask.task_ids).await?;
    let mut results = serde_json::Map::new();
    for (id, call) in found {
        let v = match call {
            Some(c) if c.kind == CallKind::Task => task_json(&c),
            _ => {
                json!({ "task_id": id, "status": "unknown", "pending": false, "error": format!("task {id} not found") })
            }
        };
        results.insert(id, v);
    }
    Ok(Json(json!({ "results": results })))
}

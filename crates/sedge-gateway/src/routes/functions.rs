//! The management API: list, describe, deploy (bundles), remove, scale.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sedge_core::FunctionName;
use sedge_store::FunctionRecord;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{read_capped, Capped};
use super::{upload, Shared};
use crate::namespace::{self, NAMESPACE};
use crate::{blocking, ApiError, Node};

pub(super) async fn records(node: &Arc<Node>) -> Result<Vec<FunctionRecord>, ApiError> {
    let store = node.store.clone();
    blocking(move || Ok(store.list()?)).await
}

/// `NAME` or `NAME.openfaas-fn`; another namespace is not found.
fn parse_name(raw: &str) -> Result<FunctionName, ApiError> {
    FunctionName::parse(namespace::strip(raw)?).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// A function as OpenFaaS's `FunctionStatus`, with sedge's details under `sedge`.
pub(super) fn status(node: &Node, r: &FunctionRecord) -> Value {
    let name = r.spec.name.as_str();
    let stats = node.runtime.get(name).map(|p| p.stats()).unwrap_or_default();
    let shared = node.runtime.shared(name);
    let invocations = shared.invocations.load(std::sync::atomic::Ordering::Relaxed);
    let spec = &r.spec;
    let mut labels: BTreeMap<String, String> = spec.labels.clone();
    labels.insert("sedge.runtime".into(), spec.runtime.as_str().into());
    json!({
        "name": name,
        "namespace": NAMESPACE,
        "image": r.digest,
        "envProcess": spec.handler,
        "envVars": spec.env,
        "labels": labels,
        "annotations": spec.annotations,
        "replicas": stats.ready + stats.starting,
        "availableReplicas": stats.ready,
        "invocationCount": invocations,
        "createdAt": humantime::format_rfc3339_seconds(r.created_at).to_string(),
        "lastDeployError": node.last_deploy_error(name),
        "sedge": {
            "runtime": spec.runtime.as_str(),
            "style": spec.style.as_str(),
            "handler": spec.handler,
            "timeout": humantime::format_duration(spec.limits.timeout).to_string(),
            "maxBody": spec.limits.max_body,
            "maxAnswer": spec.limits.max_answer,
            "memory": spec.limits.memory,
            "queue": spec.limits.queue,
            "scale": {
                "min": spec.scale.min,
                "max": spec.scale.max,
                "concurrency": spec.scale.concurrency,
                "idle": humantime::format_duration(spec.scale.idle).to_string(),
                "target": spec.scale.target,
                // Cores a busy worker counts against the node's CPU budget (null: not CPU-bound).
                "cpu": node.runtime.get(name).and_then(|p| p.cpu()),
                "desired": stats.desired,
            },
            "async": {
                "maxAttempts": spec.async_calls.max_attempts,
                "maxAge": humantime::format_duration(spec.async_calls.max_age).to_string(),
                "retryOn": spec.async_calls.retry_on.iter().map(|c| c.as_string()).collect::<Vec<_>>(),
                "concurrency": spec.async_calls.concurrency_for(spec.scale.max.saturating_mul(spec.scale.concurrency)),
            },
            // Where the last worker's start went, in milliseconds.
            "lastColdStart": shared.cold.last().map(|c| json!({
                "kind": c.kind.as_str(),
                "processMs": c.process.as_secs_f64() * 1000.0,
                "importsMs": c.imports.as_secs_f64() * 1000.0,
                "modelMs": c.model.as_secs_f64() * 1000.0,
                "firstAnswerMs": c.first_answer.as_secs_f64() * 1000.0,
                "totalMs": c.total().as_secs_f64() * 1000.0,
            })),
            // A model served in the node: what its runs did since the node began.
            "model": spec.runtime.serves_models().then(|| model_figures(&shared.model)),
            "cpuBudgetWaits": shared.cpu_waits.load(std::sync::atomic::Ordering::Relaxed),
            "memoryBudgetWaits": shared.memory_waits.load(std::sync::atomic::Ordering::Relaxed),
            "memoryBudget": memory_budget(node, name),
            "triggers": triggers(node, name, spec),
            "workers": { "ready": stats.ready, "starting": stats.starting, "busy": stats.busy },
            "queued": stats.queued,
            "coldStarts": shared.cold_starts.load(std::sync::atomic::Ordering::Relaxed),
            "spareStarts": shared.spare_starts.load(std::sync::atomic::Ordering::Relaxed),
            "secrets": spec.secrets.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "auth": {
                "invoke": spec.auth.invoke,
                // Describe is behind the admin credential, so the token may show here.
                "token": node.tokens.get(name).as_deref(),
            },
            "oomKills": shared.oom_kills.load(std::sync::atomic::Ordering::Relaxed),
            "isolation": isolation(node, spec),
            // The environment its requirements.txt / package.json were installed into.
            "environment": node.runtime.get(name).and_then(|p| p.deps().and_then(|d| crate::deps::key_of(d))),
        },
    })
}

/// A served model's runs, the requests they answered and their mean queue
/// wait and run time in milliseconds (null before any run).
fn model_figures(figures: &sedge_core::figures::ModelFigures) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let mean_ms = |h: &sedge_core::figures::Histogram| {
        let (count, sum) = h.count_and_sum();
        (count > 0).then(|| sum * 1000.0 / count as f64)
    };
    json!({
        "runs": figures.runs.load(Relaxed),
        "requests": figures.requests.load(Relaxed),
        "meanQueueMs": mean_ms(&figures.queued),
        "meanRunMs": mean_ms(&figures.run),
    })
}

/// What the node's memory budget (`serve --memory`) holds, in bytes, by
/// kind of process: on the whole node and for this function (a spare that
/// any function may take belongs to none).
fn memory_budget(node: &Node, name: &str) -> Value {
    let used = node.runtime.memory_use(name);
    let held = used.held();
    json!({
        "bytes": used.budget,
        "held": held,
        "free": used.budget.map(|b| b.saturating_sub(held)),
        "node": used.node,
        "function": used.function,
    })
}

/// How the function's code is kept apart: a model runs in the node itself
/// (docs/security.md, "Not isolated"), everything else in the sandbox.
fn isolation(node: &Node, spec: &sedge_core::FunctionSpec) -> Value {
    if spec.runtime.serves_models() {
        return json!({
            "sandboxed": false,
            "inProcess": true,
            "user": null,
            "namespaces": [],
            "cgroup": "none",
            "note": "a model runs in the node process, through ONNX Runtime",
        });
    }
    node.runtime.isolation(&spec.limits)
}

pub async fn list(State(node): Shared) -> Result<Json<Vec<Value>>, ApiError> {
    if let Some(cluster) = node.cluster.get() {
        return Ok(Json(super::cluster_views::functions(&node, cluster.as_ref(), None).await?));
    }
    let all = records(&node).await?;
    Ok(Json(all.iter().map(|r| status(&node, r)).collect()))
}

pub async fn describe(State(node): Shared, Path(raw): Path<String>) -> Result<Json<Value>, ApiError> {
    let name = parse_name(&raw)?;
    if let Some(cluster) = node.cluster.get() {
        let found = super::cluster_views::functions(&node, cluster.as_ref(), Some(name.as_str())).await?;
        return found.into_iter().next().map(Json).ok_or_else(|| ApiError::not_found(name.as_str()));
    }
    let all = records(&node).await?;
    let r = all.iter().find(|r| r.spec.name == name).ok_or_else(|| ApiError::not_found(name.as_str()))?;
    Ok(Json(status(&node, r)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoveRequest {
    function_name: String,
    #[serde(default)]
    namespace: Option<String>,
}

/// The management API's JSON bodies are a few dozen bytes; anything much
/// larger is refused before it is buffered.
const MAX_JSON: u64 = 64 * 1024;

async fn json_body<T: serde::de::DeserializeOwned>(body: Body, shape: &str) -> Result<T, ApiError> {
    let bytes = read_capped(body, MAX_JSON).await.map_err(|e| match e {
        Capped::Over(_) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("a JSON body is at most {MAX_JSON} bytes here"))
        }
        Capped::Broken(msg) => ApiError::bad_request(format!("could not read the request body: {msg}")),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("expected a JSON body like {shape}: {e}")))
}

pub async fn remove(State(node): Shared, body: Body) -> Result<StatusCode, ApiError> {
    let req: RemoveRequest = json_body(body, r#"{"functionName": "NAME"}"#).await?;
    namespace::check(req.namespace.as_deref())?;
    let name = parse_name(&req.function_name)?;
    // As a deploy: once asked, the removal runs to its end even if the
    // client hangs up, so no half of it (the record gone but not its pin,
    // bundle or token; the store's record but not the pool) is left.
    let task = {
        let (node, name) = (node.clone(), name.clone());
        tokio::spawn(async move {
            let Some(cluster) = node.cluster.get() else { return crate::remove(&node, &name).await };
            let existed = cluster.remove(name.clone()).await?;
            // A function deployed again under this name starts unpinned.
            if let Err(e) = cluster.pin(name.as_str(), 0).await {
                tracing::warn!("removing the pin of {name}: {}", e.message);
            }
            Ok(existed)
        })
    };
    let existed = task.await.map_err(|e| ApiError::internal("removal task", e))??;
    if existed {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::not_found(name.as_str()))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleRequest {
    #[serde(default)]
    service_name: Option<String>,
    replicas: i64,
    #[serde(default)]
    namespace: Option<String>,
}

/// A JSON route refuses other content types: a browser sends
/// `text/plain` or form bodies cross-origin without asking first, but
/// `application/json` only after a preflight this node never grants.
fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let given = headers.get(axum::http::header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("?"));
    let essence = given.map(|t| t.split(';').next().unwrap_or_default().trim());
    if essence.is_some_and(|e| e.eq_ignore_ascii_case("application/json")) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!("expected Content-Type: application/json, found {}", given.unwrap_or("none")),
    ))
}

pub async fn scale(
    State(node): Shared,
    Path(raw): Path<String>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    let req: ScaleRequest = json_body(body, r#"{"serviceName": "NAME", "replicas": N}"#).await?;
    namespace::check(req.namespace.as_deref())?;
    let name = parse_name(&raw)?;
    if let Some(s) = &req.service_name {
        if !s.is_empty() && parse_name(s)? != name {
            return Err(ApiError::bad_request(format!(
                "serviceName {s:?} does not match the function in the path, {name}"
            )));
        }
    }
    if let Some(cluster) = node.cluster.get() {
        let spec = cluster.lookup(name.as_str()).await.ok_or_else(|| ApiError::not_found(name.as_str()))?;
        let replicas = replicas_within(&spec, req.replicas)?;
        let answer = super::cluster_views::scale(cluster.as_ref(), name.as_str(), replicas).await?;
        return Ok((StatusCode::ACCEPTED, Json(answer)).into_response());
    }
    pin(&node, name.as_str(), req.replicas)?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `replicas` when it is a pin `spec` allows: a pin past [scale] max would
/// start workers the function's author never budgeted memory for.
fn replicas_within(spec: &sedge_core::FunctionSpec, replicas: i64) -> Result<u32, ApiError> {
    let max = spec.scale.max;
    u32::try_from(replicas).ok().filter(|n| *n <= max).ok_or_else(|| {
        ApiError::bad_request(format!(
            "replicas must be from 0 to {max} (function {}'s [scale] max), found {replicas}",
            spec.name
        ))
    })
}

/// Holds the function at `replicas` workers on this node.
pub(super) fn pin(node: &Node, name: &str, replicas: i64) -> Result<(), ApiError> {
    let pool = node.runtime.get(name).ok_or_else(|| ApiError::not_found(name))?;
    let replicas = replicas_within(pool.spec(), replicas)?;
    pool.set_replicas(replicas);
    Ok(())
}

/// `POST /system/function/{name}/token`: a new invoke token; the old one stops working.
pub async fn rotate_token(State(node): Shared, Path(raw): Path<String>) -> Result<Json<Value>, ApiError> {
    let name = parse_name(&raw)?;
    // In a cluster the function may run on other nodes only, and this
    // node's copy of the registry may not have it yet.
    let requires = match (node.runtime.get(name.as_str()), node.cluster.get()) {
        (Some(pool), _) => Some(pool.spec().auth.invoke),
        (None, Some(cluster)) => cluster.lookup(name.as_str()).await.map(|s| s.auth.invoke),
        (None, None) => None,
    };
    let requires = requires.ok_or_else(|| ApiError::not_found(name.as_str()))?;
    let token = crate::secrets::rotate(&node, &name, requires).await?;
    Ok(Json(json!({ "name": name.as_str(), "token": token })))
}

pub async fn deploy_image() -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "sedge deploys function folders, not container images: use `sedge deploy DIR`, or PUT a tar.gz of the folder to /system/bundles/NAME",
    )
}

#[derive(Deserialize)]
pub struct DeployQuery {
    #[serde(default)]
    wait: Option<String>,
    /// Stream the deploy's progress as JSON lines (see [`deploy_bundle`]).
    #[serde(default)]
    progress: Option<String>,
}

fn flag(v: Option<&str>) -> bool {
    matches!(v, Some("" | "1" | "true" | "yes"))
}

/// `PUT /system/bundles/{name}[?wait=true]`: the body is a tar.gz of the
/// function's folder. A new version of an existing function replaces the
/// old only once a worker of it has loaded (without `wait` that happens in
/// the background and the answer is 202), so a failed deploy leaves the
/// previous version serving.
///
/// With `progress=true` the answer is `200` with JSON lines: `{"log": LINE}`
/// for each line of the dependency install as it happens, then one
/// `{"status": CODE, "function": {...}}` or `{"status": CODE, "error": ...}`
/// carrying what the plain answer's status and body would have been.
pub async fn deploy_bundle(
    State(node): Shared,
    Path(raw): Path<String>,
    Query(q): Query<DeployQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = FunctionName::parse(&raw).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let wait = flag(q.wait.as_deref());
    let slot = upload::admit(&node)?;
    let archive = upload::receive(&node, &headers, body).await?;
    let (progress, lines) = if flag(q.progress.as_deref()) {
        let (tx, rx) = tokio::sync::mpsc::channel::<String>(256);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    // Once received, the deploy runs to its end even if the client hangs
    // up, so a half-done stage never leaves a folder behind.
    let task = {
        let node = node.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Some(cluster) = node.cluster.get() {
                return cluster.deploy(name, archive, wait).await;
            }
            let done = crate::deploy_file(&node, name, archive, wait, progress).await;
            done.map(|d| deployed_answer(&node, &d))
        })
    };
    let Some(mut lines) = lines else {
        let (code, answer) = task.await.map_err(|e| ApiError::internal("deploy task", e))??;
        return Ok((code, Json(answer)).into_response());
    };
    drop(progress);
    let (body, chunks) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::convert::Infallible>>(64);
    tokio::spawn(async move {
        while let Some(line) = lines.recv().await {
            // A watcher that hung up stops receiving; the deploy goes on
            // and its lines are still drained here.
            let _ = body.send(Ok(json_line(&json!({ "log": line })))).await;
        }
        let last = match task.await {
            Ok(Ok((code, answer))) => json!({ "status": code.as_u16(), "function": answer }),
            Ok(Err(e)) => json!({ "status": e.status.as_u16(), "error": e.message }),
            Err(e) => {
                let e = ApiError::internal("deploy task", e);
                json!({ "status": e.status.as_u16(), "error": e.message })
            }
        };
        let _ = body.send(Ok(json_line(&last))).await;
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(chunks);
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(stream)).into_response())
}

fn json_line(v: &Value) -> bytes::Bytes {
    let mut line = v.to_string().into_bytes();
    line.push(b'\n');
    bytes::Bytes::from(line)
}

/// The status and body a finished deploy answers with.
fn deployed_answer(node: &Node, done: &crate::Deployed) -> (StatusCode, Value) {
    let code = match (done.pending, done.existed) {
        (true, _) => StatusCode::ACCEPTED,
        (false, true) => StatusCode::OK,
        (false, false) => StatusCode::CREATED,
    };
    let mut answer = status(node, &done.record);
    answer["pending"] = json!(done.pending);
    answer["unchanged"] = json!(done.unchanged);
    (code, answer)
}

/// A function's triggers as its manifest gives them, each with what it is
/// doing: its connection's state and the messages it has queued.
fn triggers(node: &Node, name: &str, spec: &sedge_core::FunctionSpec) -> Vec<serde_json::Value> {
    let states: Vec<sedge_triggers::TriggerState> = node
        .triggers
        .as_ref()
        .map(|t| t.states().into_iter().filter(|s| s.function == name).collect())
        .unwrap_or_default();
    spec.triggers
        .iter()
        .map(|t| {
            let mut entry = serde_json::json!({
                "kind": t.kind(),
                "pattern": t.pattern(),
                "qos": match &t.source { sedge_core::TriggerSource::Mqtt { qos, .. } => Some(*qos), _ => None },
                "reply": t.reply,
            });
            let state = states.iter().find(|s| s.kind == t.kind() && s.pattern == t.pattern());
            if let (Some(state), Some(fields)) =
                (state.and_then(|s| serde_json::to_value(s).ok()), entry.as_object_mut())
            {
                for (k, v) in state.as_object().into_iter().flatten() {
                    if !matches!(k.as_str(), "function" | "kind" | "pattern") {
                        fields.insert(k.clone(), v.clone());
                    }
                }
            }
            entry
        })
        .collect()
}

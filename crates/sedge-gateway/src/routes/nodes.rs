//! `GET /system/nodes`: the nodes of the platform. A single node lists
//! itself alone (`clustered: false`); a cluster node asks the cluster.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::Json;
use serde_json::{json, Value};

use super::Shared;
use crate::ApiError;

pub async fn list(State(node): Shared, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    if let Some(cluster) = node.cluster.get() {
        return Ok(Json(cluster.nodes().await?));
    }
    let (mut inflight, mut capacity) = (0u64, 0u64);
    let functions = node.runtime.names();
    for name in &functions {
        if let Some(pool) = node.runtime.get(name) {
            let (i, c) = pool.load();
            inflight += u64::from(i);
            capacity += u64::from(c);
        }
    }
    // The address the caller reached this node at is the one it can use.
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    Ok(Json(json!({
        "clustered": false,
        "nodes": [{
            "name": host_name(),
            "labels": [],
            "address": format!("http://{host}"),
            "functions": functions,
            "inflight": inflight,
            "capacity": capacity,
            "lastSeen": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        }],
    })))
}

/// The machine's host name, as a single node's name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sedge".to_owned())
}

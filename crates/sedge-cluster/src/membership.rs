//! The membership bucket: this node's record, put every heartbeat and at
//! once after a change, and the others' records as watched.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::{js_error, Cluster, ClusterError, GONE_AFTER, HEARTBEAT};

/// A node as the membership bucket has it. The first fields are the ones
/// `GET /system/nodes` shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub name: String,
    pub labels: Vec<String>,
    pub address: String,
    pub functions: Vec<String>,
    pub inflight: u64,
    pub capacity: u64,
    pub last_seen: String,
    pub last_seen_ms: u64,
    pub runtimes: Vec<String>,
    /// The bundle digest each served function runs.
    pub serving: BTreeMap<String, String>,
    /// Placed versions it could not run: function → [digest, why].
    pub refused: BTreeMap<String, (String, String)>,
}

impl NodeInfo {
    pub fn alive(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_seen_ms) < GONE_AFTER.as_millis() as u64
    }

    /// What `/system/nodes` shows of it.
    pub fn public(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "labels": self.labels,
            "address": self.address,
            "functions": self.functions,
            "inflight": self.inflight,
            "capacity": self.capacity,
            "lastSeen": self.last_seen,
        })
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Cluster {
    /// This node's record now.
    pub(crate) fn own_record(&self) -> NodeInfo {
        let mut serving = BTreeMap::new();
        let (mut inflight, mut capacity) = (0u64, 0u64);
        let mut functions = Vec::new();
        if let Some(node) = self.node() {
            for name in node.runtime.names() {
                if let Some(pool) = node.runtime.get(&name) {
                    let (i, c) = pool.load();
                    inflight += u64::from(i);
                    capacity += u64::from(c);
                    serving.insert(name.clone(), self.digest_of(&node, &name).unwrap_or_default());
                    functions.push(name);
                }
            }
        }
        let now = SystemTime::now();
        NodeInfo {
            name: self.config.node_name.clone(),
            labels: self.config.labels.clone(),
            address: self.address.get().cloned().unwrap_or_default(),
            functions,
            inflight,
            capacity,
            last_seen: humantime::format_rfc3339_seconds(now).to_string(),
            last_seen_ms: now_ms(),
            runtimes: self.config.runtimes.clone(),
            serving,
            refused: self.refused.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// The nodes heard from within [`GONE_AFTER`], this one included.
    pub(crate) fn live_nodes(&self) -> Vec<NodeInfo> {
        let now = now_ms();
        let mut nodes: Vec<NodeInfo> = self
            .view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|n| n.alive(now) && n.name != self.config.node_name)
            .cloned()
            .collect();
        nodes.push(self.own_record());
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes
    }

    async fn reload_nodes(&self) {
        let mut keys = match self.nodes.keys().await {
            Ok(k) => k,
            Err(e) => return tracing::debug!("cluster: listing the nodes: {e}"),
        };
        let mut read = Vec::new();
        while let Some(Ok(key)) = keys.next().await {
            if let Ok(Some(v)) = self.nodes.get(key.as_str()).await {
                if let Ok(info) = serde_json::from_slice::<NodeInfo>(&v) {
                    read.push(info);
                }
            }
        }
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        for info in read {
            let newer = view.get(&info.name).is_none_or(|n| n.last_seen_ms < info.last_seen_ms);
            if newer {
                view.insert(info.name.clone(), info);
            }
        }
    }

    async fn put_own(self: &Arc<Self>) {
        if self.leaving.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        self.sync_subscriptions().await;
        let record = self.own_record();
        let value = serde_json::to_vec(&record).unwrap_or_default();
        match self.nodes.put(self.config.node_name.as_str(), value.into()).await {
            Ok(_) => {
                self.view.write().unwrap_or_else(|p| p.into_inner()).insert(record.name.clone(), record);
            }
            Err(e) => tracing::warn!("cluster: putting this node's record: {e}"),
        }
    }
}

pub(crate) async fn start(cluster: &Arc<Cluster>) -> Result<(), ClusterError> {
    let mut watch = cluster.nodes.watch_with_history(">").await.map_err(|e| js_error("watching the nodes", e))?;
    cluster.put_own().await;
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        while let Some(entry) = watch.next().await {
            let Some(cluster) = weak.upgrade() else { return };
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!("cluster: watching the nodes: {e}");
                    continue;
                }
            };
            let mut view = cluster.view.write().unwrap_or_else(|p| p.into_inner());
            let before = view.get(&entry.key).map(|n| (n.functions.clone(), n.labels.clone(), n.runtimes.clone()));
            match entry.operation {
                async_nats::jetstream::kv::Operation::Put => match serde_json::from_slice::<NodeInfo>(&entry.value) {
                    Ok(info) => {
                        view.insert(entry.key.clone(), info);
                    }
                    Err(e) => tracing::warn!("cluster: node record {} is unreadable: {e}", entry.key),
                },
                _ => {
                    view.remove(&entry.key);
                }
            }
            let after = view.get(&entry.key).map(|n| (n.functions.clone(), n.labels.clone(), n.runtimes.clone()));
            drop(view);
            // A node that came, went or changed what it can run may move placements.
            if before.as_ref().map(|b| (&b.1, &b.2)) != after.as_ref().map(|a| (&a.1, &a.2)) {
                cluster.reconcile.notify_one();
            }
        }
    });
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(HEARTBEAT);
        let mut alive: Vec<String> = Vec::new();
        let mut ticks: u64 = 0;
        loop {
            let Some(cluster) = weak.upgrade() else { return };
            tokio::select! {
                _ = every.tick() => {}
                _ = cluster.changed.notified() => {}
            }
            cluster.put_own().await;
            ticks += 1;
            // The watch can miss records while NATS elects a new leader:
            // the bucket is read whole now and then too.
            if ticks.is_multiple_of(3) {
                cluster.reload_nodes().await;
            }
            // A node that stopped being heard from moves placements too.
            let now = now_ms();
            let live: Vec<String> = cluster
                .view
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .filter(|n| n.alive(now))
                .map(|n| n.name.clone())
                .collect();
            if live != alive {
                alive = live;
                cluster.reconcile.notify_one();
            }
            drop(cluster);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    Ok(())
}

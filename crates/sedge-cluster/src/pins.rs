//! Scale pins that hold on every node running the function: `sedge scale
//! NAME --replicas N` (N > 0) on any node puts N in the `sedge-pins`
//! bucket, and each node holds every function it runs at its pin — also a
//! node that starts running it later (placement moved, a restart) and each
//! new version. `--replicas 0` deletes the pin (the function scales by
//! load again), as on a single node. The nodes running the function are
//! asked at once too (`inquiry.rs`), so the answer says which took it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use sedge_gateway::ApiError;
use sedge_runtime::Pool;

use crate::{js_error, Cluster, ClusterError, HEARTBEAT};

pub(crate) const BUCKET: &str = "sedge-pins";

pub(crate) struct Pins {
    store: kv::Store,
    /// The bucket as last seen: function → workers to hold.
    wanted: Mutex<BTreeMap<String, u32>>,
    /// What this node holds: function → (the pool pinned, at how many).
    applied: Mutex<BTreeMap<String, (Weak<Pool>, u32)>>,
}

impl Cluster {
    /// Puts (or, at 0, deletes) the cluster's pin of `name`.
    pub(crate) async fn set_pin(&self, name: &str, replicas: u32) -> Result<(), ApiError> {
        let pins = self.pins.get().ok_or_else(|| ApiError::internal("cluster", "the node has not joined yet"))?;
        let stored = if replicas == 0 {
            pins.store.delete(name).await.map_err(|e| e.to_string())
        } else {
            pins.store.put(name, replicas.to_string().into()).await.map(|_| ()).map_err(|e| e.to_string())
        };
        stored.map_err(|e| {
            ApiError::new(
                sedge_gateway::cluster::StatusCode::SERVICE_UNAVAILABLE,
                format!("storing the pin of {name} in the cluster: {e}"),
            )
        })?;
        let mut wanted = pins.wanted.lock().unwrap_or_else(|p| p.into_inner());
        match replicas {
            0 => wanted.remove(name),
            n => wanted.insert(name.to_owned(), n),
        };
        Ok(())
    }

    /// Holds each function running here at its pin, once per pool (a new
    /// version is a new pool).
    fn apply_pins(&self) {
        let (Some(pins), Some(node)) = (self.pins.get(), self.node()) else { return };
        let wanted = pins.wanted.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut applied = pins.applied.lock().unwrap_or_else(|p| p.into_inner());
        // A pin deleted (scale to 0) while this node did not hear the
        // question: back to scaling by load here too.
        applied.retain(|name, (pinned, _)| {
            let keep = wanted.contains_key(name);
            if let (false, Some(pool)) = (keep, pinned.upgrade()) {
                pool.set_replicas(0);
            }
            keep
        });
        for (name, n) in wanted {
            let Some(pool) = node.runtime.get(&name) else { continue };
            let held = applied.get(&name).is_some_and(|(p, at)| *at == n && Weak::ptr_eq(p, &Arc::downgrade(&pool)));
            if held {
                continue;
            }
            // A version whose [scale] max is below the pin holds its max.
            pool.set_replicas(n.min(pool.spec().scale.max));
            applied.insert(name, (Arc::downgrade(&pool), n));
        }
    }
}

/// The pin an entry of the bucket holds: none when deleted, zero or not
/// a number (a record written by hand, say).
fn pin_of(operation: kv::Operation, value: &[u8]) -> Option<u32> {
    let n = std::str::from_utf8(value).ok()?.trim().parse::<u32>().ok()?;
    (operation == kv::Operation::Put && n > 0).then_some(n)
}

pub(crate) async fn start(cluster: &Arc<Cluster>) -> Result<(), ClusterError> {
    let store = crate::open_kv(
        &cluster.js,
        kv::Config {
            bucket: BUCKET.into(),
            num_replicas: cluster.config.replicas.max(1),
            history: 1,
            ..Default::default()
        },
    )
    .await?;
    let mut watch = store.watch_with_history(">").await.map_err(|e| js_error("watching the pins", e))?;
    let pins = Pins { store, wanted: Mutex::default(), applied: Mutex::default() };
    let _ = cluster.pins.set(pins);
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        while let Some(entry) = watch.next().await {
            let Some(cluster) = weak.upgrade() else { return };
            let Some(pins) = cluster.pins.get() else { return };
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!("cluster: watching the pins: {e}");
                    continue;
                }
            };
            let mut wanted = pins.wanted.lock().unwrap_or_else(|p| p.into_inner());
            match pin_of(entry.operation, &entry.value) {
                Some(n) => wanted.insert(entry.key, n),
                None => wanted.remove(&entry.key),
            };
            drop(wanted);
            cluster.apply_pins();
        }
    });
    // A function that starts running here (deployed, a new version) takes
    // its pin within a heartbeat.
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(HEARTBEAT);
        loop {
            every.tick().await;
            let Some(cluster) = weak.upgrade() else { return };
            cluster.apply_pins();
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_positive_number_put_is_a_pin() {
        assert_eq!(pin_of(kv::Operation::Put, b"2"), Some(2));
        assert_eq!(pin_of(kv::Operation::Put, b"0"), None);
        assert_eq!(pin_of(kv::Operation::Put, b"two"), None);
        assert_eq!(pin_of(kv::Operation::Delete, b"2"), None);
        assert_eq!(pin_of(kv::Operation::Purge, b""), None);
    }
}

//! Scale pins that hold on every node running the function: `sedge scale
//! NAME --replicas N` (N > 0) on any node puts N in the `sedge-pins`
//! bucket, and each node holds every function it runs at its pin — also a
//! node that starts running it later (placement moved, a restart) and each
//! new version. `--replicas 0` deletes the pin (the function scales by
//! load again), as on a single node. The nodes running the function are
//! asked at once too (`inquiry.rs`), so the answer says which took it.
//!
//! Each node follows the bucket's changes, and reads it whole now and then,
//! since a watch may miss changes while NATS elects a leader; what it learns
//! either way is taken in the bucket's order (by revision), so an older read
//! never undoes a newer change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use sedge_gateway::ApiError;
use sedge_runtime::Pool;

use crate::{js_error, Cluster, ClusterError, HEARTBEAT};

pub(crate) const BUCKET: &str = "sedge-pins";

/// How often the bucket is read whole, besides being watched.
const RELOAD_EVERY: Duration = Duration::from_secs(10);

pub(crate) struct Pins {
    store: kv::Store,
    /// The bucket as last seen: function → the entry's revision and the
    /// workers to hold (none once the pin was deleted).
    wanted: Mutex<BTreeMap<String, (u64, Option<u32>)>>,
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
        // What this node holds follows from the watch, in the bucket's
        // order: the nodes running it are asked to scale at once besides.
        stored.map_err(|e| {
            ApiError::new(
                sedge_gateway::cluster::StatusCode::SERVICE_UNAVAILABLE,
                format!("storing the pin of {name} in the cluster: {e}"),
            )
        })
    }

    /// Reads the whole bucket, and the entries of the pins it no longer
    /// lists (their deletion's revision), into what this node wants.
    async fn reload_pins(&self) -> Result<(), String> {
        let Some(pins) = self.pins.get() else { return Ok(()) };
        let mut names: BTreeSet<String> =
            pins.wanted.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        let mut keys = pins.store.keys().await.map_err(|e| e.to_string())?;
        while let Some(key) = keys.next().await {
            names.insert(key.map_err(|e| e.to_string())?);
        }
        for name in names {
            if let Some(entry) = pins.store.entry(name.as_str()).await.map_err(|e| e.to_string())? {
                pins.learn(name, entry.revision, pin_of(entry.operation, &entry.value));
            }
        }
        Ok(())
    }

    /// Holds each function running here at its pin, once per pool (a new
    /// version is a new pool).
    fn apply_pins(&self) {
        let (Some(pins), Some(node)) = (self.pins.get(), self.node()) else { return };
        let wanted: BTreeMap<String, u32> = pins
            .wanted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(name, (_, pin))| pin.map(|n| (name.clone(), n)))
            .collect();
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

impl Pins {
    /// Takes what the bucket held for `name` at `revision`, unless a later
    /// revision is already known.
    fn learn(&self, name: String, revision: u64, pin: Option<u32>) {
        learn(&mut self.wanted.lock().unwrap_or_else(|p| p.into_inner()), name, revision, pin);
    }
}

fn learn(wanted: &mut BTreeMap<String, (u64, Option<u32>)>, name: String, revision: u64, pin: Option<u32>) {
    if wanted.get(&name).is_none_or(|(known, _)| *known < revision) {
        wanted.insert(name, (revision, pin));
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
        while let Some(entry) = crate::next_entry(&mut watch, "the pins").await {
            let Some(cluster) = weak.upgrade() else { return };
            let Some(pins) = cluster.pins.get() else { return };
            pins.learn(entry.key, entry.revision, pin_of(entry.operation, &entry.value));
            cluster.apply_pins();
        }
    });
    // A function that starts running here (deployed, a new version) takes
    // its pin within a heartbeat.
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(HEARTBEAT);
        let mut last_reload = tokio::time::Instant::now();
        loop {
            every.tick().await;
            let Some(cluster) = weak.upgrade() else { return };
            if last_reload.elapsed() >= RELOAD_EVERY {
                if let Err(e) = cluster.reload_pins().await {
                    tracing::warn!("cluster: reading the pins: {e}");
                }
                last_reload = tokio::time::Instant::now();
            }
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

    #[test]
    fn what_is_learnt_late_never_undoes_a_later_revision() {
        let mut wanted = BTreeMap::new();
        learn(&mut wanted, "f".into(), 5, Some(3));
        // A whole read begun before revision 5 answers revision 4 after it.
        learn(&mut wanted, "f".into(), 4, Some(2));
        assert_eq!(wanted["f"], (5, Some(3)));
        learn(&mut wanted, "f".into(), 6, None);
        learn(&mut wanted, "f".into(), 5, Some(3));
        assert_eq!(wanted["f"], (6, None), "a deletion stays until a later put");
        learn(&mut wanted, "f".into(), 7, Some(4));
        assert_eq!(wanted["f"], (7, Some(4)));
    }
}

//! The registry bucket and the bundles: publishing a deploy, watching the
//! records, and running here what placement gives this node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sedge_core::{FunctionName, FunctionSpec};
use sedge_gateway::cluster::StatusCode;
use sedge_gateway::{ApiError, Node};
use sedge_store::TempPath;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::membership::now_ms;
use crate::placement::{self, Candidate};
use crate::{js_error, Cluster, ClusterError};

/// A function's record in the registry bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub name: String,
    /// `sha256:<hex>` of the bundle, its name in the bundle store.
    pub digest: String,
    /// The bundle's sedge.toml, so every node knows the spec without the bundle.
    pub manifest: String,
    pub deployed_by: String,
    pub deployed_at_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub record: Record,
    pub spec: FunctionSpec,
}

impl Entry {
    pub(crate) fn parse(value: &[u8]) -> Result<Self, String> {
        let record: Record = serde_json::from_slice(value).map_err(|e| e.to_string())?;
        let spec = FunctionSpec::parse("sedge.toml", &record.manifest).map_err(|e| e.to_string())?;
        Ok(Self { record, spec })
    }
}

/// A placed version this node refused (a failed install, say) is tried
/// again after this, or at its next version: a failure of the node's own
/// (memory, a missing interpreter since fixed) may have passed.
const RETRY_REFUSED: Duration = Duration::from_secs(600);

/// How long a call waits for what this node's copies lack (a function's
/// record from the registry's leader, its invoke token) before it is
/// answered without it (404, 401): as long as a JetStream request is given.
pub(crate) const LOOKUP_WITHIN: Duration = Duration::from_secs(5);

/// Reads of the registry's leader in flight at once for names this node's
/// copy lacks; further lookups wait for one of them within the same bound,
/// so a flood of unknown names costs the leader no more than these.
pub(crate) const LEADER_READS: usize = 4;

/// How often the registry is read whole, besides being watched.
const RELOAD_EVERY: Duration = Duration::from_secs(5);

impl Cluster {
    pub(crate) fn spec_of(&self, name: &str) -> Option<FunctionSpec> {
        self.registry.read().unwrap_or_else(|p| p.into_inner()).get(name).map(|e| e.spec.clone())
    }

    /// [`Self::spec_of`], or when the cache does not have it, the record
    /// read from the registry stream's leader (not a replica, which may be
    /// behind), then kept in the cache and reconciled as the watch would.
    pub(crate) async fn lookup_spec(&self, name: &str) -> Option<FunctionSpec> {
        if let Some(spec) = self.spec_of(name) {
            return Some(spec);
        }
        // Only a function's name makes a subject naming one record: `>` or
        // `*` from a caller's path would read any function's.
        FunctionName::parse(name).ok()?;
        // One deadline for the wait for a read's place and the read itself.
        let deadline = tokio::time::Instant::now() + LOOKUP_WITHIN;
        let Ok(Ok(_reading)) = tokio::time::timeout_at(deadline, self.record_reads.acquire()).await else {
            tracing::debug!("cluster: {name}: no read of the registry's leader free within {LOOKUP_WITHIN:?}");
            return None;
        };
        // Callers of one lagging function queue here together: the first
        // read fills the copy for the others.
        if let Some(spec) = self.spec_of(name) {
            return Some(spec);
        }
        let subject = format!("{}{name}", self.functions.prefix);
        // Bounded as a whole: the client's own timeout starts only once its
        // connection takes the request, and a 404 must not wait on NATS.
        let read = self.functions.stream.get_last_raw_message_by_subject(&subject);
        let Ok(read) = tokio::time::timeout_at(deadline, read).await else {
            tracing::debug!("cluster: reading the record of {name}: no answer within {LOOKUP_WITHIN:?}");
            return None;
        };
        let message = match read {
            Ok(m) => m,
            Err(e) => {
                if e.kind() != async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound {
                    tracing::debug!("cluster: reading the record of {name}: {e}");
                }
                return None;
            }
        };
        // A removal leaves a marker with no value: not a function.
        let entry = Entry::parse(&message.payload).ok()?;
        let spec = entry.spec.clone();
        self.registry.write().unwrap_or_else(|p| p.into_inner()).entry(name.to_owned()).or_insert(entry);
        self.reconcile.notify_one();
        Some(spec)
    }

    pub(crate) fn digest_of(&self, _node: &Node, name: &str) -> Option<String> {
        self.local.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// The nodes `spec` is placed on among `nodes`.
    fn placed(spec: &FunctionSpec, nodes: &[crate::NodeInfo]) -> Vec<String> {
        let candidates: Vec<Candidate<'_>> =
            nodes.iter().map(|n| Candidate { name: &n.name, labels: &n.labels, runtimes: &n.runtimes }).collect();
        placement::choose(spec.name.as_str(), spec.runtime.as_str(), &spec.placement, &candidates)
    }

    /// A deploy received by this node: checked here as a local deploy
    /// would be, the bundle stored, then the record put.
    pub(crate) async fn publish(
        &self,
        name: FunctionName,
        archive: TempPath,
        wait: bool,
    ) -> Result<(StatusCode, Value), ApiError> {
        let node = self.node().ok_or_else(|| ApiError::internal("cluster", "the node is stopping"))?;
        let store = node.store.clone();
        let staged = {
            let _folders = node.locks.folders().await;
            let n = name.clone();
            tokio::task::spawn_blocking(move || store.stage(&n, archive))
                .await
                .map_err(|e| ApiError::internal("store task", e))?
                .map_err(ApiError::from)?
        };
        let spec = staged.record.spec.clone();
        let digest = staged.record.digest.clone();
        let manifest = match self.check_secrets(&spec).await.and_then(|()| crate::calls::kept_long_enough(&spec)) {
            Ok(()) => std::fs::read_to_string(staged.record.dir.join("sedge.toml"))
                .map_err(|e| ApiError::internal("reading the staged manifest", e)),
            Err(e) => Err(e),
        };
        let upload = match manifest {
            Ok(m) => self.store_bundle(&digest, staged.archive()).await.map(|()| m),
            Err(e) => Err(e),
        };
        {
            let _folders = node.locks.folders().await;
            let store = node.store.clone();
            let _ = tokio::task::spawn_blocking(move || store.discard(staged)).await;
        }
        let manifest = upload?;
        let nodes = self.live_nodes();
        let chosen = Self::placed(&spec, &nodes);
        if chosen.is_empty() {
            let labels = if spec.placement.labels.is_empty() {
                String::new()
            } else {
                format!(" with labels [{}]", spec.placement.labels.join(", "))
            };
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "no node of the cluster{labels} can run {name} (runtime {}): `sedge nodes` lists each node's labels",
                    spec.runtime.as_str()
                ),
            ));
        }
        let previous =
            self.functions.get(name.as_str()).await.map_err(|e| ApiError::internal("reading the registry", e))?;
        let previous = previous.and_then(|v| Entry::parse(&v).ok());
        let existed = previous.is_some();
        if previous.as_ref().is_some_and(|p| p.record.digest == digest) {
            // Already published (an earlier try may have stopped short of
            // its answer): with `wait`, still answered once it runs.
            if wait {
                self.wait_serving(&name, &digest).await?;
            }
            return Ok((StatusCode::OK, answer(&name, &digest, &chosen, false, true)));
        }
        let record = Record {
            name: name.to_string(),
            digest: digest.clone(),
            manifest,
            deployed_by: self.config.node_name.clone(),
            deployed_at_ms: now_ms(),
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        self.functions
            .put(name.as_str(), value.into())
            .await
            .map_err(|e| ApiError::internal("writing the registry", e))?;
        if !wait {
            if let Some(old) = previous {
                self.forget_bundle(name.as_str(), &old.record.digest).await;
            }
            return Ok((StatusCode::ACCEPTED, answer(&name, &digest, &chosen, true, false)));
        }
        if let Err(e) = self.wait_serving(&name, &digest).await {
            if e.status != StatusCode::UNPROCESSABLE_ENTITY {
                return Err(e);
            }
            // A node refused it: the version before comes back everywhere,
            // as a refused deploy leaves a single node as it was.
            let restored = match &previous {
                Some(p) => {
                    let value = serde_json::to_vec(&p.record).unwrap_or_default();
                    self.functions.put(name.as_str(), value.into()).await.map(|_| ()).map_err(|e| e.to_string())
                }
                None => self.functions.delete(name.as_str()).await.map_err(|e| e.to_string()),
            };
            let what = if previous.is_some() { "the previous version was put back" } else { "it was not deployed" };
            return Err(match restored {
                Ok(()) => ApiError::new(e.status, format!("{}; {what}", e.message)),
                Err(why) => {
                    ApiError::new(e.status, format!("{}; putting the previous version back failed: {why}", e.message))
                }
            });
        }
        if let Some(old) = previous {
            self.forget_bundle(name.as_str(), &old.record.digest).await;
        }
        let chosen = Self::placed(&spec, &self.live_nodes());
        let code = if existed { StatusCode::OK } else { StatusCode::CREATED };
        Ok((code, answer(&name, &digest, &chosen, false, false)))
    }

    /// Waits until every node `name` is placed on serves `digest`, or one
    /// of them refused it (its reason is the answer).
    async fn wait_serving(&self, name: &FunctionName, digest: &str) -> Result<(), ApiError> {
        let give_up = Instant::now() + Duration::from_secs(15 * 60);
        loop {
            let nodes = self.live_nodes();
            let spec = self.spec_of(name.as_str());
            if let Some(spec) = spec.filter(|s| s.name == *name) {
                let chosen = Self::placed(&spec, &nodes);
                let mut all = !chosen.is_empty();
                for n in nodes.iter().filter(|n| chosen.contains(&n.name)) {
                    if let Some((d, why)) = n.refused.get(name.as_str()) {
                        if d == digest {
                            return Err(ApiError::new(
                                StatusCode::UNPROCESSABLE_ENTITY,
                                format!("node {}: {why}", n.name),
                            ));
                        }
                    }
                    all &= n.serving.get(name.as_str()).is_some_and(|d| d == digest);
                }
                if all && self.registry_has(name.as_str(), digest) {
                    return Ok(());
                }
            }
            if Instant::now() > give_up {
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("{name} was not running on every node it is placed on within 15 minutes"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Reads the whole registry from its bucket into the cache.
    async fn reload_registry(&self) -> Result<(), ClusterError> {
        let mut loaded = BTreeMap::new();
        let mut keys = self.functions.keys().await.map_err(|e| js_error("listing the registry", e))?;
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| js_error("listing the registry", e))?;
            if let Some(v) = self.functions.get(key.as_str()).await.map_err(|e| js_error("reading the registry", e))? {
                match Entry::parse(&v) {
                    Ok(e) => {
                        loaded.insert(key, e);
                    }
                    Err(why) => tracing::warn!("cluster: registry record {key} is unreadable: {why}"),
                }
            }
        }
        let changed = {
            let mut registry = self.registry.write().unwrap_or_else(|p| p.into_inner());
            let before: Vec<(&String, &str)> = registry.iter().map(|(k, e)| (k, e.record.digest.as_str())).collect();
            let after: Vec<(&String, &str)> = loaded.iter().map(|(k, e)| (k, e.record.digest.as_str())).collect();
            let changed = before != after;
            if changed {
                *registry = loaded;
            }
            changed
        };
        if changed {
            self.reconcile.notify_one();
        }
        Ok(())
    }

    fn registry_has(&self, name: &str, digest: &str) -> bool {
        self.registry.read().unwrap_or_else(|p| p.into_inner()).get(name).is_some_and(|e| e.record.digest == digest)
    }

    async fn store_bundle(&self, digest: &str, archive: &std::path::Path) -> Result<(), ApiError> {
        // A bundle deleted when its function was removed or replaced is
        // stored again: deployed again, its nodes fetch it.
        if crate::holds(&self.bundles, digest).await {
            return Ok(());
        }
        let mut file =
            tokio::fs::File::open(archive).await.map_err(|e| ApiError::internal("reading the uploaded bundle", e))?;
        self.bundles
            .put(digest, &mut file)
            .await
            .map_err(|e| ApiError::internal("storing the bundle in the cluster", e))?;
        Ok(())
    }

    /// Deletes a replaced bundle no record names any more.
    async fn forget_bundle(&self, name: &str, digest: &str) {
        let used = self
            .registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|e| e.record.name != name && e.record.digest == digest);
        if !used {
            if let Err(e) = self.bundles.delete(digest).await {
                tracing::debug!("cluster: deleting bundle {digest}: {e}");
            }
        }
    }

    pub(crate) async fn unpublish(&self, name: FunctionName) -> Result<bool, ApiError> {
        let previous =
            self.functions.get(name.as_str()).await.map_err(|e| ApiError::internal("reading the registry", e))?;
        let Some(previous) = previous else { return Ok(false) };
        self.functions.delete(name.as_str()).await.map_err(|e| ApiError::internal("writing the registry", e))?;
        if let Ok(entry) = Entry::parse(&previous) {
            self.forget_bundle(name.as_str(), &entry.record.digest).await;
        }
        self.forget_token(name.as_str()).await;
        // Answered once no node serves it, so a call right after is a 404.
        let give_up = Instant::now() + Duration::from_secs(10);
        while Instant::now() < give_up
            && self.live_nodes().iter().any(|n| n.functions.iter().any(|f| f == name.as_str()))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(true)
    }

    /// Brings this node in line with the registry: deploys what is placed
    /// here and not served (or served at another version), removes what
    /// is served and no longer placed here.
    async fn reconcile_once(self: &Arc<Self>, node: &Arc<Node>) {
        let entries: Vec<Entry> = self.registry.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let nodes = self.live_nodes();
        let me = self.config.node_name.clone();
        let mut wanted = BTreeMap::new();
        for e in &entries {
            if Self::placed(&e.spec, &nodes).contains(&me) {
                wanted.insert(e.record.name.clone(), e.clone());
            }
        }
        let local: BTreeMap<String, String> = self.local.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (name, digest) in &local {
            if !wanted.contains_key(name) {
                let Ok(fname) = FunctionName::parse(name) else { continue };
                tracing::info!("cluster: {name} is no longer placed on this node; removing it");
                if let Err(e) = sedge_gateway::remove(node, &fname).await {
                    tracing::warn!("cluster: removing {name}: {}", e.message);
                }
                self.local.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
                self.refused.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
                let _ = digest;
                self.changed.notify_one();
            }
        }
        for (name, e) in wanted {
            if local.get(&name) == Some(&e.record.digest) {
                continue;
            }
            let tried = self.refused.lock().unwrap_or_else(|p| p.into_inner()).get(&name).map(|r| r.0.clone());
            let lately = self
                .refused_at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&name)
                .is_some_and(|at| at.elapsed() < RETRY_REFUSED);
            if tried.as_deref() == Some(e.record.digest.as_str()) && lately {
                continue;
            }
            let started = Instant::now();
            match self.deploy_here(node, &e).await {
                Ok(()) => {
                    tracing::info!(
                        "cluster: {name} ({}) runs here, deployed in {} ms",
                        e.record.digest,
                        started.elapsed().as_millis()
                    );
                    self.local.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), e.record.digest.clone());
                    self.refused.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
                }
                Err(Failed::Fetch(why)) => {
                    // The cluster's, not the bundle's: tried again shortly.
                    tracing::warn!("cluster: {name} ({}): {why}; trying again", e.record.digest);
                    let cluster = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        cluster.reconcile.notify_one();
                    });
                }
                Err(Failed::Deploy(why)) => {
                    tracing::warn!("cluster: {name} ({}) is placed here but does not run: {why}", e.record.digest);
                    self.refused
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(name.clone(), (e.record.digest.clone(), why));
                    self.refused_at.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), Instant::now());
                }
            }
            self.changed.notify_one();
        }
    }

    /// Fetches the bundle by digest and deploys it through the node's own path.
    async fn deploy_here(&self, node: &Arc<Node>, e: &Entry) -> Result<(), Failed> {
        let name = FunctionName::parse(&e.record.name).map_err(|e| Failed::Deploy(e.to_string()))?;
        self.fetch_secrets(&e.spec.secrets)
            .await
            .map_err(|err| Failed::Fetch(format!("fetching the secrets it names: {}", err.message)))?;
        let fetch = |err: String| Failed::Fetch(format!("fetching bundle {} from the cluster: {err}", e.record.digest));
        let mut object = self.bundles.get(e.record.digest.as_str()).await.map_err(|err| fetch(err.to_string()))?;
        let store = node.store.clone();
        let file = tokio::task::spawn_blocking(move || store.upload_file())
            .await
            .map_err(|e| Failed::Deploy(e.to_string()))?
            .map_err(|e| Failed::Deploy(e.to_string()))?;
        let path = file.into_temp_path();
        let mut out =
            tokio::fs::File::create(&path).await.map_err(|e| Failed::Deploy(format!("writing the bundle: {e}")))?;
        tokio::io::copy(&mut object, &mut out).await.map_err(|err| fetch(err.to_string()))?;
        tokio::io::AsyncWriteExt::flush(&mut out)
            .await
            .map_err(|e| Failed::Deploy(format!("writing the bundle: {e}")))?;
        drop(out);
        sedge_gateway::deploy_file(node, name, path, true, None)
            .await
            .map(|_| ())
            .map_err(|e| Failed::Deploy(e.message))
    }
}

/// Why a placed version does not run here.
enum Failed {
    /// The bundle could not be had from the cluster (now).
    Fetch(String),
    /// The node refused it, as a local deploy would have.
    Deploy(String),
}

fn answer(name: &FunctionName, digest: &str, nodes: &[String], pending: bool, unchanged: bool) -> Value {
    json!({
        "name": name.as_str(),
        "image": digest,
        "pending": pending,
        "unchanged": unchanged,
        "nodes": nodes,
    })
}

pub(crate) async fn start(cluster: &Arc<Cluster>) -> Result<(), ClusterError> {
    // What this node serves from its own store (restored before joining)
    // is what it already has; the registry decides what stays.
    if let Some(node) = cluster.node() {
        let store = node.store.clone();
        let records = tokio::task::spawn_blocking(move || store.list())
            .await
            .map_err(|e| js_error("reading the local store", e))?
            .map_err(|e| js_error("reading the local store", e))?;
        let mut local = cluster.local.lock().unwrap_or_else(|p| p.into_inner());
        for r in records {
            local.insert(r.spec.name.to_string(), r.digest);
        }
    }
    let mut watch =
        cluster.functions.watch_with_history(">").await.map_err(|e| js_error("watching the registry", e))?;
    // The registry as it is, before anything is removed for not being in it.
    cluster.reload_registry().await?;
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        while let Some(entry) = watch.next().await {
            let Some(cluster) = weak.upgrade() else { return };
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!("cluster: watching the registry: {e}");
                    continue;
                }
            };
            {
                let mut registry = cluster.registry.write().unwrap_or_else(|p| p.into_inner());
                match entry.operation {
                    async_nats::jetstream::kv::Operation::Put => match Entry::parse(&entry.value) {
                        Ok(e) => {
                            registry.insert(entry.key.clone(), e);
                        }
                        Err(why) => tracing::warn!("cluster: registry record {} is unreadable: {why}", entry.key),
                    },
                    _ => {
                        registry.remove(&entry.key);
                    }
                }
            }
            cluster.reconcile.notify_one();
        }
    });
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        let mut last_reload = Instant::now();
        loop {
            let Some(cluster) = weak.upgrade() else { return };
            let Some(node) = cluster.node() else { return };
            // The watch can miss changes while NATS elects a new leader
            // (a server lost): the registry is read whole now and then too.
            if last_reload.elapsed() >= RELOAD_EVERY {
                if let Err(e) = cluster.reload_registry().await {
                    tracing::warn!("cluster: reading the registry: {e}");
                }
                last_reload = Instant::now();
            }
            cluster.reconcile_once(&node).await;
            drop(node);
            let notified = {
                let c = cluster.clone();
                async move {
                    tokio::select! {
                        _ = c.reconcile.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
            };
            drop(cluster);
            notified.await;
        }
    });
    Ok(())
}

//! Several sedge nodes as one platform over NATS JetStream
//! (`sedge serve --cluster URL`): no control plane, only buckets every
//! node reads and writes.
//!
//! - Membership: a key-value bucket (`sedge-nodes`) where each node puts
//!   its record (labels, address, runtimes it can run, functions it
//!   serves, load) every [`HEARTBEAT`] and at once after a change; a node
//!   not heard from for three heartbeats is gone (`membership.rs`).
//! - Registry: a key-value bucket (`sedge-functions`) of function records
//!   (manifest, bundle digest) and the bundles themselves in the object
//!   store (`sedge-bundles`), by digest. A deploy on any node writes the
//!   bundle, then the record. Every node watches the registry and deploys
//!   or removes locally, through the gateway's own deploy path, what
//!   [`placement`] gives it: the local SQLite store is the node's cache
//!   (`registry.rs`).
//! - Calls: a node without the function, or without room for it, sends it
//!   over NATS request-reply (`forward.rs`, `wire.rs`); so do functions'
//!   calls of models the node does not run (`models.rs`).
//! - Secrets and invoke tokens: a key-value bucket (`sedge-secrets`) every
//!   node copies into its own secret store, in the bucket's order
//!   (`secrets.rs`).
//! - Views: what the other nodes run (replicas, counters, log lines) and
//!   scale pins, asked of each node on its own subject (`inquiry.rs`), so
//!   `sedge ls`, `describe`, `logs` and `scale` speak for the cluster;
//!   scale pins kept in a bucket every node holds its functions to
//!   (`pins.rs`).
//!
//! Neighbours: `sedge-gateway` (whose [`sedge_gateway::cluster::Cluster`]
//! this implements, and whose deploy and remove it calls), `sedge-core`
//! (specs, placement), `sedge-store` (the local cache).

mod calls;
pub mod creds;
mod forward;
mod inquiry;
mod membership;
mod models;
mod pins;
pub mod placement;
mod registry;
mod secrets;
pub mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store};
use sedge_gateway::Node;

pub use membership::NodeInfo;

/// How often a node puts its membership record.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A node not heard from for this long is taken as gone.
pub const GONE_AFTER: Duration = Duration::from_secs(6);
/// How long a node waits at start for JetStream to take its buckets.
const JETSTREAM_WAIT: Duration = Duration::from_secs(30);

const NODES_BUCKET: &str = "sedge-nodes";
const FUNCTIONS_BUCKET: &str = "sedge-functions";
const AUTH_BUCKET: &str = "sedge-auth";
const BUNDLES_BUCKET: &str = "sedge-bundles";
const BODIES_BUCKET: &str = "sedge-bodies";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Creds(#[from] creds::CredsError),
    #[error("cannot reach NATS at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("NATS JetStream {what}: {message} (is the server started with -js?)")]
    JetStream { what: String, message: String },
    #[error("node name {0:?}: a name is 1 to 63 letters, digits, '-' or '_'")]
    BadName(String),
}

fn js_error(what: &str, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::JetStream { what: what.to_owned(), message: e.to_string() }
}

/// Whether object store `store` holds `name`. A deleted object keeps its
/// info, marked deleted, so the info alone does not say it is there.
async fn holds(store: &object_store::ObjectStore, name: &str) -> bool {
    store.info(name).await.is_ok_and(|info| !info.deleted)
}

/// The next entry of a bucket's watch; an error the watch gives (it goes
/// on after one) is logged and skipped. `None` once the watch has ended.
async fn next_entry(watch: &mut kv::Watch, what: &str) -> Option<kv::Entry> {
    use futures_util::StreamExt;
    loop {
        match watch.next().await? {
            Ok(entry) => return Some(entry),
            Err(e) => tracing::warn!("cluster: watching {what}: {e}"),
        }
    }
}

/// How this node joins the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server URLs, comma-separated as NATS clients take them.
    pub url: String,
    pub node_name: String,
    pub labels: Vec<String>,
    pub creds: Option<PathBuf>,
    /// Copies JetStream keeps of each bucket (3 on a 3-server NATS cluster,
    /// so one server lost loses nothing).
    pub replicas: usize,
    /// Runtime kinds this node can run (`python`, `node`, `onnx`, ...).
    pub runtimes: Vec<String>,
}

/// Whether `name` is a valid node name: it is part of NATS subjects.
pub fn valid_node_name(name: &str) -> bool {
    (1..=63).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// Counters of the link for `/metrics`.
#[derive(Default)]
struct LinkFigures {
    connected: AtomicBool,
    disconnects: AtomicU64,
    forwarded_ok: AtomicU64,
    forwarded_busy: AtomicU64,
    forwarded_failed: AtomicU64,
    served_for_others: AtomicU64,
}

pub struct Cluster {
    config: ClusterConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    /// Asynchronous calls' states, results and large bodies.
    calls: calls::CallBuckets,
    nodes: kv::Store,
    functions: kv::Store,
    auth: kv::Store,
    /// Secrets and invoke tokens (`secrets.rs`).
    secrets: kv::Store,
    applied: secrets::Applied,
    bundles: object_store::ObjectStore,
    bodies: object_store::ObjectStore,
    figures: Arc<LinkFigures>,
    /// The other nodes as last heard, by name.
    view: RwLock<BTreeMap<String, NodeInfo>>,
    /// The registry as last read: name → record.
    registry: RwLock<BTreeMap<String, registry::Entry>>,
    /// Placed versions this node could not run: name → (digest, why).
    refused: Mutex<BTreeMap<String, (String, String)>>,
    refused_at: Mutex<BTreeMap<String, std::time::Instant>>,
    /// What this node serves as the registry placed it: name → digest.
    local: Mutex<BTreeMap<String, String>>,
    /// Wakes the heartbeat (a change to report) and the reconciler.
    changed: tokio::sync::Notify,
    reconcile: tokio::sync::Notify,
    /// Room for reads of records this node's registry copy lacks: a flood of
    /// unknown names (the invoke routes need no login) must not become a
    /// flood of requests on the registry stream's leader.
    record_reads: tokio::sync::Semaphore,
    node: OnceLock<Weak<Node>>,
    address: OnceLock<String>,
    /// Forwarded calls running here, by id, so a cancel can end them.
    running: Mutex<std::collections::HashMap<String, tokio::sync::oneshot::Sender<()>>>,
    /// The queue subscription of each function served here.
    subscriptions: tokio::sync::Mutex<BTreeMap<String, tokio::task::JoinHandle<()>>>,
    /// Set once the node has left: its record is not put again.
    leaving: AtomicBool,
    /// Scale pins of the cluster, once joined.
    pins: OnceLock<pins::Pins>,
}

impl Cluster {
    /// Connects to NATS and opens (or creates) the buckets. Reconnects on
    /// its own after a lost connection, for as long as the node runs.
    pub async fn connect(config: ClusterConfig) -> Result<Arc<Self>, ClusterError> {
        if !valid_node_name(&config.node_name) {
            return Err(ClusterError::BadName(config.node_name.clone()));
        }
        let figures = Arc::new(LinkFigures::default());
        let events = figures.clone();
        let mut options = match &config.creds {
            None => async_nats::ConnectOptions::new(),
            Some(path) => match creds::read(path)? {
                creds::Creds::UserPassword { user, password } => {
                    async_nats::ConnectOptions::with_user_and_password(user, password)
                }
                creds::Creds::NkeySeed(seed) => async_nats::ConnectOptions::with_nkey(seed),
                creds::Creds::CredsFile => async_nats::ConnectOptions::new()
                    .credentials_file(path)
                    .await
                    .map_err(|e| ClusterError::Connect { url: config.url.clone(), message: e.to_string() })?,
            },
        };
        options = options
            .name(format!("sedge {}", config.node_name))
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let figures = events.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            figures.connected.store(true, Ordering::Relaxed);
                            tracing::info!("cluster: connected to NATS");
                        }
                        async_nats::Event::Disconnected => {
                            figures.connected.store(false, Ordering::Relaxed);
                            figures.disconnects.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!("cluster: lost the NATS connection; reconnecting");
                        }
                        other => tracing::debug!("cluster: NATS {other}"),
                    }
                }
            });
        let mut servers = Vec::new();
        for url in config.url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let addr: async_nats::ServerAddr = url
                .parse()
                .map_err(|e| ClusterError::Connect { url: url.to_owned(), message: format!("not a NATS URL: {e}") })?;
            servers.push(addr);
        }
        let client = options
            .connect(servers)
            .await
            .map_err(|e| ClusterError::Connect { url: config.url.clone(), message: e.to_string() })?;
        figures.connected.store(true, Ordering::Relaxed);
        let js = jetstream::new(client.clone());
        let replicas = config.replicas.max(1);
        // A NATS cluster starting with the nodes has no JetStream leader for
        // a few seconds: the buckets are tried again until it has.
        let ready_by = std::time::Instant::now() + JETSTREAM_WAIT;
        let (nodes, functions, auth, secrets, bundles, bodies) = loop {
            match open_buckets(&js, replicas).await {
                Ok(b) => break b,
                Err(e) if std::time::Instant::now() < ready_by => {
                    tracing::debug!("cluster: JetStream not ready yet: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let calls = loop {
            match calls::open(&js, replicas).await {
                Ok(c) => break c,
                Err(e) if std::time::Instant::now() < ready_by => {
                    tracing::debug!("cluster: JetStream not ready yet: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        };
        Ok(Arc::new(Self {
            config,
            client,
            js,
            calls,
            nodes,
            functions,
            auth,
            secrets,
            applied: secrets::Applied::default(),
            bundles,
            bodies,
            figures,
            view: RwLock::default(),
            registry: RwLock::default(),
            refused: Mutex::default(),
            refused_at: Mutex::default(),
            local: Mutex::default(),
            changed: tokio::sync::Notify::new(),
            reconcile: tokio::sync::Notify::new(),
            record_reads: tokio::sync::Semaphore::new(registry::LEADER_READS),
            node: OnceLock::new(),
            address: OnceLock::new(),
            running: Mutex::default(),
            subscriptions: tokio::sync::Mutex::default(),
            leaving: AtomicBool::new(false),
            pins: OnceLock::new(),
        }))
    }

    pub fn name(&self) -> &str {
        &self.config.node_name
    }

    /// The cluster's NATS connection, which functions' `nats` triggers share
    /// when the node is given no server of its own (`--nats`).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The admin password every node accepts: the one the cluster has; a
    /// node that brings one explicitly (`supplied`) sets it for all; the
    /// first node to join puts its own.
    pub async fn admin_password(&self, supplied: Option<&str>, own: &str) -> Result<String, ClusterError> {
        const KEY: &str = "admin-password";
        if let Some(p) = supplied {
            self.auth
                .put(KEY, p.as_bytes().to_vec().into())
                .await
                .map_err(|e| js_error("storing the admin password", e))?;
            return Ok(p.to_owned());
        }
        if let Some(v) = self.auth.get(KEY).await.map_err(|e| js_error("reading the admin password", e))? {
            return Ok(String::from_utf8_lossy(&v).into_owned());
        }
        match self.auth.create(KEY, own.as_bytes().to_vec().into()).await {
            Ok(_) => Ok(own.to_owned()),
            // Another node put one first: use it.
            Err(_) => match self.auth.get(KEY).await.map_err(|e| js_error("reading the admin password", e))? {
                Some(v) => Ok(String::from_utf8_lossy(&v).into_owned()),
                None => Err(js_error("storing the admin password", "neither stored nor readable")),
            },
        }
    }

    /// Starts the node's part: its membership record, watching the
    /// registry (deploying what is placed here), serving calls sent to it.
    /// `address` is where clients reach this node over HTTP.
    pub async fn start(self: &Arc<Self>, node: &Arc<Node>, address: String) -> Result<(), ClusterError> {
        let _ = self.node.set(Arc::downgrade(node));
        let _ = self.address.set(address);
        node.runtime.set_remote_models(Arc::new(models::ClusterModels::new(Arc::downgrade(self))));
        membership::start(self).await?;
        secrets::start(self).await?;
        registry::start(self).await?;
        forward::start(self).await?;
        inquiry::start(self).await?;
        pins::start(self).await?;
        Ok(())
    }

    /// Takes this node out of the membership at once (a clean stop).
    pub async fn leave(&self) {
        self.leaving.store(true, Ordering::Relaxed);
        if let Err(e) = self.nodes.delete(self.name()).await {
            tracing::debug!("cluster: removing this node's record: {e}");
        }
        let _ = self.client.flush().await;
    }

    fn node(&self) -> Option<Arc<Node>> {
        self.node.get().and_then(Weak::upgrade)
    }

    fn max_payload(&self) -> usize {
        match self.client.server_info().max_payload {
            0 => 1024 * 1024,
            n => n,
        }
    }
}

type Buckets = (kv::Store, kv::Store, kv::Store, kv::Store, object_store::ObjectStore, object_store::ObjectStore);

async fn open_buckets(js: &jetstream::Context, replicas: usize) -> Result<Buckets, ClusterError> {
    let nodes = open_kv(
        js,
        kv::Config {
            bucket: NODES_BUCKET.into(),
            max_age: GONE_AFTER * 5,
            num_replicas: replicas,
            history: 1,
            ..Default::default()
        },
    )
    .await?;
    let functions = open_kv(
        js,
        kv::Config { bucket: FUNCTIONS_BUCKET.into(), num_replicas: replicas, history: 5, ..Default::default() },
    )
    .await?;
    let auth = open_kv(
        js,
        kv::Config { bucket: AUTH_BUCKET.into(), num_replicas: replicas, history: 1, ..Default::default() },
    )
    .await?;
    let secrets = open_kv(
        js,
        kv::Config { bucket: secrets::BUCKET.into(), num_replicas: replicas, history: 1, ..Default::default() },
    )
    .await?;
    let bundles = open_objects(
        js,
        object_store::Config { bucket: BUNDLES_BUCKET.into(), num_replicas: replicas, ..Default::default() },
    )
    .await?;
    // Bodies are read once, at once; an hour bounds what a receiver
    // that died before deleting one leaves behind.
    let bodies = open_objects(
        js,
        object_store::Config {
            bucket: BODIES_BUCKET.into(),
            num_replicas: replicas,
            max_age: Duration::from_secs(3600),
            ..Default::default()
        },
    )
    .await?;
    Ok((nodes, functions, auth, secrets, bundles, bodies))
}

async fn open_kv(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, ClusterError> {
    let bucket = config.bucket.clone();
    if let Ok(store) = js.get_key_value(bucket.as_str()).await {
        return Ok(store);
    }
    // The bucket's stream as the key-value convention lays it out, made
    // directly: the client's own create_key_value first reads the account
    // in a form nats-server 2.9 does not answer with.
    let stream = jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: config.history.max(1),
        max_age: config.max_age,
        num_replicas: config.num_replicas.max(1),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    let created = js.create_stream(stream).await;
    // Another node may have created it in between: either way it is there now.
    js.get_key_value(bucket.as_str()).await.map_err(|e| match created {
        Err(c) => js_error(&format!("bucket {bucket}"), c),
        Ok(_) => js_error(&format!("bucket {bucket}"), e),
    })
}

/// Opens an object store whose stream answers reads from its leader only.
/// The client's own layout lets any replica answer the read of an
/// object's info (direct get): a follower a little behind then says "not
/// found" for a body or bundle another node has just stored, which is
/// what a node reading what another wrote a moment ago must never see.
async fn open_objects(
    js: &jetstream::Context,
    config: object_store::Config,
) -> Result<object_store::ObjectStore, ClusterError> {
    let bucket = config.bucket.clone();
    let stream_name = format!("OBJ_{bucket}");
    let what = format!("object store {bucket}");
    match js.get_stream(stream_name.as_str()).await {
        Ok(mut stream) => {
            let info = stream.info().await.map_err(|e| js_error(&what, e))?;
            if info.config.allow_direct {
                let mut leader_reads = info.config.clone();
                leader_reads.allow_direct = false;
                js.update_stream(leader_reads).await.map_err(|e| js_error(&what, e))?;
            }
        }
        Err(_) => {
            let stream = jetstream::stream::Config {
                name: stream_name,
                subjects: vec![format!("$O.{bucket}.C.>"), format!("$O.{bucket}.M.>")],
                max_age: config.max_age,
                num_replicas: config.num_replicas.max(1),
                discard: jetstream::stream::DiscardPolicy::New,
                allow_rollup: true,
                allow_direct: false,
                ..Default::default()
            };
            // Another node may have created it in between: either way it
            // is there now.
            if let Err(e) = js.create_stream(stream).await {
                if js.get_stream(format!("OBJ_{bucket}")).await.is_err() {
                    return Err(js_error(&what, e));
                }
            }
        }
    }
    js.get_object_store(bucket.as_str()).await.map_err(|e| js_error(&what, e))
}

/// The runtime kinds a node with these interpreters can run: exec and http
/// always; python and node when their interpreter starts; onnx when ONNX
/// Runtime is found.
pub fn runtimes(python: &str, node: &str) -> Vec<String> {
    let runs = |program: &str| {
        std::process::Command::new(program)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut kinds = vec!["exec".to_owned(), "http".to_owned()];
    if runs(python) {
        kinds.push("python".to_owned());
    }
    if runs(node) {
        kinds.push("node".to_owned());
    }
    if sedge_onnx::model::find_library(python).is_ok() {
        kinds.push("onnx".to_owned());
    }
    kinds
}

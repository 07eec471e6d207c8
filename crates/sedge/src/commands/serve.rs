//! `sedge serve`: one node — the HTTP gateway, the runtime's pools and the
//! embedded store — until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sedge_gateway::{Access, Node};
use sedge_runtime::sandbox::{Sandbox, SandboxSetup};
use sedge_runtime::{Runtime, RuntimeConfig};
use sedge_store::secrets::PasswordOrigin;
use sedge_store::{SecretStore, Store, StoreError};
use tokio::sync::watch;

use crate::failure::HintExt;

/// How long requests in flight get to finish after a stop signal.
const GRACE: Duration = Duration::from_secs(10);

/// Run a node: the HTTP gateway, the function workers and the store, until Ctrl-C or SIGTERM.
#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "SEDGE_LISTEN", default_value = "127.0.0.1:8080", value_name = "ADDR")]
    listen: SocketAddr,
    #[command(flatten)]
    gateway: GatewayLimits,
    /// Where the node keeps its database, bundles, logs and secrets; its
    /// functions come back from there at the next start
    /// [default: ~/.local/share/sedge, or $XDG_DATA_HOME/sedge]
    #[arg(long, env = "SEDGE_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
    /// MQTT broker for functions' `mqtt` triggers that name none (mqtt://host:port).
    #[arg(long, env = "SEDGE_MQTT", value_name = "URL", value_parser = mqtt_url)]
    mqtt: Option<String>,
    /// NATS server for functions' `nats` triggers that name none (nats://host:port).
    #[arg(long, env = "SEDGE_NATS", value_name = "URL", value_parser = nats_url)]
    nats: Option<String>,
    /// Function folders to deploy once the node is up (after the stored ones).
    #[arg(long = "deploy", value_name = "DIR")]
    deploy: Vec<PathBuf>,
    /// Python interpreter for python functions.
    #[arg(long, env = "SEDGE_PYTHON", default_value = "python3", value_name = "PROGRAM")]
    python: String,
    /// Keep one started Python and one Node.js interpreter waiting, so cold
    /// starts only load the function's module (costs their idle memory).
    #[arg(long, env = "SEDGE_SPARES", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    spares: bool,
    /// Fork a Python function's further workers from a process that loaded
    /// its module once (its zygote), instead of importing it again in each.
    #[arg(long, env = "SEDGE_ZYGOTES", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    zygotes: bool,
    /// Threads for the gateway's async runtime (0: one on machines of up to
    /// two cores, else one per core).
    #[arg(long, env = "SEDGE_THREADS", default_value_t = 0, value_name = "N")]
    threads: usize,
    /// Run workers unsandboxed: as the node's own user, seeing its files,
    /// with no memory or process limits. For development only.
    #[arg(long, env = "SEDGE_NO_SANDBOX")]
    no_sandbox: bool,
    /// Node.js executable for node functions.
    #[arg(long, env = "SEDGE_NODE", default_value = "node", value_name = "PROGRAM")]
    node: String,
    #[command(flatten)]
    bundles: super::bundle_flags::BundleFlags,
    /// File holding the admin password for /system/ (user `admin`). Without
    /// it (or SEDGE_ADMIN_PASSWORD) the node generates one on first start
    /// and keeps it in DATA/secrets/admin-password.
    #[arg(long, value_name = "FILE", conflicts_with = "no_auth")]
    admin_password_file: Option<PathBuf>,
    /// No credentials anywhere: for tests on this machine only; refused on
    /// any address but loopback.
    #[arg(long)]
    no_auth: bool,
    /// Ask for the admin credential on /metrics too.
    #[arg(long)]
    metrics_auth: bool,
    /// Memory the processes started for functions may hold together:
    /// workers at their `[limits] memory` (128MiB when unset), and zygotes,
    /// standbys and spares, which are given up first; a worker that would
    /// go past it does not start [default: the machine's physical memory]
    #[arg(long, env = "SEDGE_MEMORY", value_parser = size, value_name = "SIZE")]
    memory: Option<u64>,
    #[command(flatten)]
    calls: CallLimits,
    #[cfg(feature = "cluster")]
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Joining other nodes into one platform over NATS JetStream (docs/cluster.md).
#[cfg(feature = "cluster")]
#[derive(clap::Args)]
struct ClusterArgs {
    /// Join the cluster of nodes that meet at this NATS server (its
    /// JetStream enabled): nats://HOST:4222, several comma-separated.
    /// Without it the node is on its own.
    #[arg(long, env = "SEDGE_CLUSTER", value_name = "URL")]
    cluster: Option<String>,
    /// This node's name in the cluster [default: the host name]
    #[arg(long, env = "SEDGE_NODE_NAME", value_name = "NAME", requires = "cluster")]
    node_name: Option<String>,
    /// This node's labels, which functions' `[placement] labels` choose by.
    #[arg(long, env = "SEDGE_LABELS", value_name = "LABEL,...", value_delimiter = ',', requires = "cluster",
          value_parser = node_label)]
    labels: Vec<String>,
    /// How the node proves itself to NATS: a file holding `user:password`,
    /// an nkey user seed, or a NATS .creds file.
    #[arg(long, env = "SEDGE_CLUSTER_CREDS", value_name = "FILE", requires = "cluster")]
    cluster_creds: Option<PathBuf>,
    /// Copies NATS JetStream keeps of the cluster's buckets (at most the
    /// number of NATS servers; 3 survives the loss of one of three).
    #[arg(long, env = "SEDGE_CLUSTER_REPLICAS", default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u8).range(1..=5))]
    cluster_replicas: u8,
    /// The URL other nodes and clients reach this node's HTTP API at
    /// [default: http://LISTEN-ADDRESS]
    #[arg(long, env = "SEDGE_ADVERTISE", value_name = "URL", requires = "cluster")]
    advertise: Option<String>,
}

#[cfg(feature = "cluster")]
fn node_label(text: &str) -> Result<String, String> {
    let label = text.trim();
    if sedge_core::manifest::is_node_label(label) {
        Ok(label.to_owned())
    } else {
        Err(format!("a label is 1 to 63 letters, digits, '-', '_' or '.', found {text:?}"))
    }
}

/// How long and how much of finished asynchronous calls the node keeps,
/// and the disk it leaves free.
#[derive(clap::Args)]
struct CallLimits {
    /// Results of finished asynchronous calls and tasks are kept this long.
    #[arg(long, env = "SEDGE_CALLS_KEEP", value_parser = duration, default_value = "24h", value_name = "DURATION")]
    calls_keep: Duration,
    /// Stored bytes of finished calls (requests and results) at most; past
    /// it the oldest go first.
    #[arg(long, env = "SEDGE_CALLS_MAX_SIZE", value_parser = size, default_value = "256MiB", value_name = "SIZE")]
    calls_max_size: u64,
    /// New asynchronous calls are refused (507) when storing one would
    /// leave less than this free on the data directory's disk.
    #[arg(long, env = "SEDGE_CALLS_DISK_RESERVE", value_parser = size, default_value = "64MiB", value_name = "SIZE")]
    calls_disk_reserve: u64,
}

impl CallLimits {
    fn config(&self) -> sedge_queue::QueueConfig {
        sedge_queue::QueueConfig {
            retention: sedge_queue::Retention { keep: self.calls_keep, max_bytes: self.calls_max_size },
            reserve: self.calls_disk_reserve,
            ..sedge_queue::QueueConfig::default()
        }
    }
}

/// The gateway's limits on clients: each bounds what one client, or many,
/// can hold of the node (descriptors, memory, time).
#[derive(clap::Args)]
struct GatewayLimits {
    /// A request's headers must arrive whole within this.
    #[arg(long, env = "SEDGE_HEADER_READ_TIMEOUT", value_parser = duration, default_value = "10s", value_name = "DURATION")]
    header_read_timeout: Duration,
    /// A connection that moves no byte for this long, with no request running, is closed.
    #[arg(long, env = "SEDGE_IDLE_TIMEOUT", value_parser = duration, default_value = "60s", value_name = "DURATION")]
    idle_timeout: Duration,
    /// A request body that sends nothing for this long is cut off (408).
    #[arg(long, env = "SEDGE_BODY_TIMEOUT", value_parser = duration, default_value = "30s", value_name = "DURATION")]
    body_timeout: Duration,
    /// Open client connections at most; more are closed as they arrive.
    #[arg(long, env = "SEDGE_MAX_CONNECTIONS", default_value_t = 1000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Bytes of a request's line and headers at most (at least 8KiB).
    #[arg(long, env = "SEDGE_MAX_HEADER_SIZE", value_parser = header_size, default_value = "64KiB", value_name = "SIZE")]
    max_header_size: u64,
    /// Headers per request at most.
    #[arg(long, env = "SEDGE_MAX_HEADERS", default_value_t = 100, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..))]
    max_headers: u16,
    /// Bytes of invocation bodies held in memory at once, all functions
    /// together; past it requests get 503 with Retry-After.
    #[arg(long, env = "SEDGE_MAX_BODY_MEMORY", value_parser = size, default_value = "256MiB", value_name = "SIZE")]
    max_body_memory: u64,
}

impl GatewayLimits {
    fn server_config(&self) -> sedge_gateway::ServerConfig {
        sedge_gateway::ServerConfig {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            body_timeout: self.body_timeout,
            max_connections: self.max_connections as usize,
            max_header_bytes: usize::try_from(self.max_header_size).unwrap_or(usize::MAX),
            max_headers: self.max_headers.into(),
        }
    }
}

fn duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("expected a duration longer than zero like \"500ms\", \"10s\" or \"1m\", found {text:?}")),
    }
}

fn size(text: &str) -> Result<u64, String> {
    match text.trim().parse::<bytesize::ByteSize>() {
        Ok(s) if s.as_u64() > 0 => Ok(s.as_u64()),
        _ => Err(format!("expected a size larger than zero like \"64KiB\" or \"256MiB\", found {text:?}")),
    }
}

fn header_size(text: &str) -> Result<u64, String> {
    let min = sedge_gateway::server::MIN_HEADER_BYTES as u64;
    let n = size(text)?;
    if n < min {
        return Err(format!("must be at least {min} bytes (8KiB), found {text:?}"));
    }
    Ok(n)
}

/// Raises the soft limit on open descriptors to the hard one, so the
/// connection cap, not the default 1,024, decides how many clients fit;
/// the limit is logged, with a warning when the cap cannot fit under it.
fn raise_descriptor_limit(max_connections: u32) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => return tracing::warn!("cannot read the open-descriptor limit: {e}"),
    };
    let now = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!("cannot raise the open-descriptor limit from {soft} to {hard}: {e}");
                soft
            }
        }
    } else {
        soft
    };
    tracing::info!("open-descriptor limit: {now}");
    // Workers, their channels, the store and the listener need descriptors too.
    if u64::from(max_connections) + 256 > now {
        tracing::warn!(
            "--max-connections {max_connections} leaves little room under the open-descriptor limit of {now}"
        );
    }
}

fn mqtt_url(text: &str) -> Result<String, String> {
    sedge_core::trigger::mqtt_host_port(text).map(|_| text.to_owned())
}

fn nats_url(text: &str) -> Result<String, String> {
    sedge_core::trigger::check_nats_url(text).map(|()| text.to_owned())
}

/// The node's MQTT client id, made once and kept in the data directory: a
/// broker keeps a session's messages for the id that comes back.
fn mqtt_client_id(data: &std::path::Path) -> Result<String> {
    let path = data.join("mqtt-client-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let id = format!("sedge-{}", sedge_queue::store::new_id());
    std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

pub fn default_data_dir() -> PathBuf {
    dirs::data_local_dir().map_or_else(|| PathBuf::from(".sedge"), |d| d.join("sedge"))
}

/// The gateway's threads when `--threads` is left at 0, on a machine of
/// `cores`. On a small machine the cores are the workers' and models':
/// with two, a gateway on both handed a connection's task to the other
/// thread for each 64 KiB of a body, a wake-up that preempts a model's run;
/// one thread served more under load on every function measured, at a
/// small cost at one user for trivial functions (docs/models.md, "The
/// gateway's threads").
fn gateway_threads(cores: usize) -> usize {
    if cores <= 2 {
        1
    } else {
        cores
    }
}

pub fn run(args: Args) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SEDGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in files and pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let threads = match args.threads {
        0 => gateway_threads(std::thread::available_parallelism().map_or(1, |n| n.get())),
        n => n,
    };
    let rt = match threads {
        // A single-threaded gateway leaves every other core to the workers.
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    }
    .context("starting the async runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> Result<()> {
    if args.no_auth && !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "--no-auth is for tests on this machine: it is refused on {}, which is not a loopback address",
            args.listen
        );
    }
    raise_descriptor_limit(args.gateway.max_connections);
    // Workers run from folders under it with other working directories, so
    // a relative path would point somewhere else for them: resolve it once.
    let data = std::path::absolute(args.data.clone().unwrap_or_else(default_data_dir))
        .context("resolving the data directory")?;
    let store = match Store::open(&data) {
        Ok(s) => s.with_limits(args.bundles.limits()),
        Err(e @ StoreError::Locked(_)) => anyhow::bail!("{e}: stop it first, or pass another --data directory"),
        Err(e) => return Err(e).with_context(|| format!("opening the store in {}", data.display())),
    };
    // Both probes start an interpreter; side by side they cost one start-up.
    let (python, node_js) = std::thread::scope(|s| {
        let node = s.spawn(|| resolve_interpreter(&args.node, &["-p", "process.execPath"]));
        let python = resolve_interpreter(&args.python, &["-c", "import sys; print(sys.executable)"]);
        (python, node.join().unwrap_or_else(|_| args.node.clone()))
    });
    let mut config = RuntimeConfig::install_shims(&data.join("runtimes"), python, node_js, args.spares)
        .with_context(|| format!("writing the runtime shims under {}", data.display()))?;
    if args.no_sandbox {
        tracing::warn!("--no-sandbox: workers run as the node's own user, see its files and have no limits");
    } else {
        config = sandboxed(config, &data)?;
        check_interpreters(&config).await;
    }
    config.secrets_root = Some(data.join("secrets").join("mounts"));
    config.zygotes = args.zygotes;
    config.budget = Arc::new(sedge_runtime::budget::NodeBudget::of_machine(args.memory));
    let secrets = SecretStore::open(&data.join("secrets"))
        .with_context(|| format!("opening the secrets folder in {}", data.display()))?
        .with_reader_group(config.sandbox.as_ref().and_then(|s| s.worker_gid()));
    #[allow(unused_mut)]
    let mut access = access(&args, &secrets)?;
    #[cfg(feature = "cluster")]
    let cluster = match &args.cluster.cluster {
        Some(url) => {
            let (cluster, shared) = join(&args, url, &config, &access).await?;
            if let Some(password) = shared {
                secrets.set_admin_password(&password).context("storing the cluster's admin password")?;
                access = Access::Password(password.into());
            }
            Some(cluster)
        }
        None => None,
    };
    let (config_python, config_node) = (config.python.clone(), config.node.clone());
    let runtime = Arc::new(Runtime::new(config));
    let node = Node::new(Arc::new(store), runtime.clone(), Arc::new(secrets), access);
    let mut node = args.bundles.configure(node, &data, &config_python, &config_node);
    node.metrics_open = !args.metrics_auth;
    node.body_memory = sedge_gateway::BodyMemory::new(args.gateway.max_body_memory);
    let queue = sedge_queue::Queue::open(runtime.clone(), &data, args.calls.config())
        .with_context(|| format!("opening the call store in {}", data.display()))?;
    node.queue = Some(queue.clone());
    let nats = match &args.nats {
        // Connected in the background: the node starts while the server is away.
        Some(url) => Some(sedge_triggers::nats::NatsLink::connect(url).await.with_context(|| format!("--nats {url}"))?),
        // In a cluster, triggers subscribe on the cluster's own connection.
        #[cfg(feature = "cluster")]
        None => cluster
            .as_ref()
            .zip(args.cluster.cluster.as_ref())
            .map(|(cluster, url)| sedge_triggers::nats::NatsLink::from_client(url, cluster.client().clone())),
        #[cfg(not(feature = "cluster"))]
        None => None,
    };
    let triggers = sedge_triggers::Triggers::new(
        runtime.clone(),
        queue.clone(),
        sedge_triggers::TriggersConfig { mqtt: args.mqtt.clone(), nats, client_id: mqtt_client_id(&data)? },
    );
    node.triggers = Some(triggers.clone());
    let node = Arc::new(node);
    #[cfg(feature = "cluster")]
    if let Some(cluster) = &cluster {
        let link: Arc<dyn sedge_gateway::cluster::Cluster> = cluster.clone();
        let _ = node.cluster.set(link);
    }
    let restored = sedge_gateway::restore(&node).await.map_err(|e| anyhow::anyhow!(e.message))?;
    queue.start();
    triggers.start();

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))
        .hint("another program (another node?) may hold that address: choose another with --listen ADDR")?;
    let addr = listener.local_addr()?;
    #[cfg(feature = "cluster")]
    if let Some(cluster) = &cluster {
        let address = args.cluster.advertise.clone().unwrap_or_else(|| format!("http://{addr}"));
        cluster.start(&node, address).await.map_err(|e| anyhow::anyhow!("joining the cluster: {e}"))?;
        tracing::info!(node = cluster.name(), "joined the cluster");
    }
    for dir in &args.deploy {
        let (spec, archive) = super::deploy::pack(dir)?;
        let name = spec.name.clone();
        let deployed = match node.cluster.get() {
            Some(cluster) => {
                let file = node.store.upload_file().context("writing the upload")?;
                std::fs::write(file.path(), &archive).context("writing the upload")?;
                cluster.deploy(spec.name, file.into_temp_path(), false).await.map(|_| ())
            }
            None => sedge_gateway::deploy(&node, spec.name, archive, false).await.map(|_| ()),
        };
        deployed.map_err(|e| anyhow::anyhow!("deploying {}: {}", dir.display(), e.message))?;
        tracing::info!("deployed {name} from {}", dir.display());
    }

    tracing::info!(data = %data.display(), restored, %addr, "serving");
    // Tests and scripts read this line to learn the port; it comes once the
    // --deploy folders are deployed, so the node is ready when it appears.
    println!("sedge listening on http://{addr}");

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let ticker = {
        let runtime = runtime.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            for second in 0u64.. {
                every.tick().await;
                runtime.tick();
                // Body and frame buffers no request took for 2-4 s are freed:
                // a quiet node keeps none.
                if second % 2 == 1 {
                    sedge_core::buffers::trim();
                }
            }
        })
    };
    let server = tokio::spawn(sedge_gateway::serve(listener, node.clone(), args.gateway.server_config(), async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    }));
    crate::signals::stop_signal().await;
    tracing::info!("stopping: no new connections; letting requests in flight finish");
    let _ = stop_tx.send(true);
    queue.stop();
    #[cfg(feature = "cluster")]
    if let Some(cluster) = &cluster {
        cluster.leave().await;
    }
    drop(node);
    match tokio::time::timeout(GRACE, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!("server error: {e}"),
        Ok(Err(e)) => tracing::warn!("server task failed: {e}"),
        Err(_) => tracing::warn!("requests still open after {}s; closing them", GRACE.as_secs()),
    }
    ticker.abort();
    runtime.shutdown(Duration::from_secs(1)).await;
    tracing::info!("stopped");
    Ok(())
}

/// Connects to the cluster; the admin password the cluster shares, when
/// this node asks for one (`None` with --no-auth).
#[cfg(feature = "cluster")]
async fn join(
    args: &Args,
    url: &str,
    config: &RuntimeConfig,
    access: &Access,
) -> Result<(Arc<sedge_cluster::Cluster>, Option<String>)> {
    let c = &args.cluster;
    let node_name = c.node_name.clone().unwrap_or_else(host_name);
    let runtimes = sedge_cluster::runtimes(&config.python, &config.node);
    let cluster = sedge_cluster::Cluster::connect(sedge_cluster::ClusterConfig {
        url: url.to_owned(),
        node_name: node_name.clone(),
        labels: c.labels.clone(),
        creds: c.cluster_creds.clone(),
        replicas: c.cluster_replicas.into(),
        runtimes: runtimes.clone(),
    })
    .await
    .map_err(|e| anyhow::anyhow!("--cluster: {e}"))
    .hint("start nats-server with JetStream (`nats-server -js`), or check the URL and --cluster-creds")?;
    tracing::info!(node = node_name, labels = ?c.labels, runtimes = ?runtimes, "connected to the cluster at {url}");
    let shared = match access {
        Access::Open => None,
        Access::Password(own) => {
            let supplied = args.admin_password_file.is_some() || std::env::var("SEDGE_ADMIN_PASSWORD").is_ok();
            let shared = cluster
                .admin_password(supplied.then_some(own.as_ref()), own)
                .await
                .map_err(|e| anyhow::anyhow!("--cluster: {e}"))?;
            Some(shared)
        }
    };
    Ok((cluster, shared))
}

#[cfg(feature = "cluster")]
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String =
        name.trim().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    if name.is_empty() {
        "sedge".to_owned()
    } else {
        name
    }
}

/// The admin password: from --admin-password-file, SEDGE_ADMIN_PASSWORD, or
/// the secrets folder (generated there on first start). A supplied one is
/// also written there (0600), so the CLI on this machine finds it.
fn access(args: &Args, secrets: &SecretStore) -> Result<Access> {
    if args.no_auth {
        tracing::warn!("--no-auth: /system/ is open to anyone who can reach {}", args.listen);
        return Ok(Access::Open);
    }
    let supplied = match (&args.admin_password_file, std::env::var("SEDGE_ADMIN_PASSWORD")) {
        (Some(file), _) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("--admin-password-file: cannot read {}", file.display()))?;
            let password = text.trim().to_owned();
            anyhow::ensure!(!password.is_empty(), "--admin-password-file: {} is empty", file.display());
            Some(password)
        }
        (None, Ok(p)) if !p.trim().is_empty() => Some(p.trim().to_owned()),
        (None, Ok(_)) => anyhow::bail!("SEDGE_ADMIN_PASSWORD is set but empty"),
        (None, Err(_)) => None,
    };
    let password = match supplied {
        Some(p) => {
            secrets.set_admin_password(&p).context("storing the admin password")?;
            p
        }
        None => {
            let (p, origin) = secrets.admin_password().context("reading the admin password")?;
            match origin {
                PasswordOrigin::Generated(path) => tracing::info!(
                    "generated an admin password for /system/ (user admin) in {}; `sedge login` or the CLI on this machine use it",
                    path.display()
                ),
                PasswordOrigin::Stored(path) => {
                    tracing::info!("admin password for /system/ (user admin) is in {}", path.display())
                }
            }
            p
        }
    };
    Ok(Access::Password(password.into()))
}

fn sandboxed(config: RuntimeConfig, data: &std::path::Path) -> Result<RuntimeConfig> {
    let interpreters = [config.python.as_str(), config.node.as_str()];
    let setup = SandboxSetup { data_dir: data, shim_dir: &config.shim_dir, interpreters: &interpreters };
    let sandbox = Sandbox::new(&setup).map_err(|e| anyhow::anyhow!("setting up the worker sandbox: {e}"))?;
    tracing::info!("{}", sandbox.summary());
    if config.spares {
        tracing::info!("spare interpreters are kept per function, each in its function's sandbox");
    }
    Ok(config.with_sandbox(sandbox))
}

/// Says at start, not at the first call, if an interpreter cannot run
/// inside the sandbox (e.g. installed where the sandbox user cannot read).
async fn check_interpreters(config: &RuntimeConfig) {
    let Some(sandbox) = &config.sandbox else { return };
    for (language, program) in [("python", &config.python), ("node", &config.node)] {
        if let Err(e) = sandbox.check(program, &["--version"]).await {
            tracing::error!(
                "{language} ({program}) does not start in the worker sandbox: {e}; {language} functions will fail \
                 to start (docs/security.md says what workers can reach; --no-sandbox is for development)"
            );
        }
    }
}

/// The interpreter's own executable path. Version managers (pyenv, nvm, asdf)
/// put a shell-script shim first on PATH that costs 100 ms or more per
/// start; asking the interpreter once where it lives skips that on every
/// cold start. Falls back to the name as given.
fn resolve_interpreter(program: &str, probe: &[&str]) -> String {
    let out = std::process::Command::new(program).args(probe).stderr(std::process::Stdio::null()).output();
    match out {
        Ok(o) if o.status.success() => {
            let path = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            if path.is_empty() || !std::path::Path::new(&path).is_file() {
                program.to_owned()
            } else {
                path
            }
        }
        _ => {
            tracing::warn!("{program} did not run; functions that need it will fail to start");
            program.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_flags_take_units_and_refuse_zero_or_too_small() {
        assert_eq!(duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert!(duration("0s").is_err_and(|e| e.contains("longer than zero")));
        assert!(duration("soon").is_err());
        assert_eq!(size("256MiB"), Ok(256 * 1024 * 1024));
        assert!(size("0").is_err());
        assert_eq!(header_size("8KiB"), Ok(8192));
        assert!(header_size("4KiB").is_err_and(|e| e.contains("at least 8192")));
    }

    #[test]
    fn the_defaults_are_the_gateway_defaults() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            limits: GatewayLimits,
        }
        let cli = <Cli as clap::Parser>::try_parse_from(["serve"]).expect("defaults parse");
        let ours = cli.limits.server_config();
        let theirs = sedge_gateway::ServerConfig::default();
        assert_eq!(format!("{ours:?}"), format!("{theirs:?}"));
        assert_eq!(cli.limits.max_body_memory, sedge_gateway::BodyMemory::DEFAULT);
    }
}

//! `sedge serve`: one node — the HTTP gateway, the runtime's pools and the
//! embedded store — until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sedge_gateway::Node;
use sedge_runtime::{Runtime, RuntimeConfig};
use sedge_store::{Store, StoreError};
use tokio::sync::watch;

/// How long requests in flight get to finish after a stop signal.
const GRACE: Duration = Duration::from_secs(10);

/// Run a node.
#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "SEDGE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the node keeps its database and bundles.
    #[arg(long, env = "SEDGE_DATA")]
    data: Option<PathBuf>,
    /// Function folders to deploy once the node is up (after the stored ones).
    #[arg(long = "deploy", value_name = "DIR")]
    deploy: Vec<PathBuf>,
    /// Python interpreter for python functions.
    #[arg(long, env = "SEDGE_PYTHON", default_value = "python3")]
    python: String,
    /// Keep one started Python and one Node.js interpreter waiting, so cold
    /// starts only load the function's module (costs their idle memory).
    #[arg(long, env = "SEDGE_SPARES", default_value_t = true, action = clap::ArgAction::Set)]
    spares: bool,
    /// Threads for the gateway's async runtime (0: one per core).
    #[arg(long, env = "SEDGE_THREADS", default_value_t = 0)]
    threads: usize,
    /// Node.js executable for node functions.
    #[arg(long, env = "SEDGE_NODE", default_value = "node")]
    node: String,
    #[command(flatten)]
    bundles: super::bundle_flags::BundleFlags,
}

fn default_data_dir() -> PathBuf {
    dirs::data_local_dir().map_or_else(|| PathBuf::from(".sedge"), |d| d.join("sedge"))
}

pub fn run(args: Args) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SEDGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match args.threads {
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        // A single-threaded gateway leaves every other core to the workers.
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    }
    .context("starting the async runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> Result<()> {
    let data = args.data.clone().unwrap_or_else(default_data_dir);
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
    let config = RuntimeConfig::install_shims(&data.join("runtimes"), python, node_js, args.spares)
        .with_context(|| format!("writing the runtime shims under {}", data.display()))?;
    let runtime = Arc::new(Runtime::new(config));
    let node = Arc::new(args.bundles.configure(Node::new(Arc::new(store), runtime.clone())));
    let restored = sedge_gateway::restore(&node).await.map_err(|e| anyhow::anyhow!(e.message))?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    for dir in &args.deploy {
        let (spec, archive) = sedge_store::pack::pack(dir)?;
        let name = spec.name.clone();
        sedge_gateway::deploy(&node, spec.name, archive, false)
            .await
            .map_err(|e| anyhow::anyhow!("deploying {}: {}", dir.display(), e.message))?;
        tracing::info!("deployed {name} from {}", dir.display());
    }

    tracing::info!(data = %data.display(), restored, "sedge listening on http://{addr}");
    // Tests and scripts read this line to learn the port; it comes once the
    // --deploy folders are deployed, so the node is ready when it appears.
    println!("sedge listening on http://{addr}");

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let ticker = {
        let runtime = runtime.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                runtime.tick();
            }
        })
    };
    let server = tokio::spawn(sedge_gateway::serve(listener, node, async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    }));
    crate::signals::stop_signal().await;
    tracing::info!("stopping: no new connections; letting requests in flight finish");
    let _ = stop_tx.send(true);
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

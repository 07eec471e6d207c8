//! A sedge node as a benchmark target: starting a local one, and the few
//! management calls the bench makes (deploy, scale to zero, replica count).
//! The calls are the OpenFaaS gateway's, which sedge serves.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::error::BenchError;
use crate::http;

/// How long a starting node gets to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node gets to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const API_TIMEOUT: Duration = Duration::from_secs(30);
/// A deploy with `wait=true` starts a worker, which may import a large
/// library first.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(120);

/// A `sedge serve` child process on 127.0.0.1 with a throwaway data
/// directory, killed if dropped without [`LocalNode::stop`].
pub struct LocalNode {
    child: Child,
    pub url: String,
    pub pid: u32,
    /// `Authorization` for the node's admin password, made for this run.
    pub auth: String,
    _data: tempfile::TempDir,
}

impl LocalNode {
    /// Runs `exe serve` on a free port, its log going to `log`.
    pub async fn start(exe: &Path, log: &Path) -> Result<Self, BenchError> {
        let data = tempfile::Builder::new()
            .prefix("sedge-bench-node-")
            .tempdir()
            .map_err(BenchError::io("creating the local node's data directory"))?;
        // Appending, as the stdout drain below writes to the same file.
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(BenchError::io(format!("creating {}", log.display())))?;
        let password = sedge_store::secrets::random_token()
            .map_err(|e| BenchError::Node(format!("making the local node's password: {e}")))?;
        let mut child = Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data.path().join("data"))
            .env("SEDGE_ADMIN_PASSWORD", &password)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .map_err(BenchError::io(format!("starting {} serve", exe.display())))?;
        let pid = child.id().ok_or_else(|| BenchError::Node("the local node exited at once".into()))?;
        let stdout = child.stdout.take().ok_or_else(|| BenchError::Node("no stdout from the local node".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let first = match tokio::time::timeout(START_TIMEOUT, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(_) => {
                return Err(BenchError::Node(format!("the local node stopped before listening; see {}", log.display())))
            }
            Err(_) => return Err(BenchError::Node(format!("the local node did not start in {START_TIMEOUT:?}"))),
        };
        let url = first
            .trim()
            .strip_prefix("sedge listening on ")
            .ok_or_else(|| BenchError::Node(format!("unexpected first line from the local node: {first:?}")))?
            .to_owned();
        // Keep draining stdout into the log: a node writing to a closed pipe
        // would fail.
        let mut tail = tokio::fs::OpenOptions::new()
            .append(true)
            .open(log)
            .await
            .map_err(BenchError::io(format!("opening {}", log.display())))?;
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tail.write_all(format!("{line}\n").as_bytes()).await;
            }
        });
        Ok(Self { child, url, pid, auth: sedge_store::secrets::admin_basic_auth(&password), _data: data })
    }

    /// SIGTERM, a grace period, then SIGKILL.
    pub async fn stop(mut self) {
        let asked = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        if asked && tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await.is_ok() {
            return;
        }
        let _ = self.child.kill().await;
    }
}

fn with_auth(mut headers: Vec<(String, String)>, auth: Option<&str>) -> Vec<(String, String)> {
    if let Some(a) = auth {
        headers.push(("authorization".to_owned(), a.to_owned()));
    }
    headers
}

fn refused(what: &str, answer: &http::Answer) -> BenchError {
    let text = String::from_utf8_lossy(&answer.body);
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| text.trim().to_owned());
    BenchError::Node(format!("{what}: the node answered {}: {message}", answer.status))
}

fn ok(answer: &http::Answer) -> bool {
    (200..300).contains(&answer.status)
}

/// Uploads a function bundle and waits until a worker has loaded it.
pub async fn deploy(gateway: &str, auth: Option<&str>, name: &str, archive: Vec<u8>) -> Result<(), BenchError> {
    let url = format!("{gateway}/system/bundles/{name}?wait=true");
    let headers = with_auth(vec![("content-type".to_owned(), "application/gzip".to_owned())], auth);
    let answer = http::once(&url, "PUT", &headers, Bytes::from(archive), DEPLOY_TIMEOUT).await?;
    if ok(&answer) {
        Ok(())
    } else {
        Err(refused(&format!("deploying {name}"), &answer))
    }
}

/// Stops the function's workers and waits until none is left.
pub async fn scale_to_zero(gateway: &str, auth: Option<&str>, name: &str, within: Duration) -> Result<(), BenchError> {
    let url = format!("{gateway}/system/scale-function/{name}");
    let body = serde_json::json!({ "serviceName": name, "replicas": 0 }).to_string();
    let headers = with_auth(vec![("content-type".to_owned(), "application/json".to_owned())], auth);
    let answer = http::once(&url, "POST", &headers, Bytes::from(body), API_TIMEOUT).await?;
    if !ok(&answer) {
        return Err(refused(&format!("scaling {name} to zero"), &answer));
    }
    let deadline = Instant::now() + within;
    loop {
        if available_replicas(gateway, auth, name).await? == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Node(format!("{name} still has workers {within:?} after scaling to zero")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where the function's last cold start went (`sedge.lastColdStart` of
/// `GET /system/function/NAME`); `None` from a node that does not say.
pub async fn last_cold_start(
    gateway: &str,
    auth: Option<&str>,
    name: &str,
) -> Result<Option<crate::record::ColdPhases>, BenchError> {
    let url = format!("{gateway}/system/function/{name}");
    let answer = http::once(&url, "GET", &with_auth(Vec::new(), auth), Bytes::new(), API_TIMEOUT).await?;
    if !ok(&answer) {
        return Err(refused(&format!("describing {name}"), &answer));
    }
    let v: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    let last = &v["sedge"]["lastColdStart"];
    let ms = |k: &str| last.get(k).and_then(serde_json::Value::as_f64);
    Ok(match (ms("processMs"), ms("importsMs"), ms("modelMs"), ms("firstAnswerMs")) {
        (Some(process_ms), Some(imports_ms), Some(model_ms), Some(first_answer_ms)) => {
            Some(crate::record::ColdPhases {
                kind: last["kind"].as_str().unwrap_or("").to_owned(),
                process_ms,
                imports_ms,
                model_ms,
                first_answer_ms,
            })
        }
        _ => None,
    })
}

/// `availableReplicas` of `GET /system/function/NAME`.
pub async fn available_replicas(gateway: &str, auth: Option<&str>, name: &str) -> Result<u64, BenchError> {
    let url = format!("{gateway}/system/function/{name}");
    let answer = http::once(&url, "GET", &with_auth(Vec::new(), auth), Bytes::new(), API_TIMEOUT).await?;
    if !ok(&answer) {
        return Err(refused(&format!("describing {name}"), &answer));
    }
    serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|v| v.get("availableReplicas").and_then(serde_json::Value::as_u64))
        .ok_or_else(|| BenchError::Node(format!("describing {name}: no availableReplicas in the answer")))
}

//! `http` functions: a long-running process that serves HTTP itself on the
//! port sedge hands it in `PORT` (of-watchdog's http mode, Knative's
//! container contract). sedge starts it, sends it nothing until it answers
//! HTTP, proxies each invocation to it over a kept-alive connection, and
//! treats its exit as a crash.
//!
//! A caller that goes away mid-request drops hyper's request future, which
//! closes that connection rather than reuse it, so no half-sent request can
//! run into the next one. Answers are read up to the function's
//! `max_answer` and no further.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sedge_core::{FunctionSpec, Invocation, InvokeError, Reply};
use tokio::sync::Notify;

use crate::group::ProcessGroup;
use crate::logs::{self, LogTarget, RecentLines};
use crate::pool::FunctionShared;
use crate::{RuntimeConfig, WorkerFiles};

const START_TIMEOUT: Duration = Duration::from_secs(60);
const READY_POLL: Duration = Duration::from_millis(10);
const EXIT_GRACE: Duration = Duration::from_millis(250);

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub struct HttpWorker {
    function: String,
    port: u16,
    client: HttpClient,
    alive: Arc<AtomicBool>,
    kill: Arc<Notify>,
    max_answer: u64,
    memory: Option<u64>,
    group: Arc<ProcessGroup>,
}

/// A start failure caused by the memory limit, said as the invocation error is.
pub(crate) fn oom_message(limit: u64) -> String {
    format!("it exceeded its memory limit of {} while starting", sedge_core::invocation::mebibytes(limit))
}

/// A port free right now. The server binds it moments later; losing that
/// race shows up as a start failure, and the next start picks another.
fn free_port() -> std::io::Result<u16> {
    let l = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(l.local_addr()?.port())
}

impl HttpWorker {
    pub async fn start(
        spec: &FunctionSpec,
        files: &WorkerFiles,
        instance: String,
        shared: Arc<FunctionShared>,
        config: &RuntimeConfig,
        on_exit: Box<dyn FnOnce() + Send>,
    ) -> Result<Self, String> {
        let words = spec.command_words();
        let Some((program, args)) = words.split_first() else { return Err("empty command".to_owned()) };
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let (mut cmd, cgroup) = config.command(program, &spec.limits, files, shared.oom_kills.clone())?;
        cmd.args(args)
            .current_dir(&files.bundle)
            .envs(&spec.env)
            .env("PORT", port.to_string())
            .env("SEDGE_FUNCTION", spec.name.as_str())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (mut child, group) =
            config.groups.spawn_in(&mut cmd, cgroup).map_err(|e| format!("cannot run {program:?}: {e}"))?;
        let group = Arc::new(group);
        let function = spec.name.to_string();
        let recent = Arc::new(RecentLines::default());
        let target = Arc::new(LogTarget::new(function.clone(), instance, shared));
        if let Some(out) = child.stdout.take() {
            logs::pump(out, target.clone(), recent.clone());
        }
        if let Some(err) = child.stderr.take() {
            logs::pump(err, target, recent.clone());
        }
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let alive = Arc::new(AtomicBool::new(true));
        let kill = Arc::new(Notify::new());
        let exited = Arc::new(Notify::new());
        {
            let (alive, kill, exited, group) = (alive.clone(), kill.clone(), exited.clone(), group.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = child.wait() => {}
                    () = kill.notified() => {
                        group.kill_now();
                        let _ = child.wait().await;
                    }
                }
                // Whatever the server started goes with it.
                group.kill();
                alive.store(false, Ordering::Release);
                exited.notify_waiters();
                on_exit();
            });
        }
        let worker = Self {
            function,
            port,
            client,
            alive,
            kill,
            max_answer: spec.limits.max_answer,
            memory: spec.limits.memory,
            group,
        };
        let ready = tokio::time::timeout(START_TIMEOUT, worker.wait_ready());
        let failure = tokio::select! {
            r = ready => match r {
                Ok(()) => None,
                Err(_) => Some(format!("the server did not answer on port {port} within {}s", START_TIMEOUT.as_secs())),
            },
            () = exited.notified() => Some(match worker.memory.filter(|_| worker.group.oom_killed()) {
                Some(limit) => oom_message(limit),
                None => "the server exited before it answered".to_owned(),
            }),
        };
        if let Some(mut msg) = failure {
            worker.kill();
            let tail = recent.joined();
            if !tail.is_empty() {
                msg.push_str(&format!("; output: {tail}"));
            }
            return Err(msg);
        }
        Ok(worker)
    }

    /// Polls until the server answers any HTTP request on `/`.
    async fn wait_ready(&self) {
        loop {
            if !self.is_alive() {
                // The exit watcher reports this; stay pending for it.
                std::future::pending::<()>().await;
            }
            let probe = Request::get(format!("http://127.0.0.1:{}/", self.port)).body(Full::new(Bytes::new()));
            if let Ok(req) = probe {
                if let Ok(resp) = self.client.request(req).await {
                    let _ = resp.into_body().collect().await;
                    return;
                }
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    pub fn kill(&self) {
        self.alive.store(false, Ordering::Release);
        self.kill.notify_one();
    }

    pub async fn call(&self, inv: &Invocation) -> Result<Reply, InvokeError> {
        let failed = |message: String| InvokeError::Failed { function: self.function.clone(), message };
        let query = if inv.query.is_empty() { String::new() } else { format!("?{}", inv.query) };
        let mut req = Request::builder()
            .method(inv.method.as_str())
            .uri(format!("http://127.0.0.1:{}{}{query}", self.port, inv.path));
        for (k, v) in &inv.headers {
            // Framing is per connection; the proxy sets its own.
            if matches!(k.as_str(), "connection" | "keep-alive" | "transfer-encoding" | "content-length" | "host") {
                continue;
            }
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(Full::new(inv.body.clone())).map_err(|e| failed(format!("bad request: {e}")))?;
        let resp = match self.client.request(req).await {
            Ok(r) => r,
            Err(e) => {
                // A server that dies mid-request drops the connection a
                // moment before its exit is seen; give the exit a moment so
                // the worker is retired rather than used again.
                let deadline = tokio::time::Instant::now() + EXIT_GRACE;
                while self.is_alive() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if !self.is_alive() && self.group.oom_killed() {
                    let limit = self.memory.unwrap_or_default();
                    return Err(InvokeError::OutOfMemory { function: self.function.clone(), limit });
                }
                let status = if self.is_alive() {
                    format!("its server dropped the request: {e}")
                } else {
                    "its server exited".to_owned()
                };
                return Err(InvokeError::Crashed { function: self.function.clone(), status });
            }
        };
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let announced = resp.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
        let too_large = |size: Option<u64>| InvokeError::AnswerTooLarge {
            function: self.function.clone(),
            size,
            limit: self.max_answer,
        };
        if let Some(size) = announced.filter(|&n: &u64| n > self.max_answer) {
            return Err(too_large(Some(size)));
        }
        let limit = usize::try_from(self.max_answer).unwrap_or(usize::MAX);
        let body = match Limited::new(resp.into_body(), limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large(None)),
            Err(e) => return Err(failed(format!("reading its answer: {e}"))),
        };
        Ok(Reply { status, headers, body })
    }
}

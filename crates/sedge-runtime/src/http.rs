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
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sedge_core::{Invocation, InvokeError, Reply};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::engine::{BoxFuture, Engine, StartContext, Worker};
use crate::group::{oom_message, ProcessGroup};
use crate::logs::{self, LogTarget, RecentLines};
use crate::RuntimeConfig;

/// How often a starting server is asked whether it answers yet: it says
/// so only by answering.
const READY_POLL: Duration = Duration::from_millis(10);
/// How long a dropped connection waits for the server's exit to be seen.
const EXIT_GRACE: Duration = Duration::from_millis(250);

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// Starts http workers.
pub struct HttpEngine {
    config: Arc<RuntimeConfig>,
}

impl HttpEngine {
    pub fn new(config: Arc<RuntimeConfig>) -> Self {
        Self { config }
    }
}

impl Engine for HttpEngine {
    fn start(&self, ctx: StartContext) -> BoxFuture<'static, Result<Arc<dyn Worker>, String>> {
        let config = self.config.clone();
        Box::pin(async move { Ok(Arc::new(HttpWorker::start(ctx, &config).await?) as Arc<dyn Worker>) })
    }
}

struct HttpWorker {
    function: String,
    port: u16,
    client: HttpClient,
    /// `true` while the server runs; `false` once it has exited or been
    /// told to die.
    alive: watch::Sender<bool>,
    kill: Arc<Notify>,
    max_answer: u64,
    memory: Option<u64>,
    group: Arc<ProcessGroup>,
}

/// A port free right now. The server binds it moments later; losing that
/// race shows up as a start failure, and the next start picks another.
fn free_port() -> std::io::Result<u16> {
    let l = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(l.local_addr()?.port())
}

impl HttpWorker {
    async fn start(ctx: StartContext, config: &RuntimeConfig) -> Result<Self, String> {
        let StartContext { version, log, ready_by, start_timeout, exited: on_exit, .. } = ctx;
        let (spec, files) = (&version.spec, &version.files);
        let words = spec.command_words();
        let Some((program, args)) = words.split_first() else { return Err("empty command".to_owned()) };
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let (mut cmd, cgroup) = config.command(program, &spec.limits, files, version.counters.oom_kills.clone())?;
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
        let target = Arc::new(LogTarget::new(log));
        if let Some(out) = child.stdout.take() {
            logs::pump(out, target.clone(), recent.clone());
        }
        if let Some(err) = child.stderr.take() {
            logs::pump(err, target, recent.clone());
        }
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let alive = watch::Sender::new(true);
        let kill = Arc::new(Notify::new());
        let mut exited = alive.subscribe();
        {
            let (alive, kill, group) = (alive.clone(), kill.clone(), group.clone());
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
                alive.send_replace(false);
                on_exit.notify();
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
        // Dropped before it is ready, the worker's Drop ends the server.
        let ready = tokio::time::timeout_at(ready_by, worker.wait_ready());
        let failure = tokio::select! {
            r = ready => match r {
                Ok(()) => None,
                Err(_) => Some(format!("the server did not answer on port {port} within {}s", start_timeout.as_secs())),
            },
            _ = exited.wait_for(|alive| !alive) => Some(match worker.memory.filter(|_| worker.group.oom_killed()) {
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

    async fn invoke(&self, inv: &Invocation) -> Result<Reply, InvokeError> {
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
                let mut alive = self.alive.subscribe();
                let _ = tokio::time::timeout(EXIT_GRACE, alive.wait_for(|alive| !alive)).await;
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

impl Worker for HttpWorker {
    fn call<'a>(&'a self, inv: &'a Invocation, _deadline: Instant) -> BoxFuture<'a, Result<Reply, InvokeError>> {
        Box::pin(self.invoke(inv))
    }

    fn is_alive(&self) -> bool {
        *self.alive.borrow()
    }

    fn kill(&self) {
        self.alive.send_replace(false);
        self.kill.notify_one();
    }

    fn stop(self: Arc<Self>) {
        self.kill();
    }
}

/// A worker nobody holds any more (or whose start was given up) must not
/// leave its server running.
impl Drop for HttpWorker {
    fn drop(&mut self) {
        self.kill();
    }
}

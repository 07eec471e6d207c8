//! `exec` functions, the classic OpenFaaS watchdog model: one process per
//! request, the request body on stdin, the answer from stdout. A non-zero
//! exit answers 500 with the tail of stderr.
//!
//! Each run is a process group of its own: a timeout (the caller's future
//! dropped) or the command's end kills everything it started, so no
//! background child outlives its request. The answer is read up to the
//! function's `max_answer`; past it the run is killed.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;

use sedge_core::{FunctionSpec, Invocation, InvokeError, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::engine::{BoxFuture, Engine, LogSink, StartContext, Worker};
use crate::sandbox::WorkerCgroup;
use crate::{RuntimeConfig, WorkerFiles};

/// Bytes of stderr quoted in a failure's message.
const STDERR_QUOTE: usize = 2000;
/// Largest stderr kept from one run: a runaway command must not grow the
/// node's memory without bound before its timeout.
const MAX_STDERR: u64 = 1024 * 1024;

/// Starts exec workers: nothing runs until a call comes.
pub struct ExecEngine {
    config: Arc<RuntimeConfig>,
}

impl ExecEngine {
    pub fn new(config: Arc<RuntimeConfig>) -> Self {
        Self { config }
    }
}

impl Engine for ExecEngine {
    fn start(&self, ctx: StartContext) -> BoxFuture<'static, Result<Arc<dyn Worker>, String>> {
        let config = self.config.clone();
        Box::pin(async move {
            let v = ctx.version;
            let cgroup = config.exec_cgroup(&v.spec.limits, v.counters.oom_kills.clone())?;
            let worker = ExecWorker { spec: v.spec, files: v.files, log: ctx.log, config, cgroup };
            Ok(Arc::new(worker) as Arc<dyn Worker>)
        })
    }
}

struct ExecWorker {
    spec: Arc<FunctionSpec>,
    files: WorkerFiles,
    log: LogSink,
    config: Arc<RuntimeConfig>,
    /// Shared by this worker's runs (sandboxed); removed with the worker.
    cgroup: Option<WorkerCgroup>,
}

/// The watchdog's header variables: `Content-Type` → `Http_Content_Type`.
fn header_var(name: &str) -> String {
    let mut out = String::from("Http_");
    let mut upper = true;
    for ch in name.chars() {
        if ch == '-' {
            out.push('_');
            upper = true;
        } else if upper {
            out.extend(ch.to_uppercase());
            upper = false;
        } else {
            out.push(ch);
        }
    }
    out
}

impl Worker for ExecWorker {
    fn call<'a>(&'a self, inv: &'a Invocation, _deadline: Instant) -> BoxFuture<'a, Result<Reply, InvokeError>> {
        Box::pin(self.run(inv))
    }

    /// Each call is a process of its own, ended with its call.
    fn is_alive(&self) -> bool {
        true
    }

    fn kill(&self) {}

    fn stop(self: Arc<Self>) {}
}

impl ExecWorker {
    /// Runs the command once. Dropping the future (a timeout) kills it.
    async fn run(&self, inv: &Invocation) -> Result<Reply, InvokeError> {
        let function = self.spec.name.to_string();
        let words = self.spec.command_words();
        let Some((program, args)) = words.split_first() else {
            return Err(InvokeError::StartFailed { function, message: "empty command".to_owned() });
        };
        let start_failed = |message: String| InvokeError::StartFailed { function: function.clone(), message };
        let mut cmd = self
            .config
            .command_in(program, &self.spec.limits, &self.files, self.cgroup.as_ref())
            .map_err(start_failed)?;
        cmd.args(args)
            .current_dir(&self.files.bundle)
            .envs(&self.spec.env)
            .env("SEDGE_FUNCTION", &function)
            .env("Http_Method", &inv.method)
            .env("Http_Path", &inv.path)
            .env("Http_Query", &inv.query)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &inv.headers {
            cmd.env(header_var(k), v);
        }
        let (mut child, group) = self.config.groups.spawn_in(&mut cmd, None).map_err(|e| InvokeError::StartFailed {
            function: function.clone(),
            message: format!("cannot run {program:?}: {e}"),
        })?;
        let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(InvokeError::StartFailed { function, message: "pipes were not set up".to_owned() });
        };
        let body = inv.body.clone();
        // Feed stdin while draining stdout and stderr, so a command that
        // answers before reading everything cannot deadlock on a full pipe.
        let feed = async move {
            let _ = stdin.write_all(&body).await;
            drop(stdin);
        };
        let max_answer = self.spec.limits.max_answer;
        let mut out = Vec::new();
        let mut err = Vec::new();
        let read_out = async {
            let read = (&mut stdout).take(max_answer + 1).read_to_end(&mut out).await;
            if out.len() as u64 > max_answer {
                // It would block on a full pipe, or fill the node: stop it now.
                group.kill_now();
            }
            read
        };
        let read_err = async {
            let read = (&mut stderr).take(MAX_STDERR).read_to_end(&mut err).await;
            // Keep draining what is past the quote so the command never blocks on it.
            let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
            read
        };
        let wait = async {
            let status = child.wait().await;
            // What it left running would hold the pipes open: end it too.
            group.kill();
            status
        };
        let ((_, out_read, err_read), status) = tokio::join!(async { tokio::join!(feed, read_out, read_err) }, wait);
        let killed = status.as_ref().is_ok_and(|s| s.signal() == Some(nix::sys::signal::Signal::SIGKILL as i32));
        if killed && self.cgroup.as_ref().is_some_and(WorkerCgroup::take_oom_kill) {
            return Err(InvokeError::OutOfMemory { function, limit: self.spec.limits.memory.unwrap_or_default() });
        }
        if out.len() as u64 > max_answer {
            return Err(InvokeError::AnswerTooLarge { function, size: None, limit: max_answer });
        }
        let err_text = String::from_utf8_lossy(&err);
        for line in err_text.lines() {
            self.log.line(line.to_owned());
        }
        let status = status.map_err(|e| InvokeError::Crashed { function: function.clone(), status: e.to_string() })?;
        if let Err(e) = out_read.and(err_read) {
            return Err(InvokeError::Crashed { function, status: e.to_string() });
        }
        if !status.success() {
            let tail = tail_chars(err_text.trim_end(), STDERR_QUOTE);
            let message =
                if tail.is_empty() { format!("command {status}") } else { format!("command {status}: {tail}") };
            return Err(InvokeError::Failed { function, message });
        }
        let content_type = inv
            .headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map_or_else(|| "text/plain; charset=utf-8".to_owned(), |(_, v)| v.clone());
        Ok(Reply { status: 200, headers: vec![("content-type".to_owned(), content_type)], body: out.into() })
    }
}

fn tail_chars(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_follow_the_watchdog() {
        assert_eq!(header_var("content-type"), "Http_Content_Type");
        assert_eq!(header_var("x-call-id"), "Http_X_Call_Id");
    }

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail_chars("abcdef", 3), "def");
        assert_eq!(tail_chars("ééé", 3), "é");
    }
}

//! The CLI's HTTP client: a thin layer over ureq that turns a node's JSON
//! `{"error": ...}` answers into readable messages.

use anyhow::{anyhow, Context, Result};

use crate::failure::hinted;
use ureq::http::{Method, Request};
use ureq::Agent;

pub struct Client {
    base: String,
    agent: Agent,
    /// `Authorization` value for the node's admin credential, when known.
    auth: Option<String>,
}

/// A node's answer: status and body, whatever the status.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The node's error message, or the body as text.
    pub fn error_message(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| self.text())
    }

    /// Fails with the status and the node's message unless 2xx, with
    /// what to do for the statuses a user can fix.
    pub fn check(self, what: &str) -> Result<Self> {
        if self.ok() {
            return Ok(self);
        }
        let error = anyhow!("{what}: the node answered {}: {}", self.status, self.error_message());
        Err(match self.status {
            401 => hinted(error, "log in with `sedge login` (or set SEDGE_PASSWORD) with the node's admin password"),
            _ => error,
        })
    }

    /// As `check`, for a request about one function: a 404 says to look
    /// the name up.
    pub fn check_function(self, what: &str) -> Result<Self> {
        let status = self.status;
        self.check(what).map_err(|e| {
            if status == 404 {
                hinted(e, "`sedge ls` lists the functions the node has")
            } else {
                e
            }
        })
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("the node's answer is not JSON")
    }
}

impl Client {
    pub fn new(base: &str) -> Self {
        let agent: Agent = Agent::config_builder().http_status_as_error(false).build().into();
        Self { base: base.trim_end_matches('/').to_owned(), agent, auth: None }
    }

    /// Sends the admin credential with every request.
    pub fn with_password(mut self, password: Option<&str>) -> Self {
        self.auth = password.map(sedge_store::secrets::admin_basic_auth);
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn send(&self, method: &str, path: &str, headers: &[(String, String)], body: Vec<u8>) -> Result<Answer> {
        let mut resp = self.run(method, path, headers, body)?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .with_context(|| format!("reading the answer from {}", self.base))?;
        Ok(Answer { status, body })
    }

    fn run(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| anyhow!("invalid HTTP method {method:?}"))?;
        let mut req = Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(auth) = &self.auth {
            if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization")) {
                req = req.header("authorization", auth.as_str());
            }
        }
        let req = req.body(body).context("invalid request")?;
        self.agent.run(req).map_err(|e| self.unreachable(e))
    }

    fn unreachable(&self, e: ureq::Error) -> anyhow::Error {
        let what = anyhow!("cannot reach the node at {}", self.base);
        hinted(
            anyhow::Error::new(e).context(what),
            "is `sedge serve` running there? Name another node with --gateway URL or SEDGE_GATEWAY",
        )
    }

    pub fn get(&self, path: &str) -> Result<Answer> {
        self.send("GET", path, &[], Vec::new())
    }

    /// GET whose body is read as it arrives, line by line (log following).
    /// `what` names the request in an error.
    pub fn get_lines(&self, path: &str, what: &str, each: impl FnMut(&str) -> Result<()>) -> Result<()> {
        self.send_lines("GET", path, &[], Vec::new(), what, each)
    }

    /// A request whose answer is read as it arrives, line by line; an
    /// error status is an error (`what` names the request in it).
    pub fn send_lines(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
        what: &str,
        mut each: impl FnMut(&str) -> Result<()>,
    ) -> Result<()> {
        use std::io::BufRead;
        let resp = self.run(method, path, headers, body)?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body = resp.into_body().read_to_vec().unwrap_or_default();
            return Answer { status, body }.check_function(what).map(|_| ());
        }
        let reader = std::io::BufReader::new(resp.into_body().into_reader());
        for line in reader.lines() {
            each(&line.context("reading the stream")?)?;
        }
        Ok(())
    }
}

//! `sedge calls ls|show|retry|purge`: the node's asynchronous calls and tasks.

use anyhow::{Context, Result};

use super::gateway::Gateway;
use crate::client::Client;

/// List, inspect, retry and purge asynchronous calls (and tasks).
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
    #[command(flatten)]
    pub gateway: Gateway,
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum State {
    Queued,
    Running,
    Done,
    Failed,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Calls, newest first.
    #[command(alias = "list")]
    Ls {
        /// Only this function's calls.
        #[arg(long)]
        function: Option<String>,
        /// Only calls in this state (failed: the dead-letter list).
        #[arg(long, value_enum)]
        state: Option<State>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One call: status, attempts, timings, the request and the result or error.
    Show {
        /// The call's id (its X-Call-Id, or a task id).
        id: String,
    },
    /// Queue a finished (done or failed) call again, attempts from zero.
    Retry {
        /// The call's id.
        id: String,
    },
    /// Remove finished calls (queued and running ones stay).
    Purge {
        /// Only this function's calls.
        #[arg(long)]
        function: Option<String>,
        /// Only done, or only failed, calls.
        #[arg(long, value_enum)]
        state: Option<State>,
    },
}

fn query(function: Option<&str>, state: Option<State>, limit: Option<u32>) -> String {
    let mut parts = Vec::new();
    if let Some(f) = function {
        parts.push(format!("function={f}"));
    }
    if let Some(s) = state {
        parts.push(format!("state={}", s.as_str()));
    }
    if let Some(n) = limit {
        parts.push(format!("limit={n}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn checked_id(id: &str) -> Result<&str> {
    anyhow::ensure!(
        !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')),
        "{id:?} is not a call id (letters, digits, '-', '_', '.' or ':')"
    );
    Ok(id)
}

pub fn run(client: &Client, args: Args) -> Result<()> {
    match args.command {
        Sub::Ls { function, state, limit } => {
            let path = format!("/system/calls{}", query(function.as_deref(), state, Some(limit)));
            let list = client.get(&path)?.check("listing calls")?.json()?;
            println!(
                "{:<36} {:<20} {:<8} {:>8} {:>6}  {:<24}  ERROR",
                "ID", "FUNCTION", "STATE", "ATTEMPTS", "STATUS", "ACCEPTED"
            );
            for c in list.as_array().into_iter().flatten() {
                let s = |k: &str| c.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_owned();
                let status = c.get("status").and_then(|v| v.as_u64()).map_or("-".to_owned(), |v| v.to_string());
                println!(
                    "{:<36} {:<20} {:<8} {:>8} {:>6}  {:<24}  {}",
                    s("id"),
                    s("function"),
                    s("state"),
                    c.get("attempts").and_then(|v| v.as_u64()).unwrap_or(0),
                    status,
                    s("accepted_at"),
                    c.get("error").and_then(|v| v.as_str()).unwrap_or("")
                );
            }
        }
        Sub::Show { id } => {
            let call =
                client.get(&format!("/system/calls/{}", checked_id(&id)?))?.check(&format!("showing call {id}"))?;
            let value = call.json()?;
            println!("{}", serde_json::to_string_pretty(&value).context("printing the call")?);
        }
        Sub::Retry { id } => {
            let path = format!("/system/calls/{}/retry", checked_id(&id)?);
            client.send("POST", &path, &[], Vec::new())?.check(&format!("retrying call {id}"))?;
            println!("call {id} queued again");
        }
        Sub::Purge { function, state } => {
            let path = format!("/system/calls/purge{}", query(function.as_deref(), state, None));
            let answer = client.send("POST", &path, &[], Vec::new())?.check("purging calls")?.json()?;
            println!("removed {} finished calls", answer.get("removed").and_then(|v| v.as_u64()).unwrap_or(0));
        }
    }
    Ok(())
}

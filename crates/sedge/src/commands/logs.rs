//! `sedge logs NAME [--tail N] [--since DURATION|TIME] [--follow]`

use std::time::SystemTime;

use anyhow::{anyhow, Context, Result};

use super::gateway::Gateway;
use crate::client::Client;

/// Print a function's log.
#[derive(clap::Args)]
pub struct Args {
    /// The function whose log to print.
    name: String,
    /// Only the last N lines [default: all]
    #[arg(long, value_name = "N")]
    tail: Option<u32>,
    /// Only lines written since then: a duration back from now (`10m`,
    /// `2h`) or an RFC 3339 time (`2024-05-01T12:00:00Z`).
    #[arg(long, value_name = "DURATION|TIME")]
    since: Option<String>,
    /// Keep printing new lines as they come.
    #[arg(long, short = 'f')]
    follow: bool,
    /// In a cluster: only the lines of this node [default: every node that runs it].
    #[arg(long, value_name = "NODE")]
    node: Option<String>,
    #[command(flatten)]
    pub gateway: Gateway,
}

fn print_line(line: &str, printed: &mut bool) -> Result<()> {
    if line.trim().is_empty() {
        return Ok(());
    }
    *printed = true;
    let v: serde_json::Value = serde_json::from_str(line).context("the node sent a malformed log line")?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_owned();
    if v["unanswered"] == true {
        // The cluster's note of a node whose lines are missing.
        eprintln!("{} {}", s("timestamp"), s("text"));
        return Ok(());
    }
    match v.get("node").and_then(|n| n.as_str()) {
        Some(node) => println!("{} {node} {} {}", s("timestamp"), s("instance"), s("text")),
        None => println!("{} {} {}", s("timestamp"), s("instance"), s("text")),
    }
    Ok(())
}

pub fn run(client: &Client, args: Args) -> Result<()> {
    let tail = args.tail.map_or(-1, i64::from);
    let mut path = format!("/system/logs?name={}&tail={tail}&follow={}", args.name, args.follow);
    if let Some(given) = &args.since {
        path.push_str(&format!("&since={}", since(given, SystemTime::now())?));
    }
    if let Some(node) = &args.node {
        path.push_str(&format!("&node={node}"));
    }
    let mut printed = false;
    client.get_lines(&path, &format!("reading the log of {}", args.name), |line| print_line(line, &mut printed))?;
    if !printed && !args.follow {
        // Said on stderr, so a script reading the lines gets none.
        eprintln!("{} has printed nothing yet", args.name);
    }
    Ok(())
}

/// `--since` as the node takes it: a UTC time (no `+` to escape in a URL).
fn since(given: &str, now: SystemTime) -> Result<String> {
    let at = match humantime::parse_duration(given) {
        Ok(back) => now.checked_sub(back).unwrap_or(SystemTime::UNIX_EPOCH),
        Err(_) => sedge_core::timestamp::parse_rfc3339(given).map_err(|_| {
            anyhow!(
                "--since {given:?}: expected a duration back from now (10m, 2h) or an RFC 3339 time (2024-05-01T12:00:00Z)"
            )
        })?,
    };
    // No line is older than 1970; the format cannot say earlier times.
    Ok(humantime::format_rfc3339_nanos(at.max(SystemTime::UNIX_EPOCH)).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_back_or_a_time() {
        let now = humantime::parse_rfc3339("2024-05-01T12:00:00Z").expect("time");
        let at = |s: &str| since(s, now).expect(s);
        assert_eq!(at("10m"), "2024-05-01T11:50:00.000000000Z");
        assert_eq!(at("2024-05-01T14:00:00+02:00"), "2024-05-01T12:00:00.000000000Z");
        assert_eq!(since("100y", now).ok().as_deref(), Some("1970-01-01T00:00:00.000000000Z"));
        let e = since("soon", now).expect_err("not a time").to_string();
        assert!(e.contains("--since \"soon\""), "{e}");
    }
}

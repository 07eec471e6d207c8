//! `sedge logs NAME [--tail N] [--follow]`

use anyhow::{Context, Result};

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
    /// Keep printing new lines as they come.
    #[arg(long, short = 'f')]
    follow: bool,
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
    println!("{} {} {}", s("timestamp"), s("instance"), s("text"));
    Ok(())
}

pub fn run(client: &Client, args: Args) -> Result<()> {
    let tail = args.tail.map_or(-1, i64::from);
    let path = format!("/system/logs?name={}&tail={tail}&follow={}", args.name, args.follow);
    let mut printed = false;
    client.get_lines(&path, &format!("reading the log of {}", args.name), |line| print_line(line, &mut printed))?;
    if !printed && !args.follow {
        // Said on stderr, so a script reading the lines gets none.
        eprintln!("{} has printed nothing yet", args.name);
    }
    Ok(())
}

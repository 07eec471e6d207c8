//! `sedge invoke NAME [--data TEXT|@FILE|-] [--header K:V] [--method M] [--path P] [--async [--callback-url URL]]`

use std::io::{Read, Write};

use anyhow::{anyhow, Context, Result};

use super::gateway::Gateway;
use crate::client::Client;

/// Call a function and print its answer.
#[derive(clap::Args)]
pub struct Args {
    /// The function to call.
    name: String,
    /// Request body: text, @FILE to read a file, or - for stdin.
    #[arg(long, short = 'd', value_name = "TEXT|@FILE|-")]
    data: Option<String>,
    /// Extra header, as K:V (repeatable).
    #[arg(long = "header", short = 'H', value_name = "K:V")]
    headers: Vec<String>,
    /// HTTP method (default: POST with data, GET without).
    #[arg(long, short = 'X', value_name = "METHOD")]
    method: Option<String>,
    /// Sub-path after /function/NAME, e.g. /v1/predict.
    #[arg(long, default_value = "", hide_default_value = true, value_name = "PATH")]
    path: String,
    /// Queue the call (/async-function) and print its id instead of waiting
    /// for the answer; `sedge calls show ID` has the result later.
    #[arg(long = "async")]
    queued: bool,
    /// With --async: POST the result to this http:// URL when it is ready.
    #[arg(long, requires = "queued", value_name = "URL")]
    callback_url: Option<String>,
    #[command(flatten)]
    pub gateway: Gateway,
}

fn body(data: Option<&str>) -> Result<Option<Vec<u8>>> {
    Ok(match data {
        None => None,
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).context("reading stdin")?;
            Some(buf)
        }
        Some(d) if d.starts_with('@') => {
            Some(std::fs::read(&d[1..]).with_context(|| format!("cannot read {}", &d[1..]))?)
        }
        Some(d) => Some(d.as_bytes().to_vec()),
    })
}

pub fn run(client: &Client, args: Args) -> Result<()> {
    let body = body(args.data.as_deref())?;
    let method = args.method.unwrap_or_else(|| if body.is_some() { "POST".into() } else { "GET".into() });
    let mut headers = Vec::new();
    for h in &args.headers {
        let (k, v) = h.split_once(':').ok_or_else(|| anyhow!("--header {h:?}: expected K:V"))?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let sub =
        if args.path.is_empty() || args.path.starts_with('/') { args.path.clone() } else { format!("/{}", args.path) };
    if let Some(url) = &args.callback_url {
        headers.push(("X-Callback-Url".to_owned(), url.clone()));
    }
    let route = if args.queued { "async-function" } else { "function" };
    let answer = client.send(&method, &format!("/{route}/{}{sub}", args.name), &headers, body.unwrap_or_default())?;
    if args.queued && answer.ok() {
        let id = answer.json().ok().and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned));
        println!("{}", id.unwrap_or_default());
        return Ok(());
    }
    if !answer.ok() {
        let error = anyhow!("function {} answered {}: {}", args.name, answer.status, answer.error_message());
        // The node's own 404, not one the function sent for a path of its own.
        if answer.status == 404 && answer.error_message() == format!("function {} not found", args.name) {
            return Err(crate::failure::hinted(error, "`sedge ls` lists the functions the node has"));
        }
        return Err(error);
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&answer.body)?;
    if !answer.body.ends_with(b"\n") && !answer.body.is_empty() {
        writeln!(out)?;
    }
    Ok(())
}

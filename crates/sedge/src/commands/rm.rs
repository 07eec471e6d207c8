//! `sedge rm NAME`

use anyhow::Result;

use super::gateway::Gateway;
use crate::client::Client;

/// Remove a function.
#[derive(clap::Args)]
pub struct Args {
    /// The function to remove (its workers stop, its bundle and logs go).
    name: String,
    #[command(flatten)]
    pub gateway: Gateway,
}

pub fn run(client: &Client, args: Args) -> Result<()> {
    let body = serde_json::to_vec(&serde_json::json!({ "functionName": args.name }))?;
    let headers = [("content-type".to_owned(), "application/json".to_owned())];
    client.send("DELETE", "/system/functions", &headers, body)?.check_function(&format!("removing {}", args.name))?;
    println!("removed {}", args.name);
    Ok(())
}

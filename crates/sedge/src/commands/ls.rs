//! `sedge ls`

use anyhow::Result;

use super::gateway::Gateway;
use crate::client::Client;

/// List deployed functions.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub gateway: Gateway,
}

pub fn run(client: &Client) -> Result<()> {
    let list = client.get("/system/functions")?.check("listing functions")?.json()?;
    let items = list.as_array().cloned().unwrap_or_default();
    println!("{:<24} {:<8} {:>8} {:>12}  IMAGE", "NAME", "RUNTIME", "REPLICAS", "INVOCATIONS");
    for f in items {
        let s = |k: &str| f.get(k).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).unwrap_or_default();
        let runtime = f.pointer("/sedge/runtime").and_then(|v| v.as_str()).unwrap_or("-");
        let image: String = s("image").chars().take(19).collect();
        println!(
            "{:<24} {:<8} {:>8} {:>12}  {image}",
            s("name"),
            runtime,
            s("availableReplicas"),
            s("invocationCount")
        );
    }
    Ok(())
}

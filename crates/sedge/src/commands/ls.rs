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
    // A node of a cluster says which nodes run each function.
    let clustered = items.iter().any(|f| f.pointer("/sedge/nodes").is_some());
    let nodes_head = if clustered { "  NODES" } else { "" };
    let head =
        format!("{:<24} {:<8} {:>8} {:>12}  {:<19}{nodes_head}", "NAME", "RUNTIME", "REPLICAS", "INVOCATIONS", "IMAGE");
    println!("{}", head.trim_end());
    for f in items {
        let s = |k: &str| f.get(k).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).unwrap_or_default();
        let runtime = f.pointer("/sedge/runtime").and_then(|v| v.as_str()).unwrap_or("-");
        let image: String = s("image").chars().take(19).collect();
        let nodes = if clustered { format!("  {}", nodes_of(&f)) } else { String::new() };
        let line = format!(
            "{:<24} {:<8} {:>8} {:>12}  {image:<19}{nodes}",
            s("name"),
            runtime,
            s("availableReplicas"),
            s("invocationCount")
        );
        println!("{}", line.trim_end());
    }
    Ok(())
}

/// `a(1) b(2) c(no answer)`: each node running the function with its ready workers.
fn nodes_of(f: &serde_json::Value) -> String {
    let shares = f.pointer("/sedge/nodes").and_then(|v| v.as_array()).cloned().unwrap_or_default();
    if shares.is_empty() {
        return "-".to_owned();
    }
    let each = shares.iter().map(|n| {
        let name = n["node"].as_str().unwrap_or("?");
        if n["answered"] == true {
            format!("{name}({})", n["availableReplicas"])
        } else {
            format!("{name}(no answer)")
        }
    });
    each.collect::<Vec<_>>().join(" ")
}

//! `sedge nodes`

use anyhow::Result;
use serde_json::Value;

use super::gateway::Gateway;
use crate::client::Client;

/// List the nodes of the cluster (a single node lists itself): labels,
/// address, functions, load, last seen.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub gateway: Gateway,
}

pub fn run(client: &Client) -> Result<()> {
    let answer = client.get("/system/nodes")?.check("listing nodes")?.json()?;
    print!("{}", table(&answer));
    Ok(())
}

fn table(answer: &Value) -> String {
    let nodes = answer.get("nodes").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut out =
        format!("{:<16} {:<20} {:<24} {:>9}  {:<20}  FUNCTIONS\n", "NAME", "LABELS", "ADDRESS", "LOAD", "LAST SEEN");
    for n in &nodes {
        let s = |k: &str| n.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
        let list = |k: &str| {
            let v: Vec<&str> = n
                .get(k)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(",")
            }
        };
        let num = |k: &str| n.get(k).and_then(Value::as_u64).unwrap_or(0);
        let load = format!("{}/{}", num("inflight"), num("capacity"));
        out.push_str(&format!(
            "{:<16} {:<20} {:<24} {:>9}  {:<20}  {}\n",
            s("name"),
            list("labels"),
            s("address"),
            load,
            s("lastSeen"),
            list("functions")
        ));
    }
    if answer.get("clustered").and_then(Value::as_bool) == Some(false) {
        out.push_str("(a single node: `sedge serve --cluster nats://...` joins nodes into a cluster)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_per_node_with_its_load() {
        let answer = serde_json::json!({"clustered": true, "nodes": [
            {"name": "cam-gw-1", "labels": ["camera", "arm64"], "address": "http://10.0.0.2:8080", "functions": ["effnet"],
             "inflight": 2, "capacity": 8, "lastSeen": "2026-01-01T00:00:00Z"},
            {"name": "jetson-1", "labels": [], "address": "http://10.0.0.3:8080", "functions": [],
             "inflight": 0, "capacity": 0, "lastSeen": "2026-01-01T00:00:01Z"},
        ]});
        let text = table(&answer);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[1].starts_with("cam-gw-1") && lines[1].contains("camera,arm64") && lines[1].contains("2/8"));
        assert!(lines[1].ends_with("effnet"), "{text}");
        assert!(lines[2].contains("jetson-1") && lines[2].ends_with(" -"), "{text}");
    }
}

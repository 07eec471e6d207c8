//! `sedge scale NAME --replicas N`

use anyhow::Result;

use super::gateway::Gateway;
use crate::client::Client;

/// Hold a function at N workers (0: stop them now; requests wake it again).
#[derive(clap::Args)]
pub struct Args {
    /// The function to scale.
    name: String,
    /// Workers to hold from now on, whatever the load (0: none until a request comes).
    #[arg(long, value_name = "N")]
    replicas: u32,
    #[command(flatten)]
    pub gateway: Gateway,
}

pub fn run(client: &Client, args: Args) -> Result<()> {
    let body = serde_json::to_vec(&serde_json::json!({ "serviceName": args.name, "replicas": args.replicas }))?;
    let headers = [("content-type".to_owned(), "application/json".to_owned())];
    let answer = client
        .send("POST", &format!("/system/scale-function/{}", args.name), &headers, body)?
        .check_function(&format!("scaling {}", args.name))?;
    // A node of a cluster answers with each node running the function.
    let nodes = answer.json().ok().and_then(|v| v.get("nodes").and_then(|n| n.as_array()).cloned());
    let Some(nodes) = nodes else {
        println!("scaled {} to {} replicas", args.name, args.replicas);
        return Ok(());
    };
    let on = |scaled: bool| nodes.iter().filter(move |n| (n["scaled"] == true) == scaled);
    let done: Vec<&str> = on(true).filter_map(|n| n["node"].as_str()).collect();
    if done.is_empty() {
        println!(
            "scaled {} to {} replicas: no node runs it right now; each that starts it holds that",
            args.name, args.replicas
        );
    } else {
        println!("scaled {} to {} replicas on each of: {}", args.name, args.replicas, done.join(", "));
    }
    for n in on(false) {
        eprintln!(
            "not yet on {}: {} (it takes the pin once it hears the cluster)",
            n["node"].as_str().unwrap_or("?"),
            n["error"].as_str().unwrap_or("no answer")
        );
    }
    Ok(())
}

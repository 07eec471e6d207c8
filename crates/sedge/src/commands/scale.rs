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
    client
        .send("POST", &format!("/system/scale-function/{}", args.name), &headers, body)?
        .check_function(&format!("scaling {}", args.name))?;
    println!("scaled {} to {} replicas", args.name, args.replicas);
    Ok(())
}

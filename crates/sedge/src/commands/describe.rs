//! `sedge describe NAME`

use anyhow::Result;

use super::gateway::Gateway;
use crate::client::Client;

/// Show a function's spec and state.
#[derive(clap::Args)]
pub struct Args {
    /// The function to show.
    name: String,
    #[command(flatten)]
    pub gateway: Gateway,
}

pub fn run(client: &Client, args: Args) -> Result<()> {
    let answer =
        client.get(&format!("/system/function/{}", args.name))?.check_function(&format!("describing {}", args.name))?;
    println!("{}", serde_json::to_string_pretty(&answer.json()?)?);
    Ok(())
}

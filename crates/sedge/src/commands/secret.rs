//! `sedge secret create|update|ls|rm` (the shapes of faas-cli's secret
//! commands) and `sedge rotate-token NAME`.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use base64::Engine;

use super::gateway::Gateway;
use crate::client::Client;

/// Manage the secrets functions name in `secrets = [...]`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: SecretCommand,
    #[command(flatten)]
    pub gateway: Gateway,
}

#[derive(clap::Subcommand)]
enum SecretCommand {
    /// Create a secret (value from --from-literal, --from-file or standard input).
    Create(Value),
    /// Replace a secret's value.
    Update(Value),
    /// List secret names (never values).
    #[command(alias = "list")]
    Ls,
    /// Remove a secret no function uses.
    #[command(alias = "remove")]
    Rm {
        /// The secret to remove.
        name: String,
    },
}

#[derive(clap::Args)]
struct Value {
    /// The secret's name, as functions list it in `secrets = [...]`.
    name: String,
    /// The value, given on the command line (it shows in `ps` and shell history).
    #[arg(long, value_name = "VALUE", conflicts_with = "from_file")]
    from_literal: Option<String>,
    /// Read the value from this file, byte for byte.
    #[arg(long, value_name = "FILE")]
    from_file: Option<PathBuf>,
}

impl Value {
    fn bytes(&self) -> Result<Vec<u8>> {
        match (&self.from_literal, &self.from_file) {
            (Some(text), _) => Ok(text.clone().into_bytes()),
            (None, Some(file)) => {
                std::fs::read(file).with_context(|| format!("--from-file: reading {}", file.display()))
            }
            (None, None) => {
                let mut buf = Vec::new();
                std::io::stdin().read_to_end(&mut buf).context("reading the value from standard input")?;
                if buf.is_empty() {
                    bail!("no value: give --from-literal, --from-file or the value on standard input");
                }
                Ok(buf)
            }
        }
    }
}

fn json_headers() -> [(String, String); 1] {
    [("content-type".to_owned(), "application/json".to_owned())]
}

pub fn run(client: &Client, args: Args) -> Result<()> {
    match args.command {
        SecretCommand::Create(v) => send_value(client, "POST", "creating", &v, "created"),
        SecretCommand::Update(v) => send_value(client, "PUT", "updating", &v, "updated"),
        SecretCommand::Ls => {
            let answer = client.get("/system/secrets")?.check("listing secrets")?;
            let list = answer.json()?;
            for s in list.as_array().map(Vec::as_slice).unwrap_or_default() {
                println!("{}", s["name"].as_str().unwrap_or_default());
            }
            Ok(())
        }
        SecretCommand::Rm { name } => {
            let body = serde_json::to_vec(&serde_json::json!({ "name": name }))?;
            client
                .send("DELETE", "/system/secrets", &json_headers(), body)?
                .check(&format!("removing secret {name}"))?;
            println!("removed secret {name}");
            Ok(())
        }
    }
}

fn send_value(client: &Client, method: &str, doing: &str, v: &Value, done: &str) -> Result<()> {
    let raw = base64::engine::general_purpose::STANDARD.encode(v.bytes()?);
    let body = serde_json::to_vec(&serde_json::json!({ "name": v.name, "rawValue": raw }))?;
    client.send(method, "/system/secrets", &json_headers(), body)?.check(&format!("{doing} secret {}", v.name))?;
    println!("{done} secret {}", v.name);
    Ok(())
}

/// Make a new invoke token for a function with `[auth] invoke = true`; the old one stops working.
#[derive(clap::Args)]
pub struct RotateArgs {
    /// The function whose token to replace.
    name: String,
    #[command(flatten)]
    pub gateway: Gateway,
}

pub fn rotate(client: &Client, args: RotateArgs) -> Result<()> {
    let path = format!("/system/function/{}/token", args.name);
    let answer = client
        .send("POST", &path, &json_headers(), Vec::new())?
        .check_function(&format!("rotating the token of {}", args.name))?;
    let token = answer.json()?["token"].as_str().unwrap_or_default().to_owned();
    println!("{token}");
    Ok(())
}

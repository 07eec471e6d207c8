//! `sedge login` / `sedge logout`: keep a node's admin password for the CLI.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context, Result};

use super::gateway::Gateway;
use crate::client::Client;
use crate::credentials;

/// Store the node's admin password for later commands (checked first).
#[derive(clap::Args)]
pub struct Args {
    /// Read the password from standard input (as `faas-cli login --password-stdin`).
    #[arg(long)]
    password_stdin: bool,
    /// User name; a node has one user, `admin`.
    #[arg(long, short = 'u', default_value = sedge_store::secrets::ADMIN_USER)]
    username: String,
    #[command(flatten)]
    pub gateway: Gateway,
}

/// Forget the stored credentials for the gateway.
#[derive(clap::Args)]
pub struct LogoutArgs {
    #[command(flatten)]
    pub gateway: Gateway,
}

pub fn run(gateway: &Client, args: Args) -> Result<()> {
    if args.username != sedge_store::secrets::ADMIN_USER {
        bail!("--username: a node has one user, {}; found {:?}", sedge_store::secrets::ADMIN_USER, args.username);
    }
    let stdin = std::io::stdin();
    if !args.password_stdin && stdin.is_terminal() {
        eprint!("admin password for {}: ", gateway.base());
        std::io::stderr().flush()?;
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line).context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        bail!("no password given on standard input");
    }
    let client = Client::new(gateway.base()).with_password(Some(&password));
    client.get("/system/info")?.check(&format!("logging in to {}", gateway.base()))?;
    let path = credentials::store(gateway.base(), &password)?;
    println!("logged in to {}; credentials saved in {}", gateway.base(), path.display());
    Ok(())
}

pub fn logout(gateway: &Client) -> Result<()> {
    if credentials::forget(gateway.base())? {
        println!("logged out of {}", gateway.base());
    } else {
        println!("no stored credentials for {}", gateway.base());
    }
    Ok(())
}

//! `sedge`: one binary that is both the node (`sedge serve`) and the CLI
//! that talks to a node over HTTP (deploy, invoke, ls, describe, logs, rm,
//! scale). One file per subcommand under `commands/`; the tokio runtime is
//! built here and nowhere else.

mod client;
mod commands;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sedge", version, about = "A serverless platform for machine learning at the edge")]
struct Cli {
    /// The node to talk to (client commands).
    #[arg(long, global = true, env = "SEDGE_GATEWAY", default_value = "http://127.0.0.1:8080")]
    gateway: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Serve(commands::serve::Args),
    Deploy(commands::deploy::Args),
    Invoke(commands::invoke::Args),
    /// List deployed functions.
    #[command(alias = "list")]
    Ls,
    Describe(commands::describe::Args),
    Logs(commands::logs::Args),
    #[command(alias = "remove")]
    Rm(commands::rm::Args),
    Scale(commands::scale::Args),
}

fn main() {
    let cli = Cli::parse();
    let gateway = client::Client::new(&cli.gateway);
    let result = match cli.command {
        Command::Serve(args) => commands::serve::run(args),
        Command::Deploy(args) => commands::deploy::run(&gateway, args),
        Command::Invoke(args) => commands::invoke::run(&gateway, args),
        Command::Ls => commands::ls::run(&gateway),
        Command::Describe(args) => commands::describe::run(&gateway, args),
        Command::Logs(args) => commands::logs::run(&gateway, args),
        Command::Rm(args) => commands::rm::run(&gateway, args),
        Command::Scale(args) => commands::scale::run(&gateway, args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

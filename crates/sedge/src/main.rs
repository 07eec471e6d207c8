//! `sedge`: one binary that is both the node (`sedge serve`) and the CLI
//! that talks to a node over HTTP (deploy, invoke, ls, describe, logs, rm,
//! scale), plus the benchmark (`sedge bench`). One file per subcommand under
//! `commands/`; the tokio runtime is built here and nowhere else.

mod client;
mod commands;
mod credentials;
mod signals;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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
    Bench(commands::bench::Args),
    Login(commands::login::Args),
    /// Forget the stored credentials for the gateway.
    Logout,
    Secret(commands::secret::Args),
    /// Make a new invoke token for a function with `[auth] invoke = true`.
    RotateToken(commands::secret::RotateArgs),
}

fn main() {
    // The sandbox launcher takes its arguments verbatim (a worker's own
    // command line follows), so it is recognised before clap sees them.
    let mut raw = std::env::args_os();
    if raw.nth(1).is_some_and(|a| a == sedge_runtime::sandbox::launch::SUBCOMMAND) {
        std::process::exit(commands::sandbox_exec::run(raw.collect()));
    }
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The bench starts a node of its own unless one was named.
    let gateway_given = matches.value_source("gateway").is_some_and(|s| s != ValueSource::DefaultValue);
    let password = match credentials::find(&cli.gateway) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    };
    let gateway = client::Client::new(&cli.gateway).with_password(password.as_deref());
    let result = match cli.command {
        Command::Serve(args) => commands::serve::run(args),
        Command::Deploy(args) => commands::deploy::run(&gateway, args),
        Command::Invoke(args) => commands::invoke::run(&gateway, args),
        Command::Ls => commands::ls::run(&gateway),
        Command::Describe(args) => commands::describe::run(&gateway, args),
        Command::Logs(args) => commands::logs::run(&gateway, args),
        Command::Rm(args) => commands::rm::run(&gateway, args),
        Command::Scale(args) => commands::scale::run(&gateway, args),
        Command::Login(args) => commands::login::run(&gateway, args),
        Command::Logout => commands::login::logout(&gateway),
        Command::Secret(args) => commands::secret::run(&gateway, args),
        Command::RotateToken(args) => commands::secret::rotate(&gateway, args),
        Command::Bench(args) => commands::bench::run(args, gateway_given.then_some(cli.gateway.as_str())),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

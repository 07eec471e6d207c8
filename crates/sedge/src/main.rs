//! `sedge`: one binary that is both the node (`sedge serve`) and the CLI
//! that talks to a node over HTTP (deploy, invoke, ls, describe, logs, rm,
//! scale, calls), plus the benchmark (`sedge bench`). One file per subcommand under
//! `commands/`; the tokio runtime is built here and nowhere else.

mod client;
mod commands;
mod credentials;
mod failure;
mod signals;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sedge", version, about = "A serverless platform for machine learning at the edge")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Serve(Box<commands::serve::Args>),
    Deploy(commands::deploy::Args),
    Invoke(commands::invoke::Args),
    #[command(alias = "list")]
    Ls(commands::ls::Args),
    Describe(commands::describe::Args),
    Nodes(commands::nodes::Args),
    Logs(commands::logs::Args),
    #[command(alias = "remove")]
    Rm(commands::rm::Args),
    Scale(commands::scale::Args),
    Bench(commands::bench::Args),
    Login(commands::login::Args),
    Logout(commands::login::LogoutArgs),
    Secret(commands::secret::Args),
    RotateToken(commands::secret::RotateArgs),
    Calls(commands::calls::Args),
}

fn run(command: Command) -> anyhow::Result<()> {
    use commands::*;
    match command {
        Command::Serve(args) => serve::run(*args),
        Command::Bench(args) => bench::run(args),
        Command::Deploy(args) => deploy::run(&args.gateway.client()?, args),
        Command::Invoke(args) => invoke::run(&args.gateway.client()?, args),
        Command::Ls(args) => ls::run(&args.gateway.client()?),
        Command::Describe(args) => describe::run(&args.gateway.client()?, args),
        Command::Nodes(args) => nodes::run(&args.gateway.client()?),
        Command::Logs(args) => logs::run(&args.gateway.client()?, args),
        Command::Rm(args) => rm::run(&args.gateway.client()?, args),
        Command::Scale(args) => scale::run(&args.gateway.client()?, args),
        Command::Login(args) => login::run(&args.gateway.client()?, args),
        Command::Logout(args) => login::logout(&args.gateway.client()?),
        Command::Secret(args) => secret::run(&args.gateway.client()?, args),
        Command::RotateToken(args) => secret::rotate(&args.gateway.client()?, args),
        Command::Calls(args) => calls::run(&args.gateway.client()?, args),
    }
}

mod allocator;

fn main() {
    // The sandbox launcher takes its arguments verbatim (a worker's own
    // command line follows), so it is recognised before clap sees them.
    let mut raw = std::env::args_os();
    if raw.nth(1).is_some_and(|a| a == sedge_runtime::sandbox::launch::SUBCOMMAND) {
        std::process::exit(commands::sandbox_exec::run(raw.collect()));
    }
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve(_)) {
        allocator::return_large_blocks();
    }
    if let Err(e) = run(cli.command) {
        eprint!("{}", failure::render(&e));
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every subcommand, nested ones included, with its path of names.
    fn all(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        for sub in cmd.get_subcommands() {
            let name = format!("{path} {}", sub.get_name());
            all(sub, name.clone(), out);
            out.push((name, sub.clone()));
        }
    }

    fn commands() -> Vec<(String, clap::Command)> {
        let mut root = Cli::command();
        root.build();
        let mut out = Vec::new();
        all(&root, "sedge".into(), &mut out);
        out
    }

    #[test]
    fn every_argument_and_command_is_described() {
        let mut missing = Vec::new();
        for (path, cmd) in commands() {
            if cmd.is_hide_set() {
                continue;
            }
            if cmd.get_about().is_none() {
                missing.push(path.clone());
            }
            for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
                if arg.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
        }
        assert!(commands().len() > 15, "the tree was walked");
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn only_client_commands_take_a_gateway() {
        let takes = |cmd: &clap::Command| cmd.get_arguments().any(|a| a.get_id() == "gateway");
        for (path, cmd) in commands() {
            match path.as_str() {
                "sedge serve" | "sedge bench load" | "sedge bench ceiling" | "sedge bench report" => {
                    assert!(!takes(&cmd), "{path} lists --gateway")
                }
                "sedge ls" | "sedge deploy" | "sedge secret ls" | "sedge bench run" => {
                    assert!(takes(&cmd), "{path} has no --gateway")
                }
                _ => {}
            }
        }
    }

    #[test]
    fn a_short_flag_means_one_thing_everywhere() {
        let mut seen: std::collections::HashMap<char, (String, String)> = std::collections::HashMap::new();
        for (path, cmd) in commands() {
            for arg in cmd.get_arguments() {
                let (Some(short), Some(long)) = (arg.get_short(), arg.get_long()) else { continue };
                if let Some((other_path, other_long)) = seen.get(&short) {
                    assert_eq!(other_long, long, "-{short} is --{other_long} in {other_path} but --{long} in {path}");
                } else {
                    seen.insert(short, (path.clone(), long.to_owned()));
                }
            }
        }
    }
}

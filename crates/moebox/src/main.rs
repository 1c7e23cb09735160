//! The `moebox` binary: parses the command line and hands over to the library crates.

#![forbid(unsafe_code)]

mod generate;
mod provision;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "moebox",
    version,
    about = "On-prem Mixture-of-Experts LLM appliance"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate from a raw prompt with a model folder, without the gateway.
    Generate(generate::GenerateArgs),
    /// Check and prepare the GPUs; the engines start only after it passes.
    Provision(provision::ProvisionArgs),
    /// Configuration file commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a configuration file and explain every mistake with the key's path.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Provision(args) => return provision::run(args),
        Command::Config {
            command: ConfigCommand::Check { config },
        } => moebox_config::Config::load(&config)
            .map(|_| println!("{}: ok", config.display()))
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("moebox: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `MOEBOX_LOG` (default: warnings), so stdout stays the command's
/// output.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MOEBOX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

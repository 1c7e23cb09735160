//! The `moebox` binary: parses the command line and hands over to the library crates.

#![forbid(unsafe_code)]

mod bench;
mod engine;
mod generate;
mod keys;
mod provision;
mod serve;
mod tco;
mod up;

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
    /// Measure the continuous-batching scheduler: throughput, time to first token, memory.
    Bench(bench::BenchArgs),
    /// Run one engine worker: the model on GPU N, served on its Unix socket until SIGTERM.
    Engine(engine::EngineArgs),
    /// Check and prepare the GPUs; the engines start only after it passes.
    Provision(provision::ProvisionArgs),
    /// Run the gateway: the OpenAI API, keys and routing to the engines, until SIGTERM.
    Serve(serve::ServeArgs),
    /// The whole appliance locally on the CPU: engine, gateway, keys; prints URL and keys.
    Up(up::UpArgs),
    /// Create, list and revoke API keys.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// What the appliance costs: the TCO report.
    Tco {
        #[command(subcommand)]
        command: tco::TcoCommand,
    },
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
        Command::Bench(args) => bench::run(args),
        Command::Engine(args) => engine::run(args),
        Command::Provision(args) => return provision::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Up(args) => up::run(args),
        Command::Keys { command } => keys::run(command),
        Command::Tco { command } => tco::run(command),
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

/// Logs filtered by `MOEBOX_LOG` (default: warnings): to the journal, with structured fields,
/// when systemd runs the service (`JOURNAL_STREAM` names our stderr); to stderr otherwise, so
/// stdout stays the command's output.
fn init_logging() {
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt};
    let filter = tracing_subscriber::EnvFilter::try_from_env("MOEBOX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(journald) = tracing_journald::layer()
    {
        registry
            .with(journald.with_syslog_identifier("moebox".to_owned()))
            .init();
        return;
    }
    registry
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
}

//! `moebox engine --config FILE --gpu N`: one engine worker, serving the internal API on its
//! Unix socket until SIGTERM.

use std::path::PathBuf;

use moebox_config::Config;
use moebox_engine_server::{EngineProcess, ServerLimits};
use moebox_systemd::SystemdEnv;

#[derive(Debug, clap::Args)]
pub struct EngineArgs {
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// GPU index: the CUDA device, and `{gpu}` in `engine.socket`.
    #[arg(long, value_name = "N")]
    gpu: u32,
}

pub fn run(args: EngineArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let process = EngineProcess {
        config,
        gpu: args.gpu,
        systemd: SystemdEnv::from_process(),
        pid: std::process::id(),
        limits: ServerLimits::default(),
    };
    moebox_engine_server::run(process).map_err(|err| anyhow::anyhow!(err.one_line()))
}

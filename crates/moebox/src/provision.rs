//! `moebox provision`: the GPU health gate. Exit status 0: the engines may start (warnings
//! allowed); 1: a failure; 2: a usage or configuration error.

use std::{path::PathBuf, process::ExitCode};

use moebox_config::Config;
use moebox_provision::{Host, Sysroot, notify::Notifier, report::write_atomically};

/// Exit status for a usage or configuration error (clap uses it for bad arguments too).
const EXIT_USAGE: u8 = 2;

#[derive(Debug, clap::Args)]
pub struct ProvisionArgs {
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Read sysfs, procfs and /dev below DIR (a captured tree) instead of the machine; makes no
    /// changes, and skips NVML and the CUDA smoke test.
    #[arg(long, value_name = "DIR")]
    sysroot: Option<PathBuf>,
    /// Print the report as JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Check only: do not load kernel modules or create device nodes.
    #[arg(long)]
    check_only: bool,
}

pub fn run(args: ProvisionArgs) -> ExitCode {
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("moebox: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut host = match &args.sysroot {
        Some(dir) if !dir.is_dir() => {
            eprintln!("moebox: --sysroot {}: not a directory", dir.display());
            return ExitCode::from(EXIT_USAGE);
        }
        Some(dir) => Host::captured(Sysroot::captured(dir)),
        None => Host::live(&config, args.check_only),
    };
    let notifier = Notifier::from_env_value(std::env::var_os("NOTIFY_SOCKET"));
    let mut progress = |step: &str| {
        tracing::info!(step, "provision");
        if let Some(notifier) = &notifier {
            notifier.status(step);
        }
    };
    let report = moebox_provision::provision(&config.provision, &mut host, &mut progress);
    let json = report.to_json();
    if args.json {
        println!("{json}");
    } else {
        print!("{}", report.to_table());
    }
    progress(&report.status_line());
    if let Err(err) = write_atomically(&config.provision.report, format!("{json}\n").as_bytes()) {
        // Without the report the engines cannot tell that the gate passed.
        eprintln!("moebox: {err}");
        return ExitCode::FAILURE;
    }
    ExitCode::from(report.exit_code())
}

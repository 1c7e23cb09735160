//! `moebox serve --config FILE`: the gateway, until SIGTERM or SIGINT.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use moebox_config::Config;
use moebox_ledger::{Ledger, UsageWriter, WriterThread};
use moebox_systemd::SystemdEnv;

/// How long the async runtime waits for its blocking threads at exit.
pub const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let (ledger, writer, writer_thread) = open_gateway_ledger(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let systemd = SystemdEnv::from_process();
    let result = runtime.block_on(async {
        let listener = listener(&config, &systemd).await?;
        let local = listener
            .local_addr()
            .context("the listening socket's address")?;
        let transport = moebox_gateway::transport(&config.gateway, local)?;
        let notifier = systemd.notifier();
        if let Some(notifier) = &notifier {
            notifier.ready();
            notifier.status(&format!(
                "serving {} on {local}",
                if config.gateway.tls { "HTTPS" } else { "HTTP" }
            ));
        }
        let gateway = moebox_gateway::build(&config, ledger, writer);
        moebox_gateway::serve(gateway, &config, listener, transport, shutdown_signal()).await;
        if let Some(notifier) = &notifier {
            notifier.stopping();
        }
        anyhow::Ok(())
    });
    // Every task (and with them every handle on the writer) is gone: the writer finishes
    // its queue and stops.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    writer_thread.join();
    result
}

pub fn open_ledger(config: &Config) -> anyhow::Result<Ledger> {
    Ledger::open(&config.ledger.database).context("ledger.database")
}

/// The gateway's two connections: reads and key checks, and the writer thread.
pub fn open_gateway_ledger(
    config: &Config,
) -> anyhow::Result<(Arc<Ledger>, UsageWriter, WriterThread)> {
    moebox_ledger::open_with_writer(&config.ledger.database, config.ledger.writer_queue)
        .context("ledger.database")
}

/// The socket systemd passed (socket activation), else `gateway.listen` bound here.
async fn listener(
    config: &Config,
    systemd: &SystemdEnv,
) -> anyhow::Result<tokio::net::TcpListener> {
    let mut passed = systemd
        .listen_fds(std::process::id())
        .context("socket activation")?;
    match passed.len() {
        0 => bind(config).await,
        1 => {
            let listener = std::net::TcpListener::from(passed.remove(0));
            listener
                .set_nonblocking(true)
                .context("socket activation: the passed socket")?;
            tokio::net::TcpListener::from_std(listener)
                .context("socket activation: the passed socket is not a TCP listener")
        }
        n => anyhow::bail!(
            "socket activation: systemd passed {n} sockets; moebox-gateway.socket must listen \
             on exactly one"
        ),
    }
}

pub async fn bind(config: &Config) -> anyhow::Result<tokio::net::TcpListener> {
    let address = config
        .gateway
        .listen_addr()
        .with_context(|| format!("gateway.listen: not an address: {}", config.gateway.listen))?;
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("gateway.listen: cannot listen on {address}"))
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: draining"),
        _ = interrupt.recv() => tracing::info!("SIGINT: draining"),
    }
}

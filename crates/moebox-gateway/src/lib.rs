//! The gateway: the only moebox process that faces the network.
//!
//! It serves the OpenAI API to staff (`openai` validates requests into
//! [`openai::ValidatedGeneration`] and shapes responses), authenticates Bearer keys against the
//! ledger, bounds everything a client can drive (`server` for connections and heads,
//! `service` for bodies, per-key and global admission, deadlines), and routes each generation
//! to the least-loaded ready engine over its Unix socket (`router`, `engine_client`), with
//! failover until the first token. One table maps every failure to HTTP status and OpenAI
//! error type ([`error::ApiError::shape`]).
//!
//! It never links ONNX Runtime or reads model files: engines speak `moebox-protocol`.

#![forbid(unsafe_code)]

pub mod accounting;
pub mod admin;
pub mod admission;
pub mod body;
pub mod engine_client;
pub mod error;
pub mod metrics;
pub mod openai;
pub mod pages;
pub mod router;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod tls;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use moebox_config::{Config, GatewayConfig};
use moebox_ledger::{Ledger, Retention, UsageWriter};
use tokio::{net::TcpListener, sync::watch};

pub use router::Router;
pub use server::Transport;
pub use service::{Gateway, Limits};

/// Why the gateway cannot start serving a listener.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(
        "gateway.tls = false, and the listening socket {0} is not on a loopback address: set \
         gateway.tls = true, or gateway.insecure_plaintext = true to serve plaintext anyway"
    )]
    PlaintextOffLoopback(SocketAddr),
}

/// The transport `config` asks for on a listener bound to `local` (which, for a socket
/// systemd passed, the config file does not know): TLS with the configured or first-boot
/// pair, or plaintext where that is allowed.
pub fn transport(config: &GatewayConfig, local: SocketAddr) -> Result<Transport, StartError> {
    if !config.tls {
        return if config.transport_allowed_on(local) {
            Ok(Transport::Plaintext)
        } else {
            Err(StartError::PlaintextOffLoopback(local))
        };
    }
    let (server, source) = tls::server_config(config)?;
    if source == tls::PairSource::Generated {
        tracing::warn!(
            certificate = %config.tls_certificate.display(),
            "generated a self-signed TLS certificate; clients must trust it explicitly \
             (or install your own pair there and restart)"
        );
    }
    Ok(Transport::Tls(tokio_rustls::TlsAcceptor::from(server)))
}

/// Starts polling the engines and serves `listener` with `transport` until `shutdown`
/// resolves, then drains. The caller owns the runtime, the listener (bound, or handed over
/// by systemd) and the ledger.
pub async fn serve(
    gateway: Arc<Gateway>,
    config: &Config,
    listener: TcpListener,
    transport: Transport,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_polling, polling) = watch::channel(false);
    if let Err(error) = accounting::sync_assets(gateway.ledger(), &config.tco) {
        // The pages still work from the config; only the register's history misses a step.
        tracing::error!(%error, "cannot record tco.assets in the ledger's asset register");
    }
    gateway.router().spawn_pollers(polling.clone());
    telemetry::spawn_pollers(
        config.gateway.engine_sockets(&config.engine),
        gateway.writer().clone(),
        config.gateway.telemetry_poll_interval(),
        config.gateway.engine_connect_timeout(),
        polling.clone(),
    );
    tokio::spawn(compact_periodically(
        Arc::clone(gateway.ledger()),
        Retention::from(&config.ledger),
        config.ledger.compaction_interval(),
        polling,
    ));
    server::serve(gateway, listener, transport, &config.gateway, shutdown).await;
    let _ = stop_polling.send(true);
}

/// The gateway and its router, not yet polling or serving. `ledger` answers key checks and
/// reads; `writer` makes usage records durable (see [`moebox_ledger::open_with_writer`]).
pub fn build(config: &Config, ledger: Arc<Ledger>, writer: UsageWriter) -> Arc<Gateway> {
    let gateway = &config.gateway;
    let router = Router::new(
        gateway.engine_sockets(&config.engine),
        gateway.engine_connect_timeout(),
        gateway.engine_poll_interval(),
        gateway.retry_after_seconds,
    );
    Gateway::new(
        Limits::from_config(config),
        ledger,
        writer,
        router,
        config.tco.clone(),
    )
}

/// Rolls the ledger up and prunes it every `interval` (first a minute after start, so a
/// restart loop does not compact over and over), until `stop` turns true.
async fn compact_periodically(
    ledger: Arc<Ledger>,
    retention: Retention,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut next = tokio::time::Instant::now() + interval.min(COMPACTION_FIRST_DELAY);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            _ = stop.changed() => return,
        }
        let ledger = Arc::clone(&ledger);
        let result = tokio::task::spawn_blocking(move || {
            ledger.compact(moebox_ledger::UnixSeconds::now(), &retention)
        })
        .await;
        match result {
            Ok(Ok(done)) => tracing::info!(?done, "ledger compacted"),
            Ok(Err(error)) => tracing::error!(%error, "ledger compaction failed"),
            Err(error) => tracing::error!(%error, "ledger compaction panicked"),
        }
        next = tokio::time::Instant::now() + interval;
    }
}

/// When the first compaction runs after start.
pub const COMPACTION_FIRST_DELAY: Duration = Duration::from_secs(60);

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

pub mod body;
pub mod engine_client;
pub mod error;
pub mod metrics;
pub mod openai;
pub mod router;
pub mod server;
pub mod service;
pub mod tls;

use std::{net::SocketAddr, sync::Arc};

use moebox_config::{Config, GatewayConfig};
use moebox_ledger::Ledger;
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
    gateway.router().spawn_pollers(polling);
    server::serve(gateway, listener, transport, &config.gateway, shutdown).await;
    let _ = stop_polling.send(true);
}

/// The gateway and its router, not yet polling or serving.
pub fn build(config: &Config, ledger: Arc<Ledger>) -> Arc<Gateway> {
    let gateway = &config.gateway;
    let router = Router::new(
        gateway.engine_sockets(&config.engine),
        gateway.engine_connect_timeout(),
        gateway.engine_poll_interval(),
        gateway.retry_after_seconds,
    );
    Gateway::new(Limits::from_config(config), ledger, router)
}

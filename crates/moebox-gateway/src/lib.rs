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

use std::sync::Arc;

use moebox_config::Config;
use moebox_ledger::Ledger;
use tokio::{net::TcpListener, sync::watch};

pub use router::Router;
pub use service::{Gateway, Limits};

/// Builds the gateway for `config` and serves `listener` until `shutdown` resolves (see
/// [`serve`]).
pub async fn run(
    config: &Config,
    ledger: Arc<Ledger>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    serve(build(config, ledger), config, listener, shutdown).await;
}

/// Starts polling the engines and serves `listener` until `shutdown` resolves, then drains.
/// The caller owns the runtime, the listener (bound, or handed over by systemd) and the
/// ledger.
pub async fn serve(
    gateway: Arc<Gateway>,
    config: &Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_polling, polling) = watch::channel(false);
    gateway.router().spawn_pollers(polling);
    server::serve(gateway, listener, &config.gateway, shutdown).await;
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

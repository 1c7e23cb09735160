//! The listener: accepts connections up to `gateway.max_connections`, serves HTTP/1.1 and
//! HTTP/2 (hyper-util's auto builder picks by the client's preface) with the configured
//! bounds, and shuts down gracefully. Plaintext for now; TLS (rustls, a first-boot
//! self-signed pair) wraps the accepted stream here next, which is why the config refuses
//! plaintext off loopback unless `gateway.insecure_plaintext` is set.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use moebox_config::GatewayConfig;
use tokio::{net::TcpListener, sync::Semaphore};

use crate::service::Gateway;

/// Pause after a failed `accept` (out of file descriptors, say), so the loop does not spin.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// HTTP/2 streams a client may reset before it has sent anything else: the rapid-reset attack
/// (CVE-2023-44487) bound. hyper's default is 20.
pub const HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// HTTP/2 streams the server may reset because of client errors before closing the connection
/// (hyper's default, CVE-2024-27316-style floods).
pub const HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1_024;
/// HTTP/2 flow-control windows, as Envoy's edge guidance: 64 KiB per stream, 1 MiB per
/// connection (hyper's default stream window is 1 MiB), so one connection cannot make the
/// gateway buffer much of a request it has not yet read.
pub const HTTP2_INITIAL_STREAM_WINDOW: u32 = 64 * 1024;
pub const HTTP2_INITIAL_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// HTTP/2 PING interval and the time a client has to answer, to drop dead connections.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The connection builder with every bound from `[gateway]`.
pub fn connection_builder(config: &GatewayConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout())
        .max_headers(config.max_headers)
        // The whole request head must fit this buffer (431 otherwise). Validated to be at
        // least hyper's minimum.
        .max_buf_size(
            config
                .max_header_bytes
                .max(moebox_config::MIN_GATEWAY_MAX_HEADER_BYTES),
        )
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS)
        .initial_stream_window_size(HTTP2_INITIAL_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_INITIAL_CONNECTION_WINDOW)
        .keep_alive_interval(HTTP2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT);
    builder
}

/// Serves `listener` until `shutdown` resolves, then stops accepting and lets open
/// connections finish for up to `config.shutdown_grace_seconds`.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    config: &GatewayConfig,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Arc::new(connection_builder(config));
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // Wait for a free connection slot before accepting: beyond the limit, connections
        // wait in the kernel's backlog instead of costing memory here.
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let gateway = Arc::clone(&gateway);
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(gateway, builder, watcher, stream, peer).await;
        });
    }
    drop(listener);
    let grace = config.shutdown_grace();
    tracing::info!(connections = graceful.count(), "gateway draining");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_seconds = grace.as_secs(),
            "connections still open after the shutdown grace; closing them"
        );
    }
}

async fn serve_connection(
    gateway: Arc<Gateway>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let service = service_fn(move |request| {
        let gateway = Arc::clone(&gateway);
        async move { Ok::<_, Infallible>(gateway.handle(request).await) }
    });
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    if let Err(error) = watcher.watch(connection).await {
        // Malformed requests, timeouts and resets land here; hyper has already answered
        // what it could (400, 408, 431). The peer's address is all that is logged.
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}

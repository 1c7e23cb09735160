//! The listener: accepts connections up to `gateway.max_connections` from the networks in
//! `gateway.allowed_clients`, secures them with TLS (`tls`) unless plaintext was asked for,
//! serves HTTP/1.1 and HTTP/2 (hyper-util's auto builder picks by the client's preface) with
//! the configured bounds, closes connections idle for `gateway.idle_timeout_seconds`, and
//! shuts down gracefully.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hyper::{body::Body, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use moebox_config::GatewayConfig;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::{Semaphore, watch},
};

use crate::{
    body::GatewayBody,
    service::{ClientAddr, Gateway},
};

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

/// How the accepted connections are secured.
#[derive(Clone)]
pub enum Transport {
    Plaintext,
    Tls(tokio_rustls::TlsAcceptor),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plaintext => "Plaintext",
            Self::Tls(_) => "Tls",
        })
    }
}

/// Serves `listener` until `shutdown` resolves, then stops accepting, asks every connection
/// to finish (HTTP/2 GOAWAY, HTTP/1 close after the response in flight) and waits for them
/// for up to `config.shutdown_grace_seconds`.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    transport: Transport,
    config: &GatewayConfig,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Arc::new(connection_builder(config));
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let (draining, drain_signal) = watch::channel(false);
    let config = Arc::new(config.clone());
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
        if !config.client_allowed(peer.ip()) {
            // Closed before a byte is read: a refused network learns nothing about the server.
            gateway.metrics().record_connection_refused();
            tracing::debug!(%peer, "client not in gateway.allowed_clients; connection closed");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            gateway: Arc::clone(&gateway),
            builder: Arc::clone(&builder),
            drain: drain_signal.clone(),
            idle_timeout: config.idle_timeout(),
            peer,
        };
        let transport = transport.clone();
        let handshake_timeout = config.tls_handshake_timeout();
        tokio::spawn(async move {
            let _permit = permit;
            match transport {
                Transport::Plaintext => connection.serve(stream).await,
                Transport::Tls(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => connection.serve(tls).await,
                        Ok(Err(error)) => {
                            connection.gateway.metrics().record_tls_handshake_failure();
                            tracing::debug!(peer = %connection.peer, %error, "TLS handshake failed");
                        }
                        Err(_) => {
                            connection.gateway.metrics().record_tls_handshake_failure();
                            tracing::debug!(peer = %connection.peer, "TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    let open = config.max_connections - connections.available_permits();
    tracing::info!(connections = open, "gateway draining");
    let _ = draining.send(true);
    let all = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    let grace = config.shutdown_grace();
    if tokio::time::timeout(grace, connections.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            grace_seconds = grace.as_secs(),
            "connections still open after the shutdown grace; closing them"
        );
    }
}

/// One accepted connection and what it needs to be served.
struct Connection {
    gateway: Arc<Gateway>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    drain: watch::Receiver<bool>,
    idle_timeout: Duration,
    peer: SocketAddr,
}

impl Connection {
    async fn serve<I>(mut self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::default());
        let gateway = Arc::clone(&self.gateway);
        let requests = Arc::clone(&activity);
        let peer = self.peer;
        let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ClientAddr(peer));
            let gateway = Arc::clone(&gateway);
            let guard = requests.begin();
            async move {
                let response = gateway.handle(request).await;
                // The request counts as active until its body (a stream, maybe) is done.
                Ok::<_, Infallible>(response.map(|body| InFlightBody {
                    body,
                    _guard: guard,
                }))
            }
        });
        let connection = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let mut closing = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        // Malformed requests, timeouts and resets land here; hyper has already
                        // answered what it could (400, 408, 431). The peer's address is all
                        // that is logged.
                        tracing::debug!(peer = %self.peer, %error, "connection ended with an error");
                    }
                    return;
                }
                _ = self.drain.changed(), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = activity.idle(self.idle_timeout), if !closing => {
                    tracing::debug!(peer = %self.peer, "idle connection closed");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// Requests in flight on one connection, and since when it has had none.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }
}

impl Activity {
    fn begin(self: &Arc<Self>) -> ActiveRequest {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(Arc::clone(self))
    }

    /// Resolves once the connection has had no request in flight for `timeout`.
    async fn idle(&self, timeout: Duration) {
        loop {
            let since = *self.idle_since.lock().unwrap_or_else(|e| e.into_inner());
            let idle_for = since.elapsed();
            if self.in_flight.load(Ordering::Relaxed) == 0 && idle_for >= timeout {
                return;
            }
            tokio::time::sleep(timeout.saturating_sub(idle_for).max(IDLE_RECHECK)).await;
        }
    }
}

/// The shortest pause between idle checks of a busy connection.
const IDLE_RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct ActiveRequest(Arc<Activity>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as in flight until hyper drops it.
#[derive(Debug)]
pub struct InFlightBody {
    body: GatewayBody,
    _guard: ActiveRequest,
}

impl Body for InFlightBody {
    type Data = bytes::Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

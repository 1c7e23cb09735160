//! The gateway's side of the engine protocol (`moebox-protocol`): HTTP/1.1 over the engine's
//! Unix socket, one connection per generation, so that dropping an [`EventStream`] closes the
//! socket and the engine cancels the sequence.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, body::Incoming, client::conn::http1};
use hyper_util::rt::TokioIo;
use moebox_protocol::{
    ErrorBody, Event, GENERATE_PATH, GenerateRequest, Health, LOAD_PATH, Load, READY_PATH,
};
use serde::de::DeserializeOwned;
use tokio::{net::UnixStream, task::JoinHandle};

/// Longest NDJSON line or JSON answer accepted from an engine; a longer one is a broken engine,
/// not a reason to grow memory.
pub const MAX_ENGINE_LINE_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot connect to {socket}: {cause}")]
    Connect {
        socket: PathBuf,
        cause: std::io::Error,
    },
    #[error("{socket}: {cause}")]
    Http {
        socket: PathBuf,
        cause: hyper::Error,
    },
    #[error("{socket}: no answer within {} ms", .timeout.as_millis())]
    Timeout { socket: PathBuf, timeout: Duration },
    #[error("{socket}: malformed answer: {message}")]
    Protocol { socket: PathBuf, message: String },
    /// The engine answered, and refused.
    #[error("{socket}: refused with {status}: {}", .body.message)]
    Refused {
        socket: PathBuf,
        status: StatusCode,
        body: ErrorBody,
    },
}

/// One HTTP/1.1 connection to an engine. Dropping it aborts the connection task, closing the
/// socket.
struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
    socket: PathBuf,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Connection {
    async fn open(socket: &Path) -> Result<Self, EngineError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|cause| EngineError::Connect {
                socket: socket.to_owned(),
                cause,
            })?;
        let (sender, connection) =
            http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|cause| EngineError::Http {
                    socket: socket.to_owned(),
                    cause,
                })?;
        let driver = tokio::spawn(async move {
            // Ends when the engine closes the socket or the Connection is dropped.
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            driver,
            socket: socket.to_owned(),
        })
    }

    async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<Incoming>, EngineError> {
        self.sender
            .send_request(request)
            .await
            .map_err(|cause| EngineError::Http {
                socket: self.socket.clone(),
                cause,
            })
    }

    fn protocol(&self, message: impl Into<String>) -> EngineError {
        EngineError::Protocol {
            socket: self.socket.clone(),
            message: message.into(),
        }
    }
}

fn http_request(
    method: &str,
    path: &str,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, EngineError> {
    Request::builder()
        .method(method)
        .uri(path)
        // HTTP/1.1 requires a Host; the socket path is the only authority there is.
        .header(hyper::header::HOST, "engine")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| EngineError::Protocol {
            socket: PathBuf::new(),
            message: e.to_string(),
        })
}

/// Reads a whole (small) body, bounded by [`MAX_ENGINE_LINE_BYTES`].
async fn read_bounded(connection: &Connection, body: Incoming) -> Result<Bytes, EngineError> {
    let limited = http_body_util::Limited::new(body, MAX_ENGINE_LINE_BYTES);
    limited
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|e| connection.protocol(format!("reading the answer: {e}")))
}

fn parse<T: DeserializeOwned>(connection: &Connection, bytes: &[u8]) -> Result<T, EngineError> {
    serde_json::from_slice(bytes).map_err(|e| connection.protocol(e.to_string()))
}

fn refusal(connection: &Connection, status: StatusCode, bytes: &[u8]) -> EngineError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => EngineError::Refused {
            socket: connection.socket.clone(),
            status,
            body,
        },
        Err(_) => connection.protocol(format!("status {status} without an error body")),
    }
}

/// `work` within `timeout`, or [`EngineError::Timeout`] naming `socket`.
async fn within<T>(
    socket: &Path,
    timeout: Duration,
    work: impl Future<Output = Result<T, EngineError>>,
) -> Result<T, EngineError> {
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| EngineError::Timeout {
            socket: socket.to_owned(),
            timeout,
        })?
}

/// What one poll learns of an engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub ready: bool,
    pub health: Health,
    pub load: Load,
}

/// `GET /v1/ready` then `GET /v1/load` on one connection, within `timeout`.
pub async fn probe(socket: &Path, timeout: Duration) -> Result<Probe, EngineError> {
    let work = async {
        let mut connection = Connection::open(socket).await?;
        let response = connection
            .send(http_request("GET", READY_PATH, Bytes::new())?)
            .await?;
        let ready = response.status() == StatusCode::OK;
        let bytes = read_bounded(&connection, response.into_body()).await?;
        let health: Health = parse(&connection, &bytes)?;
        let response = connection
            .send(http_request("GET", LOAD_PATH, Bytes::new())?)
            .await?;
        let status = response.status();
        let bytes = read_bounded(&connection, response.into_body()).await?;
        if status != StatusCode::OK {
            return Err(refusal(&connection, status, &bytes));
        }
        let load: Load = parse(&connection, &bytes)?;
        Ok(Probe {
            ready,
            health,
            load,
        })
    };
    within(socket, timeout, work).await
}

/// `GET /v1/telemetry?since=SEQ`: the engine's samples after `since`, within `timeout`.
pub async fn telemetry(
    socket: &Path,
    since: u64,
    timeout: Duration,
) -> Result<moebox_protocol::telemetry::TelemetryBatch, EngineError> {
    let work = async {
        let mut connection = Connection::open(socket).await?;
        let path = format!("{}?since={since}", moebox_protocol::TELEMETRY_PATH);
        let response = connection
            .send(http_request("GET", &path, Bytes::new())?)
            .await?;
        let status = response.status();
        let bytes = read_bounded(&connection, response.into_body()).await?;
        if status != StatusCode::OK {
            return Err(refusal(&connection, status, &bytes));
        }
        parse(&connection, &bytes)
    };
    within(socket, timeout, work).await
}

/// A generation in progress: the engine's NDJSON events, one at a time. Dropping it closes the
/// connection, which cancels the sequence in the engine.
#[derive(Debug)]
pub struct EventStream {
    connection: Connection,
    body: Incoming,
    buffer: BytesMut,
    ended: bool,
}

impl EventStream {
    /// The next event; `Ok(None)` when the engine ended the stream.
    pub async fn next(&mut self) -> Result<Option<Event>, EngineError> {
        loop {
            if let Some(newline) = self.buffer.iter().position(|&b| b == b'\n') {
                let line = self.buffer.split_to(newline + 1);
                let line = &line[..newline];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return parse(&self.connection, line).map(Some);
            }
            if self.buffer.len() > MAX_ENGINE_LINE_BYTES {
                return Err(self.connection.protocol(format!(
                    "an event line is longer than {MAX_ENGINE_LINE_BYTES} bytes"
                )));
            }
            if self.ended {
                if self.buffer.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                let rest = std::mem::take(&mut self.buffer);
                return parse(&self.connection, &rest).map(Some);
            }
            match self.body.frame().await {
                None => self.ended = true,
                Some(Err(cause)) => {
                    return Err(EngineError::Http {
                        socket: self.connection.socket.clone(),
                        cause,
                    });
                }
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buffer.extend_from_slice(chunk);
                            let advance = chunk.len();
                            data.advance(advance);
                        }
                    }
                }
            }
        }
    }
}

/// `POST /v1/generate`: connects, submits, and returns the event stream once the engine has
/// accepted the request (status 200). Connecting and the answer's head are bounded by
/// `timeout`; the events are not (a request may wait for a batch row).
pub async fn generate(
    socket: &Path,
    request: &GenerateRequest,
    timeout: Duration,
) -> Result<EventStream, EngineError> {
    let body = serde_json::to_vec(request).map_err(|e| EngineError::Protocol {
        socket: socket.to_owned(),
        message: e.to_string(),
    })?;
    let work = async {
        let mut connection = Connection::open(socket).await?;
        let response = connection
            .send(http_request("POST", GENERATE_PATH, Bytes::from(body))?)
            .await?;
        let status = response.status();
        if status != StatusCode::OK {
            let bytes = read_bounded(&connection, response.into_body()).await?;
            return Err(refusal(&connection, status, &bytes));
        }
        Ok(EventStream {
            connection,
            body: response.into_body(),
            buffer: BytesMut::new(),
            ended: false,
        })
    };
    within(socket, timeout, work).await
}

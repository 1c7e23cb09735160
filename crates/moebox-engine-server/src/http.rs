//! The HTTP/1.1 side: accepting connections on the Unix socket, routing, turning refusals into
//! statuses and event streams into NDJSON bodies, and draining on shutdown.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, combinators::UnsyncBoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Body, Frame, Incoming},
    header::{self, HeaderValue},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use moebox_protocol::{
    ErrorBody, ErrorCode, Event, GENERATE_PATH, GenerateRequest, HEALTH_PATH, Health, LOAD_PATH,
    Load, NDJSON, READY_PATH, TELEMETRY_PATH,
    telemetry::{SINCE_PARAM, TelemetryBatch},
};
use tokio::{net::UnixListener, sync::Semaphore, task::JoinSet};

use crate::{
    ACCEPT_ERROR_BACKOFF, BODY_READ_TIMEOUT, DEFAULT_RETRY_AFTER_SECONDS, DRAIN_TIMEOUT,
    HEADER_READ_TIMEOUT, LOADING_RETRY_AFTER_SECONDS, MAX_CONNECTIONS, MAX_REQUEST_BODY_BYTES,
};

/// What bounds the server; [`ServerLimits::default`] is the production set.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// A request's head must arrive within this, and an idle keep-alive connection is closed
    /// after it.
    pub header_read_timeout: Duration,
    /// A request's body must arrive within this.
    pub body_read_timeout: Duration,
    pub max_body_bytes: usize,
    /// How long running streams may take to finish after shutdown begins.
    pub drain_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            body_read_timeout: BODY_READ_TIMEOUT,
            max_body_bytes: MAX_REQUEST_BODY_BYTES,
            drain_timeout: DRAIN_TIMEOUT,
        }
    }
}

/// A running generation's events. Dropping it must cancel the generation: the server drops it
/// when the client goes away.
pub trait EventStream: Send + Unpin + 'static {
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>>;
}

impl EventStream for moebox_engine::scheduler::Submission {
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.events.poll_recv(cx)
    }
}

/// What the server serves: the engine, or a stand-in in tests.
pub trait Backend: Send + Sync + 'static {
    type Events: EventStream;
    /// Checks and queues a request. May block (it tokenises): the server calls it on a
    /// blocking thread.
    fn submit(&self, request: GenerateRequest) -> Result<Self::Events, ErrorBody>;
    fn health(&self) -> Health;
    /// `None` until the engine runs.
    fn load(&self) -> Option<Load>;
    /// The telemetry samples taken after sample `since`. Served from the start, while the
    /// model loads too; must not block (the sampler runs on its own thread).
    fn telemetry(&self, since: u64) -> TelemetryBatch;
}

/// How the server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished within the drain timeout.
    Completely,
    /// The drain timeout passed; this many connections were cut (their generations cancelled).
    CutOff(usize),
}

/// Serves `listener` until `shutdown` completes, then stops accepting, lets the requests in
/// flight finish (at most `limits.drain_timeout`) and closes idle connections.
pub async fn serve<B: Backend>(
    listener: UnixListener,
    backend: Arc<B>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) -> Drained {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        // Take a slot before accepting, so connections beyond the limit wait in the kernel's
        // listen backlog instead of in memory here.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let backend = Arc::clone(&backend);
        let service = service_fn(move |request| {
            let backend = Arc::clone(&backend);
            async move { Ok::<_, Infallible>(route(backend, limits, request).await) }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        connections.spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!(
        connections = connections.len(),
        "stopped accepting; draining"
    );
    let finished = tokio::time::timeout(limits.drain_timeout, async {
        graceful.shutdown().await;
        while connections.join_next().await.is_some() {}
    })
    .await;
    match finished {
        Ok(()) => Drained::Completely,
        Err(_) => {
            let cut = connections.len();
            tracing::warn!(
                connections = cut,
                timeout_s = limits.drain_timeout.as_secs(),
                "drain timeout: cutting the connections still open"
            );
            connections.shutdown().await;
            Drained::CutOff(cut)
        }
    }
}

type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

async fn route<B: Backend>(
    backend: Arc<B>,
    limits: ServerLimits,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let path = path.as_str();
    match (&method, path) {
        (&Method::POST, GENERATE_PATH) => generate(backend, limits, request).await,
        (&Method::GET, HEALTH_PATH) => json(StatusCode::OK, &backend.health()),
        (&Method::GET, READY_PATH) => {
            let health = backend.health();
            let status = if health.state == moebox_protocol::EngineState::Ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(status, &health)
        }
        (&Method::GET, LOAD_PATH) => match backend.load() {
            Some(load) => json(StatusCode::OK, &load),
            None => error(ErrorBody {
                message: format!("the engine is {}", state_words(backend.health().state)),
                code: ErrorCode::Unavailable,
                param: None,
                retry_after_seconds: Some(LOADING_RETRY_AFTER_SECONDS),
            }),
        },
        (&Method::GET, TELEMETRY_PATH) => match parse_since(request.uri().query()) {
            Ok(since) => json(StatusCode::OK, &backend.telemetry(since)),
            Err(body) => error(body),
        },
        (_, GENERATE_PATH | HEALTH_PATH | READY_PATH | LOAD_PATH | TELEMETRY_PATH) => {
            let allowed = if path == GENERATE_PATH { "POST" } else { "GET" };
            let mut response = error_with_status(
                StatusCode::METHOD_NOT_ALLOWED,
                invalid(None, format!("{path} takes {allowed}, not {method}")),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allowed));
            response
        }
        _ => error_with_status(
            StatusCode::NOT_FOUND,
            invalid(
                None,
                format!(
                    "no such endpoint: {method} {path} (the engine serves POST {GENERATE_PATH}, GET {HEALTH_PATH}, {READY_PATH}, {LOAD_PATH}, {TELEMETRY_PATH})"
                ),
            ),
        ),
    }
}

async fn generate<B: Backend>(
    backend: Arc<B>,
    limits: ServerLimits,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let too_large = || {
        error_with_status(
            StatusCode::PAYLOAD_TOO_LARGE,
            invalid(
                None,
                format!(
                    "the request body exceeds the engine's limit of {} bytes",
                    limits.max_body_bytes
                ),
            ),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return too_large();
    }
    let body = Limited::new(request.into_body(), limits.max_body_bytes);
    let bytes = match tokio::time::timeout(limits.body_read_timeout, body.collect()).await {
        Err(_) => {
            return error_with_status(
                StatusCode::REQUEST_TIMEOUT,
                invalid(
                    None,
                    format!(
                        "the request body did not arrive within {} s",
                        limits.body_read_timeout.as_secs()
                    ),
                ),
            );
        }
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(err)) => {
            return error(invalid(
                None,
                format!("cannot read the request body: {err}"),
            ));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let request = match parse_request(&bytes) {
        Ok(request) => request,
        Err(body) => return error(body),
    };
    let submitted = tokio::task::spawn_blocking(move || backend.submit(request)).await;
    match submitted {
        Ok(Ok(events)) => {
            let body = EventBody {
                events,
                ended: false,
            };
            let mut response = Response::new(body.boxed_unsync());
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
            response
        }
        Ok(Err(refusal)) => error(refusal),
        Err(join) => error(ErrorBody {
            message: format!("the engine failed while submitting the request: {join}"),
            code: ErrorCode::Internal,
            param: None,
            retry_after_seconds: None,
        }),
    }
}

/// Parses a generate request; a mistake names the field and where it is.
pub fn parse_request(bytes: &[u8]) -> Result<GenerateRequest, ErrorBody> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let request: GenerateRequest =
        serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            let path = e.path().to_string();
            let param = (path != ".").then_some(path);
            let message = match &param {
                Some(field) => format!("invalid request body: field `{field}`: {}", e.inner()),
                None => format!("invalid request body: {}", e.inner()),
            };
            invalid(param.as_deref(), message)
        })?;
    deserializer
        .end()
        .map_err(|e| invalid(None, format!("invalid request body: {e}")))?;
    Ok(request)
}

/// The `since` of `GET /v1/telemetry?since=SEQ`: absent means 0 (everything the engine holds).
/// Anything else in the query is refused by name, so a typo never silently means "all".
pub fn parse_since(query: Option<&str>) -> Result<u64, ErrorBody> {
    let mut since = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != SINCE_PARAM {
            return Err(invalid(
                Some(name),
                format!("{TELEMETRY_PATH} takes only `{SINCE_PARAM}`, not `{name}`"),
            ));
        }
        if since.is_some() {
            return Err(invalid(
                Some(SINCE_PARAM),
                format!("`{SINCE_PARAM}` given more than once"),
            ));
        }
        let parsed = value.parse::<u64>().map_err(|_| {
            invalid(
                Some(SINCE_PARAM),
                format!(
                    "`{SINCE_PARAM}` must be a sample sequence number (0 to {}), got {value:?}",
                    u64::MAX
                ),
            )
        })?;
        since = Some(parsed);
    }
    Ok(since.unwrap_or(0))
}

/// The HTTP status of a refusal.
pub fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidRequest | ErrorCode::ContextLengthExceeded => StatusCode::BAD_REQUEST,
        ErrorCode::QueueFull => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn invalid(param: Option<&str>, message: String) -> ErrorBody {
    ErrorBody {
        message,
        code: ErrorCode::InvalidRequest,
        param: param.map(str::to_owned),
        retry_after_seconds: None,
    }
}

fn error(body: ErrorBody) -> Response<ResponseBody> {
    error_with_status(status_for(body.code), body)
}

/// An [`ErrorBody`] response; a refusal that may pass later (queue full, not ready) carries
/// `Retry-After`.
fn error_with_status(status: StatusCode, mut body: ErrorBody) -> Response<ResponseBody> {
    if matches!(body.code, ErrorCode::QueueFull | ErrorCode::Unavailable) {
        let seconds = *body
            .retry_after_seconds
            .get_or_insert(DEFAULT_RETRY_AFTER_SECONDS);
        let mut response = json(status, &body);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        return response;
    }
    json(status, &body)
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<ResponseBody> {
    let (status, bytes) = match serde_json::to_vec(value) {
        Ok(bytes) => (status, bytes),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(r#"{{"message":"cannot serialise the response: {err}","code":"internal"}}"#)
                .into_bytes(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(bytes)).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn state_words(state: moebox_protocol::EngineState) -> &'static str {
    match state {
        moebox_protocol::EngineState::Loading => "loading the model",
        moebox_protocol::EngineState::Warming => "warming up",
        moebox_protocol::EngineState::Ready => "ready",
        moebox_protocol::EngineState::Draining => "shutting down",
    }
}

/// A generation as an NDJSON body: one [`Event`] a line, ended after `done` or `error`.
/// Dropping it (the client went away, or the drain timeout passed) drops the events, which
/// cancels the generation.
struct EventBody<E> {
    events: E,
    ended: bool,
}

impl<E: EventStream> Body for EventBody<E> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match this.events.poll_event(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(event)) => {
                this.ended = matches!(event, Event::Done { .. } | Event::Error { .. });
                Poll::Ready(Some(Ok(Frame::data(event_line(&event)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

fn event_line(event: &Event) -> Bytes {
    let mut line = serde_json::to_vec(event).unwrap_or_else(|e| {
        format!(
            r#"{{"event":"error","message":"cannot serialise an event: {e}","code":"internal"}}"#
        )
        .into_bytes()
    });
    line.push(b'\n');
    Bytes::from(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_statuses() {
        assert_eq!(status_for(ErrorCode::InvalidRequest), 400);
        assert_eq!(status_for(ErrorCode::ContextLengthExceeded), 400);
        assert_eq!(status_for(ErrorCode::QueueFull), 429);
        assert_eq!(status_for(ErrorCode::Unavailable), 503);
        assert_eq!(status_for(ErrorCode::Internal), 500);
    }

    #[test]
    fn retry_after_comes_from_the_body_or_the_default() {
        let body = |code, retry| ErrorBody {
            message: "m".into(),
            code,
            param: None,
            retry_after_seconds: retry,
        };
        let response = error(body(ErrorCode::QueueFull, Some(7)));
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        let response = error(body(ErrorCode::Unavailable, None));
        assert_eq!(
            response.headers()[header::RETRY_AFTER],
            DEFAULT_RETRY_AFTER_SECONDS.to_string().as_str()
        );
        let response = error(body(ErrorCode::InvalidRequest, None));
        assert!(!response.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn bad_json_names_the_field_and_the_problem() {
        let err = parse_request(br#"{"prompt":{"kind":"text","value":"hi"},"max_tokens":"ten"}"#)
            .expect_err("refused");
        assert_eq!(err.code, ErrorCode::InvalidRequest);
        assert_eq!(err.param.as_deref(), Some("max_tokens"));
        assert!(err.message.contains("max_tokens"), "{}", err.message);

        let err = parse_request(br#"{"max_tokens":3}"#).expect_err("refused");
        assert!(
            err.message.contains("missing field `prompt`"),
            "{}",
            err.message
        );

        let err = parse_request(b"{\"prompt\":").expect_err("refused");
        assert!(err.message.contains("EOF"), "{}", err.message);

        let err = parse_request(br#"{"prompt":{"kind":"text","value":"hi"}} trailing"#)
            .expect_err("refused");
        assert!(err.message.contains("trailing"), "{}", err.message);

        let request =
            parse_request(br#"{"prompt":{"kind":"tokens","value":[1,2]},"max_tokens":4}"#)
                .expect("parses");
        assert_eq!(request.max_tokens, Some(4));
    }

    #[test]
    fn since_is_the_only_telemetry_parameter() {
        assert_eq!(parse_since(None).expect("absent"), 0);
        assert_eq!(parse_since(Some("")).expect("empty"), 0);
        assert_eq!(parse_since(Some("since=42")).expect("given"), 42);
        assert_eq!(
            parse_since(Some(&format!("since={}", u64::MAX))).expect("largest"),
            u64::MAX
        );
        for (query, param, words) in [
            ("since=-1", "since", "got \"-1\""),
            ("since=", "since", "got \"\""),
            ("since=1e3", "since", "sequence number"),
            (
                "since=18446744073709551616",
                "since",
                "0 to 18446744073709551615",
            ),
            ("since=1&since=2", "since", "more than once"),
            ("sinse=4", "sinse", "takes only `since`"),
            ("since=1&limit=5", "limit", "not `limit`"),
        ] {
            let err = parse_since(Some(query)).expect_err(query);
            assert_eq!(err.code, ErrorCode::InvalidRequest, "{query}");
            assert_eq!(err.param.as_deref(), Some(param), "{query}");
            assert!(err.message.contains(words), "{query}: {}", err.message);
        }
    }

    #[test]
    fn events_are_lines() {
        let line = event_line(&Event::Started { prompt_tokens: 3 });
        assert_eq!(&line[..], b"{\"event\":\"started\",\"prompt_tokens\":3}\n");
    }
}

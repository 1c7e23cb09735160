//! Request handling: routes, authentication, admission, and the OpenAI endpoints. No request
//! or response text is ever logged: the audit line carries ids, counts, status and latency.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
};
use moebox_config::Config;
use moebox_ledger::{KeyRecord, Ledger, VerifyError};
use moebox_protocol::{FinishReason, Usage};
use rand::{TryRngCore, rngs::OsRng};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::{
    body::GatewayBody,
    error::ApiError,
    metrics::Metrics,
    openai::{
        self, ChunkPiece, Endpoint, ModelList, ModelObject, ResponseMeta, ValidatedGeneration,
    },
    router::{Generation, Output, Router},
};

/// The comment line sent on a quiet stream.
pub const SSE_KEEPALIVE: &[u8] = b": keep-alive\n\n";
const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

/// The limits the handlers enforce, from `[gateway]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    pub request_deadline: Duration,
    pub sse_keepalive: Duration,
    pub per_key_max_concurrent: usize,
    pub max_queued_requests: usize,
    pub retry_after_seconds: u32,
}

impl Limits {
    pub fn from_config(config: &Config) -> Self {
        let gateway = &config.gateway;
        Self {
            max_body_bytes: gateway.max_body_bytes,
            // The body is bounded in time like the head: a slow upload is a slowloris too.
            body_read_timeout: gateway.header_read_timeout(),
            request_deadline: gateway.request_deadline(),
            sse_keepalive: gateway.sse_keepalive(),
            per_key_max_concurrent: gateway.per_key_max_concurrent,
            max_queued_requests: gateway.max_queued_requests,
            retry_after_seconds: gateway.retry_after_seconds,
        }
    }
}

/// Everything a request handler needs, shared by all connections.
#[derive(Debug)]
pub struct Gateway {
    limits: Limits,
    ledger: Arc<Ledger>,
    router: Arc<Router>,
    metrics: Metrics,
    queue: Arc<Semaphore>,
    per_key: Mutex<HashMap<i64, Arc<Semaphore>>>,
    /// `created` of `/v1/models` entries: when this gateway started.
    started_unix: u64,
    /// Request ids: a random per-process prefix and a counter, unique without a syscall each.
    id_prefix: u32,
    next_id: AtomicU64,
}

/// Labels for metrics: a closed set, whatever path a client sends.
#[derive(Debug, Clone, Copy)]
enum Route {
    Healthz,
    Readyz,
    Metrics,
    Models,
    Model,
    Generate(Endpoint),
    Admin,
    Other,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Self::Healthz => "healthz",
            Self::Readyz => "readyz",
            Self::Metrics => "metrics",
            Self::Models => "models",
            Self::Model => "model",
            Self::Generate(Endpoint::ChatCompletions) => "chat_completions",
            Self::Generate(Endpoint::Completions) => "completions",
            Self::Admin => "admin",
            Self::Other => "other",
        }
    }
}

type HttpResponse = Response<GatewayBody>;

impl Gateway {
    pub fn new(limits: Limits, ledger: Arc<Ledger>, router: Arc<Router>) -> Arc<Self> {
        let mut prefix = [0u8; 4];
        // A failed RNG only makes ids less unpredictable; they stay unique by the counter.
        let _ = OsRng.try_fill_bytes(&mut prefix);
        let started_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Arc::new(Self {
            queue: Arc::new(Semaphore::new(limits.max_queued_requests)),
            limits,
            ledger,
            router,
            metrics: Metrics::default(),
            per_key: Mutex::new(HashMap::new()),
            started_unix,
            id_prefix: u32::from_be_bytes(prefix),
            next_id: AtomicU64::new(1),
        })
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn request_id(&self) -> String {
        let counter = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}{counter:012x}", self.id_prefix)
    }

    /// Answers one request. Never fails: every error becomes an OpenAI error body.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> HttpResponse {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let (route, result) = self.dispatch(&method, &path, request, started).await;
        let response = result.unwrap_or_else(|error| error_response(&error));
        self.metrics
            .record_request(route.label(), response.status().as_u16());
        if !matches!(route, Route::Generate(_)) {
            tracing::debug!(
                target: "moebox_gateway::access",
                route = route.label(),
                status = response.status().as_u16(),
                latency_us = started.elapsed().as_micros() as u64,
                "request"
            );
        }
        response
    }

    async fn dispatch(
        self: &Arc<Self>,
        method: &Method,
        path: &str,
        request: Request<Incoming>,
        started: Instant,
    ) -> (Route, Result<HttpResponse, ApiError>) {
        let not_allowed = |allowed: &'static str| ApiError::MethodNotAllowed {
            method: method.to_string(),
            path: path.to_owned(),
            allowed,
        };
        match path {
            "/healthz" => (
                Route::Healthz,
                match *method {
                    Method::GET | Method::HEAD => Ok(text_response(StatusCode::OK, "ok\n")),
                    _ => Err(not_allowed("GET")),
                },
            ),
            "/readyz" => (
                Route::Readyz,
                match *method {
                    Method::GET | Method::HEAD => Ok(self.readyz()),
                    _ => Err(not_allowed("GET")),
                },
            ),
            "/metrics" => (Route::Metrics, {
                match (self.authenticate(&request, true), method) {
                    (Err(error), _) => Err(error),
                    (Ok(_), &Method::GET) => Ok(self.metrics_response()),
                    (Ok(_), _) => Err(not_allowed("GET")),
                }
            }),
            "/v1/models" => (Route::Models, {
                match (self.authenticate(&request, false), method) {
                    (Err(error), _) => Err(error),
                    (Ok(_), &Method::GET) => Ok(self.models()),
                    (Ok(_), _) => Err(not_allowed("GET")),
                }
            }),
            "/v1/chat/completions" | "/v1/completions" => {
                let endpoint = if path == "/v1/completions" {
                    Endpoint::Completions
                } else {
                    Endpoint::ChatCompletions
                };
                let route = Route::Generate(endpoint);
                if method != Method::POST {
                    return (route, Err(not_allowed("POST")));
                }
                (route, self.generate(endpoint, request, started).await)
            }
            _ => {
                if let Some(id) = path.strip_prefix("/v1/models/") {
                    let result = match (self.authenticate(&request, false), method) {
                        (Err(error), _) => Err(error),
                        (Ok(_), &Method::GET) => self.model(id),
                        (Ok(_), _) => Err(not_allowed("GET")),
                    };
                    (Route::Model, result)
                } else if path == "/admin" || path.starts_with("/admin/") {
                    // Admin pages and APIs land with issue 5; the scope check already holds.
                    let result = self.authenticate(&request, true).and_then(|_| {
                        Err(ApiError::UnknownRoute {
                            method: method.to_string(),
                            path: path.to_owned(),
                        })
                    });
                    (Route::Admin, result)
                } else {
                    (
                        Route::Other,
                        Err(ApiError::UnknownRoute {
                            method: method.to_string(),
                            path: path.to_owned(),
                        }),
                    )
                }
            }
        }
    }

    /// The key behind `Authorization: Bearer ...`; `admin` requires the admin scope.
    fn authenticate(
        &self,
        request: &Request<Incoming>,
        admin: bool,
    ) -> Result<KeyRecord, ApiError> {
        let header = request
            .headers()
            .get(header::AUTHORIZATION)
            .ok_or(ApiError::MissingKey)?;
        let value = header
            .to_str()
            .map_err(|_| ApiError::InvalidKey("the Authorization header is not ASCII".into()))?;
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Err(ApiError::InvalidKey(
                    "use the Bearer scheme: `Authorization: Bearer mbx_...`".into(),
                ));
            }
        };
        let record = self.ledger.verify_key(token).map_err(|error| match error {
            VerifyError::Malformed(reason) => ApiError::InvalidKey(reason.to_string()),
            VerifyError::Unknown => ApiError::InvalidKey("no such key".into()),
            VerifyError::Revoked => ApiError::RevokedKey,
            VerifyError::Ledger(error) => {
                tracing::error!(%error, "key verification failed");
                ApiError::Internal
            }
        })?;
        if admin && !record.is_admin() {
            return Err(ApiError::AdminRequired);
        }
        Ok(record)
    }

    fn readyz(&self) -> HttpResponse {
        if self.router.any_ready() {
            text_response(StatusCode::OK, "ready\n")
        } else {
            let mut response = text_response(StatusCode::SERVICE_UNAVAILABLE, "no engine ready\n");
            set_retry_after(&mut response, self.limits.retry_after_seconds);
            response
        }
    }

    fn metrics_response(&self) -> HttpResponse {
        let text = self.metrics.render(&self.router.statuses());
        let mut response = Response::new(GatewayBody::full(text));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }

    fn models(&self) -> HttpResponse {
        let data = self
            .router
            .models()
            .into_iter()
            .map(|id| ModelObject::new(id, self.started_unix))
            .collect();
        json_response(
            StatusCode::OK,
            &ModelList {
                object: "list",
                data,
            },
        )
    }

    fn model(&self, id: &str) -> Result<HttpResponse, ApiError> {
        if self.router.models().iter().any(|model| model == id) {
            Ok(json_response(
                StatusCode::OK,
                &ModelObject::new(id.to_owned(), self.started_unix),
            ))
        } else {
            Err(ApiError::ModelNotFound(id.to_owned()))
        }
    }

    /// A key's concurrency permit; `None` when it already has its limit in flight.
    fn key_permit(&self, key_id: i64) -> Option<OwnedSemaphorePermit> {
        let semaphore =
            {
                let mut per_key = self.per_key.lock().unwrap_or_else(|e| e.into_inner());
                Arc::clone(per_key.entry(key_id).or_insert_with(|| {
                    Arc::new(Semaphore::new(self.limits.per_key_max_concurrent))
                }))
            };
        semaphore.try_acquire_owned().ok()
    }

    async fn read_body(&self, request: Request<Incoming>) -> Result<Bytes, ApiError> {
        let limit = self.limits.max_body_bytes;
        if let Some(length) = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok())
            && length > limit as u64
        {
            return Err(ApiError::BodyTooLarge { limit });
        }
        let limited = http_body_util::Limited::new(request.into_body(), limit);
        match tokio::time::timeout(self.limits.body_read_timeout, limited.collect()).await {
            Err(_) => Err(ApiError::BodyRead),
            Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
                Err(ApiError::BodyTooLarge { limit })
            }
            Ok(Err(_)) => Err(ApiError::BodyRead),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
        }
    }

    async fn generate(
        self: &Arc<Self>,
        endpoint: Endpoint,
        request: Request<Incoming>,
        started: Instant,
    ) -> Result<HttpResponse, ApiError> {
        let key = self.authenticate(&request, false)?;
        let key_permit = self.key_permit(key.id).ok_or(ApiError::KeyConcurrency {
            limit: self.limits.per_key_max_concurrent,
        })?;
        let body = self.read_body(request).await?;
        let mut validated = match endpoint {
            Endpoint::ChatCompletions => openai::parse_chat(&body)?,
            Endpoint::Completions => openai::parse_completion(&body)?,
        };
        drop(body);
        let models = self.router.models();
        if !models.contains(&validated.model) {
            return Err(if models.is_empty() {
                ApiError::NoEngine {
                    retry_after_seconds: self.limits.retry_after_seconds,
                }
            } else {
                ApiError::ModelNotFound(validated.model)
            });
        }
        let queue_permit =
            Arc::clone(&self.queue)
                .try_acquire_owned()
                .map_err(|_| ApiError::Overloaded {
                    limit: self.limits.max_queued_requests,
                    retry_after_seconds: self.limits.retry_after_seconds,
                })?;
        let request_id = self.request_id();
        validated.request.request_id = request_id.clone();
        let deadline = tokio::time::Instant::from_std(started + self.limits.request_deadline);
        let audit = Audit {
            request_id: request_id.clone(),
            key_id: key.id,
            team: key.team.clone(),
            model: validated.model.clone(),
            endpoint,
            started,
        };
        let meta = ResponseMeta::new(endpoint, &request_id, unix_now(), validated.model.clone());
        let ValidatedGeneration {
            model,
            stream,
            include_usage,
            request: engine_request,
            ..
        } = validated;
        let mut generation = self.router.generation(model, engine_request);
        let start = tokio::time::timeout_at(deadline, generation.start()).await;
        let start = start.unwrap_or(Err(ApiError::DeadlineExceeded {
            deadline: self.limits.request_deadline,
        }));
        if let Err(error) = start {
            audit.log_error(&error);
            return Err(error);
        }
        let permits = (key_permit, queue_permit);
        if stream {
            let (sender, body) = GatewayBody::channel();
            let gateway = Arc::clone(self);
            tokio::spawn(async move {
                let _permits = permits;
                gateway
                    .pump(generation, sender, meta, include_usage, deadline, audit)
                    .await;
            });
            let mut response = Response::new(body);
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            insert_request_id(&mut response, &request_id);
            Ok(response)
        } else {
            let _permits = permits;
            let _in_flight = self.metrics.in_flight();
            let collected = tokio::time::timeout_at(deadline, collect(&mut generation))
                .await
                .unwrap_or(Err(ApiError::DeadlineExceeded {
                    deadline: self.limits.request_deadline,
                }));
            match collected {
                Ok((text, finish_reason, usage)) => {
                    self.metrics
                        .record_tokens(usage.prompt_tokens, usage.completion_tokens);
                    audit.log_done(200, finish_reason, usage);
                    let mut response = Response::new(GatewayBody::full(meta.completion(
                        &text,
                        finish_reason,
                        usage,
                    )));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    insert_request_id(&mut response, &request_id);
                    Ok(response)
                }
                Err(error) => {
                    audit.log_error(&error);
                    Err(error)
                }
            }
        }
    }

    /// Streams a started generation to the client as server-sent events, until it is done,
    /// fails, passes its deadline, or the client goes away (which drops the engine stream).
    async fn pump(
        &self,
        mut generation: Generation,
        sender: mpsc::Sender<Bytes>,
        meta: ResponseMeta,
        include_usage: bool,
        deadline: tokio::time::Instant,
        audit: Audit,
    ) {
        let _in_flight = self.metrics.in_flight();
        let mut writer = SseWriter {
            sender,
            last_sent: Instant::now(),
        };
        if meta.endpoint == Endpoint::ChatCompletions
            && !writer
                .send_data(&meta.chunk(ChunkPiece::Role, include_usage))
                .await
        {
            audit.log_client_gone();
            return;
        }
        let keepalive = self.limits.sse_keepalive;
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let step = generation.next();
            tokio::pin!(step);
            let output = loop {
                tokio::select! {
                    output = &mut step => break Some(output),
                    _ = writer.sender.closed() => break None,
                    _ = tokio::time::sleep_until(deadline) => {
                        break Some(Err(ApiError::DeadlineExceeded {
                            deadline: self.limits.request_deadline,
                        }))
                    }
                    _ = ticks.tick() => {
                        if writer.last_sent.elapsed() >= keepalive
                            && !writer.send(Bytes::from_static(SSE_KEEPALIVE)).await
                        {
                            break None;
                        }
                    }
                }
            };
            let Some(output) = output else {
                audit.log_client_gone();
                return;
            };
            match output {
                Ok(Output::Text(text)) => {
                    if !writer
                        .send_data(&meta.chunk(ChunkPiece::Text(&text), include_usage))
                        .await
                    {
                        audit.log_client_gone();
                        return;
                    }
                }
                Ok(Output::Done {
                    finish_reason,
                    usage,
                }) => {
                    self.metrics
                        .record_tokens(usage.prompt_tokens, usage.completion_tokens);
                    audit.log_done(200, finish_reason, usage);
                    let mut sent = writer
                        .send_data(&meta.chunk(ChunkPiece::Finish(finish_reason), include_usage))
                        .await;
                    if include_usage && sent {
                        sent = writer.send_data(&meta.usage_chunk(usage)).await;
                    }
                    if sent {
                        writer.send(Bytes::from_static(SSE_DONE)).await;
                    }
                    return;
                }
                Err(error) => {
                    audit.log_error(&error);
                    // OpenAI's SDKs raise on a chunk holding `error`; the stream then ends
                    // without [DONE].
                    writer.send_json(&error.body()).await;
                    return;
                }
            }
        }
    }
}

async fn collect(generation: &mut Generation) -> Result<(String, FinishReason, Usage), ApiError> {
    let mut text = String::new();
    loop {
        match generation.next().await? {
            Output::Text(piece) => text.push_str(&piece),
            Output::Done {
                finish_reason,
                usage,
            } => return Ok((text, finish_reason, usage)),
        }
    }
}

struct SseWriter {
    sender: mpsc::Sender<Bytes>,
    last_sent: Instant,
}

impl SseWriter {
    /// False when the client has gone.
    async fn send(&mut self, bytes: Bytes) -> bool {
        self.last_sent = Instant::now();
        self.sender.send(bytes).await.is_ok()
    }

    async fn send_json<T: serde::Serialize>(&mut self, value: &T) -> bool {
        match serde_json::to_vec(value) {
            Ok(json) => self.send_data(&json).await,
            Err(_) => false,
        }
    }

    /// One `data:` event holding `json`.
    async fn send_data(&mut self, json: &[u8]) -> bool {
        let mut event = Vec::with_capacity(json.len() + 8);
        event.extend_from_slice(b"data: ");
        event.extend_from_slice(json);
        event.extend_from_slice(b"\n\n");
        self.send(Bytes::from(event)).await
    }
}

/// The audit line of one generation request: who, what model, how many tokens, how it ended,
/// how long it took. Never the prompt or the completion.
#[derive(Debug)]
struct Audit {
    request_id: String,
    key_id: i64,
    team: String,
    model: String,
    endpoint: Endpoint,
    started: Instant,
}

impl Audit {
    fn log_done(&self, status: u16, finish_reason: FinishReason, usage: Usage) {
        tracing::info!(
            target: "moebox_gateway::audit",
            request_id = %self.request_id,
            key_id = self.key_id,
            team = %self.team,
            model = %self.model,
            endpoint = self.endpoint.path(),
            status,
            finish_reason = finish_reason.as_str(),
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            latency_ms = self.started.elapsed().as_millis() as u64,
            "generation"
        );
    }

    fn log_error(&self, error: &ApiError) {
        let shape = error.shape();
        tracing::info!(
            target: "moebox_gateway::audit",
            request_id = %self.request_id,
            key_id = self.key_id,
            team = %self.team,
            model = %self.model,
            endpoint = self.endpoint.path(),
            status = shape.status.as_u16(),
            code = shape.code,
            latency_ms = self.started.elapsed().as_millis() as u64,
            "generation failed"
        );
    }

    fn log_client_gone(&self) {
        tracing::info!(
            target: "moebox_gateway::audit",
            request_id = %self.request_id,
            key_id = self.key_id,
            team = %self.team,
            model = %self.model,
            endpoint = self.endpoint.path(),
            status = 499,
            latency_ms = self.started.elapsed().as_millis() as u64,
            "client closed the stream; generation cancelled"
        );
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn text_response(status: StatusCode, text: &'static str) -> HttpResponse {
    let mut response = Response::new(GatewayBody::full(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> HttpResponse {
    let (status, body) = match serde_json::to_vec(value) {
        Ok(body) => (status, body),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, b"{}".to_vec()),
    };
    let mut response = Response::new(GatewayBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn error_response(error: &ApiError) -> HttpResponse {
    let mut response = json_response(error.shape().status, &error.body());
    if let Some(seconds) = error.retry_after_seconds() {
        set_retry_after(&mut response, seconds);
    }
    if matches!(
        error,
        ApiError::MissingKey | ApiError::InvalidKey(_) | ApiError::RevokedKey
    ) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

fn set_retry_after(response: &mut HttpResponse, seconds: u32) {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
}

fn insert_request_id(response: &mut HttpResponse, request_id: &str) {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
}

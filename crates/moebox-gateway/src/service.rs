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
use moebox_ledger::{
    KeyRecord, Ledger, UnixMillis, UnixSeconds, UsageRecord, UsageWriter, VerifyError, WriteError,
};
use moebox_protocol::{FinishReason, Usage};
use rand::{TryRngCore, rngs::OsRng};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::{
    admin,
    admission::{AuthFailures, ClientId, KeyLimit, KeyRates, retry_after_seconds},
    body::GatewayBody,
    error::ApiError,
    metrics::Metrics,
    openai::{
        self, ChunkPiece, Endpoint, ModelList, ModelObject, ResponseMeta, ValidatedGeneration,
    },
    pages,
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
    /// 0: no cap beyond the engine's.
    pub max_prompt_tokens: u32,
    pub max_output_tokens: u32,
    pub auth_failures_per_minute: u32,
    pub auth_failure_clients: usize,
    /// Whether the gateway serves TLS (session cookies are then `Secure`).
    pub tls: bool,
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
            max_prompt_tokens: gateway.max_prompt_tokens,
            max_output_tokens: gateway.max_output_tokens,
            auth_failures_per_minute: gateway.auth_failures_per_minute,
            auth_failure_clients: gateway.auth_failure_clients,
            tls: gateway.tls,
        }
    }
}

/// The client's address, which the listener puts in each request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// Everything a request handler needs, shared by all connections.
#[derive(Debug)]
pub struct Gateway {
    limits: Limits,
    ledger: Arc<Ledger>,
    writer: UsageWriter,
    router: Arc<Router>,
    metrics: Metrics,
    queue: Arc<Semaphore>,
    per_key: Mutex<HashMap<i64, Arc<Semaphore>>>,
    key_rates: KeyRates,
    auth_failures: AuthFailures,
    sessions: pages::Sessions,
    cost_model: Arc<moebox_tco::CostModel>,
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
    pub fn new(
        limits: Limits,
        ledger: Arc<Ledger>,
        writer: UsageWriter,
        router: Arc<Router>,
        cost_model: moebox_tco::CostModel,
    ) -> Arc<Self> {
        let mut prefix = [0u8; 4];
        // A failed RNG only makes ids less unpredictable; they stay unique by the counter.
        let _ = OsRng.try_fill_bytes(&mut prefix);
        let started_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let auth_failures =
            AuthFailures::new(limits.auth_failures_per_minute, limits.auth_failure_clients);
        Arc::new(Self {
            queue: Arc::new(Semaphore::new(limits.max_queued_requests)),
            limits,
            ledger,
            writer,
            router,
            metrics: Metrics::default(),
            per_key: Mutex::new(HashMap::new()),
            key_rates: KeyRates::default(),
            sessions: pages::Sessions::default(),
            cost_model: Arc::new(cost_model),
            auth_failures,
            started_unix,
            id_prefix: u32::from_be_bytes(prefix),
            next_id: AtomicU64::new(1),
        })
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    pub fn writer(&self) -> &UsageWriter {
        &self.writer
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn request_id(&self) -> String {
        let counter = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}{counter:012x}", self.id_prefix)
    }

    /// Answers one request. Never fails: every error becomes an OpenAI error body. Every
    /// answer, refusals included, carries the request's id in `x-request-id`: the id of its
    /// usage record and log lines, which is what a user quotes when something went wrong.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> HttpResponse {
        let started = Instant::now();
        let request_id = self.request_id();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let (route, result) = self
            .dispatch(&method, &path, request, started, &request_id)
            .await;
        let mut response = result.unwrap_or_else(|error| error_response(&error));
        insert_request_id(&mut response, &request_id);
        self.metrics
            .record_request(route.label(), response.status().as_u16());
        if !matches!(route, Route::Generate(_)) {
            tracing::debug!(
                target: "moebox_gateway::access",
                request_id,
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
        request_id: &str,
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
                    (Ok(_), &Method::GET) => Ok(self.metrics_response().await),
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
                (
                    route,
                    self.generate(endpoint, request, started, request_id).await,
                )
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
                    (Route::Admin, self.admin(method, path, request).await)
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
    /// Failed checks of a presented key count against the client's address
    /// (`gateway.auth_failures_per_minute`); once it has used them up its key checks answer
    /// 429 until the bucket refills, whatever key it sends, while other clients go on.
    fn authenticate(
        &self,
        request: &Request<Incoming>,
        admin: bool,
    ) -> Result<KeyRecord, ApiError> {
        self.check_key(client_id(request), bearer_token(request), admin)
    }

    /// Checks a presented key (`token`, or why the request has none) for `client`: the
    /// client's failure bucket first, then the ledger; a malformed, unknown or revoked key
    /// counts as one failure of that client. `admin` requires the admin scope.
    fn check_key(
        &self,
        client: Option<ClientId>,
        token: Result<&str, ApiError>,
        admin: bool,
    ) -> Result<KeyRecord, ApiError> {
        let now = Instant::now();
        if let Some(client) = client {
            self.auth_failures
                .check(client, now)
                .map_err(|wait| ApiError::AuthFailures {
                    retry_after_seconds: retry_after_seconds(wait),
                })?;
        }
        let result = token.and_then(|token| {
            self.ledger.verify_key(token).map_err(|error| match error {
                VerifyError::Malformed(reason) => ApiError::InvalidKey(reason.to_string()),
                VerifyError::Unknown => ApiError::InvalidKey("no such key".into()),
                VerifyError::Revoked => ApiError::RevokedKey,
                VerifyError::Ledger(error) => {
                    tracing::error!(%error, "key verification failed");
                    ApiError::Internal
                }
            })
        });
        if let (Some(client), Err(ApiError::InvalidKey(_) | ApiError::RevokedKey)) =
            (client, &result)
        {
            self.auth_failures.record_failure(client, now);
        }
        let record = result?;
        if admin && !record.is_admin() {
            return Err(ApiError::AdminRequired);
        }
        Ok(record)
    }

    /// Admin pages, exports and the key API. An admin Bearer key or an admin session
    /// cookie (see [`pages`]); with a session, a state-changing request also needs the
    /// session's CSRF token.
    async fn admin(
        &self,
        method: &Method,
        path: &str,
        request: Request<Incoming>,
    ) -> Result<HttpResponse, ApiError> {
        let now = Instant::now();
        match (method, path) {
            (&Method::GET, pages::PATH_LOGIN) => {
                return pages::login_form(None, StatusCode::OK, self.limits.tls);
            }
            (&Method::POST, pages::PATH_LOGIN) => return self.login(request).await,
            (&Method::GET | &Method::POST, pages::PATH_LOGOUT) => {
                let mut response = pages::redirect(pages::PATH_LOGIN);
                if let Some((id, _)) = self.sessions.find(request.headers(), now) {
                    self.sessions.remove(&id);
                }
                pages::set_cookie(
                    &mut response,
                    pages::SESSION_COOKIE,
                    "",
                    Duration::ZERO,
                    self.limits.tls,
                );
                return Ok(response);
            }
            _ => {}
        }
        let session = if request.headers().contains_key(header::AUTHORIZATION) {
            self.authenticate(&request, true)?;
            None
        } else {
            match self.sessions.find(request.headers(), now) {
                Some((id, auth)) => {
                    // The key behind a session must still be an admin key: revoking or
                    // demoting it ends its sessions here.
                    let key = self.ledger.key(auth.key_id).map_err(|error| {
                        tracing::error!(%error, "reading a session's key failed");
                        ApiError::Internal
                    })?;
                    if !key.is_some_and(|k| k.is_admin() && k.revoked_at.is_none()) {
                        self.sessions.remove(&id);
                        return Err(ApiError::RevokedKey);
                    }
                    Some(auth)
                }
                None if *method == Method::GET && wants_html(&request) => {
                    return Ok(pages::redirect(pages::PATH_LOGIN));
                }
                None => return Err(ApiError::MissingKey),
            }
        };
        if let Some(auth) = &session
            && !matches!(*method, Method::GET | Method::HEAD)
        {
            let sent = request
                .headers()
                .get(pages::CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !pages::tokens_equal(sent, &auth.csrf) {
                return Err(ApiError::CsrfMismatch);
            }
        }
        let query = request.uri().query().map(str::to_owned);
        let body = if *method == Method::POST {
            self.read_body(request).await?
        } else {
            Bytes::new()
        };
        let ledger = Arc::clone(&self.ledger);
        let model = Arc::clone(&self.cost_model);
        let (method, path) = (method.clone(), path.to_owned());
        // SQLite reads and writes block (a write waits for the disk): off the async workers.
        tokio::task::spawn_blocking(move || {
            admin_route(&ledger, &model, &method, &path, query.as_deref(), &body)
        })
        .await
        .map_err(|_| ApiError::Internal)?
    }

    /// `POST /admin/login`: an admin key from the form, checked like any presented key
    /// (failures count against the client), for a session cookie.
    async fn login(&self, request: Request<Incoming>) -> Result<HttpResponse, ApiError> {
        let secure = self.limits.tls;
        let client = client_id(&request);
        let expected = pages::cookie(request.headers(), pages::LOGIN_COOKIE).map(str::to_owned);
        let body = self.read_body(request).await?;
        let fields = pages::form_fields(&body);
        let sent = fields
            .get(pages::CSRF_FIELD)
            .map(String::as_str)
            .unwrap_or_default();
        if !expected.is_some_and(|expected| pages::tokens_equal(sent, &expected)) {
            return pages::login_form(
                Some("The form expired or came from elsewhere; sign in again."),
                StatusCode::FORBIDDEN,
                secure,
            );
        }
        let key = fields.get("key").map(|k| k.trim()).unwrap_or_default();
        let record = match self.check_key(client, Ok(key), true) {
            Ok(record) => record,
            Err(ApiError::AdminRequired) => {
                return pages::login_form(
                    Some("That key is not an admin key."),
                    StatusCode::FORBIDDEN,
                    secure,
                );
            }
            Err(ApiError::InvalidKey(_) | ApiError::RevokedKey) => {
                return pages::login_form(
                    Some("That key is not valid."),
                    StatusCode::UNAUTHORIZED,
                    secure,
                );
            }
            Err(other) => return Err(other),
        };
        let now = Instant::now();
        let (session, _) = self.sessions.create(record.id, now)?;
        tracing::info!(target: "moebox_gateway::audit", key_id = record.id, "admin signed in");
        let mut response = pages::redirect(pages::PATH_OVERVIEW);
        pages::set_cookie(
            &mut response,
            pages::SESSION_COOKIE,
            &session,
            pages::SESSION_LIFETIME,
            secure,
        );
        pages::set_cookie(
            &mut response,
            pages::LOGIN_COOKIE,
            "",
            Duration::ZERO,
            secure,
        );
        Ok(response)
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

    async fn metrics_response(&self) -> HttpResponse {
        let queued = self.limits.max_queued_requests - self.queue.available_permits();
        let mut text = self.metrics.render(&self.router.statuses(), queued);
        let ledger = Arc::clone(&self.ledger);
        let model = Arc::clone(&self.cost_model);
        // The cost gauges come from the ledger and the cost model: off the async workers.
        let costs = tokio::task::spawn_blocking(move || {
            let now = UnixSeconds::now();
            let today = crate::accounting::date_of(now)?;
            crate::accounting::report(&ledger, &model, today.year_month().first_day(), today)
                .map_err(|error| tracing::warn!(%error, "cost gauges unavailable"))
                .ok()
        })
        .await
        .ok()
        .flatten();
        if let Some(report) = costs {
            crate::metrics::render_costs(&mut text, &report);
        }
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

    /// `gateway.max_output_tokens` is checked here; `gateway.max_prompt_tokens` travels to the
    /// engine, which alone can count the prompt's tokens.
    fn apply_token_caps(&self, validated: &mut ValidatedGeneration) -> Result<(), ApiError> {
        let cap = self.limits.max_output_tokens;
        if cap > 0
            && let Some(asked) = validated.request.max_tokens
            && asked > cap
        {
            return Err(ApiError::InvalidValue {
                param: validated.max_tokens_param.to_owned(),
                message: format!(
                    "`{}` is {asked}, more than this server's limit of {cap} \
                     (gateway.max_output_tokens)",
                    validated.max_tokens_param
                ),
            });
        }
        if self.limits.max_prompt_tokens > 0 {
            validated.request.max_prompt_tokens = Some(self.limits.max_prompt_tokens);
        }
        Ok(())
    }

    /// Settles a generation request however it ended: counts its tokens (metrics, the key's
    /// tokens-per-minute bucket), writes its audit line, and makes its usage record durable
    /// in the ledger before returning, so the caller sends the response's last byte only
    /// after the request is on disk. A record the ledger cannot take fails the request
    /// (503): nothing is served that the ledger does not hold.
    async fn settle(&self, account: &Account, ending: Ending<'_>) -> Result<(), ApiError> {
        let (status, finish_reason, prompt_tokens, completion_tokens) = match &ending {
            Ending::Done {
                finish_reason,
                usage,
            } => (
                200,
                Some(finish_reason.as_str()),
                usage.prompt_tokens,
                usage.completion_tokens,
            ),
            Ending::Failed(error) => (error.shape().status.as_u16(), None, 0, 0),
            Ending::ClientGone {
                prompt_tokens,
                completion_tokens,
            } => (
                STATUS_CLIENT_CLOSED,
                None,
                *prompt_tokens,
                *completion_tokens,
            ),
        };
        self.metrics.record_tokens(prompt_tokens, completion_tokens);
        self.key_rates.charge_tokens(
            account.key_id,
            u64::from(prompt_tokens) + u64::from(completion_tokens),
            Instant::now(),
        );
        let latency = account.started.elapsed();
        if matches!(ending, Ending::Done { .. }) {
            self.metrics.end_to_end.observe(latency);
        }
        account.log(&ending, status, prompt_tokens, completion_tokens, latency);
        let record = UsageRecord {
            request_id: account.request_id.clone(),
            started_at: account.started_at,
            ended_at: UnixMillis::now(),
            key_id: account.key_id,
            team: account.team.clone(),
            model: account.model.clone(),
            endpoint: account.endpoint.path().to_owned(),
            prompt_tokens: u64::from(prompt_tokens),
            completion_tokens: u64::from(completion_tokens),
            time_to_first_token_ms: account
                .first_text
                .map(|first| duration_ms(first.saturating_duration_since(account.started))),
            latency_ms: duration_ms(latency),
            status,
            engine: account.engine.clone(),
            finish_reason: finish_reason.map(str::to_owned),
        };
        self.writer.record(record).await.map_err(|error| {
            self.metrics.record_ledger_failure();
            match error {
                WriteError::Invalid(error) => {
                    tracing::error!(%error, request_id = %account.request_id, "usage record refused");
                    ApiError::Internal
                }
                other => {
                    tracing::error!(error = %other, request_id = %account.request_id, "usage record not stored");
                    ApiError::LedgerUnavailable {
                        retry_after_seconds: self.limits.retry_after_seconds,
                    }
                }
            }
        })
    }

    /// Whether key `key` still has tokens left this month (UTC).
    fn check_budget(&self, key: &KeyRecord) -> Result<(), ApiError> {
        let Some(budget) = key.monthly_token_budget else {
            return Ok(());
        };
        let used = self
            .ledger
            .tokens_used_by_key_since(key.id, UnixSeconds::now().month_start())
            .map_err(|error| {
                tracing::error!(%error, "reading a key's monthly usage failed");
                ApiError::LedgerUnavailable {
                    retry_after_seconds: self.limits.retry_after_seconds,
                }
            })?;
        if used >= budget {
            return Err(ApiError::BudgetExhausted { budget, used });
        }
        Ok(())
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
        request_id: &str,
    ) -> Result<HttpResponse, ApiError> {
        let key = self.authenticate(&request, false)?;
        let key_permit = self.key_permit(key.id).ok_or(ApiError::KeyConcurrency {
            limit: self.limits.per_key_max_concurrent,
        })?;
        self.key_rates
            .admit(
                key.id,
                key.requests_per_minute,
                key.tokens_per_minute,
                Instant::now(),
            )
            .map_err(|(limit, wait)| {
                let (limit, unit) = match limit {
                    KeyLimit::RequestsPerMinute(n) => (n, "requests"),
                    KeyLimit::TokensPerMinute(n) => (n, "tokens"),
                };
                ApiError::RateLimited {
                    limit,
                    unit,
                    retry_after_seconds: retry_after_seconds(wait),
                }
            })?;
        self.check_budget(&key)?;
        let body = self.read_body(request).await?;
        let mut validated = match endpoint {
            Endpoint::ChatCompletions => openai::parse_chat(&body)?,
            Endpoint::Completions => openai::parse_completion(&body)?,
        };
        drop(body);
        self.apply_token_caps(&mut validated)?;
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
        validated.request.request_id = request_id.to_owned();
        let deadline = tokio::time::Instant::from_std(started + self.limits.request_deadline);
        let mut account = Account {
            request_id: request_id.to_owned(),
            key_id: key.id,
            team: key.team.clone(),
            model: validated.model.clone(),
            endpoint,
            started,
            // The wall-clock time of arrival: now, less what the request has taken so far.
            started_at: UnixMillis(
                UnixMillis::now()
                    .0
                    .saturating_sub(i64::try_from(duration_ms(started.elapsed())).unwrap_or(0)),
            ),
            engine: None,
            first_text: None,
        };
        let meta = ResponseMeta::new(endpoint, request_id, unix_now(), validated.model.clone());
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
            return Err(self.fail(&account, error).await);
        }
        account.engine = generation.engine();
        let permits = (key_permit, queue_permit);
        if stream {
            let (sender, body) = GatewayBody::channel();
            let gateway = Arc::clone(self);
            tokio::spawn(async move {
                let _permits = permits;
                gateway
                    .pump(generation, sender, meta, include_usage, deadline, account)
                    .await;
            });
            let mut response = Response::new(body);
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            Ok(response)
        } else {
            let _permits = permits;
            let _in_flight = self.metrics.in_flight();
            let mut timing = TextTiming::new(&self.metrics, started);
            let collected =
                tokio::time::timeout_at(deadline, collect(&mut generation, &mut timing))
                    .await
                    .unwrap_or(Err(ApiError::DeadlineExceeded {
                        deadline: self.limits.request_deadline,
                    }));
            account.first_text = timing.first;
            match collected {
                Ok((text, finish_reason, usage)) => {
                    self.settle(
                        &account,
                        Ending::Done {
                            finish_reason,
                            usage,
                        },
                    )
                    .await?;
                    let mut response = Response::new(GatewayBody::full(meta.completion(
                        &text,
                        finish_reason,
                        usage,
                    )));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    Ok(response)
                }
                Err(error) => Err(self.fail(&account, error).await),
            }
        }
    }

    /// Settles a failed request; the error to answer (the ledger's, if it cannot record it).
    async fn fail(&self, account: &Account, error: ApiError) -> ApiError {
        match self.settle(account, Ending::Failed(&error)).await {
            Ok(()) => error,
            Err(ledger) => ledger,
        }
    }

    /// Settles a request whose client went away, with what it was served.
    async fn client_gone(&self, account: &Account, generation: &Generation) {
        let _ = self
            .settle(
                account,
                Ending::ClientGone {
                    prompt_tokens: generation.prompt_tokens(),
                    completion_tokens: generation.completion_tokens(),
                },
            )
            .await;
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
        mut account: Account,
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
            self.client_gone(&account, &generation).await;
            return;
        }
        let mut timing = TextTiming::new(&self.metrics, account.started);
        let keepalive = self.limits.sse_keepalive;
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let output = {
                let step = generation.next();
                tokio::pin!(step);
                loop {
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
                }
            };
            account.first_text = timing.first;
            let Some(output) = output else {
                self.client_gone(&account, &generation).await;
                return;
            };
            match output {
                Ok(Output::Text(text)) => {
                    timing.text();
                    account.first_text = timing.first;
                    if !writer
                        .send_data(&meta.chunk(ChunkPiece::Text(&text), include_usage))
                        .await
                    {
                        self.client_gone(&account, &generation).await;
                        return;
                    }
                }
                Ok(Output::Done {
                    finish_reason,
                    usage,
                }) => {
                    let settled = self
                        .settle(
                            &account,
                            Ending::Done {
                                finish_reason,
                                usage,
                            },
                        )
                        .await;
                    if let Err(error) = settled {
                        // Served but not recorded: the stream ends with the ledger's error
                        // instead of [DONE].
                        writer.send_json(&error.body()).await;
                        return;
                    }
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
                    let error = self.fail(&account, error).await;
                    // OpenAI's SDKs raise on a chunk holding `error`; the stream then ends
                    // without [DONE].
                    writer.send_json(&error.body()).await;
                    return;
                }
            }
        }
    }
}

async fn collect(
    generation: &mut Generation,
    timing: &mut TextTiming<'_>,
) -> Result<(String, FinishReason, Usage), ApiError> {
    let mut text = String::new();
    loop {
        match generation.next().await? {
            Output::Text(piece) => {
                timing.text();
                text.push_str(&piece);
            }
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
        self.send(crate::body::sse_event(json)).await
    }
}

/// Times text chunks into the TTFT and inter-token histograms.
struct TextTiming<'a> {
    metrics: &'a Metrics,
    started: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl<'a> TextTiming<'a> {
    fn new(metrics: &'a Metrics, started: Instant) -> Self {
        Self {
            metrics,
            started,
            first: None,
            last: None,
        }
    }

    fn text(&mut self) {
        let now = Instant::now();
        match self.last {
            None => {
                self.first = Some(now);
                self.metrics
                    .time_to_first_token
                    .observe(now.duration_since(self.started));
            }
            Some(last) => self.metrics.inter_token.observe(now.duration_since(last)),
        }
        self.last = Some(now);
    }
}

/// The status recorded for a request whose client went away (nginx's convention).
pub const STATUS_CLIENT_CLOSED: u16 = 499;

/// How a generation request ended.
#[derive(Debug)]
enum Ending<'a> {
    Done {
        finish_reason: FinishReason,
        usage: Usage,
    },
    Failed(&'a ApiError),
    ClientGone {
        prompt_tokens: u32,
        completion_tokens: u32,
    },
}

/// One admitted generation request: who, what model, which engine, when; its audit line
/// and usage record are made from it when it ends. Never the prompt or the completion.
#[derive(Debug)]
struct Account {
    request_id: String,
    key_id: i64,
    team: String,
    model: String,
    endpoint: Endpoint,
    started: Instant,
    started_at: UnixMillis,
    engine: Option<String>,
    first_text: Option<Instant>,
}

impl Account {
    fn log(
        &self,
        ending: &Ending<'_>,
        status: u16,
        prompt_tokens: u32,
        completion_tokens: u32,
        latency: Duration,
    ) {
        let (outcome, code, finish_reason) = match ending {
            Ending::Done { finish_reason, .. } => ("generation", "", finish_reason.as_str()),
            Ending::Failed(error) => ("generation failed", error.shape().code, ""),
            Ending::ClientGone { .. } => (
                "client closed the stream; generation cancelled",
                "client_closed",
                "",
            ),
        };
        tracing::info!(
            target: "moebox_gateway::audit",
            request_id = %self.request_id,
            key_id = self.key_id,
            team = %self.team,
            model = %self.model,
            endpoint = self.endpoint.path(),
            engine = self.engine.as_deref().unwrap_or(""),
            status,
            code,
            finish_reason,
            prompt_tokens,
            completion_tokens,
            latency_ms = duration_ms(latency),
            "{outcome}"
        );
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Who sent `request`, for the auth-failure buckets (the listener records the address).
fn client_id(request: &Request<Incoming>) -> Option<ClientId> {
    request
        .extensions()
        .get::<ClientAddr>()
        .map(|ClientAddr(address)| ClientId::from(address.ip()))
}

/// The key of `Authorization: Bearer ...`, or why there is none.
fn bearer_token(request: &Request<Incoming>) -> Result<&str, ApiError> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::MissingKey)?
        .to_str()
        .map_err(|_| ApiError::InvalidKey("the Authorization header is not ASCII".into()))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
        _ => Err(ApiError::InvalidKey(
            "use the Bearer scheme: `Authorization: Bearer mbx_...`".into(),
        )),
    }
}

/// Whether a client asked for HTML (a browser navigating), to send it to the login form
/// rather than a JSON 401.
fn wants_html(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// An authenticated admin request's answer (runs on a blocking thread).
fn admin_route(
    ledger: &Ledger,
    model: &moebox_tco::CostModel,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<HttpResponse, ApiError> {
    if let Some(reply) = admin::keys(ledger, method, path, body) {
        let (status, value) = reply?;
        return Ok(json_response(status, &value));
    }
    let now = UnixSeconds::now();
    let page = match path {
        "/admin" | pages::PATH_OVERVIEW => Some(pages::overview(ledger, model, now)),
        pages::PATH_SCHEDULE => Some(pages::schedule(model, now)),
        pages::PATH_USAGE => Some(pages::usage(ledger, model, query, now)),
        pages::PATH_GPUS => Some(pages::gpus(ledger, now)),
        _ => None,
    };
    let not_allowed = || ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: path.to_owned(),
        allowed: "GET",
    };
    if let Some(page) = page {
        if !matches!(*method, Method::GET | Method::HEAD) {
            return Err(not_allowed());
        }
        return Ok(pages::html(StatusCode::OK, page?));
    }
    if let Some(file) = path.strip_prefix("/admin/")
        && let Some((content_type, filename, body)) = pages::export(ledger, file, query, now)?
    {
        if !matches!(*method, Method::GET | Method::HEAD) {
            return Err(not_allowed());
        }
        let mut response = Response::new(GatewayBody::full(body));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
            headers.insert(header::CONTENT_DISPOSITION, value);
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(response);
    }
    Err(ApiError::UnknownRoute {
        method: method.to_string(),
        path: path.to_owned(),
    })
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

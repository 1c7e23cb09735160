//! Which engine serves a request. Each engine's readiness and load are polled
//! (`gateway.engine_poll_interval_ms`); a request goes to the ready engine with the least
//! outstanding work (the gateway's own in-flight count for it, which is current, plus the
//! queue it last reported, which is not), and moves to another engine if the chosen one fails
//! before the first token. After the first token a failure ends the response: text the client
//! has seen cannot be taken back.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use moebox_protocol::{ErrorCode, Event, FinishReason, GenerateRequest, Load, Usage};
use tokio::sync::watch;

use crate::{
    engine_client::{self, EngineError, EventStream},
    error::ApiError,
};

/// What the router knows of one engine.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EngineStatus {
    pub socket: PathBuf,
    /// It answered `/v1/ready` with 200 at the last poll and has not failed since.
    pub ready: bool,
    /// The model it serves, once it has answered.
    pub model: Option<String>,
    pub load: Load,
    /// Requests the gateway has sent it that are still open.
    pub in_flight: u32,
}

#[derive(Debug)]
struct EngineSlot {
    socket: PathBuf,
    in_flight: AtomicU32,
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    ready: bool,
    model: Option<String>,
    load: Load,
    /// Whether the last poll's failure was already logged (log transitions, not every poll).
    failure_logged: bool,
}

impl EngineSlot {
    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        // A poisoned lock only means a thread panicked while holding plain data; the data
        // is still the last values written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn score(&self, load: &Load) -> u64 {
        u64::from(self.in_flight.load(Ordering::Relaxed))
            + u64::from(load.running)
            + u64::from(load.waiting)
    }

    fn mark_unready(&self) {
        self.state().ready = false;
    }
}

/// Holds one unit of an engine's in-flight count while a request is open on it.
#[derive(Debug)]
struct Lease {
    slot: Arc<EngineSlot>,
}

impl Lease {
    fn new(slot: Arc<EngineSlot>) -> Self {
        slot.in_flight.fetch_add(1, Ordering::Relaxed);
        Self { slot }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.slot.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct Router {
    slots: Vec<Arc<EngineSlot>>,
    connect_timeout: Duration,
    poll_interval: Duration,
    retry_after_seconds: u32,
}

impl Router {
    pub fn new(
        sockets: Vec<PathBuf>,
        connect_timeout: Duration,
        poll_interval: Duration,
        retry_after_seconds: u32,
    ) -> Arc<Self> {
        let slots = sockets
            .into_iter()
            .map(|socket| {
                Arc::new(EngineSlot {
                    socket,
                    in_flight: AtomicU32::new(0),
                    state: Mutex::new(SlotState::default()),
                })
            })
            .collect();
        Arc::new(Self {
            slots,
            connect_timeout,
            poll_interval,
            retry_after_seconds,
        })
    }

    /// Polls every engine until `shutdown` changes, one task per engine so a wedged engine
    /// delays only itself.
    pub fn spawn_pollers(self: &Arc<Self>, shutdown: watch::Receiver<bool>) {
        for index in 0..self.slots.len() {
            let router = Arc::clone(self);
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(router.poll_interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = ticks.tick() => router.poll_engine(index).await,
                        _ = shutdown.changed() => break,
                    }
                }
            });
        }
    }

    /// Polls every engine once, now.
    pub async fn poll_all(&self) {
        for index in 0..self.slots.len() {
            self.poll_engine(index).await;
        }
    }

    async fn poll_engine(&self, index: usize) {
        let Some(slot) = self.slots.get(index) else {
            return;
        };
        let probe = engine_client::probe(&slot.socket, self.connect_timeout).await;
        let mut state = slot.state();
        match probe {
            Ok(probe) => {
                if probe.ready != state.ready || state.failure_logged {
                    tracing::info!(
                        engine = index,
                        socket = %slot.socket.display(),
                        ready = probe.ready,
                        state = ?probe.health.state,
                        model = %probe.health.model,
                        "engine state"
                    );
                }
                state.ready = probe.ready;
                state.model = Some(probe.health.model);
                state.load = probe.load;
                state.failure_logged = false;
            }
            Err(error) => {
                if !state.failure_logged {
                    // An engine still loading at start is expected; one that answered before
                    // and stopped is news.
                    if state.model.is_some() {
                        tracing::warn!(engine = index, %error, "engine unavailable");
                    } else {
                        tracing::info!(engine = index, %error, "engine not answering yet");
                    }
                    state.failure_logged = true;
                }
                state.ready = false;
                state.load = Load::default();
            }
        }
    }

    pub fn statuses(&self) -> Vec<EngineStatus> {
        self.slots
            .iter()
            .map(|slot| {
                let state = slot.state();
                EngineStatus {
                    socket: slot.socket.clone(),
                    ready: state.ready,
                    model: state.model.clone(),
                    load: state.load,
                    in_flight: slot.in_flight.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    pub fn any_ready(&self) -> bool {
        self.slots.iter().any(|slot| slot.state().ready)
    }

    /// The models engines have said they serve, sorted, without repeats.
    pub fn models(&self) -> Vec<String> {
        let mut models: Vec<String> = self
            .slots
            .iter()
            .filter_map(|slot| slot.state().model.clone())
            .collect();
        models.sort();
        models.dedup();
        models
    }

    pub fn retry_after_seconds(&self) -> u32 {
        self.retry_after_seconds
    }

    /// Ready engines serving `model` and not yet tried, least outstanding work first.
    fn candidates(&self, model: &str, tried: &[usize]) -> Vec<usize> {
        let mut ranked: Vec<(u64, usize)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(index, _)| !tried.contains(index))
            .filter_map(|(index, slot)| {
                let state = slot.state();
                (state.ready && state.model.as_deref() == Some(model))
                    .then(|| (slot.score(&state.load), index))
            })
            .collect();
        ranked.sort_unstable();
        ranked.into_iter().map(|(_, index)| index).collect()
    }

    /// Starts a generation; nothing is sent to an engine until [`Generation::start`].
    pub fn generation(self: &Arc<Self>, model: String, request: GenerateRequest) -> Generation {
        Generation {
            router: Arc::clone(self),
            model,
            request,
            tried: Vec::new(),
            current: None,
            tokens_seen: false,
            prompt_tokens: 0,
            completion_tokens: 0,
            last_refusal: None,
        }
    }
}

/// What a generation yields to the handler.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Text(String),
    Done {
        finish_reason: FinishReason,
        usage: Usage,
    },
}

/// One request's generation, with failover until its first token.
#[derive(Debug)]
pub struct Generation {
    router: Arc<Router>,
    model: String,
    request: GenerateRequest,
    tried: Vec<usize>,
    current: Option<(Lease, EventStream)>,
    tokens_seen: bool,
    prompt_tokens: u32,
    /// Tokens streamed so far (what a client that leaves early was served).
    completion_tokens: u32,
    /// The most telling refusal so far, answered when every engine has been tried.
    last_refusal: Option<ApiError>,
}

/// Whether another engine may succeed where this one refused.
fn worth_another_engine(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::QueueFull | ErrorCode::Unavailable | ErrorCode::Internal
    )
}

impl Generation {
    /// Opens the generation on the best engine, moving on to the next on failure, until one
    /// has admitted it (its `started` event). Errors here are still HTTP statuses.
    pub async fn start(&mut self) -> Result<(), ApiError> {
        loop {
            self.open_next().await?;
            let Some((_, stream)) = self.current.as_mut() else {
                continue;
            };
            match stream.next().await {
                Ok(Some(Event::Started { prompt_tokens })) => {
                    self.prompt_tokens = prompt_tokens;
                    return Ok(());
                }
                Ok(Some(Event::Error { code, message })) => {
                    let error = ApiError::Engine {
                        code,
                        message,
                        param: None,
                        retry_after_seconds: matches!(
                            code,
                            ErrorCode::QueueFull | ErrorCode::Unavailable
                        )
                        .then_some(self.router.retry_after_seconds),
                    };
                    if !worth_another_engine(code) {
                        return Err(error);
                    }
                    self.fail_current(format!("{code:?} before started"), false);
                    self.last_refusal = Some(error);
                }
                Ok(Some(other)) => {
                    return Err(self.protocol_error(format!("{other:?} before started")));
                }
                Ok(None) => self.fail_current("ended before started".into(), true),
                Err(error) => self.fail_current(error.to_string(), true),
            }
        }
    }

    /// Prompt tokens, as the admitting engine counted them.
    pub fn prompt_tokens(&self) -> u32 {
        self.prompt_tokens
    }

    /// Completion tokens streamed so far.
    pub fn completion_tokens(&self) -> u32 {
        self.completion_tokens
    }

    /// The engine serving this generation (its socket's file name, `engine-0`), once started.
    pub fn engine(&self) -> Option<String> {
        self.current.as_ref().and_then(|(lease, _)| {
            lease
                .slot
                .socket
                .file_stem()
                .map(|name| name.to_string_lossy().into_owned())
        })
    }

    /// The next piece of output; after [`Output::Done`] it must not be called again.
    pub async fn next(&mut self) -> Result<Output, ApiError> {
        loop {
            if self.current.is_none() {
                // Failover before the first token: start over on another engine.
                self.start().await?;
            }
            let Some((_, stream)) = self.current.as_mut() else {
                continue;
            };
            match stream.next().await {
                Ok(Some(Event::Token { text, token_ids })) => {
                    self.tokens_seen = true;
                    self.completion_tokens = self
                        .completion_tokens
                        .saturating_add(u32::try_from(token_ids.len()).unwrap_or(u32::MAX));
                    if !text.is_empty() {
                        return Ok(Output::Text(text));
                    }
                }
                Ok(Some(Event::Done {
                    finish_reason,
                    usage,
                })) => {
                    self.current = None;
                    return Ok(Output::Done {
                        finish_reason,
                        usage,
                    });
                }
                Ok(Some(Event::Started { prompt_tokens })) => self.prompt_tokens = prompt_tokens,
                Ok(Some(Event::Error { code, message })) => {
                    if !self.tokens_seen && worth_another_engine(code) {
                        self.fail_current(format!("{code:?}: {message}"), false);
                    } else {
                        self.current = None;
                        return Err(ApiError::Engine {
                            code,
                            message,
                            param: None,
                            retry_after_seconds: None,
                        });
                    }
                }
                Ok(None) | Err(_) if !self.tokens_seen => {
                    self.fail_current("stream broke before the first token".into(), true);
                }
                Ok(None) => return Err(self.protocol_error("stream ended without done".into())),
                Err(error) => return Err(self.protocol_error(error.to_string())),
            }
        }
    }

    fn protocol_error(&mut self, message: String) -> ApiError {
        self.fail_current(message.clone(), true);
        ApiError::Engine {
            code: ErrorCode::Internal,
            message: "the engine failed during this request".into(),
            param: None,
            retry_after_seconds: None,
        }
    }

    /// Drops the current engine (closing its connection); `unready` takes it out of rotation
    /// until its next successful poll.
    fn fail_current(&mut self, reason: String, unready: bool) {
        if let Some((lease, _)) = self.current.take() {
            tracing::warn!(
                socket = %lease.slot.socket.display(),
                reason = %reason,
                "engine failed a request before its first token; trying another"
            );
            if unready {
                lease.slot.mark_unready();
            }
        }
    }

    /// Connects to the next candidate and submits; on return `current` is set, or every
    /// engine has been tried and the error says why none took the request.
    async fn open_next(&mut self) -> Result<(), ApiError> {
        let router = Arc::clone(&self.router);
        loop {
            let Some(index) = router.candidates(&self.model, &self.tried).first().copied() else {
                return Err(self.last_refusal.take().unwrap_or(ApiError::NoEngine {
                    retry_after_seconds: router.retry_after_seconds,
                }));
            };
            self.tried.push(index);
            let Some(slot) = router.slots.get(index) else {
                continue;
            };
            let lease = Lease::new(Arc::clone(slot));
            match engine_client::generate(&slot.socket, &self.request, router.connect_timeout).await
            {
                Ok(stream) => {
                    self.current = Some((lease, stream));
                    return Ok(());
                }
                Err(EngineError::Refused { body, .. }) if worth_another_engine(body.code) => {
                    if body.code == ErrorCode::Unavailable {
                        slot.mark_unready();
                    }
                    self.last_refusal =
                        Some(ApiError::from_engine(body, router.retry_after_seconds));
                }
                Err(EngineError::Refused { body, .. }) => {
                    return Err(ApiError::from_engine(body, router.retry_after_seconds));
                }
                Err(error) => {
                    tracing::warn!(engine = index, %error, "engine unreachable; trying another");
                    slot.mark_unready();
                }
            }
        }
    }
}

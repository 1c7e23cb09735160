//! Continuous batching: one scheduler thread per engine owns the model and the batched KV
//! cache; requests join the running batch between decode steps and leave when they finish.
//!
//! Each iteration: admit from the bounded wait queue while a batch row is free (the KV budget
//! is `rows × row_capacity` positions and a row is reserved for a request's whole
//! prompt + completion, so admission never over-commits); decode one token for every running
//! sequence in one ONNX Runtime run; run one prefill chunk (at most `prefill_chunk_tokens`) of
//! the oldest admitted sequence, so a long prompt never freezes the others' streams; retire
//! finished and cancelled sequences, moving the last running row into each hole so the batch
//! stays contiguous. See `docs/engine.md` for the design and how it compares with vLLM, TGI and
//! onnxruntime-genai's engine.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::Duration,
};

use moebox_protocol::{
    EngineState, ErrorBody, ErrorCode, Event, FinishReason, GenerateRequest, Load, Prompt, Usage,
};
use tokio::sync::mpsc;

use crate::{
    batch::BatchCache,
    chat_template::{ChatMessage, ChatTemplate},
    genai_config::ModelSpec,
    generate::{GenerateError, completion_budget},
    model::{Model, ModelError},
    sampling::SamplingParams,
    sequence::{StreamError, TokenStream},
    tokenizer::Tokenizer,
};

/// Events a client may fall behind by before the scheduler holds them back for it.
pub const EVENT_BUFFER: usize = 64;
/// How long an idle scheduler sleeps between heartbeats.
pub const IDLE_TICK: Duration = Duration::from_millis(250);
/// Seconds a client is told to wait when the queue is full.
pub const QUEUE_FULL_RETRY_AFTER_SECONDS: u32 = 1;

/// Scheduler limits, from `[engine]` in the config.
#[derive(Debug, Clone)]
pub struct SchedulerLimits {
    /// KV positions in all; divided into rows of `row_capacity`.
    pub kv_budget_tokens: usize,
    /// Positions one sequence may hold (prompt + completion); at most the context length.
    pub row_capacity: usize,
    /// Requests that may wait for a free row.
    pub max_waiting: usize,
    /// Prompt tokens prefilled per scheduler step.
    pub prefill_chunk_tokens: usize,
    /// Completion length when a request names none.
    pub default_max_tokens: u32,
}

impl SchedulerLimits {
    /// The limits `[engine]` sets for a model of `context_length` positions.
    pub fn from_config(engine: &moebox_config::EngineConfig, context_length: usize) -> Self {
        let row_capacity = match engine.max_sequence_tokens {
            0 => context_length,
            n => n.min(context_length),
        };
        Self {
            kv_budget_tokens: engine.kv_budget_tokens,
            row_capacity,
            max_waiting: engine.max_waiting,
            prefill_chunk_tokens: engine.prefill_chunk_tokens,
            default_max_tokens: engine.max_tokens,
        }
    }

    /// Rows the budget holds (at least one).
    pub fn rows(&self) -> usize {
        (self.kv_budget_tokens / self.row_capacity.max(1)).max(1)
    }
}

/// Why a request was refused before it ran.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal(pub ErrorBody);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl std::error::Error for Refusal {}

fn refuse(code: ErrorCode, param: Option<&str>, message: impl Into<String>) -> Refusal {
    Refusal(ErrorBody {
        message: message.into(),
        code,
        param: param.map(str::to_owned),
        retry_after_seconds: matches!(code, ErrorCode::QueueFull | ErrorCode::Unavailable)
            .then_some(QUEUE_FULL_RETRY_AFTER_SECONDS),
    })
}

/// A request that passed every check: tokenised, limits applied.
#[derive(Debug)]
struct Admitted {
    request_id: String,
    prompt_ids: Vec<u32>,
    budget: usize,
    stream: TokenStream,
    events: mpsc::Sender<Event>,
    cancel: Arc<AtomicBool>,
}

/// A running request's stream of events; dropping it cancels the sequence.
#[derive(Debug)]
pub struct Submission {
    pub events: mpsc::Receiver<Event>,
    cancel: Arc<AtomicBool>,
}

impl Drop for Submission {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Counters the scheduler publishes for `/v1/load` and the router.
#[derive(Debug, Default)]
struct Counters {
    running: AtomicU32,
    waiting: AtomicU32,
    kv_used: AtomicU64,
    kv_reserved: AtomicU64,
    generated_total: AtomicU64,
    prefill_runs: AtomicU64,
}

/// What submitting threads share: the tokenizer and template (requests are checked and
/// tokenised in the caller's thread, not the scheduler's), limits, state, counters.
#[derive(Debug)]
struct Shared {
    spec: ModelSpec,
    tokenizer: Arc<Tokenizer>,
    chat_template: Option<ChatTemplate>,
    limits: SchedulerLimits,
    state: AtomicU8,
    counters: Counters,
    rows: usize,
}

/// The engine as the server sees it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
    queue: SyncSender<Admitted>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

fn state_code(state: EngineState) -> u8 {
    match state {
        EngineState::Loading => 0,
        EngineState::Warming => 1,
        EngineState::Ready => 2,
        EngineState::Draining => 3,
    }
}

fn state_from(code: u8) -> EngineState {
    match code {
        0 => EngineState::Loading,
        1 => EngineState::Warming,
        2 => EngineState::Ready,
        _ => EngineState::Draining,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("warm-up generation failed: {0}")]
    Warmup(String),
    #[error("cannot start the scheduler thread: {0}")]
    Thread(std::io::Error),
}

/// Starts the scheduler thread on `model`: allocates the KV cache, runs a warm-up step, then
/// serves. `heartbeat` is called from the scheduler loop at least every [`IDLE_TICK`] (the
/// watchdog ping: a wedged scheduler stops calling it).
pub fn start(
    model: Model,
    limits: SchedulerLimits,
    heartbeat: Box<dyn Fn() + Send>,
) -> Result<EngineHandle, StartError> {
    let row_capacity = limits.row_capacity.clamp(2, model.spec.context_length);
    let limits = SchedulerLimits {
        row_capacity,
        ..limits
    };
    let rows = limits.rows();
    let mut model = model;
    let state = AtomicU8::new(state_code(EngineState::Warming));
    let mut cache = model.new_batch_cache(rows, row_capacity)?;
    tracing::info!(
        rows,
        row_capacity,
        kv_bytes = cache.bytes(),
        "KV cache allocated"
    );
    warm_up(&mut model, &mut cache).map_err(|e| StartError::Warmup(e.to_string()))?;
    state.store(state_code(EngineState::Ready), Ordering::Release);
    let shared = Arc::new(Shared {
        spec: model.spec.clone(),
        tokenizer: Arc::clone(&model.tokenizer),
        chat_template: model.chat_template.clone(),
        limits: limits.clone(),
        state,
        counters: Counters::default(),
        rows,
    });
    let (queue, waiting) = std::sync::mpsc::sync_channel(limits.max_waiting.max(1));
    let loop_shared = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("moebox-scheduler".into())
        .spawn(move || {
            Scheduler {
                model,
                cache,
                shared: loop_shared,
                waiting,
                running: Vec::new(),
                prefilling: VecDeque::new(),
                batched_prefill: true,
                flushing: Vec::new(),
                heartbeat,
            }
            .run()
        })
        .map_err(StartError::Thread)?;
    Ok(EngineHandle {
        shared,
        queue,
        thread: Arc::new(Mutex::new(Some(thread))),
    })
}

/// One short prefill and decode, so the first request does not pay for lazy initialisation.
fn warm_up(model: &mut Model, cache: &mut BatchCache) -> Result<(), ModelError> {
    let tokens: Vec<u32> = (0..4).map(|i| i % model.spec.vocab_size as u32).collect();
    model.forward_batch(cache, 0, &tokens, tokens.len(), &[0])?;
    model.forward_batch(cache, 0, &tokens[..1], 1, &[tokens.len()])?;
    Ok(())
}

impl EngineHandle {
    pub fn state(&self) -> EngineState {
        state_from(self.shared.state.load(Ordering::Acquire))
    }

    /// False once the scheduler thread has ended (drained, or died): health checks must not
    /// report a dead scheduler as ready.
    pub fn is_running(&self) -> bool {
        self.thread
            .lock()
            .map(|t| t.as_ref().is_some_and(|h| !h.is_finished()))
            .unwrap_or(false)
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.shared.spec
    }

    pub fn load(&self) -> Load {
        let c = &self.shared.counters;
        Load {
            running: c.running.load(Ordering::Relaxed),
            waiting: c.waiting.load(Ordering::Relaxed),
            kv_used_tokens: c.kv_used.load(Ordering::Relaxed),
            kv_reserved_tokens: c.kv_reserved.load(Ordering::Relaxed),
            kv_total_tokens: (self.shared.rows * self.shared.limits.row_capacity) as u64,
            max_running: self.shared.rows as u32,
            max_waiting: self.shared.limits.max_waiting as u32,
            generated_tokens_total: c.generated_total.load(Ordering::Relaxed),
            prefill_runs_total: c.prefill_runs.load(Ordering::Relaxed),
        }
    }

    /// Checks, tokenises and queues a request. Refuses at once, with the field at fault, when
    /// the request is invalid, when the queue is full, or when the engine is draining.
    pub fn submit(&self, request: GenerateRequest) -> Result<Submission, Refusal> {
        if self.state() != EngineState::Ready {
            return Err(refuse(
                ErrorCode::Unavailable,
                None,
                format!("the engine is {}", state_name(self.state())),
            ));
        }
        let shared = &self.shared;
        let prompt_ids = self.tokenize(&request.prompt)?;
        if let Some(&token) = prompt_ids
            .iter()
            .find(|&&t| t as usize >= shared.spec.vocab_size)
        {
            return Err(refuse(
                ErrorCode::InvalidRequest,
                Some("prompt"),
                format!(
                    "token {token} is outside the vocabulary of {}",
                    shared.spec.vocab_size
                ),
            ));
        }
        if let Some(limit) = request.max_prompt_tokens
            && prompt_ids.len() > limit as usize
        {
            return Err(refuse(
                ErrorCode::ContextLengthExceeded,
                Some("messages"),
                format!(
                    "the prompt has {} tokens, more than this server's limit of {limit} \
                     (gateway.max_prompt_tokens)",
                    prompt_ids.len()
                ),
            ));
        }
        let capacity = shared.limits.row_capacity;
        let budget = completion_budget(
            prompt_ids.len(),
            request.max_tokens,
            shared.limits.default_max_tokens,
            capacity,
        )
        .map_err(|e| match e {
            GenerateError::ContextLength { .. } => refuse(
                ErrorCode::ContextLengthExceeded,
                Some("max_tokens"),
                format!(
                    "this engine holds at most {capacity} tokens per request; the request asks for {} ({} in the prompt, {} in the completion)",
                    prompt_ids.len() + request.max_tokens.unwrap_or(1) as usize,
                    prompt_ids.len(),
                    request.max_tokens.unwrap_or(1)
                ),
            ),
            GenerateError::EmptyPrompt => refuse(ErrorCode::InvalidRequest, Some("prompt"), e.to_string()),
            other => refuse(ErrorCode::InvalidRequest, Some("max_tokens"), other.to_string()),
        })?;
        let sampling = self.sampling(&request);
        let stream = TokenStream::new(sampling, request.stop.clone(), &prompt_ids, budget)
            .map_err(|e| {
                let param = match &e {
                    StreamError::Sampling(s) => s.field(),
                    StreamError::Stop(_) => "stop",
                    StreamError::Tokenizer(_) => "prompt",
                };
                refuse(ErrorCode::InvalidRequest, Some(param), e.to_string())
            })?;
        let (events, receiver) = mpsc::channel(EVENT_BUFFER);
        let cancel = Arc::new(AtomicBool::new(false));
        let admitted = Admitted {
            request_id: request.request_id,
            prompt_ids,
            budget,
            stream,
            events,
            cancel: Arc::clone(&cancel),
        };
        shared.counters.waiting.fetch_add(1, Ordering::Relaxed);
        match self.queue.try_send(admitted) {
            Ok(()) => Ok(Submission {
                events: receiver,
                cancel,
            }),
            Err(TrySendError::Full(_)) => {
                shared.counters.waiting.fetch_sub(1, Ordering::Relaxed);
                Err(refuse(
                    ErrorCode::QueueFull,
                    None,
                    format!(
                        "the engine's wait queue is full ({} requests waiting, limit engine.max_waiting = {})",
                        shared.counters.waiting.load(Ordering::Relaxed),
                        shared.limits.max_waiting
                    ),
                ))
            }
            Err(TrySendError::Disconnected(_)) => {
                shared.counters.waiting.fetch_sub(1, Ordering::Relaxed);
                Err(refuse(
                    ErrorCode::Unavailable,
                    None,
                    "the engine's scheduler has stopped",
                ))
            }
        }
    }

    /// Stops admitting; running sequences finish; waiting ones are refused. Returns at once.
    pub fn drain(&self) {
        self.shared
            .state
            .store(state_code(EngineState::Draining), Ordering::Release);
    }

    /// Waits for the scheduler thread to end (after [`EngineHandle::drain`]).
    pub fn join(&self) {
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the scheduler thread panicked");
        }
    }

    fn tokenize(&self, prompt: &Prompt) -> Result<Vec<u32>, Refusal> {
        let shared = &self.shared;
        let encode = |text: &str| {
            shared
                .tokenizer
                .encode(text)
                .map_err(|e| refuse(ErrorCode::InvalidRequest, Some("prompt"), e.to_string()))
        };
        match prompt {
            Prompt::Text(text) => encode(text),
            Prompt::Tokens(ids) => Ok(ids.clone()),
            Prompt::Chat(messages) => {
                let template = shared.chat_template.as_ref().ok_or_else(|| {
                    refuse(
                        ErrorCode::InvalidRequest,
                        Some("messages"),
                        "this model has no chat template; use the completions API",
                    )
                })?;
                let messages: Vec<ChatMessage> = messages
                    .iter()
                    .map(|m| ChatMessage {
                        role: m.role.clone(),
                        content: m.content.clone(),
                    })
                    .collect();
                let text = template.render(&messages, true).map_err(|e| {
                    refuse(ErrorCode::InvalidRequest, Some("messages"), e.to_string())
                })?;
                encode(&text)
            }
        }
    }

    fn sampling(&self, request: &GenerateRequest) -> SamplingParams {
        SamplingParams::with_model_defaults(
            &self.shared.spec.search,
            request.temperature,
            request.top_k,
            request.top_p,
            request.seed,
            request.repetition_penalty,
            request.presence_penalty,
            request.frequency_penalty,
        )
    }
}

fn state_name(state: EngineState) -> &'static str {
    match state {
        EngineState::Loading => "loading",
        EngineState::Warming => "warming up",
        EngineState::Ready => "ready",
        EngineState::Draining => "draining",
    }
}

/// A sequence in the batch.
#[derive(Debug)]
struct Running {
    request: Admitted,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    /// Events the client has not taken yet (its channel was full).
    outbox: VecDeque<Event>,
    finished: bool,
}

impl Running {
    /// Positions this sequence holds in its row.
    fn positions(&self) -> usize {
        self.prefilled + self.request.stream.output_ids().len().saturating_sub(1)
    }

    fn send(&mut self, event: Event) {
        self.outbox.push_back(event);
        self.flush();
    }

    /// Hands queued events to the client as far as its channel has room.
    fn flush(&mut self) {
        while let Some(event) = self.outbox.pop_front() {
            match self.request.events.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.outbox.push_front(event);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.outbox.clear();
                    self.request.cancel.store(true, Ordering::Relaxed);
                    break;
                }
            }
        }
    }

    fn client_gone(&self) -> bool {
        self.request.cancel.load(Ordering::Relaxed) || self.request.events.is_closed()
    }
}

struct Scheduler {
    model: Model,
    cache: BatchCache,
    shared: Arc<Shared>,
    waiting: Receiver<Admitted>,
    /// Decoding sequences; `running[i]` lives in cache row `i`.
    running: Vec<Running>,
    /// Admitted sequences whose prompts are being prefilled, oldest first; `prefilling[i]`
    /// lives in cache row `running.len() + i`.
    prefilling: VecDeque<Running>,
    /// Finished sequences whose last events wait for room in the client's channel.
    flushing: Vec<Running>,
    /// Whether fresh prompts of equal length may share a prefill run (until one such run
    /// fails on this execution provider).
    batched_prefill: bool,
    heartbeat: Box<dyn Fn() + Send>,
}

impl Scheduler {
    fn run(mut self) {
        loop {
            (self.heartbeat)();
            let draining =
                state_from(self.shared.state.load(Ordering::Acquire)) == EngineState::Draining;
            if draining {
                self.refuse_waiting();
                if self.running.is_empty() && self.prefilling.is_empty() && self.flushing.is_empty()
                {
                    tracing::info!("scheduler drained");
                    return;
                }
            } else if !self.admit() {
                return;
            }
            self.retire_cancelled();
            // Prefill first: a newcomer's first token then waits for its own prompt only, not
            // also for a decode step of everyone else; a row whose prompt completes here joins
            // this iteration's decode.
            if !self.prefilling.is_empty() {
                self.prefill_step();
            }
            if !self.running.is_empty() {
                self.decode_step();
            }
            self.retire_finished();
            for running in &mut self.running {
                running.flush();
            }
            for done in &mut self.flushing {
                done.flush();
            }
            self.flushing
                .retain(|done| !done.outbox.is_empty() && !done.client_gone());
            self.publish();
        }
    }

    /// Takes waiting requests into free rows (all the free rows, so a burst is prefilled in
    /// one iteration rather than one request per decode step), blocking (up to [`IDLE_TICK`])
    /// only when nothing runs. Returns false when every handle is gone.
    fn admit(&mut self) -> bool {
        while self.running.len() + self.prefilling.len() < self.cache.rows() {
            let idle = self.running.is_empty() && self.prefilling.is_empty();
            let next = if idle {
                match self.waiting.recv_timeout(IDLE_TICK) {
                    Ok(request) => request,
                    Err(RecvTimeoutError::Timeout) => return true,
                    Err(RecvTimeoutError::Disconnected) => return false,
                }
            } else {
                match self.waiting.try_recv() {
                    Ok(request) => request,
                    Err(_) => return true,
                }
            };
            self.shared.counters.waiting.fetch_sub(1, Ordering::Relaxed);
            let mut candidate = Running {
                request: next,
                prefilled: 0,
                outbox: VecDeque::new(),
                finished: false,
            };
            if candidate.client_gone() {
                continue;
            }
            tracing::debug!(request_id = %candidate.request.request_id, prompt = candidate.request.prompt_ids.len(), "admitted");
            candidate.send(Event::Started {
                prompt_tokens: candidate.request.prompt_ids.len() as u32,
            });
            self.prefilling.push_back(candidate);
        }
        true
    }

    fn refuse_waiting(&mut self) {
        while let Ok(request) = self.waiting.try_recv() {
            self.shared.counters.waiting.fetch_sub(1, Ordering::Relaxed);
            let _ = request.events.try_send(Event::Error {
                message: "the engine is shutting down".into(),
                code: ErrorCode::Unavailable,
            });
        }
    }

    /// One token for every decoding sequence, in one run.
    fn decode_step(&mut self) {
        let tokens: Vec<u32> = self
            .running
            .iter()
            .map(|r| r.request.stream.last_token().unwrap_or(0))
            .collect();
        let past: Vec<usize> = self.running.iter().map(Running::positions).collect();
        match self
            .model
            .forward_batch(&mut self.cache, 0, &tokens, 1, &past)
        {
            Ok(mut logits) => {
                let vocab = self.model.spec.vocab_size;
                for (row, running) in self.running.iter_mut().enumerate() {
                    if running.finished {
                        continue;
                    }
                    let slice = &mut logits[row * vocab..(row + 1) * vocab];
                    accept(&self.model, running, slice, &self.shared.counters);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, rows = tokens.len(), "decode step failed");
                for running in &mut self.running {
                    fail(running, &e.to_string());
                }
            }
        }
    }

    /// Prefills up to `prefill_chunk_tokens` prompt tokens this iteration, oldest sequence
    /// first. Newcomers at the front whose whole prompts have the same length share one run
    /// (a burst of similar requests: one weight pass instead of one each); otherwise each
    /// chunk has its own run, because GroupQueryAttention on the CPU refuses rows of different
    /// lengths or offsets in one run. A sequence whose prompt completes samples its first
    /// token and joins the decoding rows.
    fn prefill_step(&mut self) {
        let mut budget = self.shared.limits.prefill_chunk_tokens.max(1);
        while budget > 0 && !self.prefilling.is_empty() {
            let together = self.fresh_equal_prompts(budget);
            if together >= 2 {
                match self.prefill_together(together) {
                    Ok(used) => {
                        budget -= used;
                        continue;
                    }
                    Err(e) => {
                        // Not every execution provider's attention kernel takes several fresh
                        // rows at once; fall back to one run each, for good.
                        tracing::warn!(error = %e, rows = together, "batched prefill failed; prefilling one sequence per run from now on");
                        self.batched_prefill = false;
                    }
                }
            }
            let mut running = match self.prefilling.pop_front() {
                Some(running) => running,
                None => return,
            };
            let row = self.running.len();
            let prompt = &running.request.prompt_ids;
            let start = running.prefilled;
            let end = (start + budget).min(prompt.len());
            let chunk = prompt[start..end].to_vec();
            budget -= chunk.len();
            self.shared
                .counters
                .prefill_runs
                .fetch_add(1, Ordering::Relaxed);
            match self
                .model
                .forward_batch(&mut self.cache, row, &chunk, chunk.len(), &[start])
            {
                Ok(mut logits) => {
                    running.prefilled = end;
                    if end < running.request.prompt_ids.len() {
                        self.prefilling.push_front(running);
                        return;
                    }
                    accept(
                        &self.model,
                        &mut running,
                        &mut logits,
                        &self.shared.counters,
                    );
                    self.running.push(running);
                }
                Err(e) => {
                    tracing::error!(error = %e, "prefill failed");
                    fail(&mut running, &e.to_string());
                    self.flushing.push(running);
                    // Its row is free: the next prefilling sequence moves into it.
                    self.close_prefill_gap(0);
                    return;
                }
            }
        }
    }

    /// How many sequences at the front of `prefilling` have not started and have whole
    /// prompts of the same length that fit `budget` together.
    fn fresh_equal_prompts(&self, budget: usize) -> usize {
        if !self.batched_prefill {
            return 1;
        }
        let Some(first) = self.prefilling.front() else {
            return 0;
        };
        let length = first.request.prompt_ids.len();
        if first.prefilled != 0 || length == 0 || length > budget {
            return 1;
        }
        self.prefilling
            .iter()
            .take_while(|r| r.prefilled == 0 && r.request.prompt_ids.len() == length)
            .count()
            .min(budget / length)
    }

    /// Prefills the first `count` prefilling sequences (fresh, equal prompt lengths) in one
    /// run; each samples its first token and joins the decoding rows. Returns the prompt
    /// tokens used. On an error nothing has changed: the caller prefills them one by one.
    fn prefill_together(&mut self, count: usize) -> Result<usize, ModelError> {
        let row = self.running.len();
        let length = self.prefilling[0].request.prompt_ids.len();
        let tokens: Vec<u32> = self
            .prefilling
            .iter()
            .take(count)
            .flat_map(|r| r.request.prompt_ids.iter().copied())
            .collect();
        let mut logits =
            self.model
                .forward_batch(&mut self.cache, row, &tokens, length, &vec![0; count])?;
        self.shared
            .counters
            .prefill_runs
            .fetch_add(1, Ordering::Relaxed);
        let vocab = self.model.spec.vocab_size;
        for index in 0..count {
            let Some(mut running) = self.prefilling.pop_front() else {
                break;
            };
            running.prefilled = length;
            let slice = &mut logits[index * vocab..(index + 1) * vocab];
            accept(&self.model, &mut running, slice, &self.shared.counters);
            self.running.push(running);
        }
        Ok(count * length)
    }

    /// After `prefilling[index]` left (already removed), moves the last prefilling row into its
    /// row so the prefilling rows stay contiguous after the decoding ones.
    fn close_prefill_gap(&mut self, index: usize) {
        let base = self.running.len();
        let last = self.prefilling.len();
        if index >= last {
            return;
        }
        if let Err(e) = self.cache.move_row(base + last, base + index) {
            tracing::error!(error = %e, "cannot compact the KV cache");
            if let Some(mut moved) = self.prefilling.pop_back() {
                fail(&mut moved, &e.to_string());
                self.flushing.push(moved);
            }
            return;
        }
        if let Some(moved) = self.prefilling.pop_back() {
            self.prefilling.insert(index, moved);
        }
    }

    fn retire_cancelled(&mut self) {
        for running in &mut self.running {
            if !running.finished && running.client_gone() {
                finish(&self.model.tokenizer, running, FinishReason::Cancelled);
            }
        }
        for index in (0..self.prefilling.len()).rev() {
            if self.prefilling[index].client_gone() {
                self.prefilling.remove(index);
                self.close_prefill_gap(index);
            }
        }
    }

    /// Removes finished sequences, keeping the running rows contiguous from row 0 and the
    /// prefilling rows right after them.
    fn retire_finished(&mut self) {
        let prefill_row = self.running.len();
        let mut moved = false;
        for slot in (0..self.running.len()).rev() {
            if !self.running[slot].finished {
                continue;
            }
            let last = self.running.len() - 1;
            if slot != last
                && let Err(e) = self.cache.move_row(last, slot)
            {
                tracing::error!(error = %e, "cannot compact the KV cache");
                let message = e.to_string();
                fail(&mut self.running[last], &message);
            }
            let done = self.running.swap_remove(slot);
            if !done.outbox.is_empty() {
                self.flushing.push(done);
            }
            moved = true;
        }
        if moved && self.running.len() != prefill_row {
            // Shift the prefilling block down; destinations lie below their sources, and any
            // source a later destination overwrites has already moved.
            for index in 0..self.prefilling.len() {
                if let Err(e) = self
                    .cache
                    .move_row(prefill_row + index, self.running.len() + index)
                {
                    tracing::error!(error = %e, "cannot compact the KV cache");
                    let message = e.to_string();
                    for mut lost in self.prefilling.drain(index..) {
                        fail(&mut lost, &message);
                        self.flushing.push(lost);
                    }
                    break;
                }
            }
        }
    }

    fn publish(&self) {
        let c = &self.shared.counters;
        let all = self.running.iter().chain(self.prefilling.iter());
        let (mut used, mut reserved, mut count) = (0_u64, 0_u64, 0_u32);
        for running in all {
            used += (running.positions() + 1) as u64;
            reserved += (running.request.prompt_ids.len() + running.request.budget) as u64;
            count += 1;
        }
        c.running.store(count, Ordering::Relaxed);
        c.kv_used.store(used, Ordering::Relaxed);
        c.kv_reserved.store(reserved, Ordering::Relaxed);
    }
}

/// Takes a sampled token into a sequence and sends what became final.
fn accept(model: &Model, running: &mut Running, logits: &mut [f32], counters: &Counters) {
    match running
        .request
        .stream
        .sample_and_accept(logits, &model.spec, &model.tokenizer)
    {
        Ok(accepted) => {
            counters.generated_total.fetch_add(1, Ordering::Relaxed);
            // Every token is reported, EOS included (it counts in usage), even when it adds
            // no text yet.
            running.send(Event::Token {
                text: accepted.text,
                token_ids: vec![accepted.token],
            });
            if let Some(reason) = accepted.finished {
                finish(&model.tokenizer, running, reason);
            }
        }
        Err(e) => fail(running, &e.to_string()),
    }
}

fn finish(tokenizer: &Tokenizer, running: &mut Running, reason: FinishReason) {
    if running.finished {
        return;
    }
    running.finished = true;
    match running.request.stream.finish(tokenizer) {
        Ok(rest) if !rest.is_empty() => running.send(Event::Token {
            text: rest,
            token_ids: Vec::new(),
        }),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot flush the last characters"),
    }
    let usage = Usage {
        prompt_tokens: running.request.prompt_ids.len() as u32,
        completion_tokens: running.request.stream.output_ids().len() as u32,
    };
    running.send(Event::Done {
        finish_reason: reason,
        usage,
    });
}

fn fail(running: &mut Running, message: &str) {
    if running.finished {
        return;
    }
    running.finished = true;
    running.send(Event::Error {
        message: message.to_owned(),
        code: ErrorCode::Internal,
    });
}

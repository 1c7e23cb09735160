//! The engine's internal API, as the gateway and the engine both see it.
//!
//! HTTP/1.1 over a Unix socket (`/run/moebox/engine-N.sock`):
//!
//! | method and path   | body                | answer                                              |
//! |-------------------|---------------------|-----------------------------------------------------|
//! | `POST /v1/generate` | [`GenerateRequest`] | `application/x-ndjson` stream of [`Event`], one per line, ending with `done` or `error`; closing the stream cancels the sequence |
//! | `GET /v1/health`  |                     | [`Health`] (always 200 while the process answers)   |
//! | `GET /v1/ready`   |                     | 200 when ready, 503 while loading, warming or draining, body [`Health`] |
//! | `GET /v1/load`    |                     | [`Load`]                                            |
//! | `GET /v1/telemetry?since=SEQ` |         | [`telemetry::TelemetryBatch`]: the samples taken after `SEQ` (0 or absent: all the engine still holds) |
//!
//! A request the engine refuses before streaming is answered with a non-200 status and an
//! [`ErrorBody`]. No type here knows about ONNX Runtime or HTTP libraries.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

pub mod telemetry;

pub const GENERATE_PATH: &str = "/v1/generate";
pub const HEALTH_PATH: &str = "/v1/health";
pub const READY_PATH: &str = "/v1/ready";
pub const LOAD_PATH: &str = "/v1/load";
pub const TELEMETRY_PATH: &str = "/v1/telemetry";
pub const NDJSON: &str = "application/x-ndjson";

/// One chat message; the engine renders the model's chat template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// What to complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Prompt {
    /// Raw text, tokenized as is (`/v1/completions`).
    Text(String),
    /// A conversation, rendered through the chat template with the generation prompt added
    /// (`/v1/chat/completions`).
    Chat(Vec<Message>),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
}

/// A generation as the gateway submits it. Every field is validated by the engine, which
/// answers with an [`ErrorBody`] naming the field at fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// Caller's id for logs and the ledger; never interpreted.
    #[serde(default)]
    pub request_id: String,
    pub prompt: Prompt,
    /// Completion length; `None`: the engine's `max_tokens`, cut to what the context leaves.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// The gateway's cap on the prompt's length in tokens (`gateway.max_prompt_tokens`), which
    /// only the engine can count; a longer prompt is refused naming it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prompt_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<u32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub stop: Vec<String>,
}

impl GenerateRequest {
    pub fn new(prompt: Prompt) -> Self {
        Self {
            request_id: String::new(),
            prompt,
            max_tokens: None,
            max_prompt_tokens: None,
            temperature: None,
            top_p: None,
            top_k: None,
            seed: None,
            presence_penalty: None,
            frequency_penalty: None,
            repetition_penalty: None,
            stop: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// EOS or a stop sequence.
    Stop,
    /// `max_tokens` or the context length.
    Length,
    /// The client went away or asked to stop.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// One line of a generation stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Event {
    /// The request was admitted: its prompt length, before the first token.
    Started { prompt_tokens: u32 },
    /// Text that became final (whole UTF-8 characters, never past a stop sequence), with the
    /// ids of the tokens that produced it since the last event.
    Token { text: String, token_ids: Vec<u32> },
    /// The end: why, and the token counts.
    Done {
        finish_reason: FinishReason,
        usage: Usage,
    },
    /// The engine failed this request after it started.
    Error { message: String, code: ErrorCode },
}

/// Machine-readable error kinds; the gateway maps them to HTTP status and OpenAI error types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A field is out of range or malformed (400).
    InvalidRequest,
    /// Prompt plus completion exceed what one sequence may hold (400).
    ContextLengthExceeded,
    /// The wait queue is full (429 / 503 with Retry-After).
    QueueFull,
    /// The engine is not ready or is draining (503).
    Unavailable,
    /// ONNX Runtime or the engine failed (500).
    Internal,
}

/// Body of a refused request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
    pub code: ErrorCode,
    /// The request field at fault, when there is one (`temperature`, `max_tokens`, `stop`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// Seconds after which a retry may succeed (queue full, not ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineState {
    Loading,
    Warming,
    Ready,
    Draining,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub state: EngineState,
    /// The model folder's name, as `/v1/models` lists it.
    pub model: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
}

/// What the router needs to pick the least-loaded engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Load {
    /// Sequences in the running batch (prefilling or decoding).
    pub running: u32,
    /// Admitted to the wait queue, not yet running.
    pub waiting: u32,
    /// KV positions held by running sequences.
    pub kv_used_tokens: u64,
    /// KV positions reserved by running sequences (prompt + max_tokens).
    pub kv_reserved_tokens: u64,
    /// KV positions the engine's budget holds in all.
    pub kv_total_tokens: u64,
    /// Most sequences that run at once (batch rows).
    pub max_running: u32,
    /// Most that may wait.
    pub max_waiting: u32,
    /// Tokens the engine has generated since it started.
    pub generated_tokens_total: u64,
    /// Prefill runs since it started (fresh prompts of equal length share one).
    #[serde(default)]
    pub prefill_runs_total: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_as_tagged_lines() {
        let event = Event::Token {
            text: "é".into(),
            token_ids: vec![5, 6],
        };
        let line = serde_json::to_string(&event).expect("serialises");
        assert_eq!(line, r#"{"event":"token","text":"é","token_ids":[5,6]}"#);
        assert_eq!(serde_json::from_str::<Event>(&line).expect("parses"), event);
        let done = Event::Done {
            finish_reason: FinishReason::Length,
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
            },
        };
        let line = serde_json::to_string(&done).expect("serialises");
        assert_eq!(
            line,
            r#"{"event":"done","finish_reason":"length","usage":{"prompt_tokens":3,"completion_tokens":4}}"#
        );
    }

    #[test]
    fn request_defaults_leave_sampling_to_the_engine() {
        let request: GenerateRequest =
            serde_json::from_str(r#"{"prompt":{"kind":"text","value":"hi"}}"#).expect("parses");
        assert_eq!(request, GenerateRequest::new(Prompt::Text("hi".into())));
    }
}

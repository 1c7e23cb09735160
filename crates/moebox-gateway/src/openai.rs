//! The OpenAI API's request and response shapes, and validation: only a [`ValidatedGeneration`]
//! reaches the router. Unknown fields are ignored (as OpenAI does); a known field of the wrong
//! type is a 400 naming it; every range is checked here once, with the limit and the value in
//! the message.

use moebox_protocol::{FinishReason, GenerateRequest, Message, Prompt, Usage};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// OpenAI accepts up to four stop sequences.
pub const MAX_STOP_SEQUENCES: usize = 4;
/// Longest stop sequence, in bytes.
pub const MAX_STOP_BYTES: usize = 256;
/// Most chat messages in one request.
pub const MAX_MESSAGES: usize = 1_024;
/// `temperature` range, as OpenAI.
pub const MAX_TEMPERATURE: f32 = 2.0;
/// `presence_penalty` and `frequency_penalty` range, as OpenAI: `-2.0..=2.0`.
pub const MAX_PENALTY: f32 = 2.0;

/// Which endpoint a generation came through; it decides the response shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
        }
    }

    fn id_prefix(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chatcmpl-",
            Self::Completions => "cmpl-",
        }
    }
}

/// A request every field of which has been checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedGeneration {
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    /// The name the client used for the completion length (`max_tokens` or
    /// `max_completion_tokens`), for messages about it.
    pub max_tokens_param: &'static str,
    /// What the engine is sent (its `request_id` is set by the gateway).
    pub request: GenerateRequest,
}

/// The two endpoints' bodies share every field but what to complete. (One struct per
/// endpoint, not `serde(flatten)`: flattening would lose the field paths of type errors.)
macro_rules! generation_request {
    ($name:ident, $what:ident: $what_type:ty) => {
        /// Absent and `null` both mean "not set"; unknown fields are ignored.
        #[derive(Debug, Default, Deserialize)]
        #[serde(default)]
        struct $name {
            model: Option<String>,
            $what: Option<$what_type>,
            max_tokens: Option<u32>,
            max_completion_tokens: Option<u32>,
            temperature: Option<f32>,
            top_p: Option<f32>,
            stop: Option<StopField>,
            seed: Option<i64>,
            presence_penalty: Option<f32>,
            frequency_penalty: Option<f32>,
            /// An end-user id for abuse tracking: accepted (type-checked), never logged.
            #[allow(dead_code)]
            user: Option<String>,
            n: Option<i64>,
            response_format: Option<ResponseFormat>,
            stream: Option<bool>,
            stream_options: Option<StreamOptions>,
        }

        impl $name {
            fn into_common(self) -> (Option<String>, Option<$what_type>, CommonFields) {
                (
                    self.model,
                    self.$what,
                    CommonFields {
                        max_tokens: self.max_tokens,
                        max_completion_tokens: self.max_completion_tokens,
                        temperature: self.temperature,
                        top_p: self.top_p,
                        stop: self.stop,
                        seed: self.seed,
                        presence_penalty: self.presence_penalty,
                        frequency_penalty: self.frequency_penalty,
                        n: self.n,
                        response_format: self.response_format,
                        stream: self.stream,
                        stream_options: self.stream_options,
                    },
                )
            }
        }
    };
}

generation_request!(ChatCompletionRequest, messages: Vec<ChatMessage>);
generation_request!(CompletionRequest, prompt: CompletionPrompt);

/// What both endpoints validate alike.
#[derive(Debug)]
struct CommonFields {
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    stop: Option<StopField>,
    seed: Option<i64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    n: Option<i64>,
    response_format: Option<ResponseFormat>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct ResponseFormat {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<MessageContent>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CompletionPrompt {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    Batches(Vec<Vec<u32>>),
}

/// Parses and validates a `/v1/chat/completions` body.
pub fn parse_chat(body: &[u8]) -> Result<ValidatedGeneration, ApiError> {
    let raw: ChatCompletionRequest = deserialize(body)?;
    let (model, messages, common) = raw.into_common();
    let model = require_model(model)?;
    let messages = messages.ok_or_else(|| missing("messages"))?;
    if messages.is_empty() {
        return Err(invalid("messages", "must hold at least one message".into()));
    }
    if messages.len() > MAX_MESSAGES {
        return Err(invalid(
            "messages",
            format!(
                "holds {} messages, more than the limit of {MAX_MESSAGES}",
                messages.len()
            ),
        ));
    }
    let messages = messages
        .into_iter()
        .enumerate()
        .map(|(index, message)| chat_message(index, message))
        .collect::<Result<Vec<_>, _>>()?;
    finish(
        Endpoint::ChatCompletions,
        model,
        Prompt::Chat(messages),
        common,
    )
}

/// Parses and validates a `/v1/completions` body.
pub fn parse_completion(body: &[u8]) -> Result<ValidatedGeneration, ApiError> {
    let raw: CompletionRequest = deserialize(body)?;
    let (model, prompt, common) = raw.into_common();
    let model = require_model(model)?;
    let prompt = match prompt.ok_or_else(|| missing("prompt"))? {
        CompletionPrompt::Text(text) => Prompt::Text(text),
        CompletionPrompt::Tokens(ids) if !ids.is_empty() => Prompt::Tokens(ids),
        CompletionPrompt::Texts(mut texts) if texts.len() == 1 => {
            Prompt::Text(texts.pop().unwrap_or_default())
        }
        CompletionPrompt::Batches(mut batches)
            if batches.len() == 1 && batches.first().is_some_and(|ids| !ids.is_empty()) =>
        {
            Prompt::Tokens(batches.pop().unwrap_or_default())
        }
        CompletionPrompt::Tokens(_) => {
            return Err(invalid("prompt", "must not be empty".into()));
        }
        CompletionPrompt::Texts(_) | CompletionPrompt::Batches(_) => {
            return Err(ApiError::Unsupported {
                param: "prompt".into(),
                message: "only one prompt per request is supported: send a string, a list \
                          of token ids, or a list of exactly one of either"
                    .into(),
            });
        }
    };
    finish(Endpoint::Completions, model, prompt, common)
}

pub(crate) fn deserialize<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    let deserializer = &mut serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data if path != "." => ApiError::WrongType {
                param: path,
                message: data_message(&inner),
            },
            _ => ApiError::InvalidJson(inner.to_string()),
        }
    })?;
    Ok(value)
}

/// serde's message without its " at line L column C" suffix, which means nothing to a client
/// that serialised an object.
fn data_message(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn missing(param: &str) -> ApiError {
    ApiError::InvalidValue {
        param: param.into(),
        message: format!("`{param}` is required"),
    }
}

fn invalid(param: &str, message: String) -> ApiError {
    ApiError::InvalidValue {
        param: param.into(),
        message: format!("`{param}` {message}"),
    }
}

fn require_model(model: Option<String>) -> Result<String, ApiError> {
    match model {
        Some(model) if !model.is_empty() => Ok(model),
        _ => Err(missing("model")),
    }
}

fn chat_message(index: usize, message: ChatMessage) -> Result<Message, ApiError> {
    let role = match message.role.as_str() {
        "system" | "user" | "assistant" => message.role,
        // OpenAI's newer name for the system role.
        "developer" => "system".to_owned(),
        other => {
            return Err(ApiError::Unsupported {
                param: format!("messages[{index}].role"),
                message: format!(
                    "`messages[{index}].role` {other:?} is not supported: use system, \
                     developer, user or assistant"
                ),
            });
        }
    };
    let content = match message.content {
        None => String::new(),
        Some(MessageContent::Text(text)) => text,
        Some(MessageContent::Parts(parts)) => {
            let mut text = String::new();
            for (part_index, part) in parts.into_iter().enumerate() {
                let param = format!("messages[{index}].content[{part_index}]");
                match (part.kind.as_str(), part.text) {
                    ("text", Some(part_text)) => text.push_str(&part_text),
                    ("text", None) => return Err(missing(&format!("{param}.text"))),
                    (kind, _) => {
                        return Err(ApiError::Unsupported {
                            message: format!(
                                "`{param}.type` {kind:?} is not supported: this model reads text"
                            ),
                            param,
                        });
                    }
                }
            }
            text
        }
    };
    Ok(Message { role, content })
}

fn finish(
    endpoint: Endpoint,
    model: String,
    prompt: Prompt,
    common: CommonFields,
) -> Result<ValidatedGeneration, ApiError> {
    if let Some(n) = common.n
        && n != 1
    {
        return Err(ApiError::Unsupported {
            param: "n".into(),
            message: format!("`n` must be 1 (one choice per request), got {n}"),
        });
    }
    if let Some(format) = &common.response_format
        && format.kind != "text"
    {
        return Err(ApiError::Unsupported {
            param: "response_format".into(),
            message: format!(
                "`response_format` {:?} is not supported yet; only \"text\"",
                format.kind
            ),
        });
    }
    let (max_tokens, max_tokens_param) = match (common.max_completion_tokens, common.max_tokens) {
        (Some(value), _) => (Some(value), "max_completion_tokens"),
        (None, value) => (value, "max_tokens"),
    };
    if max_tokens == Some(0) {
        return Err(invalid(
            max_tokens_param,
            "must be at least 1, got 0".into(),
        ));
    }
    if let Some(temperature) = common.temperature
        && !(0.0..=MAX_TEMPERATURE).contains(&temperature)
    {
        return Err(invalid(
            "temperature",
            format!("must be between 0 and {MAX_TEMPERATURE}, got {temperature}"),
        ));
    }
    if let Some(top_p) = common.top_p
        && !(top_p > 0.0 && top_p <= 1.0)
    {
        return Err(invalid(
            "top_p",
            format!("must be greater than 0 and at most 1, got {top_p}"),
        ));
    }
    for (param, value) in [
        ("presence_penalty", common.presence_penalty),
        ("frequency_penalty", common.frequency_penalty),
    ] {
        if let Some(value) = value
            && !(-MAX_PENALTY..=MAX_PENALTY).contains(&value)
        {
            return Err(invalid(
                param,
                format!("must be between -{MAX_PENALTY} and {MAX_PENALTY}, got {value}"),
            ));
        }
    }
    let stop = match common.stop {
        None => Vec::new(),
        Some(StopField::One(one)) => vec![one],
        Some(StopField::Many(many)) => many,
    };
    if stop.len() > MAX_STOP_SEQUENCES {
        return Err(invalid(
            "stop",
            format!(
                "holds {} sequences, more than the limit of {MAX_STOP_SEQUENCES}",
                stop.len()
            ),
        ));
    }
    for sequence in &stop {
        if sequence.is_empty() || sequence.len() > MAX_STOP_BYTES {
            return Err(invalid(
                "stop",
                format!(
                    "sequences must be 1 to {MAX_STOP_BYTES} bytes long, got {}",
                    sequence.len()
                ),
            ));
        }
    }
    let stream = common.stream.unwrap_or(false);
    let include_usage = common
        .stream_options
        .and_then(|options| options.include_usage)
        .unwrap_or(false);
    let mut request = GenerateRequest::new(prompt);
    request.max_tokens = max_tokens;
    request.temperature = common.temperature;
    request.top_p = common.top_p;
    // OpenAI's seed is any integer; the engine's a u64: reinterpret the bits, one to one.
    request.seed = common.seed.map(|seed| seed as u64);
    request.presence_penalty = common.presence_penalty;
    request.frequency_penalty = common.frequency_penalty;
    request.stop = stop;
    Ok(ValidatedGeneration {
        endpoint,
        model,
        stream,
        include_usage,
        max_tokens_param,
        request,
    })
}

// ---- responses ----

/// `finish_reason` as OpenAI spells it. A cancelled generation (deadline) ends as `length`.
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Cancelled => "length",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UsageBody {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

impl From<Usage> for UsageBody {
    fn from(usage: Usage) -> Self {
        Self {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.prompt_tokens.saturating_add(usage.completion_tokens),
        }
    }
}

/// The parts of every response that identify it.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub endpoint: Endpoint,
}

impl ResponseMeta {
    pub fn new(endpoint: Endpoint, request_id: &str, created: u64, model: String) -> Self {
        Self {
            id: format!("{}{request_id}", endpoint.id_prefix()),
            created,
            model,
            endpoint,
        }
    }

    fn object(&self, streamed: bool) -> &'static str {
        match (self.endpoint, streamed) {
            (Endpoint::ChatCompletions, false) => "chat.completion",
            (Endpoint::ChatCompletions, true) => "chat.completion.chunk",
            (Endpoint::Completions, _) => "text_completion",
        }
    }

    fn envelope<C: Serialize>(
        &self,
        streamed: bool,
        choices: C,
        usage: UsageField,
    ) -> Envelope<'_, C> {
        Envelope {
            id: &self.id,
            object: self.object(streamed),
            created: self.created,
            model: &self.model,
            system_fingerprint: None,
            choices,
            usage,
        }
    }

    /// The whole (non-streamed) response, serialised.
    pub fn completion(&self, text: &str, reason: FinishReason, usage: Usage) -> Vec<u8> {
        let usage = UsageField::Counts(UsageBody::from(usage));
        let finish_reason = Some(finish_reason(reason));
        match self.endpoint {
            Endpoint::ChatCompletions => to_json(&self.envelope(
                false,
                [ChatChoice {
                    index: 0,
                    message: AssistantMessage {
                        role: "assistant",
                        content: text,
                        refusal: None,
                    },
                    logprobs: None,
                    finish_reason,
                }],
                usage,
            )),
            Endpoint::Completions => to_json(&self.envelope(
                false,
                [TextChoice {
                    text,
                    index: 0,
                    logprobs: None,
                    finish_reason,
                }],
                usage,
            )),
        }
    }

    /// One streamed chunk, serialised: the role (chat's first chunk), a piece of text, or the
    /// finish. `with_usage_field` adds `"usage": null`, as OpenAI does on every chunk when
    /// `stream_options.include_usage` is set.
    pub fn chunk(&self, piece: ChunkPiece<'_>, with_usage_field: bool) -> Vec<u8> {
        let usage = if with_usage_field {
            UsageField::Null
        } else {
            UsageField::Absent
        };
        let (text, reason) = match piece {
            ChunkPiece::Role => (None, None),
            ChunkPiece::Text(text) => (Some(text), None),
            ChunkPiece::Finish(reason) => (None, Some(finish_reason(reason))),
        };
        match self.endpoint {
            Endpoint::ChatCompletions => to_json(&self.envelope(
                true,
                [ChunkChoice {
                    index: 0,
                    delta: Delta {
                        role: matches!(piece, ChunkPiece::Role).then_some("assistant"),
                        content: match piece {
                            ChunkPiece::Role => Some(""),
                            _ => text,
                        },
                    },
                    logprobs: None,
                    finish_reason: reason,
                }],
                usage,
            )),
            Endpoint::Completions => to_json(&self.envelope(
                true,
                [TextChoice {
                    text: text.unwrap_or(""),
                    index: 0,
                    logprobs: None,
                    finish_reason: reason,
                }],
                usage,
            )),
        }
    }

    /// The last chunk of a stream with `include_usage`, serialised: no choices, the counts.
    pub fn usage_chunk(&self, usage: Usage) -> Vec<u8> {
        let choices: [TextChoice<'_>; 0] = [];
        to_json(&self.envelope(true, choices, UsageField::Counts(UsageBody::from(usage))))
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // These types hold only strings and numbers: serialising them cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Every completion object and chunk, fields in OpenAI's order.
#[derive(Debug, Serialize)]
struct Envelope<'a, C> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: Option<&'static str>,
    choices: C,
    #[serde(skip_serializing_if = "UsageField::is_absent")]
    usage: UsageField,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum UsageField {
    Absent,
    Null,
    Counts(UsageBody),
}

impl UsageField {
    fn is_absent(&self) -> bool {
        matches!(self, Self::Absent)
    }
}

#[derive(Debug, Serialize)]
struct ChatChoice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct TextChoice<'a> {
    text: &'a str,
    index: u32,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Debug, Clone, Copy)]
pub enum ChunkPiece<'a> {
    Role,
    Text(&'a str),
    Finish(FinishReason),
}

/// `GET /v1/models/{id}` and each entry of `GET /v1/models`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelObject {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

impl ModelObject {
    pub fn new(id: String, created: u64) -> Self {
        Self {
            id,
            object: "model",
            created,
            owned_by: "moebox",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<ValidatedGeneration, ApiError> {
        parse_chat(body.as_bytes())
    }

    #[test]
    fn minimal_chat_request() {
        let request =
            chat(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).expect("valid");
        assert_eq!(request.model, "m");
        assert!(!request.stream);
        assert_eq!(
            request.request.prompt,
            Prompt::Chat(vec![Message {
                role: "user".into(),
                content: "hi".into()
            }])
        );
        assert_eq!(request.request.max_tokens, None);
    }

    #[test]
    fn unknown_fields_are_ignored_and_nulls_are_unset() {
        let request = chat(
            r#"{"model":"m","messages":[{"role":"user","content":"hi","name":"x"}],
                "logit_bias":{"1":2},"temperature":null,"tools":[],"parallel_tool_calls":true}"#,
        )
        .expect("valid");
        assert_eq!(request.request.temperature, None);
    }

    #[test]
    fn every_sampling_field_reaches_the_engine_request() {
        let request = chat(
            r#"{"model":"m","messages":[{"role":"developer","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
                "max_tokens":5,"max_completion_tokens":7,"temperature":0.5,"top_p":0.9,
                "stop":"END","seed":-1,"presence_penalty":0.1,"frequency_penalty":-0.2,
                "user":"u","n":1,"response_format":{"type":"text"},"stream":true,
                "stream_options":{"include_usage":true}}"#,
        )
        .expect("valid");
        let engine = &request.request;
        assert_eq!(engine.max_tokens, Some(7));
        assert_eq!(engine.temperature, Some(0.5));
        assert_eq!(engine.top_p, Some(0.9));
        assert_eq!(engine.stop, vec!["END".to_owned()]);
        assert_eq!(engine.seed, Some(u64::MAX));
        assert_eq!(engine.presence_penalty, Some(0.1));
        assert_eq!(engine.frequency_penalty, Some(-0.2));
        assert!(request.stream && request.include_usage);
        assert_eq!(
            engine.prompt,
            Prompt::Chat(vec![Message {
                role: "system".into(),
                content: "ab".into()
            }])
        );
    }

    #[test]
    fn wrong_types_name_the_field() {
        for (body, param) in [
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":"ten"}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":[1]}"#,
                "temperature",
            ),
            (r#"{"model":"m","messages":"hi"}"#, "messages"),
            (
                r#"{"model":"m","messages":[{"role":7,"content":"x"}]}"#,
                "messages[0].role",
            ),
            (r#"{"model":5,"messages":[]}"#, "model"),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":"yes"}"#,
                "stream",
            ),
        ] {
            match chat(body) {
                Err(ApiError::WrongType { param: got, .. }) => assert_eq!(got, param, "{body}"),
                other => panic!("{body}: expected a type error on {param}, got {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_json_is_its_own_error() {
        for body in ["{", "not json", "", "[1,2]"] {
            match chat(body) {
                Err(ApiError::InvalidJson(_)) | Err(ApiError::WrongType { .. }) => {}
                other => panic!("{body:?}: {other:?}"),
            }
        }
        assert!(matches!(chat("{"), Err(ApiError::InvalidJson(_))));
    }

    #[test]
    fn ranges_are_checked_with_limit_and_value() {
        for (extra, param, needle) in [
            (r#""n":2"#, "n", "got 2"),
            (r#""n":0"#, "n", "got 0"),
            (
                r#""response_format":{"type":"json_object"}"#,
                "response_format",
                "json_object",
            ),
            (r#""max_tokens":0"#, "max_tokens", "got 0"),
            (r#""temperature":2.5"#, "temperature", "2.5"),
            (r#""top_p":0"#, "top_p", "got 0"),
            (r#""presence_penalty":-3"#, "presence_penalty", "-3"),
            (r#""stop":["a","b","c","d","e"]"#, "stop", "limit of 4"),
            (r#""stop":[""]"#, "stop", "got 0"),
        ] {
            let body =
                format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],{extra}}}"#);
            let error = chat(&body).expect_err(&body);
            assert_eq!(error.param(), Some(param), "{body}: {error:?}");
            assert_eq!(error.shape().status.as_u16(), 400, "{body}");
            assert!(error.to_string().contains(needle), "{body}: {error}");
        }
    }

    #[test]
    fn required_fields_and_roles() {
        assert_eq!(
            chat(r#"{"messages":[{"role":"user","content":"hi"}]}"#)
                .expect_err("no model")
                .param(),
            Some("model")
        );
        assert_eq!(
            chat(r#"{"model":"m"}"#).expect_err("no messages").param(),
            Some("messages")
        );
        assert_eq!(
            chat(r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#)
                .expect_err("tool role")
                .param(),
            Some("messages[0].role")
        );
        assert_eq!(
            chat(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#)
                .expect_err("image")
                .param(),
            Some("messages[0].content[0]")
        );
    }

    #[test]
    fn completion_prompts() {
        let text = parse_completion(br#"{"model":"m","prompt":"Once"}"#).expect("text");
        assert_eq!(text.request.prompt, Prompt::Text("Once".into()));
        assert_eq!(text.endpoint, Endpoint::Completions);
        let one = parse_completion(br#"{"model":"m","prompt":["Once"]}"#).expect("one");
        assert_eq!(one.request.prompt, Prompt::Text("Once".into()));
        let ids = parse_completion(br#"{"model":"m","prompt":[1,2,3]}"#).expect("ids");
        assert_eq!(ids.request.prompt, Prompt::Tokens(vec![1, 2, 3]));
        let batch = parse_completion(br#"{"model":"m","prompt":["a","b"]}"#).expect_err("batch");
        assert_eq!(batch.param(), Some("prompt"));
        let wrong = parse_completion(br#"{"model":"m","prompt":{"a":1}}"#).expect_err("object");
        assert_eq!(wrong.param(), Some("prompt"));
    }

    #[test]
    fn chunks_have_openai_shapes() {
        let value =
            |bytes: Vec<u8>| -> serde_json::Value { serde_json::from_slice(&bytes).expect("JSON") };
        let meta = ResponseMeta::new(Endpoint::ChatCompletions, "abc", 7, "m".into());
        let role = value(meta.chunk(ChunkPiece::Role, false));
        assert_eq!(role["id"], "chatcmpl-abc");
        assert_eq!(role["object"], "chat.completion.chunk");
        assert_eq!(role["choices"][0]["delta"]["role"], "assistant");
        assert!(role.get("usage").is_none());
        let text = value(meta.chunk(ChunkPiece::Text("hé"), true));
        assert_eq!(text["choices"][0]["delta"]["content"], "hé");
        assert!(text["usage"].is_null() && text.get("usage").is_some());
        let finish = value(meta.chunk(ChunkPiece::Finish(FinishReason::Stop), false));
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        assert_eq!(finish["choices"][0]["delta"], serde_json::json!({}));
        let usage = value(meta.usage_chunk(Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
        }));
        assert_eq!(usage["choices"], serde_json::json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 7);

        let meta = ResponseMeta::new(Endpoint::Completions, "abc", 7, "m".into());
        let text = value(meta.chunk(ChunkPiece::Text("x"), false));
        assert_eq!(text["id"], "cmpl-abc");
        assert_eq!(text["object"], "text_completion");
        assert_eq!(text["choices"][0]["text"], "x");
        let whole = value(meta.completion(
            "x",
            FinishReason::Length,
            Usage {
                prompt_tokens: 1,
                completion_tokens: 1,
            },
        ));
        assert_eq!(whole["choices"][0]["finish_reason"], "length");
        assert_eq!(whole["usage"]["total_tokens"], 2);
        let bytes = meta.chunk(ChunkPiece::Text("x"), false);
        let text = String::from_utf8(bytes).expect("UTF-8");
        assert!(
            text.starts_with(r#"{"id":"cmpl-abc","object":"text_completion","created":7,"#),
            "{text}"
        );
    }
}

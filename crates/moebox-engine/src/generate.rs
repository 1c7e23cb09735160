//! The generation loop for one sequence: prefill the prompt, then decode token by token with
//! the KV cache carried between steps, until EOS, a stop sequence, `max_tokens`, the context
//! length, or cancellation.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::{
    model::{Model, ModelError},
    sampling::{SamplingError, SamplingParams},
    sequence::{StreamError, TokenStream},
    stop::StopError,
    tokenizer::TokenizerError,
};

/// A generation request whose every field has been checked ([`GenerationRequest::validate`]).
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt_ids: Vec<u32>,
    /// `None`: the engine's default, cut to what the context leaves.
    pub max_tokens: Option<u32>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
}

pub use moebox_protocol::FinishReason;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub output_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    #[serde(skip)]
    pub timings: Timings,
}

/// Where the time went, for `--timing` and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Prompt forward pass and the first token's sampling.
    pub prefill: std::time::Duration,
    /// Every later step (one token each).
    pub decode: std::time::Duration,
}

impl Timings {
    /// Decode tokens per second over the steps after the first token.
    pub fn decode_tokens_per_second(&self, generated: usize) -> f64 {
        let steps = generated.saturating_sub(1) as f64;
        if steps == 0.0 {
            0.0
        } else {
            steps / self.decode.as_secs_f64().max(f64::EPSILON)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("the prompt is empty: it must have at least one token")]
    EmptyPrompt,
    #[error(
        "this model's maximum context length is {context_length} tokens; the request asks for {requested} ({prompt} in the prompt, {max_tokens} in the completion)"
    )]
    ContextLength {
        context_length: usize,
        requested: usize,
        prompt: usize,
        max_tokens: usize,
    },
    #[error("`max_tokens` must be at least 1, got 0")]
    ZeroMaxTokens,
    #[error("prompt token {token} is outside the model's vocabulary of {vocab_size}")]
    TokenOutOfRange { token: u32, vocab_size: usize },
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error(transparent)]
    Stop(#[from] StopError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

impl From<StreamError> for GenerateError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::Sampling(e) => Self::Sampling(e),
            StreamError::Stop(e) => Self::Stop(e),
            StreamError::Tokenizer(e) => Self::Tokenizer(e),
        }
    }
}

/// The completion length a request gets, checked against the context length.
pub fn completion_budget(
    prompt_len: usize,
    max_tokens: Option<u32>,
    default_max_tokens: u32,
    context_length: usize,
) -> Result<usize, GenerateError> {
    if prompt_len == 0 {
        return Err(GenerateError::EmptyPrompt);
    }
    match max_tokens {
        Some(0) => Err(GenerateError::ZeroMaxTokens),
        Some(n) if prompt_len + n as usize > context_length => Err(GenerateError::ContextLength {
            context_length,
            requested: prompt_len + n as usize,
            prompt: prompt_len,
            max_tokens: n as usize,
        }),
        Some(n) => Ok(n as usize),
        None if prompt_len >= context_length => Err(GenerateError::ContextLength {
            context_length,
            requested: prompt_len + 1,
            prompt: prompt_len,
            max_tokens: 1,
        }),
        None => Ok((default_max_tokens as usize).min(context_length - prompt_len)),
    }
}

/// Generates one completion. `on_text` receives each chunk of text as it becomes final (whole
/// UTF-8 characters, never past a stop sequence). `cancel` is checked between steps.
pub fn generate(
    model: &mut Model,
    request: &GenerationRequest,
    default_max_tokens: u32,
    cancel: &AtomicBool,
    mut on_text: impl FnMut(&str),
) -> Result<Generation, GenerateError> {
    let prompt = &request.prompt_ids;
    let budget = completion_budget(
        prompt.len(),
        request.max_tokens,
        default_max_tokens,
        model.spec.context_length,
    )?;
    if let Some(&token) = prompt
        .iter()
        .find(|&&t| t as usize >= model.spec.vocab_size)
    {
        return Err(GenerateError::TokenOutOfRange {
            token,
            vocab_size: model.spec.vocab_size,
        });
    }
    let mut stream = TokenStream::new(
        request.sampling.clone(),
        request.stop.clone(),
        prompt,
        budget,
    )?;
    let mut cache = model.new_cache(prompt.len() + budget)?;
    let mut text = String::new();
    let mut emit = |chunk: &str, text: &mut String| {
        if !chunk.is_empty() {
            text.push_str(chunk);
            on_text(chunk);
        }
    };

    let mut next_input: Vec<u32> = prompt.clone();
    let start = std::time::Instant::now();
    let mut first_token_at = None;
    let finish_reason = loop {
        if cancel.load(Ordering::Relaxed) {
            break FinishReason::Cancelled;
        }
        let mut logits = model.forward(&mut cache, &next_input)?;
        let accepted = stream.sample_and_accept(&mut logits, &model.spec, &model.tokenizer)?;
        first_token_at.get_or_insert_with(std::time::Instant::now);
        emit(&accepted.text, &mut text);
        if let Some(reason) = accepted.finished {
            break reason;
        }
        next_input.clear();
        next_input.push(accepted.token);
    };
    let rest = stream.finish(&model.tokenizer)?;
    emit(&rest, &mut text);
    let output_ids = stream.output_ids().to_vec();
    let end = std::time::Instant::now();
    let first = first_token_at.unwrap_or(end);
    Ok(Generation {
        prompt_ids: prompt.clone(),
        output_ids,
        text,
        finish_reason,
        timings: Timings {
            prefill: first - start,
            decode: end - first,
        },
    })
}

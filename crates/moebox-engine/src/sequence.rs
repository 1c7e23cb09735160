//! What happens to each new token of a sequence, the same whether it runs alone
//! (`generate`) or in the scheduler's batch: sample, check EOS, detokenise into whole
//! characters, look for stop sequences, count against the budget.

use crate::{
    genai_config::ModelSpec,
    generate::FinishReason,
    sampling::{Sampler, SamplingError, SamplingParams},
    stop::{StopError, StopMatcher},
    tokenizer::{IncrementalDecoder, Tokenizer, TokenizerError},
};

/// The text side of one sequence.
#[derive(Debug)]
pub struct TokenStream {
    sampler: Sampler,
    stops: StopMatcher,
    decoder: IncrementalDecoder,
    output_ids: Vec<u32>,
    budget: usize,
    stopped_by_sequence: bool,
}

/// The outcome of one token.
#[derive(Debug, Default, PartialEq)]
pub struct Accepted {
    pub token: u32,
    /// Text that became final with this token (may be empty).
    pub text: String,
    /// Set when this token ends the sequence.
    pub finished: Option<FinishReason>,
}

impl TokenStream {
    pub fn new(
        sampling: SamplingParams,
        stop: Vec<String>,
        prompt_ids: &[u32],
        budget: usize,
    ) -> Result<Self, StreamError> {
        Ok(Self {
            sampler: Sampler::new(sampling, prompt_ids)?,
            stops: StopMatcher::new(stop)?,
            decoder: IncrementalDecoder::new(),
            output_ids: Vec::with_capacity(budget.min(4096)),
            budget,
            stopped_by_sequence: false,
        })
    }

    /// Picks the next token from this sequence's logits row and takes it.
    pub fn sample_and_accept(
        &mut self,
        logits: &mut [f32],
        spec: &ModelSpec,
        tokenizer: &Tokenizer,
    ) -> Result<Accepted, StreamError> {
        let token = self.sampler.sample(logits);
        self.output_ids.push(token);
        if spec.is_eos(token) {
            return Ok(Accepted {
                token,
                text: String::new(),
                finished: Some(FinishReason::Stop),
            });
        }
        let chunk = self.decoder.push(tokenizer, token)?;
        let outcome = self.stops.push(&chunk);
        if outcome.stopped {
            self.stopped_by_sequence = true;
            return Ok(Accepted {
                token,
                text: outcome.emit,
                finished: Some(FinishReason::Stop),
            });
        }
        let finished = (self.output_ids.len() >= self.budget).then_some(FinishReason::Length);
        Ok(Accepted {
            token,
            text: outcome.emit,
            finished,
        })
    }

    /// The text still held back when the sequence ends (an incomplete character, a partial
    /// stop sequence that never completed). Empty after a stop sequence matched.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String, StreamError> {
        if self.stopped_by_sequence {
            return Ok(String::new());
        }
        let rest = self.decoder.finish(tokenizer)?;
        let outcome = self.stops.push(&rest);
        let mut text = outcome.emit;
        if outcome.stopped {
            self.stopped_by_sequence = true;
        } else {
            text.push_str(&self.stops.finish());
        }
        Ok(text)
    }

    pub fn output_ids(&self) -> &[u32] {
        &self.output_ids
    }

    pub fn last_token(&self) -> Option<u32> {
        self.output_ids.last().copied()
    }

    pub fn budget(&self) -> usize {
        self.budget
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error(transparent)]
    Stop(#[from] StopError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

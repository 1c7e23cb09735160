//! Token selection from one row of logits, with Hugging Face `generate` / OpenAI semantics.
//!
//! Order of operations (as in HF `generate`): repetition penalty (prompt and generated tokens) →
//! OpenAI presence/frequency penalties (generated tokens only) → temperature → top-k → top-p →
//! softmax → draw. Greedy decoding is a plain argmax over the penalised logits with ties broken
//! by the lowest index, which is what onnxruntime-genai's greedy search does; the design requires
//! moebox to reproduce its token ids exactly.
//!
//! Randomness: each [`Sampler`] owns a ChaCha8 generator (`rand_chacha::ChaCha8Rng`) seeded with
//! `SeedableRng::seed_from_u64(seed)`. A sampled (non-greedy) step draws exactly one `u64` from
//! it (none when every candidate logit is `-inf`); greedy steps draw nothing. So the same seed,
//! parameters, prompt and sequence of logits always give the same tokens.
//!
//! Speed: a 200k vocabulary is never fully sorted. Top-k keeps a bounded heap, top-p finds its
//! cut from a histogram and sorts one band, the softmax numerators come from a vectorisable
//! `exp`, and the draw walks one block of 256 tokens. Scratch buffers live in the sampler.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::{RngCore, SeedableRng, TryRngCore};
use rand_chacha::ChaCha8Rng;

/// Smallest accepted `temperature`; 0 means greedy.
pub const MIN_TEMPERATURE: f32 = 0.0;
/// Largest accepted `temperature` (OpenAI's range).
pub const MAX_TEMPERATURE: f32 = 2.0;
/// Smallest accepted `presence_penalty` and `frequency_penalty` (OpenAI's range).
pub const MIN_OPENAI_PENALTY: f32 = -2.0;
/// Largest accepted `presence_penalty` and `frequency_penalty` (OpenAI's range).
pub const MAX_OPENAI_PENALTY: f32 = 2.0;

/// Sampling settings of one request. Missing fields deserialize to the greedy defaults.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0.0 => greedy. Valid `0..=2`.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 => disabled.
    pub top_k: u32,
    /// Nucleus sampling, valid `(0, 1]`; 1.0 => disabled.
    pub top_p: f32,
    /// Seed of the ChaCha8 generator; `None` => a seed drawn from OS-seeded entropy.
    pub seed: Option<u64>,
    /// HF/CTRL repetition penalty over prompt and generated tokens; 1.0 => off, valid `> 0`.
    pub repetition_penalty: f32,
    /// OpenAI presence penalty over generated tokens, valid `-2..=2`.
    pub presence_penalty: f32,
    /// OpenAI frequency penalty over generated tokens, valid `-2..=2`.
    pub frequency_penalty: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: None,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        }
    }
}

impl SamplingParams {
    /// A request's sampling: the fields it sets, else the model's `search` defaults from
    /// `genai_config.json` (greedy unless the exporter asked for sampling), else neutral.
    #[allow(clippy::too_many_arguments)]
    pub fn with_model_defaults(
        search: &crate::genai_config::SearchDefaults,
        temperature: Option<f32>,
        top_k: Option<u32>,
        top_p: Option<f32>,
        seed: Option<u64>,
        repetition_penalty: Option<f32>,
        presence_penalty: Option<f32>,
        frequency_penalty: Option<f32>,
    ) -> Self {
        let greedy = !search.do_sample;
        Self {
            temperature: temperature.unwrap_or(if greedy { 0.0 } else { search.temperature }),
            top_k: top_k.unwrap_or(if greedy { 0 } else { search.top_k }),
            top_p: top_p.unwrap_or(if greedy { 1.0 } else { search.top_p }),
            seed,
            repetition_penalty: repetition_penalty.unwrap_or(1.0),
            presence_penalty: presence_penalty.unwrap_or(0.0),
            frequency_penalty: frequency_penalty.unwrap_or(0.0),
        }
    }

    /// Greedy decoding with neutral penalties (the same as `Default`).
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Whether the next token is the argmax: `temperature == 0` or `top_k == 1`.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }

    /// Checks every range; NaN and infinities are rejected everywhere. `top_k` takes any value
    /// (values above the vocabulary size keep the whole vocabulary).
    pub fn validate(&self) -> Result<(), SamplingError> {
        let t = self.temperature;
        if !(MIN_TEMPERATURE..=MAX_TEMPERATURE).contains(&t) {
            return Err(SamplingError::Temperature(t));
        }
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return Err(SamplingError::TopP(p));
        }
        let r = self.repetition_penalty;
        if !(r > 0.0 && r.is_finite()) {
            return Err(SamplingError::RepetitionPenalty(r));
        }
        let openai_range = MIN_OPENAI_PENALTY..=MAX_OPENAI_PENALTY;
        if !openai_range.contains(&self.presence_penalty) {
            return Err(SamplingError::PresencePenalty(self.presence_penalty));
        }
        if !openai_range.contains(&self.frequency_penalty) {
            return Err(SamplingError::FrequencyPenalty(self.frequency_penalty));
        }
        Ok(())
    }
}

/// A sampling parameter outside its range. Each message names the request field, the allowed
/// range and the value given.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplingError {
    #[error("`temperature` must be between {MIN_TEMPERATURE} and {MAX_TEMPERATURE}, got {0}")]
    Temperature(f32),
    #[error("`top_p` must be greater than 0 and at most 1, got {0}")]
    TopP(f32),
    #[error("`repetition_penalty` must be a finite number greater than 0, got {0}")]
    RepetitionPenalty(f32),
    #[error(
        "`presence_penalty` must be between {MIN_OPENAI_PENALTY} and {MAX_OPENAI_PENALTY}, got {0}"
    )]
    PresencePenalty(f32),
    #[error(
        "`frequency_penalty` must be between {MIN_OPENAI_PENALTY} and {MAX_OPENAI_PENALTY}, got {0}"
    )]
    FrequencyPenalty(f32),
}

impl SamplingError {
    /// The request field at fault, spelled as in the OpenAI API and the CLI.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Temperature(_) => "temperature",
            Self::TopP(_) => "top_p",
            Self::RepetitionPenalty(_) => "repetition_penalty",
            Self::PresencePenalty(_) => "presence_penalty",
            Self::FrequencyPenalty(_) => "frequency_penalty",
        }
    }
}

/// Picks tokens for one sequence. Owns the RNG, the counts of generated tokens and scratch
/// buffers that are reused from step to step, so a step allocates nothing once warm.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    seed: u64,
    rng: ChaCha8Rng,
    /// How often each generated token was chosen (presence/frequency penalties).
    generated_counts: HashMap<u32, u32>,
    /// Prompt ∪ generated tokens (repetition penalty); left empty when that penalty is off.
    seen: HashSet<u32>,
    scratch: Scratch,
}

impl Sampler {
    /// Validates `params` and prepares a sampler for a sequence that starts with `prompt_ids`.
    pub fn new(params: SamplingParams, prompt_ids: &[u32]) -> Result<Self, SamplingError> {
        params.validate()?;
        let seed = params.seed.unwrap_or_else(entropy_seed);
        let seen = if params.repetition_penalty == 1.0 {
            HashSet::new()
        } else {
            prompt_ids.iter().copied().collect()
        };
        Ok(Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            seed,
            params,
            generated_counts: HashMap::new(),
            seen,
            scratch: Scratch::default(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The seed actually in use: `params.seed`, or the one drawn when that was `None`. Logging
    /// it makes a sampled generation reproducible.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// How many times `token` has been generated so far (prompt tokens are not counted).
    pub fn generated_count(&self, token: u32) -> u32 {
        self.generated_counts.get(&token).copied().unwrap_or(0)
    }

    /// Picks the next token from this row's logits (`len` = vocabulary size) and records it, so
    /// the penalties of later steps see it.
    ///
    /// Modifies `logits` in place: the penalties are applied and, when sampling (not greedy),
    /// NaN becomes `-inf`. Temperature is folded into the softmax and not written back. NaN never
    /// wins. If every logit is `-inf` or NaN (or the row is empty) the result is token 0, as
    /// argmax would give; this never panics. Ids in the history outside the row are ignored.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        self.apply_penalties(logits);
        let token = if self.params.is_greedy() {
            argmax(logits)
        } else {
            for logit in logits.iter_mut() {
                // An unconditional store vectorises.
                *logit = if logit.is_nan() {
                    f32::NEG_INFINITY
                } else {
                    *logit
                };
            }
            self.draw(logits)
        };
        self.record(token);
        token
    }

    fn record(&mut self, token: u32) {
        let count = self.generated_counts.entry(token).or_insert(0);
        *count = count.saturating_add(1);
        if self.params.repetition_penalty != 1.0 {
            self.seen.insert(token);
        }
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let penalty = self.params.repetition_penalty;
        if penalty != 1.0 {
            for &token in &self.seen {
                if let Some(logit) = logits.get_mut(token as usize) {
                    // HF RepetitionPenaltyLogitsProcessor: push the logit towards "less likely"
                    // whatever its sign.
                    *logit = if *logit < 0.0 {
                        *logit * penalty
                    } else {
                        *logit / penalty
                    };
                }
            }
        }
        let presence = self.params.presence_penalty;
        let frequency = self.params.frequency_penalty;
        if presence != 0.0 || frequency != 0.0 {
            for (&token, &count) in &self.generated_counts {
                if let Some(logit) = logits.get_mut(token as usize)
                    && count > 0
                {
                    *logit -= frequency * count as f32 + presence;
                }
            }
        }
    }

    /// Temperature, top-k, top-p, softmax and one draw. `logits` holds no NaN here.
    fn draw(&mut self, logits: &[f32]) -> u32 {
        if !self.prepare_candidates(logits) {
            return argmax(logits);
        }
        // 53 random bits → uniform in [0, 1).
        let uniform = (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let position = self.scratch.draw_position(uniform);
        self.scratch.token_at(position)
    }

    /// Leaves the candidates of the draw and their softmax numerators in `scratch`, after
    /// top-k, temperature and top-p. False when there is nothing to draw from: every
    /// candidate is `-inf` (or the vocabulary does not fit u32 ids).
    fn prepare_candidates(&mut self, logits: &[f32]) -> bool {
        let Ok(vocab) = u32::try_from(logits.len()) else {
            return false;
        };
        let s = &mut self.scratch;
        let top_k = self.params.top_k;
        let max = if top_k > 0 && top_k < vocab {
            s.select_top_k(logits, top_k as usize);
            s.all_tokens = false;
            max_logit(s.candidates.iter().map(|&t| logits[t as usize]))
        } else {
            s.all_tokens = true;
            lane_max(logits)
        };
        if max == f32::NEG_INFINITY {
            return false;
        }

        let scale = Scale {
            max,
            inv_temperature: 1.0 / self.params.temperature,
        };
        let top_p = self.params.top_p < 1.0;
        s.weights.clear();
        s.bands.clear();
        // Separate passes over contiguous data vectorise; the top-k case is small anyway.
        if s.all_tokens {
            s.weights.extend(logits.iter().map(|&l| scale.weight(l)));
            if top_p {
                s.bands.extend(logits.iter().map(|&l| scale.band(l)));
            }
        } else {
            let weights = s
                .candidates
                .iter()
                .map(|&t| scale.weight(logits[t as usize]));
            s.weights.extend(weights);
            if top_p {
                let bands = s.candidates.iter().map(|&t| scale.band(logits[t as usize]));
                s.bands.extend(bands);
            }
        }
        if top_p {
            s.keep_nucleus(logits, f64::from(self.params.top_p));
        }
        true
    }
}

/// Below this scaled logit (logit minus max, over temperature) a token's weight counts as 0:
/// e^-87 is near the bottom of f32's normal range, and even 2^32 such tokens weigh under
/// 10^-28 against the top token's 1. Keeping `exp`'s input above it also keeps [`exp_f32`]
/// out of subnormals.
const NEGLIGIBLE_SCALED_LOGIT: f32 = -87.0;
/// Resolution of the top-p histogram: bands per unit of scaled logit.
const TOP_P_BANDS_PER_UNIT: f32 = 64.0;
/// Number of top-p bands; the last one also holds every negligible token.
const TOP_P_BANDS: u16 = (-NEGLIGIBLE_SCALED_LOGIT * TOP_P_BANDS_PER_UNIT) as u16 + 1;
/// Tokens per block of the draw: the draw finds its block from the block sums, then walks one
/// block, instead of walking the whole vocabulary.
const DRAW_BLOCK: usize = 256;

/// Maps a logit to its softmax numerator and its top-p band.
#[derive(Debug, Clone, Copy)]
struct Scale {
    max: f32,
    inv_temperature: f32,
}

impl Scale {
    fn scaled(self, logit: f32) -> f32 {
        (logit - self.max) * self.inv_temperature
    }

    /// exp((logit - max) / temperature), the same as HF's "divide by the temperature, then
    /// softmax with the max subtracted". Branch-free so the compiler can vectorise it.
    fn weight(self, logit: f32) -> f32 {
        let scaled = self.scaled(logit);
        // `f32::max` maps NaN (only from `logit == max == +inf`) to the floor.
        let weight = exp_f32(scaled.max(NEGLIGIBLE_SCALED_LOGIT));
        let weight = if scaled < NEGLIGIBLE_SCALED_LOGIT {
            0.0
        } else {
            weight
        };
        if logit == self.max { 1.0 } else { weight }
    }

    /// Band 0 holds the best tokens; higher bands hold lower logits. Monotone in the logit.
    fn band(self, logit: f32) -> u16 {
        // `f32::min` sends -inf logits (+inf here) and NaN (only from `logit == max == +inf`,
        // replaced below) to the last band; the cast then cannot saturate.
        let band = (-self.scaled(logit) * TOP_P_BANDS_PER_UNIT).min(f32::from(TOP_P_BANDS - 1));
        let band = band as u16;
        if logit == self.max { 0 } else { band }
    }
}

/// Per-step working memory of the sampled (non-greedy) path.
#[derive(Debug, Default)]
struct Scratch {
    /// When true the candidates are the whole vocabulary, position = token id, and
    /// `candidates` is not used.
    all_tokens: bool,
    /// Candidate token ids; after top-p, the kept ones in the order the draw walks them.
    candidates: Vec<u32>,
    /// Softmax numerators, one per candidate position.
    weights: Vec<f32>,
    /// Sums of `weights` per [`DRAW_BLOCK`].
    block_mass: Vec<f64>,
    /// The `top_k` best seen so far, worst on top.
    top_k: BinaryHeap<RankedToken>,
    /// Top-p band of each candidate position (see [`Scale::band`]).
    bands: Vec<u16>,
    /// Probability mass per band.
    band_mass: Vec<f64>,
    /// Candidates in the band where the top-p cut falls.
    boundary: Vec<(u32, f32)>,
}

impl Scratch {
    fn token_at(&self, position: usize) -> u32 {
        if self.all_tokens {
            u32::try_from(position).unwrap_or(0)
        } else {
            self.candidates.get(position).copied().unwrap_or(0)
        }
    }

    /// Sets `candidates` to the `k` best tokens (`0 < k < vocab`); ties go to the lowest ids.
    /// A bounded heap: one comparison per token, O(vocab log k) at worst.
    fn select_top_k(&mut self, logits: &[f32], k: usize) {
        self.top_k.clear();
        for (token, &logit) in (0u32..).zip(logits) {
            let entry = RankedToken { logit, token };
            if self.top_k.len() < k {
                self.top_k.push(entry);
            } else if let Some(mut worst) = self.top_k.peek_mut()
                && entry < *worst
            {
                *worst = entry;
            }
        }
        self.candidates.clear();
        self.candidates
            .extend(self.top_k.drain().map(|entry| entry.token));
    }

    /// Keeps the smallest highest-probability set of candidates whose mass is at least `top_p`
    /// of the total (always at least one token): like HF TopPLogitsWarper, a token stays while
    /// the mass ranked above it is below `top_p`. Instead of sorting the vocabulary, a
    /// histogram over bands of scaled logit finds the band where the cut falls and only that
    /// band is sorted. Leaves explicit candidates: whole bands in candidate order, then the
    /// kept part of the cut band by rank.
    fn keep_nucleus(&mut self, logits: &[f32], top_p: f64) {
        let Self {
            all_tokens,
            candidates,
            weights,
            bands,
            band_mass,
            boundary,
            ..
        } = self;
        band_mass.clear();
        band_mass.resize(usize::from(TOP_P_BANDS), 0.0);
        for (&band, &weight) in bands.iter().zip(weights.iter()) {
            if let Some(mass) = band_mass.get_mut(usize::from(band)) {
                *mass += f64::from(weight);
            }
        }
        let total: f64 = band_mass.iter().sum();
        let mut above = 0.0f64;
        let mut cut_band = TOP_P_BANDS - 1;
        for (band, &mass) in (0u16..).zip(band_mass.iter()) {
            if (above + mass) / total >= top_p {
                cut_band = band;
                break;
            }
            above += mass;
        }

        // Whole bands above the cut stay, in candidate order, compacted in place (`kept` never
        // passes `position`); the cut band is set aside.
        boundary.clear();
        let identity = *all_tokens;
        if identity {
            candidates.clear();
        }
        let mut kept = 0;
        for position in 0..weights.len() {
            let band = bands[position];
            if band > cut_band {
                continue;
            }
            let token = if identity {
                u32::try_from(position).unwrap_or(0)
            } else {
                candidates[position]
            };
            let weight = weights[position];
            if band == cut_band {
                boundary.push((token, weight));
            } else {
                if identity {
                    candidates.push(token);
                } else {
                    candidates[kept] = token;
                }
                weights[kept] = weight;
                kept += 1;
            }
        }
        *all_tokens = false;
        candidates.truncate(kept);
        weights.truncate(kept);

        boundary.sort_unstable_by(|a, b| rank(logits, a.0, b.0));
        for &(token, weight) in boundary.iter() {
            if above / total >= top_p {
                break;
            }
            above += f64::from(weight);
            candidates.push(token);
            weights.push(weight);
        }
    }

    /// The candidate position whose cumulative weight first exceeds `uniform` (in [0, 1)) of
    /// the total. Tokens of weight 0 are never chosen.
    fn draw_position(&mut self, uniform: f64) -> usize {
        self.block_mass.clear();
        self.block_mass
            .extend(self.weights.chunks(DRAW_BLOCK).map(sum_f64));
        let total: f64 = self.block_mass.iter().sum();
        let target = uniform * total;
        let mut before = 0.0f64;
        for (block, &mass) in self.block_mass.iter().enumerate() {
            let after = before + mass;
            if target < after {
                let start = block * DRAW_BLOCK;
                let mut cumulative = before;
                let mut chosen = None;
                for (offset, &weight) in self.weights[start..].iter().take(DRAW_BLOCK).enumerate() {
                    if weight > 0.0 {
                        cumulative += f64::from(weight);
                        chosen = Some(start + offset);
                        if target < cumulative {
                            break;
                        }
                    }
                }
                // Summing one by one may round below `after`; then the block's last token wins.
                if let Some(position) = chosen {
                    return position;
                }
            }
            before = after;
        }
        // Only reachable through rounding at the very top of the range.
        self.weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
    }
}

/// Sum in f64 over eight independent lanes: deterministic and vectorisable.
fn sum_f64(values: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let chunks = values.chunks_exact(lanes.len());
    let tail: f64 = chunks.remainder().iter().map(|&v| f64::from(v)).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f64::from(v);
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// e^x for x in [NEGLIGIBLE_SCALED_LOGIT, 0] (and a little beyond), within a few ulp of
/// `f32::exp`. Written without calls or branches so that the weight loop over a 200k
/// vocabulary vectorises; libm's `expf` is a call per element. Cody-Waite reduction to
/// r in [-ln2/2, ln2/2], degree-7 Taylor polynomial, then scaling by 2^n through the exponent
/// bits.
fn exp_f32(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding then subtracting 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // `shifted`'s low mantissa bits hold n, in [-126, 0] for x in [-87, 0]: 2^n is normal.
    // Integer bit arithmetic instead of a float-to-int cast keeps the loop vectorised.
    let biased = shifted
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    p * f32::from_bits(biased << 23)
}

/// A token in the top-k heap. Ordered from best to worst: higher logit first, then lower id,
/// so the max-heap's top is the entry to evict. Logits hold no NaN here.
#[derive(Debug, Clone, Copy)]
struct RankedToken {
    logit: f32,
    token: u32,
}

impl Ord for RankedToken {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .logit
            .partial_cmp(&self.logit)
            .unwrap_or(Ordering::Equal)
            .then(self.token.cmp(&other.token))
    }
}

impl PartialOrd for RankedToken {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for RankedToken {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for RankedToken {}

/// Orders token ids by descending logit, ties by ascending id. `logits` holds no NaN.
fn rank(logits: &[f32], a: u32, b: u32) -> Ordering {
    logits[b as usize]
        .partial_cmp(&logits[a as usize])
        .unwrap_or(Ordering::Equal)
        .then(a.cmp(&b))
}

/// The largest logit, ignoring NaN; `-inf` when there is none.
fn max_logit(logits: impl Iterator<Item = f32>) -> f32 {
    logits.fold(f32::NEG_INFINITY, |max, l| if l > max { l } else { max })
}

/// [`max_logit`] over a slice, on independent lanes so that it vectorises.
fn lane_max(logits: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = logits.chunks_exact(lanes.len());
    let tail = max_logit(chunks.remainder().iter().copied());
    for chunk in chunks {
        for (lane, &l) in lanes.iter_mut().zip(chunk) {
            *lane = if l > *lane { l } else { *lane };
        }
    }
    max_logit(lanes.into_iter().chain([tail]))
}

/// Index of the largest logit, the lowest index on ties; NaN never wins; 0 when nothing does.
fn argmax(logits: &[f32]) -> u32 {
    let max = lane_max(logits);
    if max == f32::NEG_INFINITY {
        return 0;
    }
    logits
        .iter()
        .position(|&l| l == max)
        .and_then(|i| u32::try_from(i).ok())
        .unwrap_or(0)
}

/// A 64-bit seed for requests without one, from the operating system's random source.
fn entropy_seed() -> u64 {
    rand::rngs::OsRng.try_next_u64().unwrap_or_else(|_| {
        // getrandom failing is exotic (no /dev/urandom); the clock still varies per request.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: u32, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            seed: Some(seed),
            ..SamplingParams::default()
        }
    }

    fn sampler(p: SamplingParams) -> Sampler {
        Sampler::new(p, &[]).expect("valid params")
    }

    /// Draws `n` tokens from fresh copies of `logits`, returns how often each id came up.
    fn histogram(s: &mut Sampler, logits: &[f32], n: usize) -> Vec<usize> {
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..n {
            let mut row = logits.to_vec();
            counts[s.sample(&mut row) as usize] += 1;
        }
        counts
    }

    fn softmax(logits: &[f32], temperature: f32) -> Vec<f64> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let e: Vec<f64> = logits
            .iter()
            .map(|&l| ((l as f64 - max) / temperature as f64).exp())
            .collect();
        let sum: f64 = e.iter().sum();
        e.iter().map(|v| v / sum).collect()
    }

    #[test]
    fn default_is_greedy_and_neutral() {
        let p = SamplingParams::default();
        assert_eq!(p, SamplingParams::greedy());
        assert!(p.is_greedy());
        assert_eq!(p.top_k, 0);
        assert_eq!(p.top_p, 1.0);
        assert_eq!(p.seed, None);
        assert_eq!(p.repetition_penalty, 1.0);
        assert_eq!(p.presence_penalty, 0.0);
        assert_eq!(p.frequency_penalty, 0.0);
        assert_eq!(p.validate(), Ok(()));
        assert!(params(0.7, 1, 1.0, 0).is_greedy());
        assert!(!params(0.7, 2, 1.0, 0).is_greedy());
    }

    #[test]
    fn serde_round_trip_and_missing_fields_default() {
        let p = params(0.8, 40, 0.9, 7);
        let json = serde_json::to_string(&p).expect("serializes");
        assert_eq!(
            serde_json::from_str::<SamplingParams>(&json).expect("deserializes"),
            p
        );
        let partial: SamplingParams =
            serde_json::from_str(r#"{"temperature":0.5}"#).expect("deserializes");
        assert_eq!(partial.temperature, 0.5);
        assert_eq!(partial.top_p, 1.0);
        assert_eq!(partial.repetition_penalty, 1.0);
    }

    #[test]
    fn greedy_ties_pick_lowest_index() {
        let mut s = sampler(SamplingParams::greedy());
        assert_eq!(s.sample(&mut [1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(s.sample(&mut [5.0, 5.0, 5.0]), 0);
        assert_eq!(s.sample(&mut [-0.0, 0.0]), 0);
        assert_eq!(s.sample(&mut [f32::INFINITY, 1.0, f32::INFINITY]), 0);
    }

    #[test]
    fn greedy_does_not_touch_logits_with_neutral_penalties() {
        let mut s = Sampler::new(SamplingParams::greedy(), &[0, 1, 2]).expect("valid params");
        let original = [0.3f32, -1.5, 2.25, 7.0];
        let mut row = original;
        assert_eq!(s.sample(&mut row), 3);
        assert_eq!(row, original);
        let mut row = original;
        assert_eq!(s.sample(&mut row), 3);
        assert_eq!(row, original);
    }

    #[test]
    fn all_negative_infinity_or_nan_gives_token_zero() {
        for p in [
            SamplingParams::greedy(),
            params(1.0, 0, 1.0, 1),
            params(1.0, 2, 0.5, 1),
        ] {
            let mut s = sampler(p);
            assert_eq!(s.sample(&mut [f32::NEG_INFINITY; 4]), 0);
            assert_eq!(s.sample(&mut [f32::NAN; 4]), 0);
            assert_eq!(s.sample(&mut [f32::NAN, f32::NEG_INFINITY, f32::NAN]), 0);
            assert_eq!(s.sample(&mut []), 0);
        }
    }

    #[test]
    fn nan_is_treated_as_negative_infinity() {
        let mut s = sampler(SamplingParams::greedy());
        let mut row = [f32::NAN, -3.0, f32::NAN, -4.0];
        assert_eq!(s.sample(&mut row), 1);
        let mut s = sampler(params(1.0, 0, 1.0, 3));
        let mut row = [f32::NAN, -3.0, f32::NAN, -4.0];
        s.sample(&mut row);
        assert_eq!(row[0], f32::NEG_INFINITY);
        // Sampling never picks a NaN token, even at high temperature.
        let mut s = sampler(params(2.0, 0, 1.0, 3));
        let counts = histogram(&mut s, &[f32::NAN, 0.0, f32::NAN, 0.0], 2000);
        assert_eq!(counts[0] + counts[2], 0);
        assert!(counts[1] > 800 && counts[3] > 800, "{counts:?}");
    }

    #[test]
    fn positive_infinity_wins_when_sampling() {
        let mut s = sampler(params(1.0, 0, 1.0, 5));
        let counts = histogram(&mut s, &[1.0, f32::INFINITY, 50.0], 500);
        assert_eq!(counts, vec![0, 500, 0]);
    }

    #[test]
    fn temperature_changes_distribution_not_argmax() {
        let logits = [1.0f32, 2.0, 0.0];
        let draws = 20_000;
        let mut cold = sampler(params(0.5, 0, 1.0, 11));
        let mut hot = sampler(params(2.0, 0, 1.0, 11));
        let cold_counts = histogram(&mut cold, &logits, draws);
        let hot_counts = histogram(&mut hot, &logits, draws);
        for counts in [&cold_counts, &hot_counts] {
            let mode = (0..3).max_by_key(|&i| counts[i]).expect("three tokens");
            assert_eq!(mode, 1, "{counts:?}");
        }
        // Colder concentrates mass on the argmax.
        assert!(
            cold_counts[1] > hot_counts[1] + 4000,
            "{cold_counts:?} {hot_counts:?}"
        );
        for (counts, t) in [(&cold_counts, 0.5), (&hot_counts, 2.0)] {
            let expected = softmax(&logits, t);
            for i in 0..3 {
                let got = counts[i] as f64 / draws as f64;
                assert!(
                    (got - expected[i]).abs() < 0.015,
                    "t={t} {i}: {got} vs {}",
                    expected[i]
                );
            }
        }
    }

    #[test]
    fn top_k_one_equals_greedy() {
        let rows: Vec<Vec<f32>> = vec![
            vec![0.1, 0.5, 0.5, -2.0],
            vec![3.0, 2.9, 3.0, 3.0],
            vec![f32::NAN, -1.0, -1.0],
        ];
        let mut greedy = sampler(SamplingParams::greedy());
        let mut top1 = sampler(params(1.5, 1, 0.9, 99));
        for row in rows {
            assert_eq!(
                top1.sample(&mut row.clone()),
                greedy.sample(&mut row.clone())
            );
        }
    }

    #[test]
    fn top_k_keeps_only_the_k_best() {
        let logits = [0.0f32, 3.0, 1.0, 2.9, -1.0, 2.95];
        let mut s = sampler(params(2.0, 3, 1.0, 21));
        let counts = histogram(&mut s, &logits, 5000);
        assert_eq!(counts[0] + counts[2] + counts[4], 0, "{counts:?}");
        assert!(
            counts[1] > 0 && counts[3] > 0 && counts[5] > 0,
            "{counts:?}"
        );
        // Ties at the boundary keep the lowest ids.
        let mut s = sampler(params(1.0, 2, 1.0, 22));
        let counts = histogram(&mut s, &[1.0, 2.0, 1.0, 1.0], 3000);
        assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
        assert!(counts[0] > 0 && counts[1] > 0);
        // top_k larger than the vocabulary keeps everything.
        let mut s = sampler(params(1.0, 1000, 1.0, 23));
        let counts = histogram(&mut s, &[0.0; 3], 3000);
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn top_k_distribution_is_renormalised_softmax() {
        let logits = [2.0f32, 1.0, 0.5, -5.0, 0.0];
        let draws = 20_000;
        let mut s = sampler(params(1.0, 3, 1.0, 31));
        let counts = histogram(&mut s, &logits, draws);
        let expected = softmax(&logits[..3], 1.0);
        for i in 0..3 {
            let got = counts[i] as f64 / draws as f64;
            assert!(
                (got - expected[i]).abs() < 0.015,
                "{i}: {got} vs {}",
                expected[i]
            );
        }
        assert_eq!(counts[3] + counts[4], 0);
    }

    #[test]
    fn tiny_top_p_keeps_only_the_best() {
        let mut s = sampler(params(2.0, 0, 1e-6, 41));
        let counts = histogram(&mut s, &[0.0, 0.1, 0.05, -1.0], 2000);
        assert_eq!(counts, vec![0, 2000, 0, 0]);
        // With a tie at the top the lowest id is the single survivor.
        let mut s = sampler(params(1.0, 0, 1e-6, 42));
        let counts = histogram(&mut s, &[0.0, 1.0, 1.0], 500);
        assert_eq!(counts, vec![0, 500, 0]);
    }

    #[test]
    fn top_p_one_keeps_all_tokens() {
        let logits = [0.0f32, -4.0, -6.0];
        let draws = 100_000;
        let mut s = sampler(params(1.0, 0, 1.0, 43));
        let counts = histogram(&mut s, &logits, draws);
        // p(2) ≈ 0.0024: about 240 expected draws.
        assert!(counts[2] > 120, "{counts:?}");
        assert!(counts[1] > 1000, "{counts:?}");
    }

    #[test]
    fn top_p_keeps_smallest_set_reaching_the_mass() {
        // Probabilities 0.5, 0.3, 0.2 (logits are their logs).
        let logits = [0.3f32.ln(), 0.5f32.ln(), 0.2f32.ln()];
        let draws = 20_000;
        // 0.5 < 0.6 → also keep 0.3; 0.8 ≥ 0.6 → drop 0.2.
        let mut s = sampler(params(1.0, 0, 0.6, 51));
        let counts = histogram(&mut s, &logits, draws);
        assert_eq!(counts[2], 0);
        let got = counts[1] as f64 / draws as f64;
        assert!((got - 0.625).abs() < 0.015, "{got}");
        // Four equal tokens have exactly 0.25 each: the first two reach 0.5 exactly, so
        // top_p 0.5 keeps two (cumulative ≥ top_p stops the set, it need not exceed it).
        let mut s = sampler(params(1.0, 0, 0.5, 52));
        let counts = histogram(&mut s, &[0.0; 4], 4000);
        assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
        assert!(counts[0] > 1500 && counts[1] > 1500, "{counts:?}");
        // 0.85 needs all three.
        let mut s = sampler(params(1.0, 0, 0.85, 53));
        let counts = histogram(&mut s, &logits, 5000);
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    }

    #[test]
    fn top_p_applies_after_top_k() {
        // top_k = 2 leaves 0.5 and 0.3 → renormalised 0.625 and 0.375; top_p 0.6 keeps only
        // the first (0.625 ≥ 0.6), whereas over the full vocabulary it would keep two.
        let logits = [0.3f32.ln(), 0.5f32.ln(), 0.2f32.ln()];
        let mut s = sampler(params(1.0, 2, 0.6, 54));
        let counts = histogram(&mut s, &logits, 2000);
        assert_eq!(counts, vec![0, 2000, 0]);
    }

    #[test]
    fn top_p_nucleus_larger_than_the_first_window() {
        // 1000 equal tokens: top_p 0.5 keeps exactly the 500 lowest ids.
        let logits = vec![0.0f32; 1000];
        let mut s = sampler(params(1.0, 0, 0.5, 55));
        let counts = histogram(&mut s, &logits, 20_000);
        assert_eq!(counts[500..].iter().sum::<usize>(), 0);
        assert!(counts[..500].iter().filter(|&&c| c > 0).count() > 490);
    }

    #[test]
    fn large_vocabulary_with_top_k_and_top_p() {
        let vocab = 200_000;
        let logits: Vec<f32> = (0..vocab)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect();
        let mut s = sampler(params(0.8, 50, 0.95, 56));
        for _ in 0..20 {
            let t = s.sample(&mut logits.clone()) as usize;
            assert!(logits[t] >= 9.9, "token {t} logit {}", logits[t]);
        }
    }

    #[test]
    fn three_token_distribution_matches_softmax() {
        let logits = [1.0f32, 0.0, -1.0];
        let draws = 20_000;
        let mut s = sampler(params(1.0, 0, 1.0, 2024));
        let counts = histogram(&mut s, &logits, draws);
        let expected = softmax(&logits, 1.0);
        for i in 0..3 {
            let got = counts[i] as f64 / draws as f64;
            // 4 standard deviations of a binomial proportion at n = 20k is below 0.015.
            assert!(
                (got - expected[i]).abs() < 0.015,
                "{i}: {got} vs {}",
                expected[i]
            );
        }
    }

    #[test]
    fn same_seed_same_tokens_different_seeds_differ() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |seed: u64| {
            let mut s = sampler(params(1.0, 0, 1.0, seed));
            (0..200)
                .map(|_| s.sample(&mut logits.clone()))
                .collect::<Vec<u32>>()
        };
        assert_eq!(run(7), run(7));
        let a = run(7);
        let b = run(8);
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        // Independent draws over ~50 tokens coincide about 1 time in 40.
        assert!(same < 40, "{same} of 200 equal");
        assert_eq!(sampler(params(1.0, 0, 1.0, 7)).seed(), 7);
    }

    #[test]
    fn unseeded_samplers_get_different_seeds() {
        let p = SamplingParams {
            temperature: 1.0,
            ..SamplingParams::default()
        };
        let a = Sampler::new(p.clone(), &[]).expect("valid params");
        let b = Sampler::new(p, &[]).expect("valid params");
        assert_ne!(a.seed(), b.seed());
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(p, &[0, 1, 2]).expect("valid params");
        let mut row = [4.0f32, -3.0, 0.0, 1.5];
        // Penalised: [2.0, -6.0, 0.0, 1.5] → argmax 0.
        assert_eq!(s.sample(&mut row), 0);
        assert_eq!(row, [2.0, -6.0, 0.0, 1.5]);
        // A penalty below 1 rewards repetition.
        let p = SamplingParams {
            repetition_penalty: 0.5,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(p, &[1]).expect("valid params");
        let mut row = [1.0f32, 0.8, -1.0];
        assert_eq!(s.sample(&mut row), 1);
        assert_eq!(row, [1.0, 1.6, -1.0]);
    }

    #[test]
    fn repetition_penalty_covers_prompt_and_generated_once_each() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        // Token 1 appears twice in the prompt; the penalty is applied once, not per occurrence.
        let mut s = Sampler::new(p, &[1, 1]).expect("valid params");
        let mut row = [1.0f32, 4.0, 3.0];
        assert_eq!(s.sample(&mut row), 2);
        assert_eq!(row, [1.0, 2.0, 3.0]);
        // Now 2 was generated: it is penalised too, alongside the prompt's 1.
        let mut row = [1.0f32, 4.0, 3.0];
        assert_eq!(s.sample(&mut row), 1);
        assert_eq!(row, [1.0, 2.0, 1.5]);
    }

    #[test]
    fn presence_and_frequency_penalty_arithmetic() {
        let p = SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(p, &[]).expect("valid params");
        // Generate token 0 three times, token 1 once.
        for _ in 0..3 {
            assert_eq!(s.sample(&mut [10.0, 0.0, 0.0]), 0);
        }
        assert_eq!(s.sample(&mut [0.0, 10.0, 0.0]), 1);
        assert_eq!(s.generated_count(0), 3);
        assert_eq!(s.generated_count(1), 1);
        let mut row = [1.0f32, 1.0, 1.0];
        s.sample(&mut row);
        // 0: 1 - 0.25*3 - 0.5; 1: 1 - 0.25*1 - 0.5; 2: untouched.
        assert_eq!(row, [-0.25, 0.25, 1.0]);
        // Negative penalties encourage repetition.
        let p = SamplingParams {
            presence_penalty: -1.0,
            frequency_penalty: -0.5,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(p, &[]).expect("valid params");
        assert_eq!(s.sample(&mut [0.0, 1.0]), 1);
        let mut row = [0.0f32, 1.0];
        s.sample(&mut row);
        assert_eq!(row, [0.0, 2.5]);
    }

    #[test]
    fn presence_and_frequency_ignore_the_prompt() {
        let p = SamplingParams {
            presence_penalty: 2.0,
            frequency_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(p, &[0, 0, 0, 1]).expect("valid params");
        let mut row = [3.0f32, 2.0];
        assert_eq!(s.sample(&mut row), 0);
        assert_eq!(row, [3.0, 2.0]);
        assert_eq!(s.generated_count(1), 0);
    }

    #[test]
    fn repetition_then_openai_penalties_in_order() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            presence_penalty: 1.0,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(p, &[]).expect("valid params");
        assert_eq!(s.sample(&mut [4.0, 0.0]), 0);
        let mut row = [4.0f32, 0.0];
        s.sample(&mut row);
        // (4 / 2) - 1 = 1; the other order would give (4 - 1) / 2 = 1.5.
        assert_eq!(row, [1.0, 0.0]);
    }

    #[test]
    fn history_ids_outside_the_row_are_ignored() {
        let p = SamplingParams {
            repetition_penalty: 1.3,
            presence_penalty: 1.0,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(p, &[5, 1_000_000]).expect("valid params");
        assert_eq!(s.sample(&mut [0.0, 1.0]), 1);
    }

    /// The candidate set the sampler would draw from, sorted by id.
    fn support(s: &mut Sampler, logits: &[f32]) -> Vec<u32> {
        assert!(s.prepare_candidates(logits));
        let scratch = &s.scratch;
        let mut ids: Vec<u32> = (0..scratch.weights.len())
            .filter(|&i| scratch.weights[i] > 0.0)
            .map(|i| scratch.token_at(i))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Straightforward top-k then top-p by a full sort, in f64.
    fn reference_support(logits: &[f32], t: f32, top_k: usize, top_p: f64) -> Vec<u32> {
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| rank(logits, a, b));
        if top_k > 0 {
            order.truncate(top_k);
        }
        let max = logits[order[0] as usize] as f64;
        let w: Vec<f64> = order
            .iter()
            .map(|&i| ((logits[i as usize] as f64 - max) / t as f64).exp())
            .collect();
        let total: f64 = w.iter().sum();
        let mut above = 0.0;
        let mut kept = Vec::new();
        for (&i, &wi) in order.iter().zip(&w) {
            if above / total >= top_p {
                break;
            }
            above += wi;
            kept.push(i);
        }
        kept.sort_unstable();
        kept
    }

    fn random_logits(seed: u64, n: usize, spread: f32, integer: bool) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let u = (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
                let v = (u - 0.5) * spread;
                if integer { v.round() } else { v }
            })
            .collect()
    }

    #[test]
    fn top_k_matches_a_full_sort_with_ties() {
        for (seed, n, k) in [(1, 1000, 10), (2, 1000, 999), (3, 5000, 300), (4, 64, 1)] {
            let logits = random_logits(seed, n, 20.0, true);
            let mut s = sampler(params(1.0, k, 1.0, seed));
            // top_k alone keeps exactly k tokens; the weights of far ones may round to 0.
            assert!(s.prepare_candidates(&logits));
            let mut got: Vec<u32> = s.scratch.candidates.clone();
            got.sort_unstable();
            assert_eq!(
                got,
                reference_support(&logits, 1.0, k as usize, 1.0),
                "k={k}"
            );
        }
    }

    #[test]
    fn top_p_matches_a_full_sort() {
        let cases = [
            (11, 200_000, 12.0, false, 1.0, 0.9),
            (12, 200_000, 30.0, false, 0.7, 0.95),
            (13, 200_000, 8.0, false, 1.5, 0.5),
            (14, 50_000, 10.0, true, 1.0, 0.8),
            (15, 3000, 40.0, false, 0.2, 0.99),
            (16, 200_000, 12.0, false, 1.0, 0.999),
        ];
        for (seed, n, spread, integer, t, p) in cases {
            let logits = random_logits(seed, n, spread, integer);
            let mut s = sampler(params(t, 0, p, seed));
            let got = support(&mut s, &logits);
            let want = reference_support(&logits, t, 0, f64::from(p));
            assert_eq!(got.len(), want.len(), "seed {seed}");
            assert_eq!(got, want, "seed {seed}");
        }
        // With top-k first.
        let logits = random_logits(17, 100_000, 12.0, false);
        let mut s = sampler(params(0.8, 5000, 0.7, 17));
        assert_eq!(
            support(&mut s, &logits),
            reference_support(&logits, 0.8, 5000, f64::from(0.7f32))
        );
    }

    #[test]
    fn draw_crosses_blocks() {
        // Only two finite tokens, far apart in a long row: about half each.
        let mut logits = vec![f32::NEG_INFINITY; 10_000];
        logits[3] = 0.5;
        logits[9_001] = 0.5;
        let mut s = sampler(params(1.0, 0, 1.0, 61));
        let counts = histogram(&mut s, &logits, 4000);
        assert_eq!(counts[3] + counts[9_001], 4000);
        assert!((1800..2200).contains(&counts[3]), "{}", counts[3]);
        // A single finite token at the very end.
        let mut logits = vec![f32::NEG_INFINITY; 1000];
        logits[999] = -5.0;
        let mut s = sampler(params(0.3, 0, 0.9, 62));
        assert_eq!(histogram(&mut s, &logits, 50)[999], 50);
    }

    #[test]
    fn large_vocabulary_distribution_matches_softmax() {
        // 1000 tokens in three groups; the draw must follow the group masses.
        let mut logits = vec![-1.0f32; 1000];
        logits[100..150].fill(2.0);
        logits[700..710].fill(3.0);
        let draws = 20_000;
        let mut s = sampler(params(1.0, 0, 1.0, 63));
        let counts = histogram(&mut s, &logits, draws);
        let mass = [
            940.0 * (-1.0f64).exp(),
            50.0 * 2.0f64.exp(),
            10.0 * 3.0f64.exp(),
        ];
        let total: f64 = mass.iter().sum();
        let got = [
            counts.iter().sum::<usize>()
                - counts[100..150].iter().sum::<usize>()
                - counts[700..710].iter().sum::<usize>(),
            counts[100..150].iter().sum(),
            counts[700..710].iter().sum(),
        ];
        for i in 0..3 {
            let got = got[i] as f64 / draws as f64;
            assert!((got - mass[i] / total).abs() < 0.015, "{i}: {got}");
        }
    }

    #[test]
    fn exp_f32_is_accurate() {
        let mut worst = 0.0f64;
        let steps = 1_000_000;
        for i in 0..=steps {
            let x = NEGLIGIBLE_SCALED_LOGIT * i as f32 / steps as f32;
            let want = f64::from(x).exp();
            let got = f64::from(exp_f32(x));
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-0.0), 1.0);
    }

    #[test]
    fn validation_names_field_range_and_value() {
        let cases: Vec<(SamplingParams, &str, &str)> = vec![
            (params(2.5, 0, 1.0, 0), "temperature", "2.5"),
            (params(-0.1, 0, 1.0, 0), "temperature", "-0.1"),
            (params(f32::NAN, 0, 1.0, 0), "temperature", "NaN"),
            (params(f32::INFINITY, 0, 1.0, 0), "temperature", "inf"),
            (params(1.0, 0, 0.0, 0), "top_p", "0"),
            (params(1.0, 0, 1.5, 0), "top_p", "1.5"),
            (params(1.0, 0, f32::NAN, 0), "top_p", "NaN"),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..SamplingParams::default()
                },
                "repetition_penalty",
                "0",
            ),
            (
                SamplingParams {
                    repetition_penalty: f32::INFINITY,
                    ..SamplingParams::default()
                },
                "repetition_penalty",
                "inf",
            ),
            (
                SamplingParams {
                    presence_penalty: -2.5,
                    ..SamplingParams::default()
                },
                "presence_penalty",
                "-2.5",
            ),
            (
                SamplingParams {
                    frequency_penalty: 3.0,
                    ..SamplingParams::default()
                },
                "frequency_penalty",
                "3",
            ),
            (
                SamplingParams {
                    frequency_penalty: f32::NAN,
                    ..SamplingParams::default()
                },
                "frequency_penalty",
                "NaN",
            ),
        ];
        for (p, field, value) in cases {
            let err = p.validate().expect_err("out of range");
            assert_eq!(err.field(), field);
            let msg = err.to_string();
            assert!(msg.contains(&format!("`{field}`")), "{msg}");
            assert!(msg.ends_with(&format!("got {value}")), "{msg}");
            assert!(Sampler::new(p, &[]).is_err());
        }
        let msg = params(3.0, 0, 1.0, 0)
            .validate()
            .expect_err("out of range")
            .to_string();
        assert_eq!(msg, "`temperature` must be between 0 and 2, got 3");
        let msg = params(1.0, 0, 0.0, 0)
            .validate()
            .expect_err("out of range")
            .to_string();
        assert_eq!(msg, "`top_p` must be greater than 0 and at most 1, got 0");
    }

    #[test]
    fn boundary_values_are_valid() {
        for p in [
            params(0.0, 0, 1.0, 0),
            params(2.0, u32::MAX, 1e-9, 0),
            SamplingParams {
                repetition_penalty: 1e-3,
                presence_penalty: -2.0,
                frequency_penalty: 2.0,
                ..SamplingParams::default()
            },
        ] {
            assert_eq!(p.validate(), Ok(()), "{p:?}");
        }
    }
}

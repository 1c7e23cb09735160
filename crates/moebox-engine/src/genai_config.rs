//! `genai_config.json`: the contract with onnxruntime-genai's model builder.
//!
//! Only the decoder-only text layout is accepted. Keys that change what the model computes and
//! that the engine does not implement (vision/speech encoders, KV-cache quantisation, a
//! pipeline of several decoder sessions) are refused with a message naming the key; keys that
//! only tune onnxruntime-genai's own runtime are ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Most decoder layers `model.decoder.num_hidden_layers` may declare: far above any published
/// model (the largest have under 200), and a bound on what a corrupt file makes the engine
/// allocate before it opens the graph (one input and one output name per layer and tensor).
pub const MAX_LAYERS: usize = 4_096;

/// What the engine knows about a model folder before it opens a session.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub model_type: String,
    pub filename: String,
    pub vocab_size: usize,
    pub context_length: usize,
    pub num_layers: usize,
    pub num_attention_heads: usize,
    pub num_kv_heads: usize,
    pub head_size: usize,
    pub hidden_size: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    pub names: IoNames,
    pub sliding_window: Option<SlidingWindow>,
    pub past_present_share_buffer: bool,
    pub search: SearchDefaults,
    /// `session_options.provider_options` entries the exporter asked for, by provider name.
    pub provider_names: Vec<String>,
}

/// Input and output names, with each layer's `%d` already substituted.
#[derive(Debug, Clone, PartialEq)]
pub struct IoNames {
    pub input_ids: String,
    pub attention_mask: Option<String>,
    pub position_ids: Option<String>,
    pub past_key: Vec<String>,
    pub past_value: Vec<String>,
    pub logits: String,
    pub present_key: Vec<String>,
    pub present_value: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SlidingWindow {
    pub window_size: usize,
    /// Model layers that attend only to the last `window_size` positions (all layers if empty).
    pub layers: Vec<usize>,
}

/// `search` section: the exporter's generation defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchDefaults {
    pub max_length: usize,
    pub do_sample: bool,
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub repetition_penalty: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum GenaiConfigError {
    #[error("cannot read {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: not a valid genai_config.json: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {message}")]
    Unsupported {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

#[derive(Deserialize)]
struct RawFile {
    model: RawModel,
    #[serde(default)]
    search: RawSearch,
}

#[derive(Deserialize)]
struct RawModel {
    #[serde(rename = "type")]
    model_type: String,
    vocab_size: usize,
    context_length: usize,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<OneOrMany>,
    #[serde(default)]
    pad_token_id: Option<u32>,
    decoder: RawDecoder,
    #[serde(default)]
    encoder: Option<serde_json::Value>,
    #[serde(default)]
    vision: Option<serde_json::Value>,
    #[serde(default)]
    speech: Option<serde_json::Value>,
    #[serde(default)]
    embedding: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Deserialize)]
struct RawDecoder {
    filename: Option<String>,
    head_size: usize,
    hidden_size: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    num_key_value_heads: usize,
    inputs: RawInputs,
    outputs: RawOutputs,
    #[serde(default)]
    sliding_window: Option<RawSlidingWindow>,
    #[serde(default)]
    session_options: Option<RawSessionOptions>,
    #[serde(default)]
    pipeline: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawInputs {
    input_ids: String,
    #[serde(default)]
    attention_mask: Option<String>,
    #[serde(default)]
    position_ids: Option<String>,
    past_key_names: String,
    past_value_names: String,
}

#[derive(Deserialize)]
struct RawOutputs {
    logits: String,
    present_key_names: String,
    present_value_names: String,
}

#[derive(Deserialize)]
struct RawSlidingWindow {
    window_size: usize,
    #[serde(default)]
    layers: Vec<usize>,
}

#[derive(Deserialize)]
struct RawSessionOptions {
    #[serde(default)]
    provider_options: Vec<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
#[serde(default)]
struct RawSearch {
    max_length: Option<usize>,
    do_sample: bool,
    temperature: f32,
    top_k: u32,
    top_p: f32,
    repetition_penalty: f32,
    num_beams: u32,
    past_present_share_buffer: bool,
}

impl Default for RawSearch {
    fn default() -> Self {
        Self {
            max_length: None,
            do_sample: false,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            repetition_penalty: 1.0,
            num_beams: 1,
            past_present_share_buffer: false,
        }
    }
}

/// Substitutes the layer index into a `%d` pattern, as onnxruntime-genai does.
fn per_layer(pattern: &str, layers: usize) -> Option<Vec<String>> {
    pattern.contains("%d").then(|| {
        (0..layers)
            .map(|i| pattern.replacen("%d", &i.to_string(), 1))
            .collect()
    })
}

impl ModelSpec {
    /// Reads `genai_config.json` from a model folder.
    pub fn from_model_dir(dir: &Path) -> Result<Self, GenaiConfigError> {
        let path = dir.join("genai_config.json");
        let text = std::fs::read_to_string(&path).map_err(|cause| GenaiConfigError::Read {
            path: path.clone(),
            cause,
        })?;
        Self::parse(&text, &path)
    }

    /// Parses the file's text; `path` names it in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, GenaiConfigError> {
        let raw: RawFile = serde_json::from_str(text).map_err(|e| GenaiConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let unsupported = |key: &'static str, message: String| GenaiConfigError::Unsupported {
            path: path.to_owned(),
            key,
            message,
        };
        let model = raw.model;
        for (key, present) in [
            ("model.encoder", model.encoder.is_some()),
            ("model.vision", model.vision.is_some()),
            ("model.speech", model.speech.is_some()),
            ("model.embedding", model.embedding.is_some()),
        ] {
            if present {
                return Err(unsupported(
                    key,
                    "multimodal and encoder-decoder models are not supported; moebox serves decoder-only text models".into(),
                ));
            }
        }
        let decoder = model.decoder;
        if decoder.pipeline.is_some() {
            return Err(unsupported(
                "model.decoder.pipeline",
                "multi-session decoder pipelines are not supported; export the decoder as one model.onnx".into(),
            ));
        }
        let layers = decoder.num_hidden_layers;
        if layers == 0 || layers > MAX_LAYERS {
            return Err(unsupported(
                "model.decoder.num_hidden_layers",
                format!("must be 1 to {MAX_LAYERS}, got {layers}"),
            ));
        }
        if decoder.num_key_value_heads == 0
            || !decoder
                .num_attention_heads
                .is_multiple_of(decoder.num_key_value_heads)
        {
            return Err(unsupported(
                "model.decoder.num_key_value_heads",
                format!(
                    "{} KV heads do not divide {} attention heads",
                    decoder.num_key_value_heads, decoder.num_attention_heads
                ),
            ));
        }
        if decoder.head_size == 0 {
            return Err(unsupported(
                "model.decoder.head_size",
                "must be at least 1".into(),
            ));
        }
        if model.vocab_size == 0 {
            return Err(unsupported("model.vocab_size", "must be at least 1".into()));
        }
        if model.context_length < 2 {
            return Err(unsupported(
                "model.context_length",
                format!("must be at least 2, got {}", model.context_length),
            ));
        }
        if raw.search.num_beams > 1 {
            tracing::warn!(
                num_beams = raw.search.num_beams,
                "genai_config.json asks for beam search; moebox decodes one beam per request"
            );
        }
        let pattern_error = |key: &'static str, pattern: &str| {
            unsupported(key, format!("`{pattern}` has no %d for the layer index"))
        };
        let names = IoNames {
            input_ids: decoder.inputs.input_ids,
            attention_mask: decoder.inputs.attention_mask,
            position_ids: decoder.inputs.position_ids,
            past_key: per_layer(&decoder.inputs.past_key_names, layers).ok_or_else(|| {
                pattern_error(
                    "model.decoder.inputs.past_key_names",
                    &decoder.inputs.past_key_names,
                )
            })?,
            past_value: per_layer(&decoder.inputs.past_value_names, layers).ok_or_else(|| {
                pattern_error(
                    "model.decoder.inputs.past_value_names",
                    &decoder.inputs.past_value_names,
                )
            })?,
            logits: decoder.outputs.logits,
            present_key: per_layer(&decoder.outputs.present_key_names, layers).ok_or_else(
                || {
                    pattern_error(
                        "model.decoder.outputs.present_key_names",
                        &decoder.outputs.present_key_names,
                    )
                },
            )?,
            present_value: per_layer(&decoder.outputs.present_value_names, layers).ok_or_else(
                || {
                    pattern_error(
                        "model.decoder.outputs.present_value_names",
                        &decoder.outputs.present_value_names,
                    )
                },
            )?,
        };
        let sliding_window = match decoder.sliding_window {
            Some(window) if window.window_size > 0 => {
                if let Some(bad) = window.layers.iter().find(|&&l| l >= layers) {
                    return Err(unsupported(
                        "model.decoder.sliding_window.layers",
                        format!("layer {bad} does not exist (the model has {layers})"),
                    ));
                }
                Some(SlidingWindow {
                    window_size: window.window_size,
                    layers: window.layers,
                })
            }
            _ => None,
        };
        let eos_token_ids = match model.eos_token_id {
            Some(OneOrMany::One(id)) => vec![id],
            Some(OneOrMany::Many(ids)) => ids,
            None => Vec::new(),
        };
        if let Some(bad) = eos_token_ids
            .iter()
            .chain(model.bos_token_id.iter())
            .find(|&&id| id as usize >= model.vocab_size)
        {
            return Err(unsupported(
                "model.eos_token_id",
                format!(
                    "token id {bad} is outside the vocabulary of {}",
                    model.vocab_size
                ),
            ));
        }
        let provider_names = decoder
            .session_options
            .map(|o| {
                o.provider_options
                    .into_iter()
                    .flat_map(|m| m.into_iter().map(|(k, _)| k))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            model_type: model.model_type,
            filename: decoder.filename.unwrap_or_else(|| "model.onnx".to_owned()),
            vocab_size: model.vocab_size,
            context_length: model.context_length,
            num_layers: layers,
            num_attention_heads: decoder.num_attention_heads,
            num_kv_heads: decoder.num_key_value_heads,
            head_size: decoder.head_size,
            hidden_size: decoder.hidden_size,
            bos_token_id: model.bos_token_id,
            eos_token_ids,
            pad_token_id: model.pad_token_id,
            names,
            sliding_window,
            past_present_share_buffer: raw.search.past_present_share_buffer,
            search: SearchDefaults {
                max_length: raw.search.max_length.unwrap_or(model.context_length),
                do_sample: raw.search.do_sample,
                temperature: raw.search.temperature,
                top_k: raw.search.top_k,
                top_p: raw.search.top_p,
                repetition_penalty: raw.search.repetition_penalty,
            },
            provider_names,
        })
    }

    pub fn is_eos(&self, token: u32) -> bool {
        self.eos_token_ids.contains(&token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../../../tests/fixtures/tiny-moe/genai_config.json");

    fn parse(text: &str) -> Result<ModelSpec, GenaiConfigError> {
        ModelSpec::parse(text, Path::new("genai_config.json"))
    }

    #[test]
    fn parses_the_fixture() {
        let spec = parse(FIXTURE).expect("fixture parses");
        assert_eq!(spec.model_type, "gptoss");
        assert_eq!(spec.num_layers, 4);
        assert_eq!(spec.names.past_key[3], "past_key_values.3.key");
        assert_eq!(spec.names.present_value[0], "present.0.value");
        assert_eq!(spec.eos_token_ids, vec![4, 2]);
        assert!(spec.is_eos(2) && !spec.is_eos(3));
        let window = spec.sliding_window.expect("fixture has sliding layers");
        assert_eq!(window.window_size, 32);
        assert_eq!(window.layers, vec![0, 2]);
        assert!(spec.past_present_share_buffer);
    }

    fn edited(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut value: serde_json::Value = serde_json::from_str(FIXTURE).expect("fixture is JSON");
        edit(&mut value);
        value.to_string()
    }

    #[test]
    fn single_eos_id_is_accepted() {
        let text = edited(|v| v["model"]["eos_token_id"] = 7.into());
        assert_eq!(parse(&text).expect("parses").eos_token_ids, vec![7]);
    }

    #[test]
    fn vision_models_are_refused_by_key() {
        let text =
            edited(|v| v["model"]["vision"] = serde_json::json!({"filename": "vision.onnx"}));
        let err = parse(&text).expect_err("vision is unsupported");
        assert!(err.to_string().contains("`model.vision`"), "{err}");
    }

    #[test]
    fn pattern_without_layer_index_is_refused() {
        let text =
            edited(|v| v["model"]["decoder"]["inputs"]["past_key_names"] = "past.key".into());
        let err = parse(&text).expect_err("no %d");
        assert!(err.to_string().contains("past_key_names"), "{err}");
    }

    #[test]
    fn out_of_range_eos_is_refused() {
        let text = edited(|v| v["model"]["eos_token_id"] = 100_000.into());
        let err = parse(&text).expect_err("eos outside vocab");
        assert!(err.to_string().contains("100000"), "{err}");
    }

    #[test]
    fn missing_field_is_a_parse_error_naming_it() {
        let text = edited(|v| {
            v["model"]["decoder"]
                .as_object_mut()
                .expect("decoder object")
                .remove("head_size");
        });
        let err = parse(&text).expect_err("head_size missing");
        assert!(err.to_string().contains("head_size"), "{err}");
    }

    #[test]
    fn sliding_layer_outside_model_is_refused() {
        let text = edited(|v| {
            v["model"]["decoder"]["sliding_window"]["layers"] = serde_json::json!([0, 9])
        });
        let err = parse(&text).expect_err("layer 9 missing");
        assert!(err.to_string().contains("layer 9"), "{err}");
    }

    /// Found by the `genai_config` fuzz target: 4 000 000 000 layers made the parser try to
    /// allocate a name per layer and abort the process.
    #[test]
    fn absurd_layer_counts_are_refused_before_allocating() {
        for layers in [0_u64, MAX_LAYERS as u64 + 1, 4_000_000_000, u64::MAX] {
            let text = edited(|v| v["model"]["decoder"]["num_hidden_layers"] = layers.into());
            let err = parse(&text).expect_err("layer count out of range");
            assert!(
                matches!(
                    err,
                    GenaiConfigError::Unsupported {
                        key: "model.decoder.num_hidden_layers",
                        ..
                    }
                ),
                "{layers}: {err}"
            );
            assert!(err.to_string().contains(&layers.to_string()), "{err}");
        }
        let text = edited(|v| v["model"]["decoder"]["num_hidden_layers"] = MAX_LAYERS.into());
        assert_eq!(
            parse(&text).expect("the limit itself").num_layers,
            MAX_LAYERS
        );
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let err = parse("{not json").expect_err("garbage");
        assert!(matches!(err, GenaiConfigError::Parse { .. }));
    }
}

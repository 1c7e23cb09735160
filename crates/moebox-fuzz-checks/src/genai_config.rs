//! `genai_config.json` → [`ModelSpec`]. Pure parsing: nothing here loads ONNX Runtime (the
//! engine crate links `ort` with `load-dynamic`, which resolves the library only when a
//! session is made).
//!
//! Properties: an accepted spec is internally consistent (one name per layer for each KV
//! tensor, heads that divide, ids inside the vocabulary, windows on existing layers); a
//! refusal names the file and, when it is about one key, that key.

use std::path::Path;

use moebox_engine::genai_config::{GenaiConfigError, ModelSpec};

const PATH: &str = "/models/m/genai_config.json";

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ModelSpec::parse(text, Path::new(PATH)) {
        Ok(spec) => accepted(&spec),
        Err(error) => refused(&error),
    }
}

fn accepted(spec: &ModelSpec) {
    let layers = spec.num_layers;
    assert!(layers >= 1);
    let names = &spec.names;
    for (what, per_layer) in [
        ("past_key", &names.past_key),
        ("past_value", &names.past_value),
        ("present_key", &names.present_key),
        ("present_value", &names.present_value),
    ] {
        assert_eq!(per_layer.len(), layers, "{what}: not one name per layer");
        let mut sorted: Vec<&String> = per_layer.iter().collect();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), layers, "{what}: two layers share a name");
    }
    assert!(spec.num_kv_heads >= 1);
    assert!(spec.num_attention_heads.is_multiple_of(spec.num_kv_heads));
    assert!(spec.head_size >= 1);
    assert!(spec.vocab_size >= 1);
    assert!(spec.context_length >= 2);
    for id in spec.eos_token_ids.iter().chain(spec.bos_token_id.iter()) {
        assert!(
            (*id as usize) < spec.vocab_size,
            "token id {id} outside the vocabulary"
        );
    }
    if let Some(window) = &spec.sliding_window {
        assert!(window.window_size >= 1);
        assert!(window.layers.iter().all(|&layer| layer < layers));
    }
}

fn refused(error: &GenaiConfigError) {
    let shown = error.to_string();
    assert!(shown.contains(PATH), "an error without the file: {shown}");
    match error {
        GenaiConfigError::Unsupported { key, message, .. } => {
            assert!(
                key.starts_with("model.") || key.starts_with("search."),
                "not a key path: {key}"
            );
            assert!(!message.is_empty());
            assert!(shown.contains(key), "{shown}");
        }
        GenaiConfigError::Parse { message, .. } => assert!(!message.is_empty()),
        GenaiConfigError::Read { .. } => panic!("parsing text reported a read error"),
    }
}

//! The `moebox` binary as a user drives it: errors are one clear line, limits are named,
//! sampling and stop sequences behave as documented.

#[path = "../../../tests/support/reference.rs"]
mod reference;

use std::process::{Command, Output};

use serde_json::Value;

fn moebox(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_moebox"));
    command.args(args);
    command
}

fn generate_json(extra: &[&str]) -> Value {
    let fixture = reference::fixture();
    let mut args = vec![
        "generate",
        "--json",
        "--model",
        fixture.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    let output = moebox(&args).output().expect("run moebox");
    assert!(
        output.status.success(),
        "moebox failed: {}",
        stderr(&output)
    );
    serde_json::from_slice(&output.stdout).expect("JSON output")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn ids(value: &Value) -> Vec<u64> {
    value["output_ids"]
        .as_array()
        .expect("output_ids")
        .iter()
        .map(|v| v.as_u64().expect("id"))
        .collect()
}

#[test]
fn missing_onnxruntime_is_one_line_naming_path_and_version() {
    let fixture = reference::fixture();
    let output = moebox(&[
        "generate",
        "--prompt",
        "hi",
        "--model",
        fixture.to_str().expect("utf-8"),
    ])
    .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so.1.31.1")
    .output()
    .expect("run moebox");
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("/nonexistent/libonnxruntime.so.1.31.1"),
        "{err}"
    );
    assert!(
        err.contains("1.31.1") && err.contains("ORT_DYLIB_PATH"),
        "{err}"
    );
}

#[test]
fn a_library_that_is_not_onnxruntime_is_refused_clearly() {
    // Any shared library that is not ONNX Runtime: the C library's math library is everywhere.
    let not_ort = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("a libm to stand in for a wrong library");
    let fixture = reference::fixture();
    let output = moebox(&[
        "generate",
        "--prompt",
        "hi",
        "--model",
        fixture.to_str().expect("utf-8"),
    ])
    .env("ORT_DYLIB_PATH", not_ort)
    .output()
    .expect("run moebox");
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(err.contains(not_ort) && err.contains("1.31.1"), "{err}");
}

#[test]
fn missing_model_folder_names_the_file() {
    let output = moebox(&[
        "generate",
        "--prompt",
        "hi",
        "--model",
        "/nonexistent/model",
    ])
    .output()
    .expect("run moebox");
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("/nonexistent/model/genai_config.json"),
        "{err}"
    );
}

#[test]
fn request_over_the_context_length_names_the_limit() {
    let fixture = reference::fixture();
    let output = moebox(&[
        "generate",
        "--prompt",
        "hi",
        "--max-tokens",
        "600",
        "--model",
        fixture.to_str().expect("utf-8"),
    ])
    .output()
    .expect("run moebox");
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(err.contains("maximum context length is 512"), "{err}");
    assert!(err.contains("600 in the completion"), "{err}");
}

#[test]
fn max_tokens_is_honoured_with_finish_reason_length() {
    let out = generate_json(&["--prompt", "Hello, world!", "--max-tokens", "5"]);
    assert_eq!(ids(&out).len(), 5);
    assert_eq!(out["finish_reason"], "length");
}

#[test]
fn seeded_sampling_is_reproducible_and_seed_dependent() {
    let args = |seed: &'static str| {
        [
            "--prompt",
            "The balance sheet shows",
            "--max-tokens",
            "48",
            "--temperature",
            "1.0",
            "--seed",
            seed,
        ]
    };
    let a = generate_json(&args("7"));
    let b = generate_json(&args("7"));
    let c = generate_json(&args("8"));
    assert_eq!(ids(&a), ids(&b));
    assert_ne!(ids(&a), ids(&c));
    let greedy = generate_json(&["--prompt", "The balance sheet shows", "--max-tokens", "48"]);
    assert_ne!(
        ids(&a),
        ids(&greedy),
        "temperature 1 should leave the greedy path on a random model"
    );
}

#[test]
fn stop_sequence_cuts_the_text_and_generation() {
    let full = generate_json(&["--prompt", "Hello, world!", "--max-tokens", "60"]);
    let text = full["text"].as_str().expect("text");
    // Choose a stop string from the middle of the greedy text, ASCII so it is a clean slice.
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let start = chars.len() / 2;
    let stop: String = chars[start..].iter().take(3).map(|(_, c)| *c).collect();
    let first = text.find(&stop).expect("stop string occurs");
    let stopped = generate_json(&[
        "--prompt",
        "Hello, world!",
        "--max-tokens",
        "60",
        "--stop",
        &stop,
    ]);
    assert_eq!(stopped["finish_reason"], "stop");
    assert_eq!(stopped["text"].as_str().expect("text"), &text[..first]);
    let stopped_ids = ids(&stopped);
    assert!(stopped_ids.len() < ids(&full).len());
    assert_eq!(
        stopped_ids[..],
        ids(&full)[..stopped_ids.len()],
        "same greedy path up to the stop"
    );
}

#[test]
fn invalid_sampling_parameter_names_the_field() {
    let fixture = reference::fixture();
    let output = moebox(&[
        "generate",
        "--prompt",
        "hi",
        "--temperature",
        "7",
        "--model",
        fixture.to_str().expect("utf-8"),
    ])
    .output()
    .expect("run moebox");
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(err.contains("temperature") && err.contains('7'), "{err}");
}

#[test]
fn config_check_names_the_key_at_fault() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("moebox.toml");
    std::fs::write(&path, "[engine]\nexecution_provider = \"tpu\"\n").expect("write");
    let output = moebox(&["config", "check", "--config", path.to_str().expect("utf-8")])
        .output()
        .expect("run moebox");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("engine.execution_provider"),
        "{}",
        stderr(&output)
    );

    std::fs::write(&path, "[engine]\nexecution_provider = \"cpu\"\n").expect("write");
    let output = moebox(&["config", "check", "--config", path.to_str().expect("utf-8")])
        .output()
        .expect("run moebox");
    assert!(output.status.success(), "{}", stderr(&output));
}

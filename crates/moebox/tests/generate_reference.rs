//! `moebox generate` against onnxruntime-genai on the committed fixture: same prompt ids, same
//! greedy output ids, 120 new tokens (past the 32-token sliding window) or up to EOS.

#[path = "../../../tests/support/reference.rs"]
mod reference;

use std::{path::Path, process::Command};

use serde_json::Value;

const NEW_TOKENS: &str = "120";

/// Prompts whose greedy steps keep a top-1/top-2 logit gap above 2e-4 (reported by the
/// reference), far above the ~1e-5 by which logits differ between KV layouts.
const RAW_PROMPTS: &[&str] = &[
    "Hello, world!",
    "The balance sheet shows",
    "Tax filings are due on the fifteenth of April",
    "Quarterly revenue grew by 12% while costs fell.",
    "Invoice #4471: 3 × consulting hours @ €150",
    "会計年度の決算報告",
];
const CHAT_PROMPTS: &[&str] = &[
    "Summarise the audit findings.",
    "Explain depreciation briefly.",
    "What is the VAT rate?",
];

fn moebox_generate(model: &Path, prompt: &str, chat: bool) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_moebox"));
    command
        .args([
            "generate",
            "--json",
            "--max-tokens",
            NEW_TOKENS,
            "--prompt",
            prompt,
            "--model",
        ])
        .arg(model);
    if chat {
        command.arg("--chat");
    }
    let output = command.output().expect("run moebox generate");
    assert!(
        output.status.success(),
        "moebox generate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("--json prints one JSON object")
}

fn assert_same(model: &Path, prompts: &[&str], chat: bool) {
    let mut args = vec![
        "--model",
        model.to_str().expect("utf-8 path"),
        "--max-new-tokens",
        NEW_TOKENS,
    ];
    if chat {
        args.push("--chat");
    }
    args.extend_from_slice(prompts);
    let expected = reference::reference(&args);
    assert_eq!(expected.len(), prompts.len());
    let mut past_window = 0;
    for (prompt, want) in prompts.iter().zip(&expected) {
        let got = moebox_generate(model, prompt, chat);
        assert_eq!(
            got["prompt_ids"], want["prompt_ids"],
            "prompt ids differ for {prompt:?}"
        );
        assert_eq!(
            got["output_ids"], want["output_ids"],
            "output ids differ for {prompt:?}"
        );
        assert_eq!(
            got["finish_reason"], want["finish_reason"],
            "finish reason differs for {prompt:?}"
        );
        let generated = got["output_ids"].as_array().map_or(0, Vec::len);
        if generated > 100 {
            past_window += 1;
        }
    }
    assert!(
        past_window > 0,
        "no prompt generated past the sliding window"
    );
}

#[test]
fn greedy_ids_match_onnxruntime_genai_on_raw_prompts() {
    assert_same(&reference::fixture(), RAW_PROMPTS, false);
}

#[test]
fn greedy_ids_match_onnxruntime_genai_through_the_chat_template() {
    assert_same(&reference::fixture(), CHAT_PROMPTS, true);
}

/// The growing KV layout (past_present_share_buffer = false) must give the same ids as the
/// shared-buffer layout the reference uses.
#[test]
fn growing_kv_layout_matches_the_reference_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(reference::fixture()).expect("fixture") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
    }
    let config_path = dir.path().join("genai_config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).expect("read")).expect("json");
    config["search"]["past_present_share_buffer"] = Value::Bool(false);
    std::fs::write(&config_path, config.to_string()).expect("write");

    let expected = reference::reference(&[
        "--model",
        reference::fixture().to_str().expect("utf-8"),
        "--max-new-tokens",
        NEW_TOKENS,
        RAW_PROMPTS[0],
        RAW_PROMPTS[3],
    ]);
    for (prompt, want) in [RAW_PROMPTS[0], RAW_PROMPTS[3]].iter().zip(&expected) {
        let got = moebox_generate(dir.path(), prompt, false);
        assert_eq!(
            got["output_ids"], want["output_ids"],
            "growing layout differs for {prompt:?}"
        );
    }
}

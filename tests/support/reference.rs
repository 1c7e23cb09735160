//! Test support shared by the crates' integration tests: the repository root, the bundled
//! fixture, and the reference venv with onnxruntime-genai and transformers.

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The repository root (tests run with the crate's folder as working directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The committed tiny MoE export.
pub fn fixture() -> PathBuf {
    repo_root().join("tests/fixtures/tiny-moe")
}

/// The reference venv's python, created on first use by `tests/fixtures/reference-venv.sh`
/// (idempotent, locked against parallel tests). Panics with the script's output if it fails:
/// a conformance test that cannot reach its reference must fail, not pass.
pub fn reference_python() -> PathBuf {
    let script = repo_root().join("tests/fixtures/reference-venv.sh");
    let output = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let python = stdout.lines().last().unwrap_or_default().trim().to_owned();
    assert!(
        !python.is_empty(),
        "{} printed no python path",
        script.display()
    );
    PathBuf::from(python)
}

/// Runs `tests/fixtures/reference_generate.py` with `args` and returns its stdout lines parsed
/// as JSON.
pub fn reference(args: &[&str]) -> Vec<serde_json::Value> {
    let script = repo_root().join("tests/fixtures/reference_generate.py");
    let output = Command::new(reference_python())
        .arg(&script)
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run the reference");
    assert!(
        output.status.success(),
        "reference failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad reference line {l}: {e}")))
        .collect()
}

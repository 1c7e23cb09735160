//! The real smoke test through moebox-engine on the committed tiny MoE fixture. On a machine
//! without an NVIDIA GPU the CUDA half must fail with a message, not crash; on a GPU host
//! (with `ORT_DYLIB_PATH` naming the onnxruntime-gpu library) every GPU must match the CPU.

use std::path::{Path, PathBuf};

use moebox_config::Config;
use moebox_provision::{EngineSmoke, LiveNvml, NvmlSource, NvmlState, SmokeTest};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-moe")
}

fn smoke() -> EngineSmoke {
    let mut config = Config::default();
    config.engine.model = fixture();
    EngineSmoke::from_config(&config)
}

#[test]
fn cpu_reference_is_deterministic_on_the_fixture() {
    let mut smoke = smoke();
    let first = smoke
        .cpu_reference()
        .expect("the CPU provider runs the fixture");
    let second = smoke.cpu_reference().expect("and again");
    assert_eq!(first.device, "cpu");
    assert!(!first.prompt_ids.is_empty());
    assert!(!first.output_ids.is_empty());
    assert!(first.output_ids.len() <= moebox_config::DEFAULT_SMOKE_TOKENS as usize);
    assert_eq!(first.output_ids, second.output_ids);
}

#[test]
fn cuda_smoke_matches_cpu_on_every_gpu_or_fails_cleanly_without_one() {
    let mut smoke = smoke();
    let cpu = smoke.cpu_reference().expect("CPU reference");
    let gpus = match LiveNvml.snapshot() {
        NvmlState::Loaded(snapshot) => snapshot.devices.len(),
        _ => 0,
    };
    if gpus == 0 {
        let err = smoke
            .cuda(0)
            .expect_err("no GPU: the CUDA provider cannot run");
        assert!(err.contains("CUDA") || err.contains("cuda"), "{err}");
        return;
    }
    for device in 0..gpus {
        let device = u32::try_from(device).expect("few GPUs");
        let run = smoke
            .cuda(device)
            .unwrap_or_else(|e| panic!("GPU {device}: {e}"));
        assert_eq!(run.device, format!("cuda:{device}"));
        assert_eq!(run.output_ids, cpu.output_ids, "GPU {device}");
    }
}

#[test]
fn a_missing_model_folder_is_an_error_naming_it() {
    let mut config = Config::default();
    config.engine.model = PathBuf::from("/nonexistent/model");
    let err = EngineSmoke::from_config(&config)
        .cpu_reference()
        .expect_err("no model");
    assert!(err.contains("/nonexistent/model"), "{err}");
}

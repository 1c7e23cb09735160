//! The CUDA smoke test: a short greedy generation on each GPU through ONNX Runtime's CUDA
//! provider must give the same token ids as the CPU provider. It runs through `moebox-engine`,
//! the only crate that links `ort`, with the same loading path as `moebox engine`.

use std::{
    path::PathBuf,
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use moebox_config::{Config, CudaConfig, ExecutionProviderKind};
use moebox_engine::{
    generate::{GenerationRequest, generate},
    model::{Device, Model, SessionOptions},
    runtime::Runtime,
    sampling::SamplingParams,
};

/// The prompt the smoke test completes: plain words every tokenizer handles.
pub const SMOKE_PROMPT: &str = "The balance sheet shows";

/// One generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmokeRun {
    pub prompt_ids: Vec<u32>,
    pub output_ids: Vec<u32>,
    /// `cpu`, `cuda:0`.
    pub device: String,
    pub elapsed: Duration,
}

pub trait SmokeTest {
    /// Greedy ids on the CPU provider, the reference.
    fn cpu_reference(&mut self) -> Result<SmokeRun, String>;
    /// Greedy ids on the CUDA provider on CUDA device `device_id`, never falling back to the CPU.
    fn cuda(&mut self, device_id: u32) -> Result<SmokeRun, String>;
}

/// The real thing, on the configured ONNX Runtime and model folder.
#[derive(Debug)]
pub struct EngineSmoke {
    library: Option<PathBuf>,
    model: PathBuf,
    tokens: u32,
    default_max_tokens: u32,
    intra_op_threads: usize,
    cuda: CudaConfig,
    runtime: Option<Runtime>,
}

impl EngineSmoke {
    pub fn from_config(config: &Config) -> Self {
        Self {
            library: config.onnxruntime.library.clone(),
            model: config.provision.smoke_model(&config.engine).to_owned(),
            tokens: config.provision.smoke_tokens,
            default_max_tokens: config.engine.max_tokens,
            intra_op_threads: config.engine.intra_op_threads,
            cuda: config.engine.cuda.clone(),
            runtime: None,
        }
    }

    fn runtime(&mut self) -> Result<Runtime, String> {
        if let Some(runtime) = &self.runtime {
            return Ok(runtime.clone());
        }
        let runtime =
            moebox_engine::runtime::load(self.library.as_deref()).map_err(|e| e.to_string())?;
        self.runtime = Some(runtime.clone());
        Ok(runtime)
    }

    fn run(
        &mut self,
        execution_provider: ExecutionProviderKind,
        device_id: i32,
    ) -> Result<SmokeRun, String> {
        let runtime = self.runtime()?;
        let options = SessionOptions {
            execution_provider,
            device_id,
            allow_cpu_fallback: false,
            intra_op_threads: self.intra_op_threads,
            cuda: self.cuda.clone(),
        };
        let start = Instant::now();
        let mut model = Model::load(&runtime, &self.model, &options)
            .map_err(|e| format!("cannot load the model folder {}: {e}", self.model.display()))?;
        let expected = match execution_provider {
            ExecutionProviderKind::Cpu => Device::Cpu,
            ExecutionProviderKind::Cuda => Device::Cuda(device_id),
        };
        if model.device != expected {
            return Err(format!(
                "the session runs on {} instead of {expected}",
                model.device
            ));
        }
        let prompt_ids = model
            .tokenizer
            .encode(SMOKE_PROMPT)
            .map_err(|e| e.to_string())?;
        let request = GenerationRequest {
            prompt_ids,
            max_tokens: Some(self.tokens),
            sampling: SamplingParams::greedy(),
            stop: Vec::new(),
        };
        let cancel = AtomicBool::new(false);
        let generation = generate(
            &mut model,
            &request,
            self.default_max_tokens,
            &cancel,
            |_| {},
        )
        .map_err(|e| e.to_string())?;
        Ok(SmokeRun {
            prompt_ids: generation.prompt_ids,
            output_ids: generation.output_ids,
            device: model.device.to_string(),
            elapsed: start.elapsed(),
        })
    }
}

impl SmokeTest for EngineSmoke {
    fn cpu_reference(&mut self) -> Result<SmokeRun, String> {
        self.run(ExecutionProviderKind::Cpu, 0)
    }

    fn cuda(&mut self, device_id: u32) -> Result<SmokeRun, String> {
        let device_id = i32::try_from(device_id)
            .map_err(|_| format!("GPU {device_id} is not a CUDA ordinal"))?;
        self.run(ExecutionProviderKind::Cuda, device_id)
    }
}

/// The first position where two id sequences differ, if any.
pub fn first_difference(a: &[u32], b: &[u32]) -> Option<usize> {
    let common = a.iter().zip(b).position(|(x, y)| x != y);
    match common {
        Some(i) => Some(i),
        None if a.len() != b.len() => Some(a.len().min(b.len())),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_located() {
        assert_eq!(first_difference(&[1, 2, 3], &[1, 2, 3]), None);
        assert_eq!(first_difference(&[1, 2, 3], &[1, 9, 3]), Some(1));
        assert_eq!(first_difference(&[1, 2], &[1, 2, 3]), Some(2));
    }
}

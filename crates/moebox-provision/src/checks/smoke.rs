//! The smoke test's verdicts: the CPU reference, then each GPU against it.

use super::{CPU_REFERENCE, CUDA_SMOKE};
use crate::{
    report::{Check, GpuRef},
    smoke::{SmokeRun, first_difference},
};

pub fn cpu_reference(run: &Result<SmokeRun, String>) -> Check {
    match run {
        Ok(run) => Check::pass(
            CPU_REFERENCE,
            None,
            format!(
                "{} greedy tokens on the CPU provider in {:.1} s",
                run.output_ids.len(),
                run.elapsed.as_secs_f64()
            ),
        )
        .with_evidence(ids_evidence(run)),
        Err(err) => Check::fail(
            CPU_REFERENCE,
            None,
            format!("the CPU provider cannot run the smoke model: {err}"),
            "Check onnxruntime.library and engine.model (or provision.smoke_model, for a model exported for CUDA only); `moebox generate --model DIR --prompt hi` shows the same error.",
        ),
    }
}

pub fn cuda_smoke(cuda: &Result<SmokeRun, String>, cpu: &SmokeRun, reference: &GpuRef) -> Check {
    let index = reference.index;
    let run = match cuda {
        Ok(run) => run,
        Err(err) => {
            return Check::fail(
                CUDA_SMOKE,
                Some(reference),
                format!("the CUDA provider failed: {err}"),
                format!(
                    "Check the CUDA libraries (artefacts) and the driver (driver_minimum); `moebox generate --execution-provider cuda --gpu {index} --model DIR --prompt hi` shows the same error."
                ),
            );
        }
    };
    let mut evidence = ids_evidence(run);
    evidence.push(format!("cpu output ids: {:?}", cpu.output_ids));
    match first_difference(&run.output_ids, &cpu.output_ids) {
        None => Check::pass(
            CUDA_SMOKE,
            Some(reference),
            format!(
                "{} greedy tokens on {} equal the CPU provider's ({:.1} s)",
                run.output_ids.len(),
                run.device,
                run.elapsed.as_secs_f64()
            ),
        )
        .with_evidence(evidence),
        Some(at) => Check::fail(
            CUDA_SMOKE,
            Some(reference),
            format!(
                "greedy ids differ from the CPU provider's at token {at} (cuda {}, cpu {})",
                show(run.output_ids.get(at)),
                show(cpu.output_ids.get(at))
            ),
            format!("The GPU computes different results: reset it (`nvidia-smi -r -i {index}`) and run again; if it persists with ECC on and no Xids, have the GPU checked. A model exported in fp16 for CUDA can differ numerically: point provision.smoke_model at an fp32 export."),
        )
        .with_evidence(evidence),
    }
}

fn show(id: Option<&u32>) -> String {
    id.map_or_else(|| "end".to_owned(), u32::to_string)
}

fn ids_evidence(run: &SmokeRun) -> Vec<String> {
    vec![
        format!("device {}", run.device),
        format!("prompt ids: {:?}", run.prompt_ids),
        format!("output ids: {:?}", run.output_ids),
    ]
}

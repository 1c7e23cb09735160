//! One function per check. Each takes what it needs as values (what was read, the config) and
//! returns its verdict with the evidence and a remedy; the order and the repairs between them
//! are [`crate::provision`]'s business.

pub mod artefacts;
pub mod device_nodes;
pub mod driver;
pub mod health;
pub mod pcie_link;
pub mod presence;
pub mod smoke;
pub mod xid_errors;

use crate::report::{Check, GpuRef, Verdict};

pub const GPUS_PRESENT: &str = "gpus_present";
pub const NOUVEAU_ABSENT: &str = "nouveau_absent";
pub const KERNEL_MODULES: &str = "kernel_modules";
pub const GPU_DRIVER_BINDING: &str = "gpu_driver_binding";
pub const NVML: &str = "nvml";
pub const DRIVER_LIBRARY_VERSION: &str = "driver_library_version";
pub const DRIVER_MINIMUM: &str = "driver_minimum";
pub const DEVICE_NODES: &str = "device_nodes";
pub const PERSISTENCE_MODE: &str = "persistence_mode";
pub const ECC: &str = "ecc";
pub const ROW_REMAPPING: &str = "row_remapping";
pub const MIG_MODE: &str = "mig_mode";
pub const PCIE_LINK: &str = "pcie_link";
pub const TEMPERATURE: &str = "temperature";
pub const POWER_LIMIT: &str = "power_limit";
pub const XID_ERRORS: &str = "xid_errors";
pub const ARTEFACTS: &str = "artefacts";
pub const CPU_REFERENCE: &str = "cpu_reference";
pub const CUDA_SMOKE: &str = "cuda_smoke";

/// Checks whose failure means CUDA cannot work on any GPU, so the smoke test is not tried.
pub const CUDA_PREREQUISITES: [&str; 5] = [
    KERNEL_MODULES,
    NVML,
    DRIVER_LIBRARY_VERSION,
    DRIVER_MINIMUM,
    DEVICE_NODES,
];

/// Per-GPU checks whose failure means that GPU must not run the smoke test (a GPU the driver
/// does not hold, one with memory errors, MIG on, overheating or fallen off the bus).
pub const GPU_CUDA_PREREQUISITES: [&str; 6] = [
    GPU_DRIVER_BINDING,
    ECC,
    ROW_REMAPPING,
    MIG_MODE,
    TEMPERATURE,
    XID_ERRORS,
];

/// Summary for checks that need a GPU when there is none.
pub const NO_GPU: &str = "no NVIDIA GPU";

/// What a check found wrong; several findings make one row with the worst verdict.
#[derive(Debug)]
pub struct Finding {
    pub verdict: Verdict,
    pub summary: String,
    pub remedy: String,
}

impl Finding {
    pub fn fail(summary: impl Into<String>, remedy: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Fail,
            summary: summary.into(),
            remedy: remedy.into(),
        }
    }

    pub fn warn(summary: impl Into<String>, remedy: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Warn,
            summary: summary.into(),
            remedy: remedy.into(),
        }
    }
}

/// One row from the findings: a pass with `pass_summary` when there are none, else the worst
/// verdict, every summary (worst first) and every distinct remedy.
pub fn conclude(
    id: &str,
    gpu: Option<&GpuRef>,
    pass_summary: impl Into<String>,
    mut findings: Vec<Finding>,
    evidence: Vec<String>,
) -> Check {
    if findings.is_empty() {
        return Check::pass(id, gpu, pass_summary).with_evidence(evidence);
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.verdict));
    let verdict = findings[0].verdict;
    let summary = findings
        .iter()
        .map(|f| f.summary.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let mut remedies: Vec<&str> = Vec::new();
    for finding in &findings {
        if !remedies.contains(&finding.remedy.as_str()) {
            remedies.push(&finding.remedy);
        }
    }
    Check::new(id, gpu, verdict, summary)
        .with_remedy(remedies.join(" "))
        .with_evidence(evidence)
}

/// Where to look when the driver misbehaves.
pub const KERNEL_LOG_HINT: &str = "the kernel log (`journalctl -k -b | grep -i nvrm`)";

pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

//! `moebox provision`: prepares the GPUs at boot and decides whether the engines may start.
//!
//! Each step is a named check with a verdict, the evidence it read and a remedy (see
//! `docs/provisioning.md`). Everything the checks read comes through a [`Sysroot`] (the
//! machine, or a captured tree), NVML through an [`NvmlSource`], the two repairs (loading
//! modules, creating device nodes) through a [`Repair`] and the CUDA smoke test through a
//! [`SmokeTest`], so tests run the whole sequence on captured trees with recorded answers.

#![forbid(unsafe_code)]

pub mod artefacts;
pub mod checks;
pub mod gpu;
pub mod kernel;
pub mod manifest;
pub mod notify;
pub mod nvml;
pub mod repair;
pub mod report;
pub mod smoke;
pub mod sysroot;
pub mod xid;

use std::time::{SystemTime, UNIX_EPOCH};

use moebox_config::{Config, ProvisionConfig};

use crate::{
    checks::{CUDA_PREREQUISITES, GPU_CUDA_PREREQUISITES, NO_GPU},
    gpu::PciGpu,
    nvml::NvmlGpu,
};
pub use crate::{
    nvml::{FixedNvml, LiveNvml, NvmlSource, NvmlState},
    repair::{NoRepair, Repair, SystemRepair},
    report::{Check, GpuRef, Report, Verdict},
    smoke::{EngineSmoke, SmokeTest},
    sysroot::Sysroot,
};

/// Everything a run reads and changes.
pub struct Host {
    pub sysroot: Sysroot,
    pub nvml: Box<dyn NvmlSource>,
    pub repair: Box<dyn Repair>,
    /// `None`: the smoke test does not apply (a captured tree).
    pub smoke: Option<Box<dyn SmokeTest>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("sysroot", &self.sysroot)
            .field("repair", &self.repair.enabled())
            .field("smoke", &self.smoke.is_some())
            .finish_non_exhaustive()
    }
}

/// Why the driver's checks are skipped when its module is not loaded.
pub const NVIDIA_NOT_LOADED: &str = "nvidia module not loaded (see kernel_modules)";

/// Why NVML and the smoke test are not run on a captured tree.
pub const CAPTURED_TREE: &str = "not run on a captured tree (--sysroot)";

impl Host {
    /// The running machine: its NVML, repairs unless `check_only`, the smoke test on the
    /// configured ONNX Runtime and model.
    pub fn live(config: &Config, check_only: bool) -> Self {
        Self {
            sysroot: Sysroot::live(),
            nvml: Box::new(LiveNvml),
            repair: if check_only {
                Box::new(NoRepair)
            } else {
                Box::new(SystemRepair)
            },
            smoke: Some(Box::new(EngineSmoke::from_config(config))),
        }
    }

    /// A captured tree: read only; NVML and the smoke test do not apply (the machine running
    /// this is not the one the tree came from).
    pub fn captured(sysroot: Sysroot) -> Self {
        Self {
            sysroot,
            nvml: Box::new(FixedNvml(NvmlState::NotConsulted {
                reason: CAPTURED_TREE.to_owned(),
            })),
            repair: Box::new(NoRepair),
            smoke: None,
        }
    }
}

/// Runs every check in order, making the repairs the host allows, and returns the report.
/// `progress` hears each step (for `STATUS=` lines). Never panics on what it reads.
pub fn provision(
    config: &ProvisionConfig,
    host: &mut Host,
    progress: &mut dyn FnMut(&str),
) -> Report {
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let sysroot = host.sysroot.clone();
    let mut checks = Vec::new();

    progress("scanning the PCI bus");
    let scan = gpu::scan(&sysroot);
    checks.push(checks::presence::gpus_present(&scan, config));
    let mut gpus: Vec<PciGpu> = scan.as_ref().map(|s| s.gpus.clone()).unwrap_or_default();

    if gpus.is_empty() {
        for id in [
            checks::NOUVEAU_ABSENT,
            checks::KERNEL_MODULES,
            checks::NVML,
            checks::DRIVER_LIBRARY_VERSION,
            checks::DRIVER_MINIMUM,
            checks::DEVICE_NODES,
            checks::XID_ERRORS,
        ] {
            checks.push(Check::skip(id, None, NO_GPU));
        }
        let nvml = NvmlState::NotConsulted {
            reason: NO_GPU.to_owned(),
        };
        progress("checking artefacts");
        checks.push(checks::artefacts::artefacts(&config.artefacts));
        smoke_checks(host, &[], &mut checks, progress);
        return Report::new(sysroot.root().to_owned(), started_at, gpus, nvml, checks);
    }

    progress("checking kernel modules");
    let modules = checks::driver::kernel_modules(&sysroot, host.repair.as_mut(), progress);
    checks.push(checks::presence::nouveau_absent(&modules.modules));
    checks.push(modules.check.clone());
    if modules.loaded_now
        && let Ok(rescan) = gpu::scan(&sysroot)
    {
        gpus = rescan.gpus;
    }
    let nvidia_loaded = modules
        .modules
        .as_ref()
        .is_ok_and(|m| m.iter().any(|m| m == "nvidia"));
    let references: Vec<GpuRef> = gpus
        .iter()
        .enumerate()
        .map(|(i, g)| g.reference(i))
        .collect();
    for (gpu, reference) in gpus.iter().zip(&references) {
        checks.push(checks::presence::gpu_driver_binding(
            gpu,
            reference,
            nvidia_loaded,
        ));
    }

    progress("checking the driver");
    let nvml = host.nvml.snapshot();
    checks.push(checks::driver::nvml(&nvml, &gpus));
    if nvidia_loaded {
        let module_version = kernel::module_version(&sysroot);
        let open_module = sysroot
            .read(kernel::PROC_DRIVER_VERSION)
            .ok()
            .map(|text| kernel::is_open_kernel_module(&text));
        let libraries = kernel::driver_libraries(&sysroot);
        checks.push(checks::driver::driver_library_version(
            &module_version,
            open_module,
            &libraries,
            &nvml,
        ));
        let version = module_version.as_ref().ok().map(|(v, _)| v.as_str());
        let snapshot = match &nvml {
            NvmlState::Loaded(snapshot) => Some(snapshot),
            _ => None,
        };
        checks.push(checks::driver::driver_minimum(
            version.or(snapshot.map(|s| s.driver_version.as_str())),
            &manifest::pinned(),
            snapshot.map(|s| &s.cuda_driver_version),
        ));
        progress("checking device nodes");
        checks.push(checks::device_nodes::device_nodes(
            &sysroot,
            host.repair.as_mut(),
            progress,
        ));
    } else {
        for id in [
            checks::DRIVER_LIBRARY_VERSION,
            checks::DRIVER_MINIMUM,
            checks::DEVICE_NODES,
        ] {
            checks.push(Check::skip(id, None, NVIDIA_NOT_LOADED));
        }
    }

    progress("checking GPU health");
    let nvml_gpus: Vec<Result<&NvmlGpu, String>> = gpus
        .iter()
        .map(|gpu| match &nvml {
            NvmlState::Loaded(snapshot) => snapshot
                .device(&gpu.address)
                .ok_or_else(|| "NVML does not see this GPU (see nvml)".to_owned()),
            NvmlState::NotConsulted { reason } => Err(reason.clone()),
            NvmlState::Unavailable { .. } => Err("NVML unavailable (see nvml)".to_owned()),
        })
        .collect();
    type HealthCheck<'a> = Box<dyn Fn(&NvmlGpu, &GpuRef) -> Check + 'a>;
    let health: [(&str, HealthCheck<'_>); 6] = [
        (
            checks::PERSISTENCE_MODE,
            Box::new(checks::health::persistence_mode),
        ),
        (checks::ECC, Box::new(checks::health::ecc)),
        (
            checks::ROW_REMAPPING,
            Box::new(checks::health::row_remapping),
        ),
        (
            checks::MIG_MODE,
            Box::new(|g, r| checks::health::mig_mode(g, r, config)),
        ),
        (
            checks::TEMPERATURE,
            Box::new(|g, r| checks::health::temperature(g, r, config)),
        ),
        (
            checks::POWER_LIMIT,
            Box::new(|g, r| checks::health::power_limit(g, r, config)),
        ),
    ];
    for (id, check) in &health {
        for (nvml_gpu, reference) in nvml_gpus.iter().zip(&references) {
            checks.push(match nvml_gpu {
                Ok(nvml_gpu) => check(nvml_gpu, reference),
                Err(reason) => Check::skip(id, Some(reference), reason.clone()),
            });
        }
    }
    for ((gpu, nvml_gpu), reference) in gpus.iter().zip(&nvml_gpus).zip(&references) {
        checks.push(checks::pcie_link::pcie_link(
            gpu,
            nvml_gpu.as_ref().ok().copied(),
            reference,
        ));
    }

    progress("reading the kernel log for Xid errors");
    let xids = xid::read_kernel_log(&sysroot)
        .map(|log| xid::parse_xids(&log))
        .map_err(|e| e.to_string());
    for (gpu, reference) in gpus.iter().zip(&references) {
        checks.push(checks::xid_errors::xid_errors(&xids, gpu, reference));
    }
    checks.extend(checks::xid_errors::unattributed_xid_errors(&xids, &gpus));

    progress("checking artefacts");
    checks.push(checks::artefacts::artefacts(&config.artefacts));

    smoke_checks(host, &references, &mut checks, progress);
    Report::new(sysroot.root().to_owned(), started_at, gpus, nvml, checks)
}

/// The CPU reference, then each GPU that nothing so far has failed.
fn smoke_checks(
    host: &mut Host,
    gpus: &[GpuRef],
    checks: &mut Vec<Check>,
    progress: &mut dyn FnMut(&str),
) {
    let Some(smoke) = host.smoke.as_mut() else {
        checks.push(Check::skip(checks::CPU_REFERENCE, None, CAPTURED_TREE));
        for gpu in gpus {
            checks.push(Check::skip(checks::CUDA_SMOKE, Some(gpu), CAPTURED_TREE));
        }
        return;
    };
    progress("smoke test on the CPU provider");
    let cpu = smoke.cpu_reference();
    checks.push(checks::smoke::cpu_reference(&cpu));
    let blocked_by: Vec<String> = checks
        .iter()
        .filter(|c| c.gpu.is_none() && c.verdict == Verdict::Fail)
        .filter(|c| CUDA_PREREQUISITES.contains(&c.id.as_str()))
        .map(|c| c.id.clone())
        .collect();
    for gpu in gpus {
        let failed_here: Vec<String> = checks
            .iter()
            .filter(|c| c.gpu.as_ref() == Some(gpu) && c.verdict == Verdict::Fail)
            .filter(|c| GPU_CUDA_PREREQUISITES.contains(&c.id.as_str()))
            .map(|c| c.id.clone())
            .collect();
        let check = if !blocked_by.is_empty() {
            Check::skip(
                checks::CUDA_SMOKE,
                Some(gpu),
                format!("not run: {} failed", blocked_by.join(", ")),
            )
        } else if !failed_here.is_empty() {
            Check::skip(
                checks::CUDA_SMOKE,
                Some(gpu),
                format!("not run: this GPU failed {}", failed_here.join(", ")),
            )
        } else {
            match &cpu {
                Err(_) => Check::skip(
                    checks::CUDA_SMOKE,
                    Some(gpu),
                    "not run: no CPU reference (see cpu_reference)",
                ),
                Ok(reference) => {
                    progress(&format!("smoke test on gpu{}", gpu.index));
                    checks::smoke::cuda_smoke(&smoke.cuda(gpu.index), reference, gpu)
                }
            }
        };
        checks.push(check);
    }
}

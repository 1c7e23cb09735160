//! The NVIDIA driver: kernel modules loaded, NVML answering, the kernel module and the
//! user-space libraries at the same version, and that version new enough for the CUDA runtime
//! the manifest pins.

use std::cmp::Ordering;

use super::{
    DRIVER_LIBRARY_VERSION, DRIVER_MINIMUM, Finding, KERNEL_LOG_HINT, KERNEL_MODULES, NVML,
    conclude, plural,
};
use crate::{
    gpu::PciGpu,
    kernel::{self, DriverLibrary, LIBRARY_DIRS, PROC_MODULES, REQUIRED_MODULES},
    manifest::{ManifestError, Triple},
    nvml::{NVML_LIBRARY, NvmlFailure, NvmlState, Reading},
    repair::Repair,
    report::Check,
    sysroot::{ReadError, Sysroot},
};

pub const MODULE_REMEDY: &str = "Load them with `modprobe nvidia nvidia_uvm`; if that fails, check that the NVIDIA 580 open kernel modules are installed for the running kernel (`modinfo nvidia`, `uname -r`), that Secure Boot accepts their signature (`mokutil --sb-state`), and the kernel log (`journalctl -k -b | grep -i nvrm`).";

pub const VERSION_MISMATCH_REMEDY: &str = "The kernel module and the user-space driver libraries must be one version: the driver was upgraded without a reboot, or its packages are out of step. Install the pinned 580 packages together (provisioning/manifest.toml) and reboot.";

pub const USER_SPACE_REMEDY: &str = "Install the driver's user-space libraries (libnvidia-ml1, libcuda1 from the pinned 580 packages in provisioning/manifest.toml) at the kernel module's exact version.";

/// The loaded modules after the check (and its repair), for the checks that follow.
#[derive(Debug)]
pub struct ModulesOutcome {
    pub check: Check,
    pub modules: Result<Vec<String>, ReadError>,
    /// Whether a module was loaded now (the PCI bindings changed).
    pub loaded_now: bool,
}

pub fn kernel_modules(
    sysroot: &Sysroot,
    repair: &mut dyn Repair,
    progress: &mut dyn FnMut(&str),
) -> ModulesOutcome {
    let read = || {
        sysroot
            .read(PROC_MODULES)
            .map(|text| kernel::loaded_modules(&text))
    };
    let missing = |modules: &[String]| -> Vec<&'static str> {
        REQUIRED_MODULES
            .into_iter()
            .filter(|required| !modules.iter().any(|m| m == required))
            .collect()
    };
    let mut modules = read();
    let mut evidence = Vec::new();
    let mut loaded_now = false;
    if let Ok(loaded) = &modules {
        let absent = missing(loaded);
        if !absent.is_empty() && repair.enabled() {
            for module in absent {
                progress(&format!("loading kernel module {module}"));
                match repair.load_module(module) {
                    Ok(()) => {
                        loaded_now = true;
                        evidence.push(format!("modprobe {module}: ok"));
                    }
                    Err(err) => evidence.push(err),
                }
            }
            modules = read();
        }
    }
    let check = match &modules {
        Err(err) => Check::fail(
            KERNEL_MODULES,
            None,
            format!("cannot read the loaded modules: {err}"),
            "Check that procfs is mounted at /proc.",
        ),
        Ok(loaded) => {
            let absent = missing(loaded);
            evidence.insert(
                0,
                format!(
                    "{PROC_MODULES}: {}",
                    REQUIRED_MODULES
                        .iter()
                        .map(|m| {
                            let state = if absent.contains(m) {
                                "absent"
                            } else {
                                "loaded"
                            };
                            format!("{m} {state}")
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            if absent.is_empty() {
                let summary = if loaded_now {
                    "nvidia and nvidia_uvm loaded (by this run)"
                } else {
                    "nvidia and nvidia_uvm loaded"
                };
                Check::pass(KERNEL_MODULES, None, summary).with_evidence(evidence)
            } else {
                Check::fail(
                    KERNEL_MODULES,
                    None,
                    format!("not loaded: {}", absent.join(", ")),
                    MODULE_REMEDY,
                )
                .with_evidence(evidence)
            }
        }
    };
    ModulesOutcome {
        check,
        modules,
        loaded_now,
    }
}

/// NVML loads, and sees every GPU the nvidia driver has bound.
pub fn nvml(state: &NvmlState, gpus: &[PciGpu]) -> Check {
    match state {
        NvmlState::NotConsulted { reason } => Check::skip(NVML, None, reason.clone()),
        NvmlState::Unavailable { failure, message } => {
            let (summary, remedy) = match failure {
                NvmlFailure::LibraryNotFound => (
                    format!("NVML ({NVML_LIBRARY}) is not installed"),
                    USER_SPACE_REMEDY.to_owned(),
                ),
                NvmlFailure::DriverNotLoaded => (
                    "NVML: the NVIDIA driver is not loaded".to_owned(),
                    "Load the nvidia module (see kernel_modules).".to_owned(),
                ),
                NvmlFailure::VersionMismatch => (
                    "NVML: driver/library version mismatch".to_owned(),
                    VERSION_MISMATCH_REMEDY.to_owned(),
                ),
                NvmlFailure::NoPermission => (
                    "NVML: permission denied".to_owned(),
                    "Run moebox provision as root (moebox-provision.service does).".to_owned(),
                ),
                NvmlFailure::Other => (
                    "NVML failed".to_owned(),
                    format!("See the evidence and {KERNEL_LOG_HINT}."),
                ),
            };
            Check::fail(NVML, None, summary, remedy).with_evidence([message.clone()])
        }
        NvmlState::Loaded(snapshot) => {
            let mut evidence = vec![format!(
                "driver {}, NVML {}, CUDA {}",
                snapshot.driver_version,
                snapshot
                    .nvml_version
                    .value()
                    .map_or("unknown", String::as_str),
                snapshot
                    .cuda_driver_version
                    .value()
                    .map_or_else(|| "unknown".to_owned(), |v| cuda_version(*v)),
            )];
            evidence.extend(snapshot.devices.iter().map(|d| {
                format!(
                    "NVML device {}: {} {}",
                    d.index,
                    d.pci_bus_id,
                    d.name.value().map_or("(name unknown)", String::as_str)
                )
            }));
            let unseen: Vec<&str> = gpus
                .iter()
                .filter(|g| g.driver.as_deref() == Some("nvidia"))
                .filter(|g| snapshot.device(&g.address).is_none())
                .map(|g| g.address.as_str())
                .collect();
            let findings = if unseen.is_empty() {
                Vec::new()
            } else {
                vec![Finding::fail(
                    format!("NVML does not see {}", unseen.join(", ")),
                    format!(
                        "The driver could not initialise the GPU: see {KERNEL_LOG_HINT} for NVRM errors and Xids, then reset it (`nvidia-smi -r`) or power-cycle the server."
                    ),
                )]
            };
            conclude(
                NVML,
                None,
                format!(
                    "NVML answers and sees {}",
                    plural(snapshot.devices.len(), "GPU", "GPUs")
                ),
                findings,
                evidence,
            )
        }
    }
}

/// NVML's CUDA version encoding: 13000 → `13.0`.
pub fn cuda_version(encoded: i32) -> String {
    format!("{}.{}", encoded / 1000, (encoded % 1000) / 10)
}

/// The kernel module's version, or why it is unknown.
pub type ModuleVersion = Result<(String, String), ReadError>;

pub fn driver_library_version(
    module: &ModuleVersion,
    open_module: Option<bool>,
    libraries: &[DriverLibrary],
    nvml: &NvmlState,
) -> Check {
    let (version, source) = match module {
        Ok(found) => found,
        Err(err) => {
            return Check::fail(
                DRIVER_LIBRARY_VERSION,
                None,
                format!("cannot read the nvidia module's version: {err}"),
                MODULE_REMEDY,
            );
        }
    };
    let flavour = match open_module {
        Some(true) => " (open kernel module)",
        Some(false) => " (proprietary kernel module)",
        None => "",
    };
    let mut evidence = vec![format!("{source}: {version}{flavour}")];
    evidence.extend(libraries.iter().map(DriverLibrary::describe));
    let mut findings = Vec::new();
    let mut user_space = Vec::new();
    for library in libraries {
        let Some(library_version) = &library.version else {
            continue;
        };
        user_space.push(library_version.as_str());
        if library_version != version {
            findings.push(Finding::fail(
                format!(
                    "kernel module {version}, user-space {library_version} ({})",
                    library.path
                ),
                VERSION_MISMATCH_REMEDY,
            ));
        }
    }
    match nvml {
        NvmlState::Loaded(snapshot) => {
            evidence.push(format!("NVML driver version: {}", snapshot.driver_version));
            user_space.push(&snapshot.driver_version);
            if snapshot.driver_version != *version {
                findings.push(Finding::fail(
                    format!(
                        "kernel module {version}, NVML reports {}",
                        snapshot.driver_version
                    ),
                    VERSION_MISMATCH_REMEDY,
                ));
            }
        }
        NvmlState::Unavailable {
            failure: NvmlFailure::VersionMismatch,
            message,
        } => {
            evidence.push(message.clone());
            findings.push(Finding::fail(
                format!("kernel module {version}, NVML reports a driver/library version mismatch"),
                VERSION_MISMATCH_REMEDY,
            ));
        }
        _ => {}
    }
    if user_space.is_empty() && findings.is_empty() {
        let unversioned: Vec<String> = libraries
            .iter()
            .map(|l| format!("{} ends at {}", l.path, l.target))
            .collect();
        let summary = if unversioned.is_empty() {
            format!(
                "no user-space driver library (libnvidia-ml.so.1, libcuda.so.1) in {}",
                LIBRARY_DIRS.join(", ")
            )
        } else {
            format!(
                "no user-space driver version: {}, which names no version",
                unversioned.join(", ")
            )
        };
        findings.push(Finding::fail(summary, USER_SPACE_REMEDY));
    }
    conclude(
        DRIVER_LIBRARY_VERSION,
        None,
        format!("kernel module and user-space driver are both {version}"),
        findings,
        evidence,
    )
}

pub fn driver_minimum(
    version: Option<&str>,
    triple: &Result<Triple, ManifestError>,
    cuda_driver_version: Option<&Reading<i32>>,
) -> Check {
    let triple = match triple {
        Ok(triple) => triple,
        Err(err) => {
            return Check::fail(
                DRIVER_MINIMUM,
                None,
                err.to_string(),
                "This binary was built from a broken manifest: rebuild it.",
            );
        }
    };
    let Some(version) = version else {
        return Check::skip(
            DRIVER_MINIMUM,
            None,
            "driver version unknown (see driver_library_version)",
        );
    };
    let minimum = &triple.nvidia_driver_min;
    let needs = format!(
        "CUDA {} for ONNX Runtime {}",
        triple.cuda_major, triple.onnxruntime
    );
    let mut evidence = vec![format!(
        "provisioning/manifest.toml: nvidia_driver_min {minimum}, cuda_major {}",
        triple.cuda_major
    )];
    let remedy = format!(
        "Install the pinned 580 driver packages from NVIDIA's repository (provisioning/manifest.toml) and reboot; Debian's own 550 branch supports CUDA up to 12.4 only, and {needs} needs driver {minimum} or later."
    );
    let mut findings = Vec::new();
    if kernel::compare_versions(version, minimum) == Ordering::Less {
        findings.push(Finding::fail(
            format!("driver {version} is older than {minimum}, the minimum for {needs}"),
            remedy.clone(),
        ));
    }
    if let Some(Reading::Value(encoded)) = cuda_driver_version {
        evidence.push(format!(
            "NVML: the driver supports CUDA {}",
            cuda_version(*encoded)
        ));
        let major = u32::try_from(encoded / 1000).unwrap_or(0);
        if major < triple.cuda_major && findings.is_empty() {
            findings.push(Finding::fail(
                format!(
                    "the driver supports CUDA {}, ONNX Runtime needs CUDA {}",
                    cuda_version(*encoded),
                    triple.cuda_major
                ),
                remedy,
            ));
        }
    }
    conclude(
        DRIVER_MINIMUM,
        None,
        format!("driver {version} ≥ {minimum} ({needs})"),
        findings,
        evidence,
    )
}

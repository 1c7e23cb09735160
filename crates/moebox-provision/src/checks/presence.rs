//! Are the GPUs there, are they A100s, and is each one driven by `nvidia` (not `nouveau`)?

use moebox_config::ProvisionConfig;

use super::{
    Finding, GPU_DRIVER_BINDING, GPUS_PRESENT, KERNEL_LOG_HINT, NOUVEAU_ABSENT, conclude, plural,
};
use crate::{
    gpu::{A100_DEVICE_IDS, PCI_DEVICES, PciGpu, PciScan},
    kernel::PROC_MODULES,
    report::{Check, GpuRef},
    sysroot::ReadError,
};

pub const NO_GPU_REMEDY: &str = "Check that the GPUs are seated and their power cables connected, that the BIOS/UEFI enables their PCIe slots (and \"Above 4G decoding\"), and that `lspci -d 10de:` lists them; a CPU-only appliance sets provision.allow_cpu_only = true.";

pub const NOUVEAU_REMEDY: &str = "Blacklist nouveau (provisioning/modprobe.d/moebox-nvidia.conf in /etc/modprobe.d/), rebuild the initramfs (`update-initramfs -u`) and reboot: nouveau cannot be unloaded while it drives a GPU, and the nvidia driver cannot take a GPU nouveau holds.";

pub fn gpus_present(scan: &Result<PciScan, ReadError>, config: &ProvisionConfig) -> Check {
    let scan = match scan {
        Ok(scan) => scan,
        Err(err) => {
            return Check::fail(
                GPUS_PRESENT,
                None,
                format!("cannot list PCI devices: {err}"),
                "Check that sysfs is mounted at /sys (with --sysroot: that DIR is a captured tree).",
            );
        }
    };
    let found = scan.gpus.len();
    let expected = usize::try_from(config.expected_gpus).unwrap_or(usize::MAX);
    let mut evidence = vec![format!(
        "{PCI_DEVICES}: {}, {}",
        plural(scan.functions, "PCI function", "PCI functions"),
        plural(found, "NVIDIA GPU", "NVIDIA GPUs")
    )];
    evidence.extend(scan.gpus.iter().map(PciGpu::describe));
    evidence.extend(
        scan.other_nvidia
            .iter()
            .map(|f| format!("NVIDIA function that is not a GPU: {f}")),
    );
    if found == 0 {
        return if config.allow_cpu_only {
            Check::warn(
                GPUS_PRESENT,
                None,
                "no NVIDIA GPU found; serving on the CPU as provision.allow_cpu_only allows",
                "Nothing to do for a CPU-only appliance; a GPU appliance seats its GPUs and sets provision.allow_cpu_only = false.",
            )
            .with_evidence(evidence)
        } else {
            Check::fail(
                GPUS_PRESENT,
                None,
                format!("no NVIDIA GPU found (expected {expected})"),
                NO_GPU_REMEDY,
            )
            .with_evidence(evidence)
        };
    }
    let mut findings = Vec::new();
    if found < expected {
        findings.push(Finding::fail(
            format!("found {}, expected {expected}", plural(found, "NVIDIA GPU", "NVIDIA GPUs")),
            "A GPU is missing from the PCI bus: check its seating and power cables, look for Xid 79 (fallen off the bus) in the kernel log, and power-cycle the server (a warm reboot does not always bring a GPU back); an appliance built with fewer GPUs sets provision.expected_gpus.",
        ));
    } else if found > expected {
        findings.push(Finding::warn(
            format!("found {found} NVIDIA GPUs, expected {expected}"),
            "Set provision.expected_gpus to the number of GPUs the appliance is built with.",
        ));
    }
    let others: Vec<&PciGpu> = scan.gpus.iter().filter(|g| g.a100.is_none()).collect();
    if !others.is_empty() {
        let named = others
            .iter()
            .map(|g| format!("{} is 10de:{}", g.address, g.device_id))
            .collect::<Vec<_>>()
            .join(", ");
        let ids = A100_DEVICE_IDS
            .iter()
            .map(|(id, _)| format!("{id:04x}"))
            .collect::<Vec<_>>()
            .join(", ");
        findings.push(Finding::warn(
            format!("other NVIDIA GPU, not an A100: {named}"),
            format!("moebox is qualified on the A100 (device ids {ids}); other NVIDIA GPUs run the same code, but their memory and speed are not validated."),
        ));
    }
    conclude(
        GPUS_PRESENT,
        None,
        format!("found {}", models(&scan.gpus)),
        findings,
        evidence,
    )
}

/// `2 NVIDIA GPUs (2 × A100 SXM4 80GB)`.
fn models(gpus: &[PciGpu]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for gpu in gpus {
        let name = gpu
            .a100
            .clone()
            .unwrap_or_else(|| format!("10de:{}", gpu.device_id));
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, count)) => *count += 1,
            None => counts.push((name, 1)),
        }
    }
    let list = counts
        .iter()
        .map(|(name, count)| format!("{count} × {name}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{} ({list})",
        plural(gpus.len(), "NVIDIA GPU", "NVIDIA GPUs")
    )
}

pub fn nouveau_absent(modules: &Result<Vec<String>, ReadError>) -> Check {
    match modules {
        Err(err) => Check::fail(
            NOUVEAU_ABSENT,
            None,
            format!("cannot read the loaded modules: {err}"),
            "Check that procfs is mounted at /proc.",
        ),
        Ok(modules) if modules.iter().any(|m| m == "nouveau") => {
            Check::fail(NOUVEAU_ABSENT, None, "nouveau is loaded", NOUVEAU_REMEDY)
                .with_evidence([format!("{PROC_MODULES}: nouveau")])
        }
        Ok(_) => Check::pass(NOUVEAU_ABSENT, None, "nouveau is not loaded")
            .with_evidence([format!("{PROC_MODULES}: no nouveau")]),
    }
}

pub fn gpu_driver_binding(gpu: &PciGpu, reference: &GpuRef, nvidia_loaded: bool) -> Check {
    let evidence = vec![format!(
        "{PCI_DEVICES}/{}/driver: {}",
        gpu.address,
        gpu.driver.as_deref().unwrap_or("none")
    )];
    let check = match gpu.driver.as_deref() {
        Some("nvidia") => Check::pass(GPU_DRIVER_BINDING, Some(reference), "bound to nvidia"),
        Some("nouveau") => Check::fail(
            GPU_DRIVER_BINDING,
            Some(reference),
            "bound to nouveau, not nvidia",
            NOUVEAU_REMEDY,
        ),
        Some(other) => Check::fail(
            GPU_DRIVER_BINDING,
            Some(reference),
            format!("bound to {other}, not nvidia"),
            format!(
                "Release it from {other} (a vfio-pci passthrough or driver_override setting claims it), then reboot."
            ),
        ),
        None if nvidia_loaded => Check::fail(
            GPU_DRIVER_BINDING,
            Some(reference),
            "not bound to any driver although nvidia is loaded",
            format!(
                "The nvidia driver did not take this GPU (an unsupported GPU, or its GSP firmware failed to load): see {KERNEL_LOG_HINT}."
            ),
        ),
        None => Check::fail(
            GPU_DRIVER_BINDING,
            Some(reference),
            "not bound to any driver (nvidia is not loaded)",
            "Load the nvidia module (see kernel_modules).",
        ),
    };
    check.with_evidence(evidence)
}

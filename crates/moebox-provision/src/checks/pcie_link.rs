//! The PCIe link each GPU trained at. Width is what the slot and riser give (a GPU in an x16
//! slot that trained at x8 has half the bandwidth for good); speed drops when the GPU idles, so
//! only a slot that cannot reach the GPU's generation is reported (through NVML's
//! "device and system" maximum).

use super::{Finding, PCIE_LINK, conclude};
use crate::{
    gpu::{PCI_DEVICES, PciGpu, pcie_generation},
    nvml::NvmlGpu,
    report::{Check, GpuRef},
};

pub fn pcie_link(gpu: &PciGpu, nvml: Option<&NvmlGpu>, reference: &GpuRef) -> Check {
    let link = &gpu.link;
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "unreadable".to_owned());
    let show_width =
        |v: Option<u32>| v.map_or_else(|| "unreadable".to_owned(), |w| format!("x{w}"));
    let mut evidence = vec![format!(
        "{PCI_DEVICES}/{}: current {} {}, max {} {}",
        gpu.address,
        show(&link.current_speed),
        show_width(link.current_width),
        show(&link.max_speed),
        show_width(link.max_width),
    )];
    let mut findings = Vec::new();
    match (link.current_width, link.max_width) {
        (Some(current), Some(max)) if current < max => findings.push(Finding::fail(
            format!("link trained at x{current}, the GPU is x{max}"),
            "Reseat the GPU in an x16 slot, and check the slot's lane settings (bifurcation) in the BIOS/UEFI and the riser: a narrower link carries a fraction of the bandwidth.",
        )),
        (Some(_), Some(_)) => {}
        _ => findings.push(Finding::warn(
            "link width not reported by sysfs",
            format!("Check the link by hand (`lspci -vv -s {}`, LnkSta against LnkCap); a virtual machine may not expose it.", gpu.address),
        )),
    }
    let current_gen = link.current_speed.as_deref().and_then(pcie_generation);
    let max_gen = link.max_speed.as_deref().and_then(pcie_generation);
    if let (Some(current), Some(max)) = (current_gen, max_gen)
        && current < max
    {
        evidence.push(format!(
            "Gen{current} now, Gen{max} capable: the GPU lowers its link speed while idle"
        ));
    }
    if let Some(nvml) = nvml
        && let (Some(&system_max), Some(gpu_max)) = (nvml.pcie_max_generation.value(), max_gen)
    {
        evidence.push(format!(
            "NVML: max generation with this slot Gen{system_max}"
        ));
        if system_max < gpu_max {
            findings.push(Finding::warn(
                format!("the slot limits the link to Gen{system_max}, the GPU is Gen{gpu_max}"),
                format!("Move the GPU to a Gen{gpu_max} slot, or set the slot's PCIe speed to Auto/Gen{gpu_max} in the BIOS/UEFI."),
            ));
        }
    }
    let summary = match (link.max_width, max_gen) {
        (Some(width), Some(generation)) => format!("x{width}, Gen{generation} capable"),
        (Some(width), None) => format!("x{width}"),
        _ => "link as capable".to_owned(),
    };
    conclude(PCIE_LINK, Some(reference), summary, findings, evidence)
}

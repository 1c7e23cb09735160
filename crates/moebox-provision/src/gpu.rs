//! The NVIDIA GPUs on the PCI bus, read from `/sys/bus/pci/devices/*`.

use serde::{Deserialize, Serialize};

use crate::{
    report::GpuRef,
    sysroot::{ReadError, Sysroot},
};

pub const PCI_DEVICES: &str = "/sys/bus/pci/devices";
/// NVIDIA's PCI vendor id.
pub const NVIDIA_VENDOR: u16 = 0x10de;
/// PCI classes of a GPU: 3D controller (datacenter parts) and VGA controller.
pub const GPU_CLASSES: [u32; 2] = [0x0302, 0x0300];

/// The A100 device ids moebox is qualified on, with their names from the PCI id database.
pub const A100_DEVICE_IDS: [(u16, &str); 6] = [
    (0x20b0, "A100 SXM4 40GB"),
    (0x20b1, "A100 PCIe 40GB"),
    (0x20b2, "A100 SXM4 80GB"),
    (0x20b3, "A100 SXM 64GB"),
    (0x20b5, "A100 PCIe 80GB"),
    (0x20f1, "A100 PCIe 40GB"),
];

pub fn a100_name(device_id: u16) -> Option<&'static str> {
    A100_DEVICE_IDS
        .iter()
        .find(|(id, _)| *id == device_id)
        .map(|(_, name)| *name)
}

/// One NVIDIA GPU function on the PCI bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciGpu {
    /// `0000:07:00.0`.
    pub address: String,
    /// Device id, four lowercase hex digits (`20b2`).
    pub device_id: String,
    /// `0x030200`.
    pub class: String,
    /// The A100 variant, or `None` for another NVIDIA GPU.
    pub a100: Option<String>,
    /// The kernel driver bound to it (`nvidia`, `nouveau`, `vfio-pci`), if any.
    pub driver: Option<String>,
    pub numa_node: Option<i32>,
    pub link: PcieLink,
}

/// The PCIe link as sysfs reports it: speeds as written there (`16.0 GT/s PCIe`), widths in
/// lanes. `None`: the attribute is absent or unreadable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcieLink {
    pub current_speed: Option<String>,
    pub current_width: Option<u32>,
    pub max_speed: Option<String>,
    pub max_width: Option<u32>,
}

impl PciGpu {
    pub fn reference(&self, index: usize) -> GpuRef {
        GpuRef {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            pci: self.address.clone(),
        }
    }

    /// `0000:07:00.0 10de:20b2 A100 SXM4 80GB, driver nvidia, NUMA node 0`.
    pub fn describe(&self) -> String {
        let model = self.a100.as_deref().unwrap_or("other NVIDIA GPU");
        let driver = self.driver.as_deref().unwrap_or("none");
        let numa = self
            .numa_node
            .map_or_else(|| "unknown".to_owned(), |n| n.to_string());
        format!(
            "{} 10de:{} class {} {model}, driver {driver}, NUMA node {numa}",
            self.address, self.device_id, self.class
        )
    }

    /// The `NVRM: Xid (PCI:0000:07:00)` prefix: domain, bus and device, without the function.
    pub fn xid_address(&self) -> &str {
        self.address
            .rsplit_once('.')
            .map_or(self.address.as_str(), |(head, _)| head)
    }
}

/// What the PCI scan saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PciScan {
    /// NVIDIA GPUs in PCI address order.
    pub gpus: Vec<PciGpu>,
    /// PCI functions read in all.
    pub functions: usize,
    /// Other NVIDIA functions (audio, USB, NVSwitch bridges): `address class`.
    pub other_nvidia: Vec<String>,
}

/// Reads every PCI function and keeps NVIDIA GPUs. A function whose `vendor` or `class` cannot
/// be read is not a GPU we can use; it is skipped, not fatal.
pub fn scan(sysroot: &Sysroot) -> Result<PciScan, ReadError> {
    let mut result = PciScan::default();
    for address in sysroot.list(PCI_DEVICES)? {
        result.functions += 1;
        let dir = format!("{PCI_DEVICES}/{address}");
        let attribute = |name: &str| {
            sysroot
                .read(&format!("{dir}/{name}"))
                .ok()
                .map(|s| s.trim().to_owned())
        };
        let Some(vendor) = attribute("vendor").and_then(|v| parse_hex(&v)) else {
            continue;
        };
        if vendor != u32::from(NVIDIA_VENDOR) {
            continue;
        }
        let Some(class) = attribute("class").and_then(|v| parse_hex(&v)) else {
            result
                .other_nvidia
                .push(format!("{address} class unreadable"));
            continue;
        };
        if !GPU_CLASSES.contains(&(class >> 8)) {
            result
                .other_nvidia
                .push(format!("{address} class {class:#08x}"));
            continue;
        }
        let device = attribute("device")
            .and_then(|v| parse_hex(&v))
            .and_then(|d| u16::try_from(d).ok())
            .unwrap_or(0);
        let driver = std::fs::read_link(sysroot.path(&format!("{dir}/driver")))
            .ok()
            .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned()));
        result.gpus.push(PciGpu {
            address: address.clone(),
            device_id: format!("{device:04x}"),
            class: format!("{class:#08x}"),
            a100: a100_name(device).map(str::to_owned),
            driver,
            numa_node: attribute("numa_node").and_then(|v| v.parse().ok()),
            link: PcieLink {
                current_speed: attribute("current_link_speed"),
                current_width: attribute("current_link_width").and_then(|v| v.parse().ok()),
                max_speed: attribute("max_link_speed"),
                max_width: attribute("max_link_width").and_then(|v| v.parse().ok()),
            },
        });
    }
    Ok(result)
}

fn parse_hex(text: &str) -> Option<u32> {
    u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
}

/// The PCIe generation of a sysfs link speed (`16.0 GT/s PCIe` → 4).
pub fn pcie_generation(speed: &str) -> Option<u32> {
    let rate: f64 = speed.split_whitespace().next()?.parse().ok()?;
    const RATES: [(f64, u32); 6] = [
        (2.5, 1),
        (5.0, 2),
        (8.0, 3),
        (16.0, 4),
        (32.0, 5),
        (64.0, 6),
    ];
    RATES
        .iter()
        .find(|(gts, _)| (rate - gts).abs() < 0.1)
        .map(|(_, generation)| *generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_speeds_map_to_generations() {
        assert_eq!(pcie_generation("16.0 GT/s PCIe"), Some(4));
        assert_eq!(pcie_generation("2.5 GT/s PCIe"), Some(1));
        assert_eq!(pcie_generation("32.0 GT/s PCIe"), Some(5));
        assert_eq!(pcie_generation("Unknown"), None);
    }

    #[test]
    fn xid_address_drops_the_function() {
        let gpu = PciGpu {
            address: "0000:07:00.0".into(),
            device_id: "20b2".into(),
            class: "0x030200".into(),
            a100: Some("A100 SXM4 80GB".into()),
            driver: None,
            numa_node: None,
            link: PcieLink::default(),
        };
        assert_eq!(gpu.xid_address(), "0000:07:00");
    }
}

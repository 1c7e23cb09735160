//! The device nodes CUDA opens: `/dev/nvidiactl`, `/dev/nvidiaN` for every GPU the driver has,
//! `/dev/nvidia-uvm` and `/dev/nvidia-uvm-tools`, with the majors in `/proc/devices` and the
//! minors in `/proc/driver/nvidia/gpus/*/information`. Missing ones are created.

use super::{DEVICE_NODES, Finding, conclude};
use crate::{
    kernel::{self, PROC_DEVICES, PROC_DRIVER_GPUS},
    repair::{DeviceNode, NodeKind, Repair},
    report::Check,
    sysroot::{NodeState, Sysroot},
};

/// `nvidiactl`'s minor on the driver's major.
pub const CONTROL_MINOR: u32 = 255;
/// The driver registers its major as `nvidia-frontend` (or `nvidia` in some builds).
pub const DRIVER_MAJOR_NAMES: [&str; 2] = ["nvidia-frontend", "nvidia"];
pub const UVM_MAJOR_NAME: &str = "nvidia-uvm";

pub const NODES_REMEDY: &str = "moebox provision creates missing nodes when it runs as root (through `nvidia-modprobe -c N -u`, else `mknod`); by hand: `nvidia-modprobe -c N -u`. Check that provisioning/udev/70-moebox-nvidia.rules is installed.";

/// The nodes the driver's state asks for, or why they cannot be worked out.
pub fn expected_nodes(sysroot: &Sysroot) -> Result<(Vec<DeviceNode>, Vec<String>), Finding> {
    let devices = sysroot
        .read(PROC_DEVICES)
        .map_err(|e| Finding::fail(format!("{e}"), "Check that procfs is mounted at /proc."))?;
    let majors = kernel::char_majors(&devices);
    let driver_major = DRIVER_MAJOR_NAMES
        .iter()
        .find_map(|name| majors.get(*name).copied())
        .ok_or_else(|| {
            Finding::fail(
                format!("{PROC_DEVICES} has no nvidia character device"),
                "Load the nvidia module (see kernel_modules).",
            )
        })?;
    let uvm_major = majors.get(UVM_MAJOR_NAME).copied().ok_or_else(|| {
        Finding::fail(
            format!("{PROC_DEVICES} has no {UVM_MAJOR_NAME} character device"),
            "Load the nvidia_uvm module (see kernel_modules).",
        )
    })?;
    let gpus = kernel::driver_gpus(sysroot).map_err(|e| {
        Finding::fail(
            format!("{e}"),
            "Load the nvidia module (see kernel_modules).",
        )
    })?;
    let mut evidence = vec![format!(
        "{PROC_DEVICES}: nvidia major {driver_major}, {UVM_MAJOR_NAME} major {uvm_major}"
    )];
    let mut nodes = vec![DeviceNode {
        path: "/dev/nvidiactl".to_owned(),
        major: driver_major,
        minor: CONTROL_MINOR,
        kind: NodeKind::Control,
    }];
    for gpu in &gpus {
        let minor = gpu.device_minor.ok_or_else(|| {
            Finding::fail(
                format!("{PROC_DRIVER_GPUS}/{}/information has no Device Minor", gpu.address),
                "The driver's state is incomplete: see the kernel log, and reload the driver or reboot.",
            )
        })?;
        evidence.push(format!(
            "{PROC_DRIVER_GPUS}/{}: device minor {minor}",
            gpu.address
        ));
        nodes.push(DeviceNode {
            path: format!("/dev/nvidia{minor}"),
            major: driver_major,
            minor,
            kind: NodeKind::Gpu,
        });
    }
    nodes.push(DeviceNode {
        path: "/dev/nvidia-uvm".to_owned(),
        major: uvm_major,
        minor: 0,
        kind: NodeKind::Uvm,
    });
    nodes.push(DeviceNode {
        path: "/dev/nvidia-uvm-tools".to_owned(),
        major: uvm_major,
        minor: 1,
        kind: NodeKind::UvmTools,
    });
    Ok((nodes, evidence))
}

pub fn device_nodes(
    sysroot: &Sysroot,
    repair: &mut dyn Repair,
    progress: &mut dyn FnMut(&str),
) -> Check {
    let (nodes, mut evidence) = match expected_nodes(sysroot) {
        Ok(found) => found,
        Err(finding) => return conclude(DEVICE_NODES, None, "", vec![finding], Vec::new()),
    };
    let mut findings = Vec::new();
    let mut created = Vec::new();
    for node in &nodes {
        let mut state = sysroot.device_node(&node.path);
        if matches!(state, Ok(NodeState::Missing)) && repair.enabled() {
            progress(&format!("creating {}", node.path));
            match repair.create_device_node(node) {
                Ok(()) => {
                    created.push(node.path.clone());
                    state = sysroot.device_node(&node.path);
                }
                Err(err) => evidence.push(err),
            }
        }
        let wanted = format!("c {}:{}", node.major, node.minor);
        match state {
            Ok(NodeState::CharDevice { major, minor, mode })
                if (major, minor) == (node.major, node.minor) =>
            {
                evidence.push(format!("{}: {wanted} mode {mode:04o}", node.path));
            }
            Ok(NodeState::CharDevice { major, minor, .. }) => findings.push(Finding::fail(
                format!("{} is c {major}:{minor}, expected {wanted}", node.path),
                format!(
                    "Remove it (`rm {}`) and run moebox provision again.",
                    node.path
                ),
            )),
            Ok(NodeState::NotCharDevice) => findings.push(Finding::fail(
                format!("{} is not a character device", node.path),
                format!(
                    "Remove it (`rm -r {}`) and run moebox provision again.",
                    node.path
                ),
            )),
            Ok(NodeState::Missing) => findings.push(Finding::fail(
                format!("{} is missing", node.path),
                NODES_REMEDY,
            )),
            Err(err) => findings.push(Finding::fail(err.to_string(), NODES_REMEDY)),
        }
    }
    let names = nodes
        .iter()
        .map(|n| n.path.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let summary = if created.is_empty() {
        format!("{names} present")
    } else {
        format!("{names} present (created {})", created.join(", "))
    };
    conclude(DEVICE_NODES, None, summary, findings, evidence)
}

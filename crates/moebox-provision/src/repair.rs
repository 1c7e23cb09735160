//! The two things provisioning changes on the machine: loading the NVIDIA kernel modules and
//! creating their device nodes. Both are idempotent (done only when the check finds them
//! missing) and both go through this trait, so tests record them instead of running them.

use std::process::Command;

/// A device node the engines need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// `/dev/nvidia0`.
    pub path: String,
    pub major: u32,
    pub minor: u32,
    pub kind: NodeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Control,
    Gpu,
    Uvm,
    UvmTools,
}

/// NVIDIA's default node mode. Per-GPU access is enforced by each unit's device policy
/// (`DevicePolicy=closed`, `DeviceAllow=/dev/nvidiaN`), which a file mode cannot express.
pub const DEVICE_NODE_MODE: &str = "0666";

pub trait Repair {
    /// Whether repairs are made at all (not with `--check-only` or on a captured tree).
    fn enabled(&self) -> bool;
    fn load_module(&mut self, module: &str) -> Result<(), String>;
    fn create_device_node(&mut self, node: &DeviceNode) -> Result<(), String>;
}

/// Checks only.
#[derive(Debug, Default)]
pub struct NoRepair;

impl Repair for NoRepair {
    fn enabled(&self) -> bool {
        false
    }

    fn load_module(&mut self, module: &str) -> Result<(), String> {
        Err(format!("not loading {module}: repairs are off"))
    }

    fn create_device_node(&mut self, node: &DeviceNode) -> Result<(), String> {
        Err(format!("not creating {}: repairs are off", node.path))
    }
}

/// The machine's `modprobe`, `nvidia-modprobe` and `mknod`.
#[derive(Debug, Default)]
pub struct SystemRepair;

impl Repair for SystemRepair {
    fn enabled(&self) -> bool {
        true
    }

    fn load_module(&mut self, module: &str) -> Result<(), String> {
        run(Command::new("modprobe").arg(module))
    }

    /// `nvidia-modprobe` first (it applies the driver's own node ownership and mode), then
    /// `mknod` for a node it did not make.
    fn create_device_node(&mut self, node: &DeviceNode) -> Result<(), String> {
        let mut nvidia_modprobe = Command::new("nvidia-modprobe");
        match node.kind {
            NodeKind::Control | NodeKind::Gpu => {
                nvidia_modprobe.arg("-c").arg(node.minor.to_string())
            }
            NodeKind::Uvm | NodeKind::UvmTools => nvidia_modprobe.args(["-u", "-c", "0"]),
        };
        let first = run(&mut nvidia_modprobe);
        if std::path::Path::new(&node.path).exists() {
            return Ok(());
        }
        run(Command::new("mknod").args([
            "-m",
            DEVICE_NODE_MODE,
            &node.path,
            "c",
            &node.major.to_string(),
            &node.minor.to_string(),
        ]))
        .map_err(|mknod| match first {
            Err(first) => format!("{first}; {mknod}"),
            Ok(()) => mknod,
        })
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}").replace('"', "");
    match command.output() {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(format!(
            "`{shown}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(err) => Err(format!("cannot run `{shown}`: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_repair_refuses_and_says_why() {
        let mut repair = NoRepair;
        assert!(!repair.enabled());
        let err = repair.load_module("nvidia").expect_err("refuses");
        assert!(err.contains("nvidia") && err.contains("off"), "{err}");
    }

    #[test]
    fn a_missing_program_is_an_error_naming_it() {
        let err = run(&mut Command::new("/nonexistent/modprobe")).expect_err("no such program");
        assert!(err.contains("/nonexistent/modprobe"), "{err}");
    }
}

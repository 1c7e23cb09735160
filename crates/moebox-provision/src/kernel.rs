//! What the kernel says about the NVIDIA driver: loaded modules, their versions, character
//! device majors, each GPU's device minor, and the user-space driver libraries beside them.

use std::{cmp::Ordering, collections::BTreeMap};

use crate::sysroot::{ReadError, Sysroot};

pub const PROC_MODULES: &str = "/proc/modules";
pub const PROC_DEVICES: &str = "/proc/devices";
pub const PROC_DRIVER_VERSION: &str = "/proc/driver/nvidia/version";
pub const PROC_DRIVER_GPUS: &str = "/proc/driver/nvidia/gpus";
pub const SYS_MODULE_NVIDIA_VERSION: &str = "/sys/module/nvidia/version";

/// Modules CUDA needs: the driver and unified memory.
pub const REQUIRED_MODULES: [&str; 2] = ["nvidia", "nvidia_uvm"];

/// Folders the driver's user-space libraries are installed in (Debian multiarch, NVIDIA's
/// Debian packages, other distributions, the `.run` installer).
pub const LIBRARY_DIRS: [&str; 5] = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu/nvidia/current",
    "/usr/lib64",
    "/usr/lib",
    "/lib/x86_64-linux-gnu",
];
/// The user-space driver libraries' sonames: NVML and the CUDA driver. Each is a symlink to the
/// file that carries the driver version (`libcuda.so.1 -> libcuda.so.580.95.05`).
pub const DRIVER_LIBRARY_LINKS: [&str; 2] = ["libnvidia-ml.so.1", "libcuda.so.1"];

/// Module names in `/proc/modules`.
pub fn loaded_modules(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Character device majors by name from `/proc/devices` (the block section is ignored).
pub fn char_majors(text: &str) -> BTreeMap<String, u32> {
    let mut majors = BTreeMap::new();
    let mut in_char = false;
    for line in text.lines() {
        let line = line.trim();
        if line.ends_with(':') {
            in_char = line.starts_with("Character");
            continue;
        }
        if !in_char {
            continue;
        }
        let mut fields = line.split_whitespace();
        if let (Some(major), Some(name)) = (fields.next(), fields.next())
            && let Ok(major) = major.parse()
        {
            majors.insert(name.to_owned(), major);
        }
    }
    majors
}

/// The version in `/proc/driver/nvidia/version`'s first line (`NVRM version: NVIDIA UNIX Open
/// Kernel Module for x86_64  580.95.05  Release Build ...`).
pub fn proc_driver_version(text: &str) -> Option<String> {
    text.lines()
        .next()?
        .split_whitespace()
        .find(|token| looks_like_version(token))
        .map(str::to_owned)
}

/// Whether the module is NVIDIA's open kernel module (the flavour the manifest pins).
pub fn is_open_kernel_module(proc_version: &str) -> bool {
    proc_version
        .lines()
        .next()
        .is_some_and(|line| line.contains("Open Kernel Module"))
}

fn looks_like_version(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() >= 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

/// Compares dotted numeric versions (`580.95.05` > `580.65.06`); missing parts count as 0.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let parse = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    let (a, b) = (parse(a), parse(b));
    for i in 0..a.len().max(b.len()) {
        let ordering = a
            .get(i)
            .copied()
            .unwrap_or(0)
            .cmp(&b.get(i).copied().unwrap_or(0));
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    Ordering::Equal
}

/// The loaded `nvidia` module's version and where it was read: `/sys/module/nvidia/version`,
/// else `/proc/driver/nvidia/version`.
pub fn module_version(sysroot: &Sysroot) -> Result<(String, String), ReadError> {
    match sysroot.read(SYS_MODULE_NVIDIA_VERSION) {
        Ok(text) if !text.trim().is_empty() => {
            Ok((text.trim().to_owned(), SYS_MODULE_NVIDIA_VERSION.to_owned()))
        }
        first => {
            let text = sysroot.read(PROC_DRIVER_VERSION).map_err(|e| match first {
                Err(first) => first,
                Ok(_) => e,
            })?;
            proc_driver_version(&text)
                .map(|v| (v, PROC_DRIVER_VERSION.to_owned()))
                .ok_or_else(|| ReadError {
                    path: sysroot.path(PROC_DRIVER_VERSION),
                    cause: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "no version in its first line",
                    ),
                })
        }
    }
}

/// A GPU as the driver sees it (`/proc/driver/nvidia/gpus/<bus>/information`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverGpu {
    /// The folder name, the PCI address (`0000:07:00.0`).
    pub address: String,
    pub model: Option<String>,
    pub device_minor: Option<u32>,
}

pub fn driver_gpus(sysroot: &Sysroot) -> Result<Vec<DriverGpu>, ReadError> {
    let mut gpus = Vec::new();
    for address in sysroot.list(PROC_DRIVER_GPUS)? {
        let text = sysroot.read(&format!("{PROC_DRIVER_GPUS}/{address}/information"))?;
        let fields = information_fields(&text);
        gpus.push(DriverGpu {
            address: address.to_ascii_lowercase(),
            model: fields.get("Model").cloned(),
            device_minor: fields.get("Device Minor").and_then(|v| v.parse().ok()),
        });
    }
    Ok(gpus)
}

/// `Key:   value` lines.
pub fn information_fields(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

/// A user-space driver library found on disk, with the version its soname points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverLibrary {
    /// The soname's path as on the machine (`/usr/lib/x86_64-linux-gnu/libcuda.so.1`).
    pub path: String,
    pub version: String,
}

/// Where `libnvidia-ml.so.1` and `libcuda.so.1` point, in the usual folders. The soname, not
/// every versioned file, because an upgrade can leave the old version's files behind; the
/// soname is what the loader uses. Unreadable folders are skipped: not every distribution has
/// every one. The same soname and version seen twice (merged `/usr`) is listed once.
pub fn driver_libraries(sysroot: &Sysroot) -> Vec<DriverLibrary> {
    let mut found: Vec<DriverLibrary> = Vec::new();
    for dir in LIBRARY_DIRS {
        for soname in DRIVER_LIBRARY_LINKS {
            let path = format!("{dir}/{soname}");
            let Ok(target) = std::fs::read_link(sysroot.path(&path)) else {
                continue;
            };
            let Some(name) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            let prefix = soname.trim_end_matches('1');
            let Some(version) = name.strip_prefix(prefix).filter(|v| looks_like_version(v)) else {
                continue;
            };
            let duplicate = found
                .iter()
                .any(|l| l.path.ends_with(soname) && l.version == version);
            if !duplicate {
                found.push(DriverLibrary {
                    path,
                    version: version.to_owned(),
                });
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_are_the_first_field() {
        let text = "nvidia_uvm 1974272 0 - Live 0x0000000000000000 (PO)\nnvidia 104169472 2 nvidia_uvm, Live 0x0 (PO)\n";
        assert_eq!(loaded_modules(text), vec!["nvidia_uvm", "nvidia"]);
    }

    #[test]
    fn only_character_majors_are_read() {
        let text = "Character devices:\n  1 mem\n195 nvidia-frontend\n508 nvidia-uvm\n\nBlock devices:\n  8 sd\n195 fake\n";
        let majors = char_majors(text);
        assert_eq!(majors.get("nvidia-frontend"), Some(&195));
        assert_eq!(majors.get("nvidia-uvm"), Some(&508));
        assert_eq!(majors.get("sd"), None);
        assert_eq!(majors.get("fake"), None);
    }

    #[test]
    fn proc_version_lines_of_both_flavours_parse() {
        let open = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  (dvs-builder@U22)  Thu Sep 25 2025\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n";
        assert_eq!(proc_driver_version(open).as_deref(), Some("580.95.05"));
        assert!(is_open_kernel_module(open));
        let proprietary = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\n";
        assert_eq!(
            proc_driver_version(proprietary).as_deref(),
            Some("550.54.14")
        );
        assert!(!is_open_kernel_module(proprietary));
        assert_eq!(proc_driver_version("garbage\n"), None);
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(
            compare_versions("580.95.05", "580.65.06"),
            Ordering::Greater
        );
        assert_eq!(compare_versions("550.163.01", "580.65.06"), Ordering::Less);
        assert_eq!(compare_versions("580.65.06", "580.65.06"), Ordering::Equal);
        assert_eq!(compare_versions("580.65", "580.65.0"), Ordering::Equal);
    }

    #[test]
    fn information_fields_split_on_the_first_colon() {
        let text = "Model: \t\t NVIDIA A100-SXM4-80GB\nBus Location: \t 0000:07:00.0\nDevice Minor: \t 1\n";
        let fields = information_fields(text);
        assert_eq!(fields["Model"], "NVIDIA A100-SXM4-80GB");
        assert_eq!(fields["Bus Location"], "0000:07:00.0");
        assert_eq!(fields["Device Minor"], "1");
    }
}

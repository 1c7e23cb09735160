//! What the kernel says about the NVIDIA driver: loaded modules, their versions, character
//! device majors, each GPU's device minor, and the user-space driver libraries beside them.

use std::{
    cmp::Ordering,
    collections::BTreeMap,
    path::{Component, Path, PathBuf},
};

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
    /// Where the soname's chain of symlinks ends, as on the machine
    /// (`/usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05`).
    pub target: String,
    /// The version in the target's name; `None` when the name carries none (the chain ends at
    /// a link that is not there, or at an unversioned file).
    pub version: Option<String>,
}

impl DriverLibrary {
    /// `path: version`, naming the target when it is in another folder; for evidence.
    pub fn describe(&self) -> String {
        let same_folder = Path::new(&self.path).parent() == Path::new(&self.target).parent();
        match (&self.version, same_folder) {
            (Some(version), true) => format!("{}: {version}", self.path),
            (Some(version), false) => format!("{} -> {}: {version}", self.path, self.target),
            (None, _) => format!(
                "{} -> {}: no driver version (the link's end is missing or names no version)",
                self.path, self.target
            ),
        }
    }
}

/// How many symlinks are followed from a soname before giving up (Linux's `MAXSYMLINKS`).
const MAX_LINK_HOPS: usize = 40;

/// Where `libnvidia-ml.so.1` and `libcuda.so.1` point, in the usual folders. The soname, not
/// every versioned file, because an upgrade can leave the old version's files behind; the
/// soname is what the loader uses. The soname's chain of symlinks is followed to its end (a
/// soname can point at another soname elsewhere: `/usr/lib/libcuda.so.1 ->
/// /usr/local/nvidia/lib64/libcuda.so.1 -> libcuda.so.580.159.04`), absolute targets below the
/// sysroot. Unreadable folders and sonames that are not symlinks are skipped: not every
/// distribution has every one. The same soname and target name seen twice (merged `/usr`) is
/// listed once.
pub fn driver_libraries(sysroot: &Sysroot) -> Vec<DriverLibrary> {
    let mut found: Vec<DriverLibrary> = Vec::new();
    for dir in LIBRARY_DIRS {
        for soname in DRIVER_LIBRARY_LINKS {
            let path = format!("{dir}/{soname}");
            let Some(target) = resolve_links(sysroot, &path) else {
                continue;
            };
            let name = target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let prefix = soname.trim_end_matches('1');
            let version = name
                .strip_prefix(prefix)
                .filter(|v| looks_like_version(v))
                .map(str::to_owned);
            let duplicate = found.iter().any(|l| {
                l.path.ends_with(soname) && Path::new(&l.target).file_name() == target.file_name()
            });
            if !duplicate {
                found.push(DriverLibrary {
                    path,
                    target: target.to_string_lossy().into_owned(),
                    version,
                });
            }
        }
    }
    found
}

/// Where the symlink at `absolute` leads, link by link, as a path on the machine; `None` when
/// `absolute` is not a symlink. Relative targets are taken from the link's folder, absolute ones
/// from the sysroot's root; the chain ends at the first path that is not a readable symlink.
fn resolve_links(sysroot: &Sysroot, absolute: &str) -> Option<PathBuf> {
    let mut current = PathBuf::from(absolute);
    let mut hops = 0;
    while hops < MAX_LINK_HOPS {
        let Ok(target) = std::fs::read_link(sysroot.path(&current.to_string_lossy())) else {
            break;
        };
        let folder = current.parent().unwrap_or(Path::new("/"));
        current = normalize(&folder.join(target));
        hops += 1;
    }
    (hops > 0).then_some(current)
}

/// `path` made absolute with `.` and `..` taken out, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut normal = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(name) => normal.push(name),
            Component::ParentDir => {
                normal.pop();
            }
            Component::RootDir | Component::Prefix(_) => normal = PathBuf::from("/"),
            Component::CurDir => {}
        }
    }
    normal
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
    fn paths_normalize_without_the_file_system() {
        assert_eq!(
            normalize(Path::new("/usr/lib/../local/./nvidia/lib64/libcuda.so.1")),
            Path::new("/usr/local/nvidia/lib64/libcuda.so.1")
        );
        assert_eq!(normalize(Path::new("/../../lib/x")), Path::new("/lib/x"));
        assert_eq!(
            normalize(Path::new("/usr/lib/etc//abs")),
            Path::new("/usr/lib/etc/abs")
        );
    }

    fn symlink(root: &Path, link: &str, target: &str) {
        let link = root.join(link.trim_start_matches('/'));
        std::fs::create_dir_all(link.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(target, link).expect("symlink");
    }

    #[test]
    fn library_links_are_followed_to_their_end_below_the_sysroot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        // The H200 host's layout: the usual folder links to another soname, absolutely.
        symlink(
            root,
            "/usr/lib/libcuda.so.1",
            "/usr/local/nvidia/lib64/libcuda.so.1",
        );
        symlink(
            root,
            "/usr/local/nvidia/lib64/libcuda.so.1",
            "libcuda.so.580.159.04",
        );
        std::fs::write(
            root.join("usr/local/nvidia/lib64/libcuda.so.580.159.04"),
            "",
        )
        .expect("write");
        // Relative, through `..`; the versioned file itself need not be there.
        symlink(
            root,
            "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
            "../../local/lib/libnvidia-ml.so.1",
        );
        symlink(
            root,
            "/usr/local/lib/libnvidia-ml.so.1",
            "./libnvidia-ml.so.580.159.04",
        );
        // A chain whose next link the tree does not hold.
        symlink(
            root,
            "/usr/lib/libnvidia-ml.so.1",
            "/opt/driver/libnvidia-ml.so.1",
        );
        // A loop ends, unversioned.
        symlink(root, "/usr/lib64/libcuda.so.1", "libcuda.so.1");
        let libraries = driver_libraries(&Sysroot::captured(root));
        let described: Vec<String> = libraries.iter().map(DriverLibrary::describe).collect();
        assert_eq!(
            described,
            vec![
                "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1 -> /usr/local/lib/libnvidia-ml.so.580.159.04: 580.159.04",
                "/usr/lib64/libcuda.so.1 -> /usr/lib64/libcuda.so.1: no driver version (the link's end is missing or names no version)",
                "/usr/lib/libnvidia-ml.so.1 -> /opt/driver/libnvidia-ml.so.1: no driver version (the link's end is missing or names no version)",
                "/usr/lib/libcuda.so.1 -> /usr/local/nvidia/lib64/libcuda.so.580.159.04: 580.159.04",
            ]
        );
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

//! Where the machine's sysfs, procfs and `/dev` are read from: `/` on the appliance, or a
//! captured tree (`--sysroot DIR`) in tests and post-mortems.
//!
//! A captured tree cannot hold real device nodes (an unprivileged `tar` cannot recreate them),
//! so in a captured tree a device node is a regular file holding `c MAJOR:MINOR`, as
//! `tests/gpu/capture-sysfs.sh` writes it. On the live machine that stand-in is never honoured:
//! a regular file at `/dev/nvidia0` is a fault.

use std::{
    io,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// A file that could not be read, with its path.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {cause}")]
pub struct ReadError {
    pub path: PathBuf,
    pub cause: io::Error,
}

impl ReadError {
    pub fn is_not_found(&self) -> bool {
        self.cause.kind() == io::ErrorKind::NotFound
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysroot {
    root: PathBuf,
    live: bool,
}

/// What is at a device node's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Missing,
    CharDevice {
        major: u32,
        minor: u32,
        mode: u32,
    },
    /// Something that is not a character device (a regular file, a directory, a block device).
    NotCharDevice,
}

impl Sysroot {
    /// The running machine.
    pub fn live() -> Self {
        Self {
            root: PathBuf::from("/"),
            live: true,
        }
    }

    /// A captured tree: every absolute path is read below `root`.
    pub fn captured(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            live: false,
        }
    }

    /// Whether this is the running machine (repairs, NVML and the CUDA smoke test apply only
    /// there).
    pub fn is_live(&self) -> bool {
        self.live
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `absolute` (such as `/proc/modules`) below the root.
    pub fn path(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }

    pub fn read(&self, absolute: &str) -> Result<String, ReadError> {
        read_path(&self.path(absolute))
    }

    /// The names in a folder, sorted.
    pub fn list(&self, absolute: &str) -> Result<Vec<String>, ReadError> {
        list_path(&self.path(absolute))
    }

    /// What a device node is. In a captured tree a regular file `c MAJOR:MINOR` stands for a
    /// character device.
    pub fn device_node(&self, absolute: &str) -> Result<NodeState, ReadError> {
        let path = self.path(absolute);
        let metadata = match std::fs::metadata(&path) {
            Ok(metadata) => metadata,
            Err(cause) if cause.kind() == io::ErrorKind::NotFound => return Ok(NodeState::Missing),
            Err(cause) => return Err(ReadError { path, cause }),
        };
        let mode = metadata.permissions().mode() & 0o7777;
        if metadata.file_type().is_char_device() {
            let rdev = metadata.rdev();
            return Ok(NodeState::CharDevice {
                major: dev_major(rdev),
                minor: dev_minor(rdev),
                mode,
            });
        }
        if !self.live && metadata.is_file() {
            let text = read_path(&path)?;
            if let Some((major, minor)) = parse_node_stand_in(&text) {
                return Ok(NodeState::CharDevice {
                    major,
                    minor,
                    mode: 0o666,
                });
            }
        }
        Ok(NodeState::NotCharDevice)
    }
}

pub fn read_path(path: &Path) -> Result<String, ReadError> {
    std::fs::read_to_string(path).map_err(|cause| ReadError {
        path: path.to_owned(),
        cause,
    })
}

pub fn list_path(path: &Path) -> Result<Vec<String>, ReadError> {
    let error = |cause| ReadError {
        path: path.to_owned(),
        cause,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(path).map_err(error)? {
        let entry = entry.map_err(error)?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// `c 195:0` → (195, 0).
fn parse_node_stand_in(text: &str) -> Option<(u32, u32)> {
    let rest = text.trim().strip_prefix('c')?.trim();
    let (major, minor) = rest.split_once(':')?;
    Some((major.trim().parse().ok()?, minor.trim().parse().ok()?))
}

/// Linux's `dev_t` encoding (glibc `gnu_dev_major`).
fn dev_major(rdev: u64) -> u32 {
    (((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0x0000_0fff)) as u32
}

fn dev_minor(rdev: u64) -> u32 {
    (((rdev >> 12) & 0xffff_ff00) | (rdev & 0x0000_00ff)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_below_the_root() {
        let root = Sysroot::captured("/tmp/capture");
        assert_eq!(
            root.path("/proc/modules"),
            Path::new("/tmp/capture/proc/modules")
        );
        assert_eq!(Sysroot::live().path("/dev/kmsg"), Path::new("/dev/kmsg"));
    }

    #[test]
    fn dev_t_decodes_like_glibc() {
        // /dev/null is 1:3, /dev/nvidiactl 195:255, /dev/nvidia-uvm-tools e.g. 508:1; minors
        // above 255 use the high bits.
        assert_eq!((dev_major(0x103), dev_minor(0x103)), (1, 3));
        assert_eq!((dev_major(0xc3ff), dev_minor(0xc3ff)), (195, 255));
        assert_eq!((dev_major(0x1fc01), dev_minor(0x1fc01)), (508, 1));
        assert_eq!((dev_major(0x10_c300), dev_minor(0x10_c300)), (195, 0x100));
    }

    #[test]
    fn stand_in_nodes_only_count_in_captured_trees() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("dev")).expect("mkdir");
        std::fs::write(dir.path().join("dev/nvidia0"), "c 195:0\n").expect("write");
        let captured = Sysroot::captured(dir.path());
        assert_eq!(
            captured.device_node("/dev/nvidia0").expect("reads"),
            NodeState::CharDevice {
                major: 195,
                minor: 0,
                mode: 0o666
            }
        );
        assert_eq!(
            captured.device_node("/dev/nvidia1").expect("reads"),
            NodeState::Missing
        );
        let live_like = Sysroot {
            root: dir.path().to_owned(),
            live: true,
        };
        assert_eq!(
            live_like.device_node("/dev/nvidia0").expect("reads"),
            NodeState::NotCharDevice
        );
    }

    #[test]
    fn real_char_devices_are_read_from_metadata() {
        match Sysroot::live().device_node("/dev/null").expect("reads") {
            NodeState::CharDevice { major, minor, .. } => assert_eq!((major, minor), (1, 3)),
            other => panic!("/dev/null is {other:?}"),
        }
    }
}

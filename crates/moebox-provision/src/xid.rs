//! Xid errors since boot, from the kernel log.
//!
//! The driver reports GPU faults as `NVRM: Xid (PCI:0000:07:00): 79, pid=..., GPU has fallen off
//! the bus.` On the machine the log is read from `/dev/kmsg` (the ring buffer since boot, one
//! record per read, without blocking); in a captured tree `dev/kmsg` is a plain file of such
//! lines (`dmesg` output works too: only the `Xid (PCI:...)` part is parsed).

use std::io::Read;

use crate::sysroot::{ReadError, Sysroot};

pub const KMSG: &str = "/dev/kmsg";

/// Upper bound on what is read from the kernel log; the ring buffer is far smaller.
pub const MAX_KERNEL_LOG_BYTES: usize = 16 << 20;

/// Xids after which the GPU must not serve until it is reset or replaced (NVIDIA's Xid catalogue:
/// "reset the GPU" or "contact support" as the recommended action).
pub const FATAL_XIDS: [(u32, &str); 10] = [
    (48, "double-bit ECC error"),
    (61, "internal micro-controller breakpoint"),
    (62, "internal micro-controller halt"),
    (64, "ECC page retirement or row remapping recording failure"),
    (74, "NVLink error"),
    (79, "GPU has fallen off the bus"),
    (95, "uncontained ECC error"),
    (119, "GSP RPC timeout"),
    (120, "GSP error"),
    (140, "unrecovered ECC error"),
];

/// Xids worth naming that do not by themselves stop the GPU (application faults, contained
/// errors, recorded remaps).
pub const KNOWN_XIDS: [(u32, &str); 8] = [
    (13, "graphics engine exception"),
    (31, "GPU memory page fault"),
    (43, "GPU stopped processing"),
    (45, "preemptive cleanup"),
    (63, "ECC page retirement or row remapping recorded"),
    (69, "graphics engine class error"),
    (92, "high single-bit ECC error rate"),
    (94, "contained ECC error"),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XidEvent {
    /// `0000:07:00`: domain, bus, device (the driver leaves out the function).
    pub pci: String,
    pub xid: u32,
    /// The log line, for evidence.
    pub line: String,
}

impl XidEvent {
    pub fn is_fatal(&self) -> bool {
        FATAL_XIDS.iter().any(|(xid, _)| *xid == self.xid)
    }

    pub fn meaning(&self) -> &'static str {
        FATAL_XIDS
            .iter()
            .chain(KNOWN_XIDS.iter())
            .find(|(xid, _)| *xid == self.xid)
            .map_or("see NVIDIA's Xid catalogue", |(_, meaning)| meaning)
    }
}

/// Every `Xid (PCI:...): N` in `log`.
pub fn parse_xids(log: &str) -> Vec<XidEvent> {
    const MARKER: &str = "Xid (PCI:";
    let mut events = Vec::new();
    for line in log.lines() {
        let Some(start) = line.find(MARKER) else {
            continue;
        };
        let rest = &line[start + MARKER.len()..];
        let Some((pci, rest)) = rest.split_once("):") else {
            continue;
        };
        let digits: String = rest
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(xid) = digits.parse() {
            let text = line.split_once(';').map_or(line, |(_, message)| message);
            events.push(XidEvent {
                pci: pci.trim().to_ascii_lowercase(),
                xid,
                line: text.trim().to_owned(),
            });
        }
    }
    events
}

/// The kernel log since boot.
pub fn read_kernel_log(sysroot: &Sysroot) -> Result<String, ReadError> {
    if !sysroot.is_live() {
        return sysroot.read(KMSG);
    }
    read_kmsg(&sysroot.path(KMSG))
}

/// Reads `/dev/kmsg` without blocking: each `read` returns one record, `EAGAIN` means the end,
/// `EPIPE` means records were overwritten while reading (go on).
fn read_kmsg(path: &std::path::Path) -> Result<String, ReadError> {
    use std::os::unix::fs::OpenOptionsExt;
    /// `O_NONBLOCK` on Linux x86-64 and aarch64 (asm-generic/fcntl.h).
    const O_NONBLOCK: i32 = 0o4000;
    let error = |cause| ReadError {
        path: path.to_owned(),
        cause,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)
        .map_err(error)?;
    let mut log = Vec::new();
    // A record is at most 8 KiB (kmsg's CONSOLE_EXT_LOG_MAX); a smaller buffer gets EINVAL.
    let mut buffer = vec![0u8; 16 << 10];
    while log.len() < MAX_KERNEL_LOG_BYTES {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => log.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(error(e)),
        }
    }
    Ok(String::from_utf8_lossy(&log).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmsg_and_dmesg_lines_parse() {
        let log = "\
4,1234,5678901,-;NVRM: Xid (PCI:0000:0F:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.
[  812.123456] NVRM: Xid (PCI:0000:07:00): 13, pid=4242, name=python3, Graphics Exception
6,1,2,-;nvidia: loading out-of-tree module taints kernel.
NVRM: Xid (PCI:0000:07:00): not-a-number
";
        let events = parse_xids(log);
        assert_eq!(events.len(), 2);
        assert_eq!((events[0].pci.as_str(), events[0].xid), ("0000:0f:00", 79));
        assert!(events[0].is_fatal());
        assert!(
            events[0].line.starts_with("NVRM: Xid"),
            "{}",
            events[0].line
        );
        assert_eq!((events[1].pci.as_str(), events[1].xid), ("0000:07:00", 13));
        assert!(!events[1].is_fatal());
        assert_eq!(events[1].meaning(), "graphics engine exception");
    }

    #[test]
    fn the_live_kernel_log_is_read_without_blocking() {
        // As root the buffer is read to its end and the call returns; elsewhere (dmesg_restrict)
        // the error names the path. Neither may hang.
        match read_kernel_log(&Sysroot::live()) {
            Ok(_) => {}
            Err(err) => assert!(err.to_string().contains("/dev/kmsg"), "{err}"),
        }
    }
}

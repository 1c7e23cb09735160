//! Xid errors since boot, per GPU, from the kernel log.

use super::{Finding, XID_ERRORS, conclude};
use crate::{
    gpu::PciGpu,
    report::{Check, GpuRef},
    xid::XidEvent,
};

/// Log lines quoted as evidence per GPU; the rest are counted.
pub const MAX_QUOTED_LINES: usize = 5;

pub fn xid_errors(log: &Result<Vec<XidEvent>, String>, gpu: &PciGpu, reference: &GpuRef) -> Check {
    let events = match log {
        Ok(events) => events,
        Err(err) => {
            return Check::warn(
                XID_ERRORS,
                Some(reference),
                format!("kernel log unreadable: {err}"),
                "Run moebox provision as root (the kernel log may be restricted), or read `journalctl -k -b | grep Xid` by hand.",
            );
        }
    };
    let mine: Vec<&XidEvent> = events
        .iter()
        .filter(|e| e.pci == gpu.xid_address())
        .collect();
    conclude(
        XID_ERRORS,
        Some(reference),
        "no Xid since boot",
        findings(&mine, Some(reference.index)),
        evidence(&mine),
    )
}

/// Xids naming a PCI address that is not one of the GPUs found (a GPU that fell off the bus
/// is no longer listed). `None` when there are none.
pub fn unattributed_xid_errors(
    log: &Result<Vec<XidEvent>, String>,
    gpus: &[PciGpu],
) -> Option<Check> {
    let events = log.as_ref().ok()?;
    let stray: Vec<&XidEvent> = events
        .iter()
        .filter(|e| !gpus.iter().any(|g| g.xid_address() == e.pci))
        .collect();
    if stray.is_empty() {
        return None;
    }
    let mut addresses: Vec<&str> = stray.iter().map(|e| e.pci.as_str()).collect();
    addresses.dedup();
    let mut findings = findings(&stray, None);
    for finding in &mut findings {
        finding.summary = format!(
            "{} from {}, not among the GPUs found",
            finding.summary,
            addresses.join(", ")
        );
    }
    Some(conclude(XID_ERRORS, None, "", findings, evidence(&stray)))
}

fn findings(events: &[&XidEvent], index: Option<u32>) -> Vec<Finding> {
    let mut xids: Vec<(u32, usize, &'static str, bool)> = Vec::new();
    for event in events {
        match xids.iter_mut().find(|(xid, ..)| *xid == event.xid) {
            Some((_, count, ..)) => *count += 1,
            None => xids.push((event.xid, 1, event.meaning(), event.is_fatal())),
        }
    }
    let reset = match index {
        Some(index) => {
            format!("Reset the GPU (`nvidia-smi -r -i {index}`) or power-cycle the server")
        }
        None => "Power-cycle the server".to_owned(),
    };
    xids.into_iter()
        .map(|(xid, count, meaning, fatal)| {
            let summary = format!("Xid {xid} ×{count} since boot ({meaning})");
            if fatal {
                Finding::fail(summary, format!("{reset}; if it happens again, have the GPU checked (Xid 79: power, seating, riser; ECC Xids: replacement)."))
            } else {
                Finding::warn(summary, "Application-level GPU faults: find the process in `journalctl -k -b | grep Xid`; the same fault after restarts points at the GPU.")
            }
        })
        .collect()
}

fn evidence(events: &[&XidEvent]) -> Vec<String> {
    let mut lines: Vec<String> = events
        .iter()
        .take(MAX_QUOTED_LINES)
        .map(|e| e.line.clone())
        .collect();
    if events.len() > MAX_QUOTED_LINES {
        lines.push(format!("... and {} more", events.len() - MAX_QUOTED_LINES));
    }
    lines
}

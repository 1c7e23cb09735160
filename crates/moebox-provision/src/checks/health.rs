//! Per-GPU health through NVML: persistence, ECC, row remapping, MIG, temperature, power limit.

use moebox_config::ProvisionConfig;

use super::{
    ECC, Finding, MIG_MODE, PERSISTENCE_MODE, POWER_LIMIT, ROW_REMAPPING, TEMPERATURE, conclude,
};
use crate::{
    nvml::{NvmlGpu, Reading},
    report::{Check, GpuRef},
};

fn unreadable<T>(what: &str, reading: &Reading<T>) -> Option<String> {
    match reading {
        Reading::Value(_) => None,
        Reading::NotSupported => Some(format!("{what}: not supported")),
        Reading::Error(err) => Some(format!("{what}: {err}")),
    }
}

const READ_BY_HAND: &str = "Read it by hand with `nvidia-smi -q`; an error here usually means the GPU is in a bad state (see xid_errors).";

pub fn persistence_mode(gpu: &NvmlGpu, reference: &GpuRef) -> Check {
    match &gpu.persistence_mode {
        Reading::Value(true) => {
            Check::pass(PERSISTENCE_MODE, Some(reference), "persistence mode on")
        }
        Reading::Value(false) => Check::warn(
            PERSISTENCE_MODE,
            Some(reference),
            "persistence mode off",
            "Enable the persistence daemon (`systemctl enable --now nvidia-persistenced`): without it the driver tears the GPU down whenever no process holds it, and every engine start pays for its initialisation again.",
        ),
        other => Check::warn(
            PERSISTENCE_MODE,
            Some(reference),
            unreadable("persistence mode", other).unwrap_or_default(),
            READ_BY_HAND,
        ),
    }
}

pub fn ecc(gpu: &NvmlGpu, reference: &GpuRef) -> Check {
    let index = reference.index;
    let mut evidence = Vec::new();
    let mut findings = Vec::new();
    match &gpu.ecc {
        Reading::Value(mode) => {
            evidence.push(format!("ECC current {}, pending {}", on_off(mode.current), on_off(mode.pending)));
            if !mode.current {
                findings.push(Finding::fail(
                    "ECC is off",
                    format!("Turn ECC on (`nvidia-smi -i {index} -e 1`) and reboot: without ECC a flipped memory bit silently changes answers."),
                ));
            } else if !mode.pending {
                findings.push(Finding::warn(
                    "ECC turns off at the next reset",
                    format!("Revert it (`nvidia-smi -i {index} -e 1`) before the next reboot."),
                ));
            }
        }
        Reading::NotSupported => findings.push(Finding::warn(
            "this GPU has no ECC",
            "moebox expects datacenter GPUs with ECC memory (A100); without ECC a flipped memory bit goes unnoticed.",
        )),
        Reading::Error(err) => findings.push(Finding::warn(format!("ECC mode: {err}"), READ_BY_HAND)),
    }
    let counters = [
        (
            "uncorrected (since driver load)",
            &gpu.ecc_uncorrected_volatile,
        ),
        ("uncorrected (lifetime)", &gpu.ecc_uncorrected_aggregate),
        ("corrected (since driver load)", &gpu.ecc_corrected_volatile),
    ];
    for (name, reading) in counters {
        if let Reading::Value(count) = reading {
            evidence.push(format!("ECC errors {name}: {count}"));
        }
    }
    match (gpu.ecc_uncorrected_volatile.value(), gpu.ecc_uncorrected_aggregate.value()) {
        (Some(&volatile), _) if volatile > 0 => findings.push(Finding::fail(
            format!("{volatile} uncorrected ECC errors since the driver loaded"),
            format!("Reset the GPU (`nvidia-smi -r -i {index}`) or reboot; if uncorrected errors come back, have the GPU replaced."),
        )),
        (_, Some(&lifetime)) if lifetime > 0 => findings.push(Finding::warn(
            format!("{lifetime} uncorrected ECC errors over the GPU's life"),
            "Nothing to do now; if the count grows (or row remapping fails), have the GPU checked.",
        )),
        _ => {}
    }
    conclude(
        ECC,
        Some(reference),
        "ECC on, no uncorrected errors",
        findings,
        evidence,
    )
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

pub fn row_remapping(gpu: &NvmlGpu, reference: &GpuRef) -> Check {
    let index = reference.index;
    match &gpu.remapped_rows {
        Reading::Value(rows) => {
            let evidence = vec![format!(
                "remapped rows: {} corrected, {} uncorrected, pending {}, failure {}",
                rows.corrected, rows.uncorrected, rows.pending, rows.failure
            )];
            let mut findings = Vec::new();
            if rows.failure {
                findings.push(Finding::fail(
                    "row remapping failed: no spare rows left",
                    "Have the GPU replaced: its memory has errors it can no longer remap.",
                ));
            }
            if rows.pending {
                findings.push(Finding::fail(
                    "a row remap is pending",
                    format!("Reset the GPU (`nvidia-smi -r -i {index}`) or reboot so the remap takes effect; until then the faulty row is in use."),
                ));
            }
            conclude(
                ROW_REMAPPING,
                Some(reference),
                format!(
                    "no pending or failed remaps ({} rows remapped)",
                    rows.corrected + rows.uncorrected
                ),
                findings,
                evidence,
            )
        }
        Reading::NotSupported => Check::skip(
            ROW_REMAPPING,
            Some(reference),
            "row remapping not supported by this GPU (older than Ampere)",
        ),
        Reading::Error(err) => Check::warn(
            ROW_REMAPPING,
            Some(reference),
            format!("remapped rows: {err}"),
            READ_BY_HAND,
        ),
    }
}

pub fn mig_mode(gpu: &NvmlGpu, reference: &GpuRef, config: &ProvisionConfig) -> Check {
    let index = reference.index;
    let expected = config.mig_enabled;
    let remedy = if expected {
        format!(
            "Turn MIG on (`nvidia-smi -i {index} -mig 1`) and reset the GPU, or set provision.mig_enabled = false."
        )
    } else {
        format!(
            "Turn MIG off (`nvidia-smi -i {index} -mig 0`) and reset the GPU: moebox runs one engine per whole GPU (provision.mig_enabled = false)."
        )
    };
    match &gpu.mig {
        Reading::Value(mig) => {
            let evidence = vec![format!(
                "MIG current {}, pending {}",
                on_off(mig.current),
                on_off(mig.pending)
            )];
            let mut findings = Vec::new();
            if mig.current != expected {
                findings.push(Finding::fail(
                    format!(
                        "MIG is {}, expected {}",
                        on_off(mig.current),
                        on_off(expected)
                    ),
                    remedy,
                ));
            } else if mig.pending != expected {
                findings.push(Finding::warn(
                    format!("MIG turns {} at the next reset", on_off(mig.pending)),
                    remedy,
                ));
            }
            conclude(
                MIG_MODE,
                Some(reference),
                format!("MIG {}, as configured", on_off(expected)),
                findings,
                evidence,
            )
        }
        Reading::NotSupported if !expected => {
            Check::pass(MIG_MODE, Some(reference), "MIG off (not MIG-capable)")
        }
        Reading::NotSupported => Check::fail(
            MIG_MODE,
            Some(reference),
            "this GPU is not MIG-capable, and provision.mig_enabled = true",
            "Set provision.mig_enabled = false.",
        ),
        Reading::Error(err) => Check::warn(
            MIG_MODE,
            Some(reference),
            format!("MIG mode: {err}"),
            READ_BY_HAND,
        ),
    }
}

pub fn temperature(gpu: &NvmlGpu, reference: &GpuRef, config: &ProvisionConfig) -> Check {
    const COOLING: &str = "Check the server's fans and airflow (blanking panels, filters, inlet temperature) before serving: a hot GPU throttles, and at its shutdown threshold it stops.";
    let Some(&celsius) = gpu.temperature_celsius.value() else {
        return Check::warn(
            TEMPERATURE,
            Some(reference),
            unreadable("temperature", &gpu.temperature_celsius).unwrap_or_default(),
            READ_BY_HAND,
        );
    };
    let slowdown = gpu.slowdown_celsius.value().copied();
    let mut evidence = vec![format!("GPU temperature {celsius} °C")];
    if let Some(slowdown) = slowdown {
        evidence.push(format!("slowdown threshold {slowdown} °C"));
    }
    if let Some(shutdown) = gpu.shutdown_celsius.value() {
        evidence.push(format!("shutdown threshold {shutdown} °C"));
    }
    let warn_at = config.temperature_warn_celsius;
    let mut findings = Vec::new();
    match slowdown {
        Some(slowdown) if celsius >= slowdown => findings.push(Finding::fail(
            format!("{celsius} °C, at or above the slowdown threshold {slowdown} °C"),
            COOLING,
        )),
        _ if celsius >= warn_at => findings.push(Finding::warn(
            format!("{celsius} °C, above provision.temperature_warn_celsius = {warn_at}"),
            COOLING,
        )),
        _ => {}
    }
    conclude(
        TEMPERATURE,
        Some(reference),
        format!("{celsius} °C"),
        findings,
        evidence,
    )
}

pub fn power_limit(gpu: &NvmlGpu, reference: &GpuRef, config: &ProvisionConfig) -> Check {
    let (limit, default) = match (
        &gpu.power_limit_milliwatts,
        &gpu.default_power_limit_milliwatts,
    ) {
        (Reading::Value(limit), Reading::Value(default)) => (*limit, *default),
        (Reading::NotSupported, _) | (_, Reading::NotSupported) => {
            return Check::skip(
                POWER_LIMIT,
                Some(reference),
                "power limit not reported by this GPU",
            );
        }
        (limit, default) => {
            let summary = [
                unreadable("power limit", limit),
                unreadable("default power limit", default),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ");
            return Check::warn(POWER_LIMIT, Some(reference), summary, READ_BY_HAND);
        }
    };
    let watts = |mw: u32| mw / 1000;
    let evidence = vec![format!(
        "enforced power limit {} W, default {} W",
        watts(limit),
        watts(default)
    )];
    let percent = config.min_power_limit_percent;
    let mut findings = Vec::new();
    if u64::from(limit) * 100 < u64::from(default) * u64::from(percent) {
        findings.push(Finding::warn(
            format!("power limit {} W is below {percent}% of the default {} W", watts(limit), watts(default)),
            format!("Restore it (`nvidia-smi -i {} -pl {}`) unless it was capped on purpose (then lower provision.min_power_limit_percent).", reference.index, watts(default)),
        ));
    }
    conclude(
        POWER_LIMIT,
        Some(reference),
        format!(
            "power limit {} W (default {} W)",
            watts(limit),
            watts(default)
        ),
        findings,
        evidence,
    )
}

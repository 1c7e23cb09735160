//! Live GPU status from telemetry, and utilisation and power per GPU over time.

use std::fmt::Write as _;

use crate::{
    charts::{self, Series, Unit},
    layout::{Nav, escape, page},
};

/// Whether telemetry could read the GPU.
#[derive(Debug, Clone, PartialEq)]
pub enum GpuState {
    Ok,
    /// The driver or NVML is missing, or the GPU fell off the bus: the reason, as telemetry
    /// reports it.
    Unavailable(String),
}

/// The latest sample of one GPU. Fields telemetry could not read are `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuStatus {
    pub index: u32,
    pub name: String,
    pub state: GpuState,
    pub utilisation_percent: Option<f64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub power_watts: Option<f64>,
    pub power_limit_watts: Option<f64>,
    pub temperature_celsius: Option<f64>,
    pub sm_clock_mhz: Option<u32>,
    /// Energy since the appliance started counting, kWh.
    pub energy_kwh: Option<f64>,
    pub ecc_uncorrected_errors: Option<u64>,
    /// Active throttle reasons by name (`sw_power_cap`, `hw_slowdown`); empty when none.
    pub throttle_reasons: Vec<String>,
}

/// One point of a GPU's history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuSample {
    pub utilisation_percent: Option<f64>,
    pub power_watts: Option<f64>,
}

/// Each GPU's samples at shared times (`labels`), for the charts.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuHistory {
    /// x labels, oldest first (`14:00`).
    pub labels: Vec<String>,
    /// Per GPU (by index order of `GpusPage::gpus`): one sample per label, `None` for a gap.
    pub gpus: Vec<(String, Vec<Option<GpuSample>>)>,
}

#[derive(Debug, Clone)]
pub struct GpusPage<'a> {
    pub gpus: &'a [GpuStatus],
    pub history: &'a GpuHistory,
    /// When the latest samples were taken.
    pub sampled_at: &'a str,
}

fn opt<T>(value: Option<T>, f: impl Fn(T) -> String) -> String {
    value.map_or_else(|| "-".to_owned(), f)
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

pub fn gpus(input: &GpusPage<'_>) -> String {
    let mut body = format!(
        "<h1>GPUs</h1><p class=\"sub\">sampled {}</p>",
        escape(input.sampled_at)
    );
    if input.gpus.is_empty() {
        body.push_str("<p class=\"note\">No GPU is reported by telemetry.</p>");
    }
    body.push_str(
        "<div class=\"scroll\"><table id=\"gpus\"><thead><tr><th>GPU</th><th>State</th>\
         <th class=\"num\">Utilisation</th><th class=\"num\">Memory</th><th class=\"num\">Power</th>\
         <th class=\"num\">Temperature</th><th class=\"num\">SM clock</th>\
         <th class=\"num\">Energy</th><th class=\"num\">ECC uncorrected</th><th>Throttling</th>\
         </tr></thead><tbody>",
    );
    for gpu in input.gpus {
        let state = match &gpu.state {
            GpuState::Ok => "<span class=\"state-ok\">ok</span>".to_owned(),
            GpuState::Unavailable(reason) => format!(
                "<span class=\"state-bad\">unavailable</span>: {}",
                escape(reason)
            ),
        };
        let memory = match (gpu.memory_used_bytes, gpu.memory_total_bytes) {
            (Some(used), Some(total)) => format!("{} / {}", gib(used), gib(total)),
            (Some(used), None) => gib(used),
            _ => "-".to_owned(),
        };
        let power = match (gpu.power_watts, gpu.power_limit_watts) {
            (Some(p), Some(limit)) => format!("{p:.0} / {limit:.0} W"),
            (Some(p), None) => format!("{p:.0} W"),
            _ => "-".to_owned(),
        };
        let throttling = if gpu.throttle_reasons.is_empty() {
            "none".to_owned()
        } else {
            gpu.throttle_reasons.join(", ")
        };
        let _ = write!(
            body,
            "<tr><td>{} · {}</td><td>{state}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            gpu.index,
            escape(&gpu.name),
            opt(gpu.utilisation_percent, |u| format!("{u:.0}%")),
            memory,
            power,
            opt(gpu.temperature_celsius, |t| format!("{t:.0} °C")),
            opt(gpu.sm_clock_mhz, |m| format!("{m} MHz")),
            opt(gpu.energy_kwh, |e| format!("{e:.3} kWh")),
            opt(gpu.ecc_uncorrected_errors, |e| e.to_string()),
            escape(&throttling)
        );
    }
    body.push_str("</tbody></table></div>");
    let series = |pick: fn(&GpuSample) -> Option<f64>| -> Vec<Series> {
        input
            .history
            .gpus
            .iter()
            .map(|(name, samples)| Series {
                name: name.clone(),
                values: samples.iter().map(|s| s.as_ref().and_then(pick)).collect(),
            })
            .collect()
    };
    body.push_str(&charts::line_chart(
        "GPU utilisation",
        &input.history.labels,
        &series(|s| s.utilisation_percent),
        Unit::Percent,
    ));
    body.push_str(&charts::line_chart(
        "GPU power",
        &input.history.labels,
        &series(|s| s.power_watts),
        Unit::Watts,
    ));
    page("GPUs", Nav::Gpus, &body)
}

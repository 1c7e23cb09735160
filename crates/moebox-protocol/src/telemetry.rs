//! Telemetry as the engine serves it: `GET /v1/telemetry?since=SEQ` answers a
//! [`TelemetryBatch`] of the [`TelemetrySample`]s taken after sample `SEQ`.
//!
//! Each engine numbers its samples 1, 2, 3, … (`seq`) and keeps the newest in a bounded ring. A
//! poller remembers the last `seq` it stored and asks for what came after; samples the ring
//! dropped before it asked show as [`TelemetryBatch::missed`] (a gap in `seq`). Energy never
//! falls into such a gap: every energy reading carries its running total
//! ([`EnergySample::total_mj`]), so the energy of a gap is the difference of the totals on
//! either side. Sequence numbers and totals start over when the engine restarts, which
//! [`TelemetryBatch::instance`] shows.
//!
//! Energy comes from the hardware's energy counters (NVML's total energy consumption, RAPL's
//! `energy_uj`), integrated from their deltas; instantaneous power is reported beside it and is
//! never integrated into energy.

use serde::{Deserialize, Serialize};

/// The query parameter of `GET /v1/telemetry`: the last sequence number the caller has.
pub const SINCE_PARAM: &str = "since";

/// The answer to `GET /v1/telemetry?since=SEQ`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryBatch {
    /// Names this engine process. When it changes the engine restarted: its sequence numbers
    /// and energy totals started over, so ask again with `since=0`.
    pub instance: String,
    /// How often the engine samples.
    pub interval_ms: u64,
    /// How many samples the engine keeps; older ones are dropped.
    pub capacity: u32,
    /// The newest sequence number taken so far; 0 before the first sample. A `since` beyond it
    /// (a number from an earlier instance) gets no samples.
    pub latest_seq: u64,
    /// Samples after `since` that the ring dropped before this request: the gap between `since`
    /// and the first sample here.
    pub missed: u64,
    /// The samples after `since`, oldest first, with consecutive sequence numbers.
    pub samples: Vec<TelemetrySample>,
}

/// One sample: when, and what the source read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetrySample {
    /// 1 for the engine's first sample, then one more for each.
    pub seq: u64,
    /// Wall-clock time of the sample, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// Milliseconds since the engine began sampling, on the monotonic clock: intervals between
    /// samples that a wall-clock step does not distort.
    pub uptime_ms: u64,
    pub reading: Reading,
}

/// What the engine's telemetry source read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Reading {
    /// NVIDIA GPUs through NVML (a GPU engine reads its own GPU).
    Nvml {
        /// The user-space driver version; a change is a driver reload.
        driver_version: String,
        gpus: Vec<GpuSample>,
    },
    /// CPU package energy from RAPL (`/sys/class/powercap/intel-rapl:N`), for an engine on the
    /// CPU.
    Rapl { packages: Vec<PackageSample> },
    /// The source could not be read this time; the next sample tries again.
    Unavailable {
        /// Which source was tried.
        tried: SourceKind,
        kind: UnavailableKind,
        /// One line saying why and, where there is one, what to do about it.
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Nvml,
    Rapl,
}

/// Why a source could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnavailableKind {
    /// The NVML library is not installed.
    LibraryNotFound,
    /// The NVIDIA kernel module is not loaded.
    DriverNotLoaded,
    /// The kernel module and the user-space library are different driver versions.
    VersionMismatch,
    /// The files or device exist but this process may not read them (RAPL's `energy_uj` is
    /// root-only on current kernels).
    NoPermission,
    /// No such GPU, or no RAPL package domain.
    NoDevice,
    /// The host has no such interface (no powercap, a virtual machine).
    NotSupported,
    /// Anything else; the reason says what.
    Failed,
}

/// One GPU. A field NVML could not read is `null`, and [`GpuSample::unreadable`] says why.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GpuSample {
    /// NVML's index (PCI bus order).
    pub index: u32,
    pub uuid: Option<String>,
    pub name: Option<String>,
    /// In sysfs form (`0000:07:00.0`).
    pub pci_bus_id: Option<String>,
    /// Percent of the last sample period in which a kernel ran.
    pub utilisation_gpu_percent: Option<u32>,
    /// Percent of the last sample period in which device memory was read or written.
    pub utilisation_memory_percent: Option<u32>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    /// Board power draw now (milliwatts). A reading of the moment, for display: energy comes
    /// from the energy counter, never from integrating this.
    pub power_mw: Option<u32>,
    /// The enforced power limit (milliwatts).
    pub power_limit_mw: Option<u32>,
    /// NVML's total energy consumption counter: millijoules since the driver loaded.
    pub energy_counter_mj: Option<u64>,
    /// Energy integrated from the counter since the engine began sampling.
    pub energy: Option<EnergySample>,
    pub temperature_celsius: Option<u32>,
    pub sm_clock_mhz: Option<u32>,
    pub memory_clock_mhz: Option<u32>,
    /// Volatile (since the driver loaded) corrected ECC errors.
    pub ecc_corrected_volatile: Option<u64>,
    /// Volatile uncorrected ECC errors.
    pub ecc_uncorrected_volatile: Option<u64>,
    /// Why the clocks are held down now; `bits` 0 or only `gpu_idle` means not throttled.
    pub throttle_reasons: Option<ThrottleReasons>,
    /// The fields left `null`, each with NVML's answer (`not supported` on GPUs without the
    /// feature, such as ECC on consumer boards).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<Unreadable>,
}

/// NVML's clock event (throttle) reasons: the raw bitmask and the name of each bit set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleReasons {
    pub bits: u64,
    /// `gpu_idle`, `applications_clocks_setting`, `sw_power_cap`, `hw_slowdown`,
    /// `sync_boost`, `sw_thermal_slowdown`, `hw_thermal_slowdown`, `hw_power_brake_slowdown`,
    /// `display_clock_setting`; a bit this release does not know is `bit_N`.
    pub names: Vec<String>,
}

/// A field that could not be read, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreadable {
    pub field: String,
    pub reason: String,
}

/// One RAPL package domain (`/sys/class/powercap/intel-rapl:N`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageSample {
    /// The powercap zone (`intel-rapl:0`).
    pub zone: String,
    /// The domain's name (`package-0`).
    pub name: String,
    /// The `energy_uj` counter: microjoules, wrapping to 0 after `max_energy_range_uj`.
    pub energy_counter_uj: u64,
    pub max_energy_range_uj: u64,
    /// Energy integrated from the counter since the engine began sampling.
    pub energy: Option<EnergySample>,
}

/// Energy integrated from a hardware counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnergySample {
    /// Energy since the engine began sampling this counter (millijoules). It never decreases.
    pub total_mj: u64,
    /// Energy since this counter's previous sample (`total_mj` minus the previous total).
    pub delta_mj: u64,
    /// Something other than a plain increase happened to the counter since its previous sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<CounterEvent>,
}

/// What happened to an energy counter between two samples, other than counting up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CounterEvent {
    /// The counter's first sample: the baseline, no energy counted.
    First,
    /// The counter went backwards (NVML: the driver reloaded): the new value is counted from
    /// zero.
    Reset,
    /// The counter passed its maximum and started again from zero (RAPL).
    Wrapped,
    /// The counter belongs to another device or driver load than before (a new UUID, a new
    /// driver version, a new RAPL range): the new value is counted from zero.
    IdentityChanged,
    /// The delta would mean more power than any such device draws over the interval: it is
    /// dropped, and the counter's new value is the baseline.
    Implausible,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_tagged_by_source() {
        let reading = Reading::Unavailable {
            tried: SourceKind::Rapl,
            kind: UnavailableKind::NoPermission,
            reason: "energy_uj is root-only".into(),
        };
        let json = serde_json::to_string(&reading).expect("serialises");
        assert_eq!(
            json,
            r#"{"source":"unavailable","tried":"rapl","kind":"no_permission","reason":"energy_uj is root-only"}"#
        );
        assert_eq!(
            serde_json::from_str::<Reading>(&json).expect("parses"),
            reading
        );
    }

    #[test]
    fn a_plain_increase_has_no_event_on_the_wire() {
        let energy = EnergySample {
            total_mj: 10,
            delta_mj: 4,
            event: None,
        };
        assert_eq!(
            serde_json::to_string(&energy).expect("serialises"),
            r#"{"total_mj":10,"delta_mj":4}"#
        );
        let first = EnergySample {
            event: Some(CounterEvent::First),
            ..energy
        };
        assert_eq!(
            serde_json::to_string(&first).expect("serialises"),
            r#"{"total_mj":10,"delta_mj":4,"event":"first"}"#
        );
    }
}

//! NVML: loading the library (shared with `moebox provision`) and sampling one GPU.
//!
//! `libnvidia-ml.so.1` is loaded at run time through `nvml-wrapper`, never linked: a host
//! without the NVIDIA driver runs the same binary, and the missing library is a state
//! ([`NvmlUnavailable`]) that callers report, not a crash.

use std::{ffi::OsStr, fmt};

use moebox_protocol::telemetry::{
    GpuSample, Reading, SourceKind, ThrottleReasons, UnavailableKind, Unreadable,
};
use nvml_wrapper::{
    Device, Nvml,
    enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor},
    error::{Bits, NvmlError},
};
use serde::{Deserialize, Serialize};

use crate::Source;

/// The NVML library the driver's user space installs (the unversioned `.so` is only in
/// development packages).
pub const NVML_LIBRARY: &str = "libnvidia-ml.so.1";

/// Why NVML could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NvmlFailure {
    /// `libnvidia-ml.so.1` is not installed.
    LibraryNotFound,
    /// The kernel module is not loaded.
    DriverNotLoaded,
    /// The kernel module and the user-space library are different driver versions.
    VersionMismatch,
    NoPermission,
    Other,
}

/// NVML could not be opened: why, in one line naming the library or the call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct NvmlUnavailable {
    pub failure: NvmlFailure,
    pub message: String,
}

/// Loads and initialises NVML. The one place that does, for provisioning and telemetry alike.
pub fn open() -> Result<Nvml, NvmlUnavailable> {
    Nvml::builder()
        .lib_path(OsStr::new(NVML_LIBRARY))
        .init()
        .map_err(|err| NvmlUnavailable {
            failure: failure_of(&err),
            message: format!("{NVML_LIBRARY}: {err}"),
        })
}

fn failure_of(err: &NvmlError) -> NvmlFailure {
    match err {
        NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound => NvmlFailure::LibraryNotFound,
        NvmlError::DriverNotLoaded => NvmlFailure::DriverNotLoaded,
        NvmlError::LibRmVersionMismatch => NvmlFailure::VersionMismatch,
        NvmlError::NoPermission => NvmlFailure::NoPermission,
        _ => NvmlFailure::Other,
    }
}

impl From<NvmlFailure> for UnavailableKind {
    fn from(failure: NvmlFailure) -> Self {
        match failure {
            NvmlFailure::LibraryNotFound => Self::LibraryNotFound,
            NvmlFailure::DriverNotLoaded => Self::DriverNotLoaded,
            NvmlFailure::VersionMismatch => Self::VersionMismatch,
            NvmlFailure::NoPermission => Self::NoPermission,
            NvmlFailure::Other => Self::Failed,
        }
    }
}

/// NVML writes bus ids as `00000000:07:00.0`; sysfs as `0000:07:00.0`. Both become the sysfs
/// form, lowercase.
pub fn normalise_bus_id(bus_id: &str) -> String {
    let bus_id = bus_id.trim().to_ascii_lowercase();
    match bus_id.split_once(':') {
        Some((domain, rest)) => match u32::from_str_radix(domain, 16) {
            Ok(domain) => format!("{domain:04x}:{rest}"),
            Err(_) => bus_id,
        },
        None => bus_id,
    }
}

/// One GPU through NVML, by NVML index (PCI bus order; the engine's CUDA device index is the
/// same when `CUDA_DEVICE_ORDER=PCI_BUS_ID`).
///
/// The library stays open between samples. An error that means the handle is no longer good
/// (the GPU fell off the bus, the driver was unloaded or replaced) closes it, and the next
/// sample opens NVML again, so a driver reload is survived and shows as a new driver version.
pub struct NvmlGpuSource {
    index: u32,
    nvml: Option<Nvml>,
}

impl fmt::Debug for NvmlGpuSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NvmlGpuSource")
            .field("index", &self.index)
            .field("open", &self.nvml.is_some())
            .finish()
    }
}

impl NvmlGpuSource {
    pub fn new(index: u32) -> Self {
        Self { index, nvml: None }
    }

    fn unavailable(kind: UnavailableKind, reason: String) -> Reading {
        Reading::Unavailable {
            tried: SourceKind::Nvml,
            kind,
            reason,
        }
    }
}

impl Source for NvmlGpuSource {
    fn read(&mut self) -> Reading {
        if self.nvml.is_none() {
            match open() {
                Ok(nvml) => self.nvml = Some(nvml),
                Err(err) => return Self::unavailable(err.failure.into(), err.message),
            }
        }
        let Some(nvml) = &self.nvml else {
            return Self::unavailable(UnavailableKind::Failed, "NVML is not open".to_owned());
        };
        let (reading, handle_broken) = read_gpu(nvml, self.index);
        if handle_broken {
            self.nvml = None;
        }
        reading
    }
}

/// Errors after which the NVML handle must be opened again.
fn breaks_the_handle(err: &NvmlError) -> bool {
    matches!(
        err,
        NvmlError::GpuLost
            | NvmlError::Uninitialized
            | NvmlError::DriverNotLoaded
            | NvmlError::LibRmVersionMismatch
            | NvmlError::ResetRequired
    )
}

/// Reads GPU `index`; the flag says whether the handle must be reopened.
fn read_gpu(nvml: &Nvml, index: u32) -> (Reading, bool) {
    let driver_version = match nvml.sys_driver_version() {
        Ok(version) => version,
        Err(err) => {
            return (
                NvmlGpuSource::unavailable(
                    failure_of(&err).into(),
                    format!("nvmlSystemGetDriverVersion: {err}"),
                ),
                true,
            );
        }
    };
    let device = match nvml.device_by_index(index) {
        Ok(device) => device,
        Err(err) => {
            let kind = match &err {
                NvmlError::InvalidArg | NvmlError::NotFound => UnavailableKind::NoDevice,
                NvmlError::NoPermission => UnavailableKind::NoPermission,
                _ => UnavailableKind::Failed,
            };
            let count = nvml
                .device_count()
                .map(|n| format!("NVML sees {n} GPUs"))
                .unwrap_or_else(|e| format!("NVML cannot count the GPUs: {e}"));
            return (
                NvmlGpuSource::unavailable(
                    kind,
                    format!("nvmlDeviceGetHandleByIndex({index}): {err} ({count})"),
                ),
                breaks_the_handle(&err),
            );
        }
    };
    let mut fields = Fields::default();
    let gpu = read_device(index, &device, &mut fields);
    (
        Reading::Nvml {
            driver_version,
            gpus: vec![gpu],
        },
        fields.broken,
    )
}

/// Collects why fields could not be read.
#[derive(Default)]
struct Fields {
    unreadable: Vec<Unreadable>,
    broken: bool,
}

impl Fields {
    fn take<T>(&mut self, field: &str, result: Result<T, NvmlError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                self.broken |= breaks_the_handle(&err);
                let reason = match err {
                    NvmlError::NotSupported => "not supported".to_owned(),
                    err => err.to_string(),
                };
                self.unreadable.push(Unreadable {
                    field: field.to_owned(),
                    reason,
                });
                None
            }
        }
    }
}

fn read_device(index: u32, device: &Device<'_>, fields: &mut Fields) -> GpuSample {
    let memory = fields.take("memory", device.memory_info());
    let utilisation = fields.take("utilisation", device.utilization_rates());
    let throttle = match device.current_throttle_reasons_strict() {
        Ok(reasons) => Ok(reasons.bits()),
        // A bit newer than nvml-wrapper's table: keep the raw mask and name it by number.
        Err(NvmlError::IncorrectBits(Bits::U64(bits))) => Ok(bits),
        Err(err) => Err(err),
    };
    let mut sample = GpuSample {
        index,
        uuid: fields.take("uuid", device.uuid()),
        name: fields.take("name", device.name()),
        pci_bus_id: fields.take(
            "pci_bus_id",
            device.pci_info().map(|info| normalise_bus_id(&info.bus_id)),
        ),
        utilisation_gpu_percent: utilisation.as_ref().map(|u| u.gpu),
        utilisation_memory_percent: utilisation.as_ref().map(|u| u.memory),
        memory_used_bytes: memory.as_ref().map(|m| m.used),
        memory_total_bytes: memory.as_ref().map(|m| m.total),
        power_mw: fields.take("power_mw", device.power_usage()),
        power_limit_mw: fields.take("power_limit_mw", device.enforced_power_limit()),
        energy_counter_mj: fields.take("energy_counter_mj", device.total_energy_consumption()),
        energy: None,
        temperature_celsius: fields.take(
            "temperature_celsius",
            device.temperature(TemperatureSensor::Gpu),
        ),
        sm_clock_mhz: fields.take("sm_clock_mhz", device.clock_info(Clock::SM)),
        memory_clock_mhz: fields.take("memory_clock_mhz", device.clock_info(Clock::Memory)),
        ecc_corrected_volatile: fields.take(
            "ecc_corrected_volatile",
            device.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile),
        ),
        ecc_uncorrected_volatile: fields.take(
            "ecc_uncorrected_volatile",
            device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
        ),
        throttle_reasons: fields
            .take("throttle_reasons", throttle)
            .map(throttle_reasons),
        unreadable: Vec::new(),
    };
    sample.unreadable = std::mem::take(&mut fields.unreadable);
    sample
}

/// NVML's clock event reason bits (`nvmlClocksEventReason*` in `nvml.h`) and their names.
const THROTTLE_REASON_NAMES: [(u64, &str); 9] = [
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
];

/// The bitmask with the name of each bit set.
pub fn throttle_reasons(bits: u64) -> ThrottleReasons {
    let names = (0..u64::BITS)
        .map(|bit| 1u64 << bit)
        .filter(|mask| bits & mask != 0)
        .map(|mask| {
            THROTTLE_REASON_NAMES
                .iter()
                .find(|(known, _)| *known == mask)
                .map(|(_, name)| (*name).to_owned())
                .unwrap_or_else(|| format!("bit_{}", mask.trailing_zeros()))
        })
        .collect();
    ThrottleReasons { bits, names }
}

/// Keeps the table and nvml-wrapper's flags from drifting apart.
#[cfg(test)]
fn wrapper_bits() -> [u64; 9] {
    use nvml_wrapper::bitmasks::device::ThrottleReasons as NvmlThrottleReasons;
    [
        NvmlThrottleReasons::GPU_IDLE,
        NvmlThrottleReasons::APPLICATIONS_CLOCKS_SETTING,
        NvmlThrottleReasons::SW_POWER_CAP,
        NvmlThrottleReasons::HW_SLOWDOWN,
        NvmlThrottleReasons::SYNC_BOOST,
        NvmlThrottleReasons::SW_THERMAL_SLOWDOWN,
        NvmlThrottleReasons::HW_THERMAL_SLOWDOWN,
        NvmlThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
        NvmlThrottleReasons::DISPLAY_CLOCK_SETTING,
    ]
    .map(|flag| flag.bits())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvml_that_cannot_open_is_a_reported_state_not_a_crash() {
        let mut source = NvmlGpuSource::new(0);
        match open() {
            // The development machine and CI: no NVIDIA driver, so no library.
            Err(err) => {
                eprintln!("NVML on this host: {:?}: {err}", err.failure);
                assert_ne!(err.failure, NvmlFailure::Other, "{err}");
                assert!(err.message.starts_with(NVML_LIBRARY), "{err}");
                for _ in 0..2 {
                    // Asked again at every sample, and again just as unavailable.
                    let reading = source.read();
                    let Reading::Unavailable {
                        tried,
                        kind,
                        reason,
                    } = reading
                    else {
                        panic!("{reading:?}");
                    };
                    assert_eq!(
                        (tried, kind),
                        (SourceKind::Nvml, UnavailableKind::from(err.failure))
                    );
                    assert_eq!(reason, err.message);
                }
            }
            // A GPU host (the gpu_ test in tests/gpu.rs checks the values there).
            Ok(_) => {
                let reading = source.read();
                assert!(
                    matches!(&reading, Reading::Nvml { gpus, .. } if gpus.len() == 1),
                    "{reading:?}"
                );
            }
        }
    }

    #[test]
    fn throttle_reasons_are_named_bit_by_bit() {
        assert_eq!(throttle_reasons(0).names, Vec::<String>::new());
        let reasons = throttle_reasons(0x1 | 0x4 | 0x40);
        assert_eq!(reasons.bits, 0x45);
        assert_eq!(
            reasons.names,
            ["gpu_idle", "sw_power_cap", "hw_thermal_slowdown"]
        );
        // A bit from a newer driver keeps its place in the mask and gets a name by number.
        assert_eq!(
            throttle_reasons(0x8 | 0x400).names,
            ["hw_slowdown", "bit_10"]
        );
    }

    #[test]
    fn the_name_table_matches_nvml_wrapper() {
        let table: Vec<u64> = THROTTLE_REASON_NAMES
            .iter()
            .map(|(bits, _)| *bits)
            .collect();
        assert_eq!(table, wrapper_bits());
    }

    #[test]
    fn nvml_bus_ids_normalise_to_sysfs_form() {
        assert_eq!(normalise_bus_id("00000000:07:00.0"), "0000:07:00.0");
        assert_eq!(normalise_bus_id("0000:0F:00.0"), "0000:0f:00.0");
    }

    #[test]
    fn failures_map_to_wire_kinds() {
        assert_eq!(
            UnavailableKind::from(NvmlFailure::DriverNotLoaded),
            UnavailableKind::DriverNotLoaded
        );
        assert_eq!(
            UnavailableKind::from(NvmlFailure::Other),
            UnavailableKind::Failed
        );
        assert_eq!(
            failure_of(&NvmlError::LibRmVersionMismatch),
            NvmlFailure::VersionMismatch
        );
    }
}

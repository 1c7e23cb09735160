//! What NVML says about each GPU, as plain data.
//!
//! The live source loads `libnvidia-ml.so.1` at run time through `nvml-wrapper` (with
//! `moebox-telemetry`'s loader, the one the engines use too); a missing library or driver is a
//! state ([`NvmlState::Unavailable`]), not a crash. The snapshot is
//! serialisable: it goes into `provision.json` as is, and the tests feed recorded snapshots
//! back through [`FixedNvml`].

use moebox_telemetry::nvml::normalise_bus_id;
pub use moebox_telemetry::nvml::{NVML_LIBRARY, NvmlFailure};
use nvml_wrapper::{
    Device,
    enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor, TemperatureThreshold},
    enums::device::SampleValue,
    error::NvmlError,
    structs::device::FieldId,
    sys_exports::field_id::{
        NVML_FI_DEV_REMAPPED_COR, NVML_FI_DEV_REMAPPED_FAILURE, NVML_FI_DEV_REMAPPED_PENDING,
        NVML_FI_DEV_REMAPPED_UNC,
    },
};
use serde::{Deserialize, Serialize};

/// NVML's state for this run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum NvmlState {
    /// Not asked (a captured tree, or no GPU to ask about).
    NotConsulted {
        reason: String,
    },
    /// Asked, and it could not answer.
    Unavailable {
        failure: NvmlFailure,
        message: String,
    },
    Loaded(NvmlSnapshot),
}

impl Default for NvmlState {
    fn default() -> Self {
        Self::NotConsulted {
            reason: "not asked".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NvmlSnapshot {
    /// The user-space driver version (`nvmlSystemGetDriverVersion`).
    pub driver_version: String,
    pub nvml_version: Reading<String>,
    /// The CUDA version the driver supports, as NVML encodes it (13000 = 13.0).
    pub cuda_driver_version: Reading<i32>,
    pub devices: Vec<NvmlGpu>,
}

/// One NVML query's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reading<T> {
    Value(T),
    NotSupported,
    Error(String),
}

impl<T> Reading<T> {
    pub fn value(&self) -> Option<&T> {
        match self {
            Self::Value(value) => Some(value),
            _ => None,
        }
    }

    fn from_result(result: Result<T, NvmlError>) -> Self {
        match result {
            Ok(value) => Self::Value(value),
            Err(NvmlError::NotSupported) => Self::NotSupported,
            Err(err) => Self::Error(err.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NvmlGpu {
    pub index: u32,
    /// In sysfs form (`0000:07:00.0`).
    pub pci_bus_id: String,
    pub name: Reading<String>,
    pub uuid: Reading<String>,
    pub persistence_mode: Reading<bool>,
    pub ecc: Reading<EccMode>,
    pub ecc_uncorrected_volatile: Reading<u64>,
    pub ecc_uncorrected_aggregate: Reading<u64>,
    pub ecc_corrected_volatile: Reading<u64>,
    pub remapped_rows: Reading<RemappedRows>,
    pub mig: Reading<MigModes>,
    pub pcie_current_generation: Reading<u32>,
    /// The highest generation this GPU in this slot can reach (NVML's "device and system").
    pub pcie_max_generation: Reading<u32>,
    pub pcie_current_width: Reading<u32>,
    pub pcie_max_width: Reading<u32>,
    pub temperature_celsius: Reading<u32>,
    pub slowdown_celsius: Reading<u32>,
    pub shutdown_celsius: Reading<u32>,
    pub power_limit_milliwatts: Reading<u32>,
    pub default_power_limit_milliwatts: Reading<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EccMode {
    pub current: bool,
    pub pending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemappedRows {
    pub corrected: u64,
    pub uncorrected: u64,
    pub pending: bool,
    pub failure: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigModes {
    pub current: bool,
    pub pending: bool,
}

impl NvmlSnapshot {
    pub fn device(&self, pci: &str) -> Option<&NvmlGpu> {
        self.devices.iter().find(|d| d.pci_bus_id == pci)
    }
}

/// Where the NVML answers come from.
pub trait NvmlSource {
    fn snapshot(&mut self) -> NvmlState;
}

/// The machine's NVML.
#[derive(Debug, Default)]
pub struct LiveNvml;

impl NvmlSource for LiveNvml {
    fn snapshot(&mut self) -> NvmlState {
        let nvml = match moebox_telemetry::nvml::open() {
            Ok(nvml) => nvml,
            Err(err) => {
                return NvmlState::Unavailable {
                    failure: err.failure,
                    message: err.message,
                };
            }
        };
        let driver_version = match nvml.sys_driver_version() {
            Ok(version) => version,
            Err(err) => {
                return NvmlState::Unavailable {
                    failure: NvmlFailure::Other,
                    message: format!("nvmlSystemGetDriverVersion: {err}"),
                };
            }
        };
        let count = match nvml.device_count() {
            Ok(count) => count,
            Err(err) => {
                return NvmlState::Unavailable {
                    failure: NvmlFailure::Other,
                    message: format!("nvmlDeviceGetCount: {err}"),
                };
            }
        };
        let mut devices = Vec::new();
        for index in 0..count {
            // A device NVML cannot open (fallen off the bus) is left out: the PCI scan still
            // lists it, and the `nvml` check names the GPUs NVML does not see.
            if let Ok(device) = nvml.device_by_index(index) {
                devices.push(read_device(index, &device));
            }
        }
        NvmlState::Loaded(NvmlSnapshot {
            driver_version,
            nvml_version: Reading::from_result(nvml.sys_nvml_version()),
            cuda_driver_version: Reading::from_result(nvml.sys_cuda_driver_version()),
            devices,
        })
    }
}

fn read_device(index: u32, device: &Device<'_>) -> NvmlGpu {
    let pci_bus_id = device
        .pci_info()
        .map(|info| normalise_bus_id(&info.bus_id))
        .unwrap_or_default();
    NvmlGpu {
        index,
        pci_bus_id,
        name: Reading::from_result(device.name()),
        uuid: Reading::from_result(device.uuid()),
        persistence_mode: Reading::from_result(device.is_in_persistent_mode()),
        ecc: Reading::from_result(device.is_ecc_enabled().map(|state| EccMode {
            current: state.currently_enabled,
            pending: state.pending_enabled,
        })),
        ecc_uncorrected_volatile: Reading::from_result(
            device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
        ),
        ecc_uncorrected_aggregate: Reading::from_result(
            device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Aggregate),
        ),
        ecc_corrected_volatile: Reading::from_result(
            device.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile),
        ),
        remapped_rows: remapped_rows(device),
        mig: Reading::from_result(device.mig_mode().map(|mode| MigModes {
            current: mode.current == MIG_ENABLED,
            pending: mode.pending == MIG_ENABLED,
        })),
        pcie_current_generation: Reading::from_result(device.current_pcie_link_gen()),
        pcie_max_generation: Reading::from_result(device.max_pcie_link_gen()),
        pcie_current_width: Reading::from_result(device.current_pcie_link_width()),
        pcie_max_width: Reading::from_result(device.max_pcie_link_width()),
        temperature_celsius: Reading::from_result(device.temperature(TemperatureSensor::Gpu)),
        slowdown_celsius: Reading::from_result(
            device.temperature_threshold(TemperatureThreshold::Slowdown),
        ),
        shutdown_celsius: Reading::from_result(
            device.temperature_threshold(TemperatureThreshold::Shutdown),
        ),
        power_limit_milliwatts: Reading::from_result(device.enforced_power_limit()),
        default_power_limit_milliwatts: Reading::from_result(
            device.power_management_limit_default(),
        ),
    }
}

/// `NVML_DEVICE_MIG_ENABLE`.
const MIG_ENABLED: u32 = 1;

/// Row remapping (Ampere and later) through field values: nvml-wrapper has no safe wrapper for
/// `nvmlDeviceGetRemappedRows`, and the field ids carry the same four numbers.
fn remapped_rows(device: &Device<'_>) -> Reading<RemappedRows> {
    let ids = [
        NVML_FI_DEV_REMAPPED_COR,
        NVML_FI_DEV_REMAPPED_UNC,
        NVML_FI_DEV_REMAPPED_PENDING,
        NVML_FI_DEV_REMAPPED_FAILURE,
    ]
    .map(FieldId);
    let samples = match device.field_values_for(&ids) {
        Ok(samples) => samples,
        Err(err) => return Reading::from_result(Err(err)),
    };
    let mut values = [0u64; 4];
    for (slot, sample) in values.iter_mut().zip(samples) {
        let value = sample.and_then(|s| s.value);
        *slot = match value {
            Ok(SampleValue::U32(v)) => u64::from(v),
            Ok(SampleValue::U64(v)) => v,
            Ok(SampleValue::I64(v)) => u64::try_from(v).unwrap_or(0),
            Ok(SampleValue::F64(v)) => v as u64,
            Err(err) => return Reading::from_result(Err(err)),
        };
    }
    Reading::Value(RemappedRows {
        corrected: values[0],
        uncorrected: values[1],
        pending: values[2] != 0,
        failure: values[3] != 0,
    })
}

/// A recorded answer: tests, and captured trees (where the machine's NVML is not the one the
/// tree came from).
#[derive(Debug, Clone)]
pub struct FixedNvml(pub NvmlState);

impl NvmlSource for FixedNvml {
    fn snapshot(&mut self) -> NvmlState {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_nvml_without_a_driver_is_a_state_not_a_crash() {
        // This test runs everywhere; on a machine without the NVIDIA driver the library is
        // absent, on a GPU host it loads. Either way it must return.
        match LiveNvml.snapshot() {
            NvmlState::Unavailable { failure, message } => {
                assert!(message.contains(NVML_LIBRARY), "{message}");
                assert_ne!(failure, NvmlFailure::Other, "{message}");
            }
            NvmlState::Loaded(snapshot) => assert!(!snapshot.driver_version.is_empty()),
            NvmlState::NotConsulted { .. } => panic!("the live source always asks"),
        }
    }

    #[test]
    fn readings_serialise_readably() {
        let json = serde_json::to_string(&[
            Reading::Value(3u32),
            Reading::NotSupported,
            Reading::Error("GPU lost".into()),
        ])
        .expect("serialises");
        assert_eq!(
            json,
            r#"[{"value":3},"not_supported",{"error":"GPU lost"}]"#
        );
    }
}

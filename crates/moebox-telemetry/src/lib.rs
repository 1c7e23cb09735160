//! What the hardware says an engine costs in energy, and how busy and healthy its GPU is.
//!
//! - [`nvml`]: NVML loaded at run time (the one loader, shared with `moebox provision`) and a
//!   [`Source`] that reads one GPU: utilisation, memory, power, the energy counter,
//!   temperature, clocks, ECC errors, throttle reasons.
//! - [`rapl`]: CPU package energy from the kernel's powercap tree, for an engine on the CPU.
//! - [`energy`]: energy integrated from a counter's deltas (resets, driver reloads, RAPL
//!   wraparound, missed samples); power readings are never integrated.
//! - [`sampler`]: readings into samples, and the thread that samples every interval.
//! - [`ring`]: the bounded ring of samples the engine serves as `GET /v1/telemetry?since=SEQ`.
//!
//! Sources are a trait so tests feed recorded readings ([`sampler::Recorded`]). A source that
//! cannot be read is a [`Reading::Unavailable`] sample with the reason, never an error that
//! stops the engine.

#![forbid(unsafe_code)]

use std::path::PathBuf;

pub use moebox_protocol::telemetry::Reading;

pub mod energy;
pub mod nvml;
pub mod rapl;
pub mod ring;
pub mod sampler;

pub use ring::{SampleRing, TelemetryLog};
pub use sampler::{Recorded, Sampler, SamplerThread};

/// Samples an engine keeps for its poller: an hour at the default 5 s interval, so a gateway
/// down that long loses no sample (and even a longer gap loses no energy: totals are
/// cumulative). At most a few hundred KiB of JSON for one GPU.
pub const RING_CAPACITY: usize = 720;

/// Where readings come from.
pub trait Source: Send {
    /// One reading. May block (NVML calls can); never fails: what cannot be read is a
    /// [`Reading::Unavailable`] with the reason.
    fn read(&mut self) -> Reading;
}

/// What a live source measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One GPU through NVML, by index.
    Gpu(u32),
    /// The CPU packages through RAPL, from this powercap directory
    /// ([`rapl::POWERCAP_DIR`] on a real host).
    CpuPackages(PathBuf),
}

/// The machine's source for `target`.
pub fn live_source(target: Target) -> Box<dyn Source> {
    match target {
        Target::Gpu(index) => Box::new(nvml::NvmlGpuSource::new(index)),
        Target::CpuPackages(powercap) => Box::new(rapl::RaplSource::new(powercap)),
    }
}

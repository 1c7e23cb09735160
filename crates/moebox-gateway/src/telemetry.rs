//! The telemetry poller: asks each engine for the samples it took since the last poll
//! (`GET /v1/telemetry?since=SEQ`) and stores them in the ledger through the writer.
//!
//! Energy comes from the engine's integrated hardware counter (`total_mj`, which already
//! survives counter resets and driver reloads): a stored sample's energy is the difference
//! from the previous sample of the same engine run and source, so samples the engine's ring
//! dropped between two polls (`missed`) still have their energy counted, in the next one.
//! A restarted engine (a new `instance`) starts over from its first sample. Instantaneous
//! power is stored as read and never integrated.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use moebox_ledger::{TelemetrySample, TelemetrySource, UnixMillis, UsageWriter};
use moebox_protocol::telemetry::{EnergySample, Reading, TelemetryBatch};
use tokio::sync::watch;

use crate::engine_client;

/// Where one engine's samples were read up to.
#[derive(Debug, Default)]
pub struct Cursor {
    instance: String,
    since: u64,
    /// The last `total_mj` seen per source in this engine run.
    totals: HashMap<TelemetrySource, u64>,
}

impl Cursor {
    /// The ledger rows for `batch`, advancing the cursor.
    pub fn rows(&mut self, batch: &TelemetryBatch) -> Vec<TelemetrySample> {
        if batch.instance != self.instance {
            *self = Self {
                instance: batch.instance.clone(),
                ..Self::default()
            };
        }
        let mut rows = Vec::new();
        for sample in &batch.samples {
            if sample.seq <= self.since {
                continue;
            }
            self.since = sample.seq;
            let at = UnixMillis(i64::try_from(sample.unix_ms).unwrap_or(i64::MAX));
            match &sample.reading {
                Reading::Nvml { gpus, .. } => {
                    for gpu in gpus {
                        let source = TelemetrySource::Gpu(gpu.index);
                        let mut row = TelemetrySample::new(source, at);
                        row.utilisation_percent = gpu.utilisation_gpu_percent.map(f64::from);
                        row.memory_used_bytes = gpu.memory_used_bytes;
                        row.memory_total_bytes = gpu.memory_total_bytes;
                        row.power_watts = gpu.power_mw.map(|mw| f64::from(mw) / 1000.0);
                        row.energy_joules = self.energy(source, gpu.energy);
                        row.temperature_celsius = gpu.temperature_celsius.map(f64::from);
                        row.sm_clock_mhz = gpu.sm_clock_mhz;
                        row.ecc_errors =
                            match (gpu.ecc_corrected_volatile, gpu.ecc_uncorrected_volatile) {
                                (None, None) => None,
                                (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
                            };
                        row.throttle_reasons = gpu.throttle_reasons.as_ref().map(|t| t.bits);
                        rows.push(row);
                    }
                }
                Reading::Rapl { packages } => {
                    // The CPU packages together are one source.
                    let total = packages.iter().map(|p| p.energy).try_fold(
                        (0u64, 0u64),
                        |(total, delta), energy| {
                            energy.map(|e| (total + e.total_mj, delta + e.delta_mj))
                        },
                    );
                    let mut row = TelemetrySample::new(TelemetrySource::Cpu, at);
                    row.energy_joules = self.energy(
                        TelemetrySource::Cpu,
                        total.map(|(total_mj, delta_mj)| EnergySample {
                            total_mj,
                            delta_mj,
                            event: None,
                        }),
                    );
                    rows.push(row);
                }
                Reading::Unavailable { .. } => {}
            }
        }
        rows
    }

    fn energy(&mut self, source: TelemetrySource, energy: Option<EnergySample>) -> Option<f64> {
        let energy = energy?;
        let millijoules = match self.totals.insert(source, energy.total_mj) {
            Some(previous) => energy.total_mj.saturating_sub(previous),
            None => energy.delta_mj,
        };
        Some(millijoules as f64 / 1000.0)
    }
}

/// Polls each engine every `interval` and stores what it sampled, until `stop` turns true.
pub fn spawn_pollers(
    sockets: Vec<PathBuf>,
    writer: UsageWriter,
    interval: Duration,
    timeout: Duration,
    stop: watch::Receiver<bool>,
) {
    for socket in sockets {
        let writer = writer.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let socket = Arc::new(socket);
            let mut cursor = Cursor::default();
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stop.changed() => return,
                }
                match engine_client::telemetry(&socket, cursor.since, timeout).await {
                    Ok(batch) => {
                        failing = false;
                        let rows = cursor.rows(&batch);
                        if !rows.is_empty()
                            && let Err(error) = writer.record_telemetry(rows).await
                        {
                            tracing::warn!(%error, socket = %socket.display(), "telemetry not stored");
                        }
                    }
                    Err(error) => {
                        if !failing {
                            tracing::debug!(%error, socket = %socket.display(), "telemetry poll failed");
                            failing = true;
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use moebox_protocol::telemetry::{GpuSample, TelemetrySample as Wire};

    use super::*;

    fn batch(instance: &str, samples: Vec<(u64, u64, u64)>, missed: u64) -> TelemetryBatch {
        TelemetryBatch {
            instance: instance.to_owned(),
            interval_ms: 5_000,
            capacity: 720,
            latest_seq: samples.last().map_or(0, |s| s.0),
            missed,
            samples: samples
                .into_iter()
                .map(|(seq, total_mj, delta_mj)| Wire {
                    seq,
                    unix_ms: 1_700_000_000_000 + seq * 5_000,
                    uptime_ms: seq * 5_000,
                    reading: Reading::Nvml {
                        driver_version: "580.65.06".into(),
                        gpus: vec![GpuSample {
                            index: 1,
                            power_mw: Some(250_000),
                            utilisation_gpu_percent: Some(80),
                            energy: Some(EnergySample {
                                total_mj,
                                delta_mj,
                                event: None,
                            }),
                            ..GpuSample::default()
                        }],
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn energy_is_the_difference_of_running_totals_across_polls_and_gaps() {
        let mut cursor = Cursor::default();
        let rows = cursor.rows(&batch("a", vec![(1, 0, 0), (2, 1_250_000, 1_250_000)], 0));
        let joules: Vec<_> = rows.iter().map(|r| r.energy_joules).collect();
        assert_eq!(joules, [Some(0.0), Some(1_250.0)]);
        assert_eq!(rows[0].source, TelemetrySource::Gpu(1));
        assert_eq!(rows[0].power_watts, Some(250.0));
        // Samples 3 and 4 fell out of the ring: sample 5's row carries their energy too.
        let rows = cursor.rows(&batch("a", vec![(5, 5_000_000, 1_250_000)], 2));
        assert_eq!(rows[0].energy_joules, Some(3_750.0));
        // A repeated answer stores nothing twice.
        assert!(
            cursor
                .rows(&batch("a", vec![(5, 5_000_000, 1_250_000)], 0))
                .is_empty()
        );
        // A restarted engine begins again from its own first sample.
        let rows = cursor.rows(&batch("b", vec![(1, 0, 0), (2, 900_000, 900_000)], 0));
        let joules: Vec<_> = rows.iter().map(|r| r.energy_joules).collect();
        assert_eq!(joules, [Some(0.0), Some(900.0)]);
    }
}

//! Turning readings into samples: energy integrated per counter, and the thread that samples
//! every interval into the ring.

use std::{
    collections::{BTreeMap, VecDeque},
    io,
    sync::mpsc::{self, RecvTimeoutError},
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use moebox_protocol::telemetry::{Reading, SourceKind};

use crate::{
    Source,
    energy::{Backwards, EnergyIntegrator, NVML_ENERGY, RAPL_ENERGY},
    ring::TelemetryLog,
};

/// The energy state across readings: one integrator per GPU index and per RAPL zone.
#[derive(Debug, Default)]
pub struct Sampler {
    gpus: BTreeMap<u32, EnergyIntegrator>,
    packages: BTreeMap<String, EnergyIntegrator>,
}

impl Sampler {
    /// Fills in each counter's [`energy`](moebox_protocol::telemetry::EnergySample) for a
    /// reading taken at `at` (monotonic time since sampling began). A counter missing from a
    /// reading (unavailable, not supported) keeps its state: its next reading covers the
    /// longer interval.
    pub fn integrate(&mut self, reading: &mut Reading, at: Duration) {
        match reading {
            Reading::Nvml {
                driver_version,
                gpus,
            } => {
                for gpu in gpus {
                    let Some(counter) = gpu.energy_counter_mj else {
                        continue;
                    };
                    // The counter restarts at every driver load, so the driver version is part
                    // of what the counter is.
                    let device = gpu
                        .uuid
                        .clone()
                        .or_else(|| gpu.pci_bus_id.clone())
                        .unwrap_or_else(|| format!("index {}", gpu.index));
                    let identity = format!("{device}/{driver_version}");
                    let integrator = self
                        .gpus
                        .entry(gpu.index)
                        .or_insert_with(|| EnergyIntegrator::new(NVML_ENERGY));
                    gpu.energy =
                        Some(integrator.observe(&identity, counter, Backwards::Restarts, at));
                }
            }
            Reading::Rapl { packages } => {
                for package in packages {
                    // A different range is a different counter (another CPU, another unit).
                    let identity = format!("{}/{}", package.name, package.max_energy_range_uj);
                    let integrator = self
                        .packages
                        .entry(package.zone.clone())
                        .or_insert_with(|| EnergyIntegrator::new(RAPL_ENERGY));
                    package.energy = Some(integrator.observe(
                        &identity,
                        package.energy_counter_uj,
                        Backwards::WrapsAfter(package.max_energy_range_uj),
                        at,
                    ));
                }
            }
            Reading::Unavailable { .. } => {}
        }
    }
}

/// Readings given in advance: tests, and replays of recorded telemetry. After the last one it
/// keeps answering the last.
#[derive(Debug, Clone)]
pub struct Recorded {
    readings: VecDeque<Reading>,
    last: Option<Reading>,
}

impl Recorded {
    pub fn new(readings: impl IntoIterator<Item = Reading>) -> Self {
        Self {
            readings: readings.into_iter().collect(),
            last: None,
        }
    }
}

impl Source for Recorded {
    fn read(&mut self) -> Reading {
        if let Some(next) = self.readings.pop_front() {
            self.last = Some(next);
        }
        self.last.clone().unwrap_or_else(|| Reading::Unavailable {
            tried: SourceKind::Nvml,
            kind: moebox_protocol::telemetry::UnavailableKind::Failed,
            reason: "nothing was recorded".to_owned(),
        })
    }
}

/// The sampling thread. Its own thread, not a task: an NVML call can block for seconds (a GPU
/// falling off the bus), and neither the model's scheduler thread nor the HTTP runtime may
/// wait on it.
///
/// Dropping it tells the thread to stop at its next wake-up without waiting for it.
#[derive(Debug)]
pub struct SamplerThread {
    stop: Option<mpsc::Sender<()>>,
    finished: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

/// The thread's name, as `top -H` and panics show it.
pub const THREAD_NAME: &str = "moebox-telemetry";

impl SamplerThread {
    /// Samples `source` into `log` now and then every `log.interval()`.
    pub fn start(source: Box<dyn Source>, log: TelemetryLog) -> io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let (done, finished) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || {
                sample_until_stopped(source, &log, &stopped);
                let _ = done.send(());
            })?;
        Ok(Self {
            stop: Some(stop),
            finished,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it at most `timeout` (it may be inside a blocked NVML
    /// call); true when it ended in time.
    pub fn stop(mut self, timeout: Duration) -> bool {
        self.stop = None;
        let ended = !matches!(
            self.finished.recv_timeout(timeout),
            Err(RecvTimeoutError::Timeout)
        );
        if ended && let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        ended
    }
}

fn sample_until_stopped(
    mut source: Box<dyn Source>,
    log: &TelemetryLog,
    stopped: &mpsc::Receiver<()>,
) {
    let interval = log.interval();
    let started = Instant::now();
    let mut sampler = Sampler::default();
    let mut was_available: Option<bool> = None;
    let mut next = started;
    loop {
        let mut reading = source.read();
        let at = started.elapsed();
        sampler.integrate(&mut reading, at);
        report_changes(&reading, &mut was_available);
        log.push(unix_ms_now(), at, reading);
        next += interval;
        let now = Instant::now();
        if next < now {
            // A read that blocked past the next tick: skip the ticks it missed. The counters
            // kept counting, so the next sample's interval is just longer.
            next = now;
        }
        match stopped.recv_timeout(next - now) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Logs when the source becomes unavailable or comes back, not at every sample.
fn report_changes(reading: &Reading, was_available: &mut Option<bool>) {
    let available = !matches!(reading, Reading::Unavailable { .. });
    if *was_available == Some(available) {
        return;
    }
    *was_available = Some(available);
    match reading {
        // A GPU engine without NVML is a production box losing its energy figures; an engine
        // on the CPU is development, where RAPL is often unreadable (a VM, not root).
        Reading::Unavailable {
            tried: SourceKind::Nvml,
            reason,
            ..
        } => tracing::warn!("telemetry unavailable: {reason}"),
        Reading::Unavailable {
            tried: SourceKind::Rapl,
            reason,
            ..
        } => tracing::info!("telemetry unavailable: {reason}"),
        Reading::Nvml {
            driver_version,
            gpus,
        } => {
            let names: Vec<String> = gpus
                .iter()
                .map(|gpu| {
                    format!(
                        "{} {}",
                        gpu.index,
                        gpu.name.as_deref().unwrap_or("(unnamed)")
                    )
                })
                .collect();
            tracing::info!(
                driver_version,
                "telemetry: sampling GPU {} through NVML",
                names.join(", ")
            );
        }
        Reading::Rapl { packages } => {
            let zones: Vec<&str> = packages.iter().map(|p| p.zone.as_str()).collect();
            tracing::info!("telemetry: sampling CPU package energy from RAPL {zones:?}");
        }
    }
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use moebox_protocol::telemetry::{CounterEvent, GpuSample, PackageSample};

    use super::*;

    fn gpu(uuid: &str, counter_mj: Option<u64>) -> GpuSample {
        GpuSample {
            index: 0,
            uuid: Some(uuid.to_owned()),
            power_mw: Some(250_000),
            energy_counter_mj: counter_mj,
            ..GpuSample::default()
        }
    }

    fn nvml(driver: &str, gpu: GpuSample) -> Reading {
        Reading::Nvml {
            driver_version: driver.to_owned(),
            gpus: vec![gpu],
        }
    }

    fn energy_of(reading: &Reading) -> Option<(u64, u64, Option<CounterEvent>)> {
        match reading {
            Reading::Nvml { gpus, .. } => gpus[0].energy.map(|e| (e.total_mj, e.delta_mj, e.event)),
            Reading::Rapl { packages } => packages[0]
                .energy
                .map(|e| (e.total_mj, e.delta_mj, e.event)),
            Reading::Unavailable { .. } => None,
        }
    }

    #[test]
    fn recorded_nvml_readings_integrate_through_a_driver_reload_and_an_outage() {
        let mut source = Recorded::new([
            nvml("580.65.06", gpu("GPU-a", Some(50_000_000))),
            nvml("580.65.06", gpu("GPU-a", Some(51_000_000))),
            // Power is reported, never integrated: a huge instantaneous reading changes nothing.
            nvml(
                "580.65.06",
                GpuSample {
                    power_mw: Some(4_000_000),
                    ..gpu("GPU-a", Some(52_000_000))
                },
            ),
            Reading::Unavailable {
                tried: SourceKind::Nvml,
                kind: moebox_protocol::telemetry::UnavailableKind::DriverNotLoaded,
                reason: "driver reloading".into(),
            },
            // The driver came back (same version): the counter restarted below its old value.
            nvml("580.65.06", gpu("GPU-a", Some(300_000))),
            // A field that could not be read leaves the energy state alone.
            nvml("580.65.06", gpu("GPU-a", None)),
            nvml("580.82.07", gpu("GPU-a", Some(200_000))),
        ]);
        let mut sampler = Sampler::default();
        let energies: Vec<_> = (0..7)
            .map(|n| {
                let mut reading = source.read();
                sampler.integrate(&mut reading, Duration::from_secs(5 * n));
                energy_of(&reading)
            })
            .collect();
        assert_eq!(
            energies,
            [
                Some((0, 0, Some(CounterEvent::First))),
                Some((1_000_000, 1_000_000, None)),
                Some((2_000_000, 1_000_000, None)),
                None,
                Some((2_300_000, 300_000, Some(CounterEvent::Reset))),
                None,
                Some((2_500_000, 200_000, Some(CounterEvent::IdentityChanged))),
            ]
        );
        // The recording is over: the last reading again.
        assert_eq!(
            source.read(),
            nvml("580.82.07", gpu("GPU-a", Some(200_000)))
        );
    }

    #[test]
    fn rapl_packages_integrate_per_zone_across_a_wrap() {
        let package = |zone: &str, counter: u64| PackageSample {
            zone: zone.to_owned(),
            name: format!("package-{}", &zone[zone.len() - 1..]),
            energy_counter_uj: counter,
            max_energy_range_uj: 1_000_000_000,
            energy: None,
        };
        let mut sampler = Sampler::default();
        let mut totals = Vec::new();
        for (n, (a, b)) in [
            (999_000_000, 10_000_000),
            (100_000_000, 60_000_000),
            (400_000_000, 110_000_000),
        ]
        .into_iter()
        .enumerate()
        {
            let mut reading = Reading::Rapl {
                packages: vec![package("intel-rapl:0", a), package("intel-rapl:1", b)],
            };
            sampler.integrate(&mut reading, Duration::from_secs(5 * n as u64));
            let Reading::Rapl { packages } = reading else {
                unreachable!()
            };
            totals.push(
                packages
                    .iter()
                    .map(|p| p.energy.map(|e| (e.total_mj, e.event)))
                    .collect::<Vec<_>>(),
            );
        }
        assert_eq!(
            totals[1],
            [
                // 1 J to the top and 100 J past zero.
                Some((101_000, Some(CounterEvent::Wrapped))),
                Some((50_000, None))
            ]
        );
        assert_eq!(totals[2], [Some((401_000, None)), Some((100_000, None))]);
    }

    #[test]
    fn the_thread_samples_at_its_interval_and_stops_when_asked() {
        let log = TelemetryLog::new("test", Duration::from_millis(20), 1000);
        let readings = (0..1000u64).map(|n| nvml("580.65.06", gpu("GPU-a", Some(n * 1_000))));
        let thread =
            SamplerThread::start(Box::new(Recorded::new(readings)), log.clone()).expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(10);
        while log.since(0).latest_seq < 5 {
            assert!(Instant::now() < deadline, "no samples taken");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(thread.stop(Duration::from_secs(5)), "the thread ends");
        let stopped_at = log.since(0).latest_seq;
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(log.since(0).latest_seq, stopped_at, "no sample after stop");

        let batch = log.since(0);
        let first = &batch.samples[0];
        assert_eq!(first.seq, 1);
        assert_eq!(
            energy_of(&first.reading),
            Some((0, 0, Some(CounterEvent::First)))
        );
        assert_eq!(
            energy_of(&batch.samples[1].reading),
            Some((1_000, 1_000, None))
        );
        assert!(first.unix_ms > 1_700_000_000_000, "{}", first.unix_ms);
        // Paced by the interval, not back to back.
        let last = batch.samples.last().expect("samples");
        assert!(
            last.uptime_ms >= 20 * (last.seq - 1),
            "{} samples in {} ms",
            last.seq,
            last.uptime_ms
        );
    }
}

//! NVML on a real NVIDIA GPU: the live source and the sampler thread, as an engine runs them.
//!
//! Needs a GPU, so its name starts with `gpu_`: `./dev test` leaves it out, and
//! `tests/gpu/run.sh` runs it on GPU 0 while a load keeps that GPU busy.

use std::time::Duration;

use moebox_protocol::telemetry::{CounterEvent, GpuSample, Reading};
use moebox_telemetry::{
    RING_CAPACITY, SamplerThread, Target, TelemetryLog, energy::MAX_PLAUSIBLE_GPU_POWER_W,
    live_source,
};

/// How long the test samples, and how often.
const WINDOW: Duration = Duration::from_secs(6);
const INTERVAL: Duration = Duration::from_millis(250);

#[test]
fn gpu_nvml_samples_of_gpu_0_are_plausible_and_its_energy_rises_under_load() {
    let log = TelemetryLog::new("gpu-test", INTERVAL, RING_CAPACITY);
    let thread = SamplerThread::start(live_source(Target::Gpu(0)), log.clone()).expect("spawn");
    std::thread::sleep(WINDOW);
    assert!(thread.stop(Duration::from_secs(10)), "the sampler stops");
    let batch = log.since(0);
    assert_eq!(batch.missed, 0);
    assert!(
        batch.samples.len() >= 10,
        "{} samples in {WINDOW:?}",
        batch.samples.len()
    );

    let mut gpus: Vec<(u64, &GpuSample)> = Vec::new();
    for sample in &batch.samples {
        let Reading::Nvml {
            driver_version,
            gpus: read,
        } = &sample.reading
        else {
            panic!("sample {}: {:?}", sample.seq, sample.reading);
        };
        assert!(!driver_version.is_empty());
        assert_eq!(read.len(), 1, "the engine's own GPU only");
        gpus.push((sample.uptime_ms, &read[0]));
    }
    let (first_ms, first) = gpus[0];
    let (last_ms, last) = gpus[gpus.len() - 1];
    eprintln!(
        "gpu 0: {} {} {}; driver sample: {}",
        first.name.as_deref().unwrap_or("?"),
        first.uuid.as_deref().unwrap_or("?"),
        first.pci_bus_id.as_deref().unwrap_or("?"),
        serde_json_line(&batch.samples[batch.samples.len() - 1].reading)
    );

    for (at, gpu) in &gpus {
        let context = format!("at {at} ms: {gpu:?}");
        assert_eq!(gpu.index, 0);
        assert!(
            gpu.uuid.as_deref().is_some_and(|u| u.starts_with("GPU-")),
            "{context}"
        );
        assert!(gpu.name.is_some() && gpu.pci_bus_id.is_some(), "{context}");
        let total = gpu.memory_total_bytes.expect("memory total");
        let used = gpu.memory_used_bytes.expect("memory used");
        assert!(total >= 1 << 30 && used <= total, "{context}");
        let power = gpu.power_mw.expect("power");
        assert!(
            (1..=MAX_PLAUSIBLE_GPU_POWER_W * 1_000).contains(&u64::from(power)),
            "{context}"
        );
        assert!(
            gpu.temperature_celsius
                .is_some_and(|t| (1..=110).contains(&t)),
            "{context}"
        );
        assert!(gpu.sm_clock_mhz.is_some_and(|c| c > 0), "{context}");
        assert!(gpu.memory_clock_mhz.is_some_and(|c| c > 0), "{context}");
        assert!(
            gpu.utilisation_gpu_percent.is_some_and(|u| u <= 100),
            "{context}"
        );
        assert!(gpu.throttle_reasons.is_some(), "{context}");
        assert!(gpu.energy_counter_mj.is_some(), "{context}");
    }

    // The counter only counts up, and the integrated total follows it exactly.
    let counters: Vec<u64> = gpus
        .iter()
        .map(|(_, g)| g.energy_counter_mj.expect("counter"))
        .collect();
    assert!(counters.windows(2).all(|w| w[0] <= w[1]), "{counters:?}");
    let energy = |gpu: &GpuSample| gpu.energy.expect("integrated energy");
    assert_eq!(energy(first).event, Some(CounterEvent::First));
    assert!(
        gpus[1..].iter().all(|(_, g)| energy(g).event.is_none()),
        "no reset within the window"
    );
    let total_mj = energy(last).total_mj;
    assert_eq!(total_mj, counters[counters.len() - 1] - counters[0]);
    assert!(total_mj > 0, "the energy counter rose");

    // Energy over time against the power readings: the same watts, roughly (power is a
    // ~1 s average sampled every 250 ms; the counter counts everything).
    let seconds = (last_ms - first_ms) as f64 / 1_000.0;
    let from_counter_w = total_mj as f64 / 1_000.0 / seconds;
    let readings: Vec<f64> = gpus
        .iter()
        .map(|(_, g)| f64::from(g.power_mw.expect("power")) / 1_000.0)
        .collect();
    let mean_reading_w = readings.iter().sum::<f64>() / readings.len() as f64;
    let busiest = gpus
        .iter()
        .filter_map(|(_, g)| g.utilisation_gpu_percent)
        .max()
        .unwrap_or(0);
    eprintln!(
        "energy {total_mj} mJ in {seconds:.2} s = {from_counter_w:.1} W from the counter; \
         mean power reading {mean_reading_w:.1} W; busiest utilisation {busiest}%"
    );
    let ratio = from_counter_w / mean_reading_w;
    assert!(
        (0.5..=2.0).contains(&ratio),
        "counter {from_counter_w:.1} W vs readings {mean_reading_w:.1} W"
    );
    assert!(
        busiest > 0,
        "no GPU utilisation in {WINDOW:?}: was tests/gpu/run.sh's load running?"
    );
}

fn serde_json_line(reading: &Reading) -> String {
    serde_json::to_string(reading).unwrap_or_else(|e| e.to_string())
}

//! Energy from a hardware energy counter: the sum of the counter's deltas, with resets,
//! wraparounds and device changes handled so that no delta is ever negative or absurd.
//!
//! Power readings are instantaneous (an A100's is a ~1 s average at best): integrating them
//! over a 5 s sampling interval would miss every burst in between. The counters count every
//! joule, so energy comes from them alone.

use std::time::Duration;

use moebox_protocol::telemetry::{CounterEvent, EnergySample};

/// No GPU board draws more than this: a delta that would mean more over its interval is a
/// counter we must not trust (the largest boards today, B200 and MI355X, are rated 1.0–1.4 kW).
pub const MAX_PLAUSIBLE_GPU_POWER_W: u64 = 2_000;
/// No CPU package draws more than this (the largest server parts are rated ~500 W).
pub const MAX_PLAUSIBLE_PACKAGE_POWER_W: u64 = 1_000;
/// The shortest interval the plausibility bound assumes: counters update in steps (NVML's
/// about every 20–100 ms), so two samples close together can show a step bigger than the
/// instant between them allows.
pub const MIN_PLAUSIBILITY_WINDOW: Duration = Duration::from_secs(1);

/// How a counter behaves when it goes backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backwards {
    /// It restarted from zero (NVML's counter at a driver load): the new value is the energy
    /// since the restart.
    Restarts,
    /// It wraps to zero after this value (RAPL's `max_energy_range_uj`): the delta is the way
    /// to the top plus the new value.
    WrapsAfter(u64),
}

/// What one counter is: its unit and what no real device exceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterKind {
    /// Microjoules per count (NVML counts millijoules: 1,000; RAPL microjoules: 1).
    pub microjoules_per_count: u64,
    pub max_plausible_power_w: u64,
}

/// NVML's total energy consumption counter.
pub const NVML_ENERGY: CounterKind = CounterKind {
    microjoules_per_count: 1_000,
    max_plausible_power_w: MAX_PLAUSIBLE_GPU_POWER_W,
};
/// RAPL's `energy_uj`.
pub const RAPL_ENERGY: CounterKind = CounterKind {
    microjoules_per_count: 1,
    max_plausible_power_w: MAX_PLAUSIBLE_PACKAGE_POWER_W,
};

/// One counter's running total.
#[derive(Debug, Clone)]
pub struct EnergyIntegrator {
    kind: CounterKind,
    last: Option<Last>,
    total_uj: u64,
}

#[derive(Debug, Clone)]
struct Last {
    identity: String,
    counter: u64,
    at: Duration,
}

impl EnergyIntegrator {
    pub fn new(kind: CounterKind) -> Self {
        Self {
            kind,
            last: None,
            total_uj: 0,
        }
    }

    /// Energy since the first observation, in microjoules.
    pub fn total_uj(&self) -> u64 {
        self.total_uj
    }

    /// Takes the counter's value `counter`, read at `at` (a monotonic time) from the device
    /// and driver load that `identity` names. A sample that was never taken just makes the
    /// next interval longer: the counter kept counting meanwhile.
    pub fn observe(
        &mut self,
        identity: &str,
        counter: u64,
        backwards: Backwards,
        at: Duration,
    ) -> EnergySample {
        let before_mj = self.total_uj / 1_000;
        let Some(last) = &self.last else {
            self.last = Some(Last {
                identity: identity.to_owned(),
                counter,
                at,
            });
            return EnergySample {
                total_mj: before_mj,
                delta_mj: 0,
                event: Some(CounterEvent::First),
            };
        };
        let (counts, mut event) = if identity != last.identity {
            // Another device or driver load: its counter started from zero at that load, which
            // came after our last reading if the bound below lets the value through.
            (counter, Some(CounterEvent::IdentityChanged))
        } else if counter >= last.counter {
            (counter - last.counter, None)
        } else {
            match backwards {
                Backwards::Restarts => (counter, Some(CounterEvent::Reset)),
                // A previous value above the range means the range changed under us: a reset.
                Backwards::WrapsAfter(max) if last.counter <= max => (
                    (max - last.counter).saturating_add(counter),
                    Some(CounterEvent::Wrapped),
                ),
                Backwards::WrapsAfter(_) => (counter, Some(CounterEvent::Reset)),
            }
        };
        let mut delta_uj = counts.saturating_mul(self.kind.microjoules_per_count);
        let window = at.saturating_sub(last.at).max(MIN_PLAUSIBILITY_WINDOW);
        // W × ms × 1,000 = µJ.
        let bound_uj = self
            .kind
            .max_plausible_power_w
            .saturating_mul(u64::try_from(window.as_millis()).unwrap_or(u64::MAX))
            .saturating_mul(1_000);
        if delta_uj > bound_uj {
            tracing::warn!(
                identity,
                counter,
                previous = last.counter,
                delta_uj,
                window_ms = window.as_millis() as u64,
                "energy counter jumped further than any device draws: dropping the delta and counting from its new value"
            );
            delta_uj = 0;
            event = Some(CounterEvent::Implausible);
        }
        self.total_uj = self.total_uj.saturating_add(delta_uj);
        self.last = Some(Last {
            identity: identity.to_owned(),
            counter,
            at,
        });
        let total_mj = self.total_uj / 1_000;
        EnergySample {
            total_mj,
            delta_mj: total_mj - before_mj,
            event,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPU: &str = "GPU-1/580.65.06";
    const NVML: Backwards = Backwards::Restarts;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_first_sample_is_a_baseline() {
        let mut energy = EnergyIntegrator::new(NVML_ENERGY);
        // Days of energy since the driver loaded are not this engine's.
        let first = energy.observe(GPU, 9_000_000_000, NVML, secs(0));
        assert_eq!(
            first,
            EnergySample {
                total_mj: 0,
                delta_mj: 0,
                event: Some(CounterEvent::First)
            }
        );
    }

    #[test]
    fn normal_deltas_add_up() {
        let mut energy = EnergyIntegrator::new(NVML_ENERGY);
        energy.observe(GPU, 1_000_000, NVML, secs(0));
        // 5 s at 300 W = 1,500 J.
        let second = energy.observe(GPU, 2_500_000, NVML, secs(5));
        assert_eq!(
            second,
            EnergySample {
                total_mj: 1_500_000,
                delta_mj: 1_500_000,
                event: None
            }
        );
        let third = energy.observe(GPU, 2_500_100, NVML, secs(10));
        assert_eq!((third.total_mj, third.delta_mj), (1_500_100, 100));
        // A counter that did not move (an idle reading between two updates) adds nothing.
        let fourth = energy.observe(GPU, 2_500_100, NVML, secs(15));
        assert_eq!(
            (fourth.total_mj, fourth.delta_mj, fourth.event),
            (1_500_100, 0, None)
        );
    }

    #[test]
    fn a_counter_that_goes_backwards_was_reset_and_counts_from_zero() {
        let mut energy = EnergyIntegrator::new(NVML_ENERGY);
        energy.observe(GPU, 5_000_000, NVML, secs(0));
        energy.observe(GPU, 6_000_000, NVML, secs(5));
        // The driver reloaded within the interval; since then the GPU used 400 J.
        let reset = energy.observe(GPU, 400_000, NVML, secs(10));
        assert_eq!(
            reset,
            EnergySample {
                total_mj: 1_400_000,
                delta_mj: 400_000,
                event: Some(CounterEvent::Reset)
            }
        );
        // And it goes on from the new value.
        let next = energy.observe(GPU, 500_000, NVML, secs(15));
        assert_eq!(
            (next.total_mj, next.delta_mj, next.event),
            (1_500_000, 100_000, None)
        );
    }

    #[test]
    fn a_driver_reload_changes_the_identity_and_counts_the_new_value_from_zero() {
        let mut energy = EnergyIntegrator::new(NVML_ENERGY);
        energy.observe("GPU-1/580.65.06", 7_000_000, NVML, secs(0));
        // A new driver version: its counter started at its load. Here it is already above the
        // old value, so only the identity shows the reload.
        let reload = energy.observe("GPU-1/580.82.07", 7_200_000, NVML, secs(60));
        assert_eq!(
            reload,
            EnergySample {
                total_mj: 7_200_000,
                delta_mj: 7_200_000,
                event: Some(CounterEvent::IdentityChanged)
            }
        );
    }

    #[test]
    fn another_device_with_days_on_its_counter_is_a_new_baseline_not_a_giant_delta() {
        let mut energy = EnergyIntegrator::new(NVML_ENERGY);
        energy.observe("GPU-1/580.65.06", 1_000, NVML, secs(0));
        energy.observe("GPU-1/580.65.06", 1_501_000, NVML, secs(5));
        // Index 0 is now another board whose driver loaded long ago: 10 MJ on its counter.
        let swapped = energy.observe("GPU-2/580.65.06", 10_000_000_000, NVML, secs(10));
        assert_eq!(
            swapped,
            EnergySample {
                total_mj: 1_500_000,
                delta_mj: 0,
                event: Some(CounterEvent::Implausible)
            }
        );
        let next = energy.observe("GPU-2/580.65.06", 10_001_000_000, NVML, secs(15));
        assert_eq!(
            (next.total_mj, next.delta_mj, next.event),
            (2_500_000, 1_000_000, None)
        );
    }

    #[test]
    fn rapl_wraps_around_its_range() {
        let mut energy = EnergyIntegrator::new(RAPL_ENERGY);
        let max = 262_143_328_850;
        let wraps = Backwards::WrapsAfter(max);
        energy.observe("package-0/262143328850", max - 300_000_000, wraps, secs(0));
        // 300 J to the top, then 200 J past zero: 500 J in 5 s (100 W).
        let wrapped = energy.observe("package-0/262143328850", 200_000_000, wraps, secs(5));
        assert_eq!(
            wrapped,
            EnergySample {
                total_mj: 500_000,
                delta_mj: 500_000,
                event: Some(CounterEvent::Wrapped)
            }
        );
    }

    #[test]
    fn microjoules_are_summed_before_rounding_so_deltas_add_up_to_the_total() {
        let mut energy = EnergyIntegrator::new(RAPL_ENERGY);
        let wraps = Backwards::WrapsAfter(u64::from(u32::MAX));
        energy.observe("package-0", 0, wraps, secs(0));
        let mut deltas = 0;
        for step in 1..=10 {
            // 0.6 mJ each time: the millijoule total moves by 0 or 1.
            let sample = energy.observe("package-0", step * 600, wraps, secs(step));
            deltas += sample.delta_mj;
            assert_eq!(sample.total_mj, step * 600 / 1_000);
        }
        assert_eq!(deltas, 6);
        assert_eq!(energy.total_uj(), 6_000);
    }

    #[test]
    fn missed_samples_make_one_longer_interval() {
        let mut energy = EnergyIntegrator::new(NVML_ENERGY);
        energy.observe(GPU, 0, NVML, secs(0));
        // Ten minutes without a sample at 400 W: 240 kJ, more than 5 s could hold, and fine.
        let late = energy.observe(GPU, 240_000_000, NVML, secs(600));
        assert_eq!(
            (late.total_mj, late.delta_mj, late.event),
            (240_000_000, 240_000_000, None)
        );
        // The same jump within 5 s would be 48 kW: dropped.
        let jump = energy.observe(GPU, 480_000_000, NVML, secs(605));
        assert_eq!(
            (jump.total_mj, jump.delta_mj, jump.event),
            (240_000_000, 0, Some(CounterEvent::Implausible))
        );
    }

    #[test]
    fn samples_closer_than_a_second_are_bounded_as_a_second() {
        let mut energy = EnergyIntegrator::new(NVML_ENERGY);
        energy.observe(GPU, 0, NVML, Duration::from_millis(0));
        // A 100 ms step of 150 J (a counter update catching up) is within 2 kW × 1 s.
        let step = energy.observe(GPU, 150_000, NVML, Duration::from_millis(10));
        assert_eq!((step.delta_mj, step.event), (150_000, None));
    }
}

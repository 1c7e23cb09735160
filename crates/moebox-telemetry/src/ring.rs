//! The bounded ring of samples an engine keeps for its poller, and the shared handle to it.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use moebox_protocol::telemetry::{Reading, TelemetryBatch, TelemetrySample};

/// The newest samples, numbered from 1. When full, the oldest is dropped: a poller that asks
/// for what came after it sees the gap in the sequence numbers.
#[derive(Debug, Clone)]
pub struct SampleRing {
    capacity: usize,
    samples: VecDeque<TelemetrySample>,
    latest_seq: u64,
}

impl SampleRing {
    /// Holds at most `capacity` samples (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            samples: VecDeque::with_capacity(capacity),
            latest_seq: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn latest_seq(&self) -> u64 {
        self.latest_seq
    }

    /// Adds a sample under the next sequence number, which it returns.
    pub fn push(&mut self, unix_ms: u64, uptime: Duration, reading: Reading) -> u64 {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.latest_seq += 1;
        self.samples.push_back(TelemetrySample {
            seq: self.latest_seq,
            unix_ms,
            uptime_ms: u64::try_from(uptime.as_millis()).unwrap_or(u64::MAX),
            reading,
        });
        self.latest_seq
    }

    /// The samples after `since`, and how many after it were dropped before they could be
    /// asked for.
    pub fn since(&self, since: u64) -> (u64, Vec<TelemetrySample>) {
        let samples: Vec<TelemetrySample> = self
            .samples
            .iter()
            .filter(|sample| sample.seq > since)
            .cloned()
            .collect();
        let missed = samples
            .first()
            .map_or(0, |first| first.seq.saturating_sub(since.saturating_add(1)));
        (missed, samples)
    }
}

/// The ring behind a lock, with what a batch says about its engine. Cheap to clone: the
/// sampler thread pushes into it, the HTTP server reads from it.
#[derive(Debug, Clone)]
pub struct TelemetryLog {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    instance: String,
    interval: Duration,
    ring: Mutex<SampleRing>,
}

impl TelemetryLog {
    /// `instance` names this engine process (it must change when the process restarts);
    /// `interval` is how often the sampler samples.
    pub fn new(instance: impl Into<String>, interval: Duration, capacity: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                instance: instance.into(),
                interval,
                ring: Mutex::new(SampleRing::new(capacity)),
            }),
        }
    }

    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    pub fn interval(&self) -> Duration {
        self.shared.interval
    }

    fn ring(&self) -> MutexGuard<'_, SampleRing> {
        // A panic while holding the lock leaves a whole ring behind (push and since do not
        // leave it half-changed): keep serving.
        self.shared
            .ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn push(&self, unix_ms: u64, uptime: Duration, reading: Reading) -> u64 {
        self.ring().push(unix_ms, uptime, reading)
    }

    /// The answer to `GET /v1/telemetry?since=SEQ`.
    pub fn since(&self, since: u64) -> TelemetryBatch {
        let ring = self.ring();
        let (missed, samples) = ring.since(since);
        TelemetryBatch {
            instance: self.shared.instance.clone(),
            interval_ms: u64::try_from(self.shared.interval.as_millis()).unwrap_or(u64::MAX),
            capacity: u32::try_from(ring.capacity()).unwrap_or(u32::MAX),
            latest_seq: ring.latest_seq(),
            missed,
            samples,
        }
    }
}

#[cfg(test)]
mod tests {
    use moebox_protocol::telemetry::{SourceKind, UnavailableKind};

    use super::*;

    fn reading(n: u64) -> Reading {
        Reading::Unavailable {
            tried: SourceKind::Rapl,
            kind: UnavailableKind::NotSupported,
            reason: format!("sample {n}"),
        }
    }

    fn seqs(samples: &[TelemetrySample]) -> Vec<u64> {
        samples.iter().map(|s| s.seq).collect()
    }

    #[test]
    fn sequence_numbers_start_at_one_and_since_returns_what_came_after() {
        let mut ring = SampleRing::new(8);
        assert_eq!(ring.since(0), (0, Vec::new()));
        for n in 1..=5 {
            assert_eq!(ring.push(n * 1000, Duration::from_secs(n), reading(n)), n);
        }
        let (missed, all) = ring.since(0);
        assert_eq!((missed, seqs(&all)), (0, vec![1, 2, 3, 4, 5]));
        assert_eq!(all[2].reading, reading(3));
        assert_eq!((all[2].unix_ms, all[2].uptime_ms), (3000, 3000));
        let (missed, newer) = ring.since(3);
        assert_eq!((missed, seqs(&newer)), (0, vec![4, 5]));
        assert_eq!(ring.since(5), (0, Vec::new()));
        // A number from a previous engine instance, beyond anything taken: nothing.
        assert_eq!(ring.since(900), (0, Vec::new()));
    }

    #[test]
    fn a_full_ring_drops_the_oldest_and_the_drop_shows_as_a_gap() {
        let mut ring = SampleRing::new(3);
        for n in 1..=7 {
            ring.push(n, Duration::ZERO, reading(n));
        }
        assert_eq!(ring.latest_seq(), 7);
        // Holds 5, 6, 7. A poller that last stored 2 missed 3 and 4.
        let (missed, samples) = ring.since(2);
        assert_eq!((missed, seqs(&samples)), (2, vec![5, 6, 7]));
        // A new poller (since 0) is told everything before 5 is gone.
        assert_eq!(ring.since(0).0, 4);
        // One that kept up misses nothing.
        let (missed, samples) = ring.since(4);
        assert_eq!((missed, seqs(&samples)), (0, vec![5, 6, 7]));
        assert_eq!(ring.since(u64::MAX), (0, Vec::new()));
    }

    #[test]
    fn a_zero_capacity_still_keeps_the_newest() {
        let mut ring = SampleRing::new(0);
        ring.push(1, Duration::ZERO, reading(1));
        ring.push(2, Duration::ZERO, reading(2));
        assert_eq!(ring.capacity(), 1);
        assert_eq!(seqs(&ring.since(0).1), vec![2]);
    }

    #[test]
    fn the_log_answers_with_its_instance_interval_and_capacity() {
        let log = TelemetryLog::new("4242-1700000000000", Duration::from_secs(5), 2);
        let batch = log.since(0);
        assert_eq!(
            batch,
            TelemetryBatch {
                instance: "4242-1700000000000".into(),
                interval_ms: 5000,
                capacity: 2,
                latest_seq: 0,
                missed: 0,
                samples: Vec::new()
            }
        );
        let clone = log.clone();
        for n in 1..=3 {
            clone.push(n, Duration::from_millis(n), reading(n));
        }
        let batch = log.since(0);
        assert_eq!((batch.latest_seq, batch.missed), (3, 1));
        assert_eq!(seqs(&batch.samples), vec![2, 3]);
    }
}

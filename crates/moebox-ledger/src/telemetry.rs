//! Telemetry samples: per source (a GPU by index, or the CPU package) and time, utilisation,
//! memory, power, the energy used since the source's previous sample, temperature, SM clock,
//! ECC errors and throttle reasons; rolled up per minute, hour and day (UTC) in the same
//! transaction as the raw row, and the latest sample per source.
//!
//! Energy is stored as the sampler computed it (a delta of NVML's total energy counter, or of
//! RAPL's), never integrated from power readings here; queries only sum it.

use std::collections::BTreeMap;

use rusqlite::{Transaction, params};
use serde::{Serialize, Serializer};

use crate::{
    Ledger, LedgerError, UnixMillis, UnixSeconds,
    period::{self, DAY, HOUR, MINUTE, Step, Tier, floor_to, millis},
    retention, sqlite,
};

/// Joules in a kilowatt-hour.
pub const JOULES_PER_KWH: f64 = 3_600_000.0;
/// Highest GPU index a source may name.
pub const MAX_GPU_INDEX: u32 = 1_023;

/// Where a sample was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TelemetrySource {
    /// A GPU by its index on the host.
    Gpu(u32),
    /// The CPU package (RAPL), on hosts without NVIDIA GPUs.
    Cpu,
}

impl TelemetrySource {
    /// `gpu0`, `gpu1`, ... or `cpu`.
    pub fn label(self) -> String {
        match self {
            Self::Gpu(index) => format!("gpu{index}"),
            Self::Cpu => "cpu".to_owned(),
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        if text == "cpu" {
            return Some(Self::Cpu);
        }
        let digits = text.strip_prefix("gpu")?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits
            .parse()
            .ok()
            .filter(|&i| i <= MAX_GPU_INDEX)
            .map(Self::Gpu)
    }
}

impl std::fmt::Display for TelemetrySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

impl Serialize for TelemetrySource {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.label())
    }
}

/// One sample of one source. Each measurement is `None` where the source cannot report it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TelemetrySample {
    pub source: TelemetrySource,
    pub at: UnixMillis,
    pub utilisation_percent: Option<f64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub power_watts: Option<f64>,
    /// Energy used since this source's previous sample, from the hardware's energy counter.
    pub energy_joules: Option<f64>,
    pub temperature_celsius: Option<f64>,
    pub sm_clock_mhz: Option<u32>,
    /// The device's ECC error count (a counter; rollups keep its maximum).
    pub ecc_errors: Option<u64>,
    /// NVML's clock throttle reasons bitmask (rollups keep the OR of the bucket's samples).
    pub throttle_reasons: Option<u64>,
}

impl TelemetrySample {
    /// A sample of `source` at `at` with nothing measured yet.
    pub fn new(source: TelemetrySource, at: UnixMillis) -> Self {
        Self {
            source,
            at,
            utilisation_percent: None,
            memory_used_bytes: None,
            memory_total_bytes: None,
            power_watts: None,
            energy_joules: None,
            temperature_celsius: None,
            sm_clock_mhz: None,
            ecc_errors: None,
            throttle_reasons: None,
        }
    }

    /// Finite, non-negative measurements in range, naming the field that is not.
    pub fn validate(&self) -> Result<(), LedgerError> {
        let invalid =
            |field: &'static str, message: String| LedgerError::InvalidField { field, message };
        if let TelemetrySource::Gpu(index) = self.source
            && index > MAX_GPU_INDEX
        {
            return Err(invalid(
                "source",
                format!("GPU index must be at most {MAX_GPU_INDEX}, got {index}"),
            ));
        }
        if self.at.0 < 0 {
            return Err(invalid(
                "at",
                format!("must not be before 1970, got {} ms", self.at.0),
            ));
        }
        for (field, value, max) in [
            ("utilisation_percent", self.utilisation_percent, 100.0),
            ("power_watts", self.power_watts, f64::MAX),
            ("energy_joules", self.energy_joules, f64::MAX),
            ("temperature_celsius", self.temperature_celsius, f64::MAX),
        ] {
            if let Some(value) = value
                && !(value.is_finite() && (0.0..=max).contains(&value))
            {
                return Err(invalid(
                    field,
                    if max < f64::MAX {
                        format!("must be between 0 and {max}, got {value}")
                    } else {
                        format!("must be a finite number at least 0, got {value}")
                    },
                ));
            }
        }
        crate::check_integers([
            ("memory_used_bytes", self.memory_used_bytes),
            ("memory_total_bytes", self.memory_total_bytes),
            ("ecc_errors", self.ecc_errors),
        ])
    }
}

/// Energy used in one bucket (all sources together).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EnergyPoint {
    pub start: UnixSeconds,
    pub kwh: f64,
}

/// One source over one bucket of a telemetry series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TelemetryPoint {
    pub source: TelemetrySource,
    pub start: UnixSeconds,
    pub samples: u64,
    pub utilisation_mean_percent: Option<f64>,
    pub utilisation_max_percent: Option<f64>,
    pub power_mean_watts: Option<f64>,
    pub power_max_watts: Option<f64>,
    pub energy_kwh: f64,
    pub memory_used_max_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub temperature_max_celsius: Option<f64>,
    pub sm_clock_max_mhz: Option<u32>,
    pub ecc_errors_max: Option<u64>,
    pub throttle_reasons: u64,
}

const SAMPLE_COLUMNS: &str = "at_ms, source, utilisation_percent, memory_used_bytes, \
     memory_total_bytes, power_watts, energy_joules, temperature_celsius, sm_clock_mhz, \
     ecc_errors, throttle_reasons";

const TELEMETRY_TIERS: [&str; 4] = [
    "telemetry_daily",
    "telemetry_hourly",
    "telemetry_minutely",
    "telemetry",
];

fn upsert_rollup(table: &str) -> String {
    // max(a, b) is NULL when either is; coalescing both ways keeps the one that is not.
    format!(
        "INSERT INTO {table} (bucket, source, samples, utilisation_sum, utilisation_samples, \
         utilisation_max, power_sum, power_samples, power_max, energy_joules, memory_used_max, \
         memory_total_max, temperature_max, sm_clock_max, ecc_errors_max, throttle_reasons) \
         VALUES (?1, ?2, 1, coalesce(?3, 0), ?3 IS NOT NULL, ?3, coalesce(?4, 0), \
         ?4 IS NOT NULL, ?4, coalesce(?5, 0), ?6, ?7, ?8, ?9, ?10, coalesce(?11, 0)) \
         ON CONFLICT (bucket, source) DO UPDATE SET \
         samples = samples + 1, \
         utilisation_sum = utilisation_sum + excluded.utilisation_sum, \
         utilisation_samples = utilisation_samples + excluded.utilisation_samples, \
         utilisation_max = max(coalesce(utilisation_max, excluded.utilisation_max), \
             coalesce(excluded.utilisation_max, utilisation_max)), \
         power_sum = power_sum + excluded.power_sum, \
         power_samples = power_samples + excluded.power_samples, \
         power_max = max(coalesce(power_max, excluded.power_max), \
             coalesce(excluded.power_max, power_max)), \
         energy_joules = energy_joules + excluded.energy_joules, \
         memory_used_max = max(coalesce(memory_used_max, excluded.memory_used_max), \
             coalesce(excluded.memory_used_max, memory_used_max)), \
         memory_total_max = max(coalesce(memory_total_max, excluded.memory_total_max), \
             coalesce(excluded.memory_total_max, memory_total_max)), \
         temperature_max = max(coalesce(temperature_max, excluded.temperature_max), \
             coalesce(excluded.temperature_max, temperature_max)), \
         sm_clock_max = max(coalesce(sm_clock_max, excluded.sm_clock_max), \
             coalesce(excluded.sm_clock_max, sm_clock_max)), \
         ecc_errors_max = max(coalesce(ecc_errors_max, excluded.ecc_errors_max), \
             coalesce(excluded.ecc_errors_max, ecc_errors_max)), \
         throttle_reasons = throttle_reasons | excluded.throttle_reasons"
    )
}

/// Inserts validated samples and adds them to their rollups, inside the caller's transaction.
/// A sample already stored (same source and time) is skipped, so a poller that sees a sample
/// twice never counts its energy twice; so is a sample older than the raw retention floor,
/// whose duplicate could no longer be recognised. Returns how many were stored.
pub(crate) fn insert(
    transaction: &Transaction<'_>,
    samples: &[TelemetrySample],
) -> Result<usize, LedgerError> {
    let raw_floor = retention::floor(transaction, retention::TELEMETRY_RAW)?;
    let prepare = |sql: &str| transaction.prepare(sql).map_err(sqlite("store telemetry"));
    let placeholders = "?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11";
    let mut raw = prepare(&format!(
        "INSERT INTO telemetry ({SAMPLE_COLUMNS}) VALUES ({placeholders}) \
         ON CONFLICT (at_ms, source) DO NOTHING"
    ))?;
    let mut latest = prepare(&format!(
        "INSERT INTO telemetry_latest ({SAMPLE_COLUMNS}) VALUES ({placeholders}) \
         ON CONFLICT (source) DO UPDATE SET at_ms = excluded.at_ms, \
         utilisation_percent = excluded.utilisation_percent, \
         memory_used_bytes = excluded.memory_used_bytes, \
         memory_total_bytes = excluded.memory_total_bytes, \
         power_watts = excluded.power_watts, energy_joules = excluded.energy_joules, \
         temperature_celsius = excluded.temperature_celsius, \
         sm_clock_mhz = excluded.sm_clock_mhz, ecc_errors = excluded.ecc_errors, \
         throttle_reasons = excluded.throttle_reasons WHERE excluded.at_ms > at_ms"
    ))?;
    let mut rollups = [
        (prepare(&upsert_rollup("telemetry_minutely"))?, MINUTE),
        (prepare(&upsert_rollup("telemetry_hourly"))?, HOUR),
        (prepare(&upsert_rollup("telemetry_daily"))?, DAY),
    ];
    let mut stored = 0;
    for sample in samples {
        if sample.at.0 < millis(raw_floor) {
            tracing::warn!(
                source = %sample.source,
                at_ms = sample.at.0,
                "telemetry sample older than the retention floor skipped"
            );
            continue;
        }
        let source = sample.source.label();
        let as_i64 = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
        // Bitmasks are stored as their two's-complement i64: all 64 bits survive.
        let throttle = sample.throttle_reasons.map(|v| v as i64);
        let values = params![
            sample.at.0,
            source,
            sample.utilisation_percent,
            as_i64(sample.memory_used_bytes),
            as_i64(sample.memory_total_bytes),
            sample.power_watts,
            sample.energy_joules,
            sample.temperature_celsius,
            sample.sm_clock_mhz,
            as_i64(sample.ecc_errors),
            throttle,
        ];
        let inserted = raw.execute(values).map_err(sqlite("store telemetry"))?;
        if inserted == 0 {
            continue;
        }
        stored += 1;
        latest
            .execute(values)
            .map_err(sqlite("store latest telemetry"))?;
        let seconds = sample.at.0.div_euclid(1000);
        for (statement, size) in &mut rollups {
            statement
                .execute(params![
                    floor_to(seconds, *size),
                    source,
                    sample.utilisation_percent,
                    sample.power_watts,
                    sample.energy_joules,
                    as_i64(sample.memory_used_bytes),
                    as_i64(sample.memory_total_bytes),
                    sample.temperature_celsius,
                    sample.sm_clock_mhz,
                    as_i64(sample.ecc_errors),
                    throttle,
                ])
                .map_err(sqlite("roll up telemetry"))?;
        }
    }
    Ok(stored)
}

fn parse_source(text: &str) -> rusqlite::Result<TelemetrySource> {
    TelemetrySource::parse(text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            1,
            rusqlite::types::Type::Text,
            format!("unknown telemetry source {text:?}").into(),
        )
    })
}

fn unsigned(value: Option<i64>) -> Option<u64> {
    value.map(|v| u64::try_from(v).unwrap_or(0))
}

impl Ledger {
    /// Stores telemetry samples in one transaction (all or nothing on an invalid sample or a
    /// database error), each also added to its minute, hour and day rollups. Samples already
    /// stored are skipped; returns how many were new.
    pub fn record_telemetry(&self, samples: &[TelemetrySample]) -> Result<usize, LedgerError> {
        self.write_batch(&[], samples)
    }

    fn telemetry_tiers(&self, connection: &rusqlite::Connection) -> Result<[Tier; 4], LedgerError> {
        Ok([
            Tier {
                bucket: DAY,
                floor: i64::MIN,
            },
            Tier {
                bucket: HOUR,
                floor: retention::floor(connection, retention::TELEMETRY_HOURLY)?,
            },
            Tier {
                bucket: MINUTE,
                floor: retention::floor(connection, retention::TELEMETRY_MINUTE)?,
            },
            Tier {
                bucket: 0,
                floor: retention::floor(connection, retention::TELEMETRY_RAW)?,
            },
        ])
    }

    /// Energy used in `[from, to)` by every source together, in kWh (a sample's energy counts
    /// where the sample was taken). Bounds where the finer tables have been compacted away
    /// round down to the minute, hour or day still kept there; totals never change when
    /// compaction runs.
    pub fn energy_kwh(&self, from: UnixSeconds, to: UnixSeconds) -> Result<f64, LedgerError> {
        Ok(self
            .energy_kwh_by_source(from, to)?
            .into_iter()
            .map(|(_, kwh)| kwh)
            .sum())
    }

    /// [`Self::energy_kwh`] per source.
    pub fn energy_kwh_by_source(
        &self,
        from: UnixSeconds,
        to: UnixSeconds,
    ) -> Result<Vec<(TelemetrySource, f64)>, LedgerError> {
        period::check_period(from, to)?;
        let connection = self.connection()?;
        let tiers = self.telemetry_tiers(&connection)?;
        let mut joules: BTreeMap<TelemetrySource, f64> = BTreeMap::new();
        for segment in period::plan(from.0, to.0, &tiers) {
            let table = TELEMETRY_TIERS[segment.tier];
            let (column, low, high) = if tiers[segment.tier].bucket == 0 {
                ("at_ms", millis(segment.from), millis(segment.to))
            } else {
                ("bucket", segment.from, segment.to)
            };
            let mut statement = connection
                .prepare(&format!(
                    "SELECT source, SUM(energy_joules) FROM {table} \
                     WHERE {column} >= ?1 AND {column} < ?2 GROUP BY source"
                ))
                .map_err(sqlite("sum energy"))?;
            let mut rows = statement
                .query(params![low, high])
                .map_err(sqlite("sum energy"))?;
            while let Some(row) = rows.next().map_err(sqlite("sum energy"))? {
                let source: String = row.get(0).map_err(sqlite("read energy"))?;
                let source = parse_source(&source).map_err(sqlite("read energy"))?;
                let sum: Option<f64> = row.get(1).map_err(sqlite("read energy"))?;
                *joules.entry(source).or_default() += sum.unwrap_or(0.0);
            }
        }
        Ok(joules
            .into_iter()
            .map(|(source, joules)| (source, joules / JOULES_PER_KWH))
            .collect())
    }

    /// Energy per hour (UTC) of every source together, from the hour holding `from` up to
    /// `to`, one point per hour (zeros included), for time-of-use tariffs. Hours older than
    /// the hourly rollups' retention are left out.
    pub fn energy_kwh_by_hour(
        &self,
        from: UnixSeconds,
        to: UnixSeconds,
    ) -> Result<Vec<EnergyPoint>, LedgerError> {
        let buckets = period::series_buckets(from, to, Step::Hour)?;
        let (Some(&first), Some(&last)) = (buckets.first(), buckets.last()) else {
            return Ok(Vec::new());
        };
        let connection = self.connection()?;
        let floor = retention::floor(&connection, retention::TELEMETRY_HOURLY)?;
        let mut statement = connection
            .prepare(
                "SELECT bucket, SUM(energy_joules) FROM telemetry_hourly \
                 WHERE bucket >= ?1 AND bucket < ?2 GROUP BY bucket",
            )
            .map_err(sqlite("hourly energy"))?;
        let found = statement
            .query_map(params![first, last + HOUR], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, f64>(1)?))
            })
            .map_err(sqlite("hourly energy"))?
            .collect::<Result<BTreeMap<_, _>, _>>()
            .map_err(sqlite("read hourly energy"))?;
        Ok(buckets
            .into_iter()
            .filter(|&bucket| bucket >= floor)
            .map(|bucket| EnergyPoint {
                start: UnixSeconds(bucket),
                kwh: found.get(&bucket).copied().unwrap_or(0.0) / JOULES_PER_KWH,
            })
            .collect())
    }

    /// Per source and per minute, hour or day (UTC), from the bucket holding `from` up to
    /// `to`: mean and peak utilisation and power, energy, peaks of memory, temperature and
    /// clock, throttle reasons. Only buckets with samples are returned (a gap is a gap), by
    /// source then time; at most [`period::MAX_SERIES_POINTS`] buckets long.
    pub fn telemetry_series(
        &self,
        from: UnixSeconds,
        to: UnixSeconds,
        step: Step,
    ) -> Result<Vec<TelemetryPoint>, LedgerError> {
        let buckets = period::series_buckets(from, to, step)?;
        let (Some(&first), Some(&last)) = (buckets.first(), buckets.last()) else {
            return Ok(Vec::new());
        };
        let table = match step {
            Step::Minute => "telemetry_minutely",
            Step::Hour => "telemetry_hourly",
            Step::Day => "telemetry_daily",
        };
        let connection = self.connection()?;
        let mut statement = connection
            .prepare(&format!(
                "SELECT source, bucket, samples, utilisation_sum, utilisation_samples, \
                 utilisation_max, power_sum, power_samples, power_max, energy_joules, \
                 memory_used_max, memory_total_max, temperature_max, sm_clock_max, \
                 ecc_errors_max, throttle_reasons FROM {table} \
                 WHERE bucket >= ?1 AND bucket < ?2 ORDER BY source, bucket"
            ))
            .map_err(sqlite("telemetry series"))?;
        let points = statement
            .query_map(params![first, last + step.seconds()], |row| {
                let source: String = row.get(0)?;
                let mean = |sum: f64, n: i64| (n > 0).then(|| sum / n as f64);
                Ok(TelemetryPoint {
                    source: parse_source(&source)?,
                    start: UnixSeconds(row.get(1)?),
                    samples: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
                    utilisation_mean_percent: mean(row.get(3)?, row.get(4)?),
                    utilisation_max_percent: row.get(5)?,
                    power_mean_watts: mean(row.get(6)?, row.get(7)?),
                    power_max_watts: row.get(8)?,
                    energy_kwh: row.get::<_, f64>(9)? / JOULES_PER_KWH,
                    memory_used_max_bytes: unsigned(row.get(10)?),
                    memory_total_bytes: unsigned(row.get(11)?),
                    temperature_max_celsius: row.get(12)?,
                    sm_clock_max_mhz: row
                        .get::<_, Option<i64>>(13)?
                        .map(|v| u32::try_from(v).unwrap_or(0)),
                    ecc_errors_max: unsigned(row.get(14)?),
                    throttle_reasons: row.get::<_, i64>(15)? as u64,
                })
            })
            .map_err(sqlite("telemetry series"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sqlite("read telemetry series"))?;
        Ok(points)
    }

    /// The newest sample of each source, by source.
    pub fn latest_telemetry(&self) -> Result<Vec<TelemetrySample>, LedgerError> {
        let connection = self.connection()?;
        let mut statement = connection
            .prepare(&format!(
                "SELECT {SAMPLE_COLUMNS} FROM telemetry_latest ORDER BY source"
            ))
            .map_err(sqlite("latest telemetry"))?;
        let mut samples = statement
            .query_map([], |row| {
                let source: String = row.get(1)?;
                Ok(TelemetrySample {
                    at: UnixMillis(row.get(0)?),
                    source: parse_source(&source)?,
                    utilisation_percent: row.get(2)?,
                    memory_used_bytes: unsigned(row.get(3)?),
                    memory_total_bytes: unsigned(row.get(4)?),
                    power_watts: row.get(5)?,
                    energy_joules: row.get(6)?,
                    temperature_celsius: row.get(7)?,
                    sm_clock_mhz: row
                        .get::<_, Option<i64>>(8)?
                        .map(|v| u32::try_from(v).unwrap_or(0)),
                    ecc_errors: unsigned(row.get(9)?),
                    throttle_reasons: row.get::<_, Option<i64>>(10)?.map(|v| v as u64),
                })
            })
            .map_err(sqlite("latest telemetry"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sqlite("read latest telemetry"))?;
        samples.sort_by_key(|sample| sample.source);
        Ok(samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Retention;

    fn ledger() -> Ledger {
        Ledger::open_in_memory().expect("ledger")
    }

    fn gpu_sample(index: u32, at_s: i64, energy: f64) -> TelemetrySample {
        TelemetrySample {
            utilisation_percent: Some(50.0 + f64::from(index)),
            power_watts: Some(300.0),
            energy_joules: Some(energy),
            memory_used_bytes: Some(40 << 30),
            memory_total_bytes: Some(80 << 30),
            temperature_celsius: Some(60.0 + (at_s % 7) as f64),
            sm_clock_mhz: Some(1_410),
            ecc_errors: Some(0),
            throttle_reasons: Some(if (at_s / 10) % 2 == 0 { 0x4 } else { 0x1 << 40 }),
            ..TelemetrySample::new(TelemetrySource::Gpu(index), UnixMillis(at_s * 1000))
        }
    }

    #[test]
    fn sources_round_trip_through_their_labels() {
        for source in [
            TelemetrySource::Cpu,
            TelemetrySource::Gpu(0),
            TelemetrySource::Gpu(7),
        ] {
            assert_eq!(TelemetrySource::parse(&source.label()), Some(source));
        }
        for bad in ["gpu", "gpu-1", "GPU0", "gpu1024", "disk"] {
            assert_eq!(TelemetrySource::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn invalid_samples_name_their_field_and_store_nothing() {
        let ledger = ledger();
        let good = gpu_sample(0, 100, 1.0);
        for (sample, field) in [
            (
                TelemetrySample {
                    utilisation_percent: Some(101.0),
                    ..good
                },
                "utilisation_percent",
            ),
            (
                TelemetrySample {
                    energy_joules: Some(f64::NAN),
                    ..good
                },
                "energy_joules",
            ),
            (
                TelemetrySample {
                    power_watts: Some(-1.0),
                    ..good
                },
                "power_watts",
            ),
            (
                TelemetrySample {
                    memory_used_bytes: Some(u64::MAX),
                    ..good
                },
                "memory_used_bytes",
            ),
        ] {
            match ledger.record_telemetry(&[good, sample]) {
                Err(LedgerError::InvalidField { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert!(ledger.latest_telemetry().expect("latest").is_empty());
    }

    #[test]
    fn energy_sums_over_periods_hours_and_sources_and_duplicates_count_once() {
        let ledger = ledger();
        // Two GPUs, one sample every 10 s for 3 hours from 10:00, 3,600 J each: 1 kWh per GPU
        // per 1,000 samples.
        let start = 20_000 * DAY + 10 * HOUR;
        let samples: Vec<_> = (0..1_080)
            .flat_map(|i| [0, 1].map(|gpu| gpu_sample(gpu, start + i * 10, 3_600.0)))
            .collect();
        assert_eq!(ledger.record_telemetry(&samples).expect("stored"), 2_160);
        // The poller sees the last batch again: nothing new, no energy counted twice.
        assert_eq!(ledger.record_telemetry(&samples[2_000..]).expect("ok"), 0);
        let kwh = ledger
            .energy_kwh(UnixSeconds(start), UnixSeconds(start + 3 * HOUR))
            .expect("energy");
        assert!((kwh - 2.16).abs() < 1e-9, "{kwh}");
        // Half an hour into the second hour: 180 samples per GPU.
        let part = ledger
            .energy_kwh(
                UnixSeconds(start + HOUR),
                UnixSeconds(start + HOUR + 30 * MINUTE),
            )
            .expect("energy");
        assert!((part - 0.36).abs() < 1e-9, "{part}");
        let by_hour = ledger
            .energy_kwh_by_hour(UnixSeconds(start - HOUR), UnixSeconds(start + 3 * HOUR))
            .expect("hourly");
        assert_eq!(by_hour.len(), 4);
        assert_eq!(by_hour[0].kwh, 0.0);
        for point in &by_hour[1..] {
            assert!((point.kwh - 0.72).abs() < 1e-9, "{point:?}");
        }
        let by_source = ledger
            .energy_kwh_by_source(UnixSeconds(start), UnixSeconds(start + 3 * HOUR))
            .expect("by source");
        assert_eq!(by_source.len(), 2);
        assert!((by_source[1].1 - 1.08).abs() < 1e-9);
    }

    #[test]
    fn series_and_latest_summarise_each_gpu() {
        let ledger = ledger();
        let start = 20_000 * DAY;
        let mut samples: Vec<_> = (0..120)
            .map(|i| gpu_sample(1, start + i * 30, 9_000.0))
            .collect();
        samples.push(TelemetrySample {
            energy_joules: Some(500.0),
            ..TelemetrySample::new(TelemetrySource::Cpu, UnixMillis(start * 1000))
        });
        ledger.record_telemetry(&samples).expect("stored");
        let hours = ledger
            .telemetry_series(UnixSeconds(start), UnixSeconds(start + DAY), Step::Hour)
            .expect("series");
        let gpu: Vec<_> = hours
            .iter()
            .filter(|p| p.source == TelemetrySource::Gpu(1))
            .collect();
        assert_eq!(gpu.len(), 1);
        let point = gpu[0];
        assert_eq!(point.samples, 120);
        assert_eq!(point.utilisation_mean_percent, Some(51.0));
        assert_eq!(point.power_max_watts, Some(300.0));
        assert_eq!(point.temperature_max_celsius, Some(66.0));
        assert_eq!(point.throttle_reasons, 0x4 | 0x1 << 40);
        assert!((point.energy_kwh - 0.3).abs() < 1e-9);
        let cpu = hours
            .iter()
            .find(|p| p.source == TelemetrySource::Cpu)
            .expect("cpu point");
        assert_eq!(cpu.utilisation_mean_percent, None);
        assert_eq!(cpu.power_max_watts, None);
        let minutes = ledger
            .telemetry_series(UnixSeconds(start), UnixSeconds(start + HOUR), Step::Minute)
            .expect("minutes");
        assert_eq!(minutes.len(), 60 + 1);
        let latest = ledger.latest_telemetry().expect("latest");
        assert_eq!(latest.len(), 2);
        assert_eq!(latest[0], samples[119]);
        // An older sample arriving late does not replace the latest one.
        ledger
            .record_telemetry(&[gpu_sample(1, start - 10, 1.0)])
            .expect("late");
        assert_eq!(ledger.latest_telemetry().expect("latest")[0], samples[119]);
    }

    #[test]
    fn energy_totals_are_the_same_after_compaction() {
        let ledger = ledger();
        let day0 = 20_000 * DAY;
        // A sample a minute for 40 days, the energy varying so that misplaced rows show.
        let samples: Vec<_> = (0..40 * 24 * 60)
            .map(|i| gpu_sample(0, day0 + i * 60 + 7, (i % 97) as f64 * 11.0))
            .collect();
        ledger.record_telemetry(&samples).expect("stored");
        let periods = [
            (day0, day0 + 40 * DAY),
            (day0 + 3 * DAY, day0 + 4 * DAY),
            (day0 + 35 * DAY + 5 * HOUR, day0 + 39 * DAY + 2 * HOUR),
            (day0 + 39 * DAY + 123, day0 + 39 * DAY + 3 * HOUR + 61),
        ];
        let before: Vec<f64> = periods
            .iter()
            .map(|&(a, b)| {
                ledger
                    .energy_kwh(UnixSeconds(a), UnixSeconds(b))
                    .expect("e")
            })
            .collect();
        let retention = Retention {
            telemetry_raw_days: 2,
            telemetry_minute_days: 10,
            telemetry_hourly_days: 20,
            ..Retention::default()
        };
        let now = UnixSeconds(day0 + 40 * DAY);
        let first = ledger.compact(now, &retention).expect("compacted");
        assert!(first.telemetry_samples_deleted > 50_000, "{first:?}");
        assert!(first.telemetry_minutes_deleted > 0 && first.telemetry_hours_deleted > 0);
        let after: Vec<f64> = periods
            .iter()
            .map(|&(a, b)| {
                ledger
                    .energy_kwh(UnixSeconds(a), UnixSeconds(b))
                    .expect("e")
            })
            .collect();
        for (b, a) in before.iter().zip(&after) {
            assert!((b - a).abs() < 1e-9, "{before:?} {after:?}");
        }
        let again = ledger.compact(now, &retention).expect("again");
        assert_eq!(again.telemetry_samples_deleted, 0);
    }
}

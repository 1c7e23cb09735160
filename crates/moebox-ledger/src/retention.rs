//! Retention: how long each resolution of usage and telemetry is kept, and
//! [`Ledger::compact`], which deletes what is older.
//!
//! Rollups are written with their raw rows (see [`crate::usage`], [`crate::telemetry`]), so
//! compaction never computes anything: it moves each table's *floor* (the time from which on
//! the table is complete, day-aligned) forward first, in one transaction, and then deletes
//! the rows below it in small transactions. Queries answer the part of a period below a
//! table's floor from the next coarser table, so totals are the same before, during and after
//! compaction. Daily rollups are kept for ever (a few rows a day).

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use crate::{
    Ledger, LedgerError, UnixSeconds,
    period::{DAY, floor_to, millis},
    sqlite,
};

/// Rows deleted per transaction, so compaction never holds the write lock for long (the
/// usage writer waits for it at most the time of one chunk).
pub const COMPACTION_CHUNK_ROWS: u32 = 5_000;

pub(crate) const USAGE_RAW: &str = "usage_raw";
pub(crate) const USAGE_HOURLY: &str = "usage_hourly";
pub(crate) const TELEMETRY_RAW: &str = "telemetry_raw";
pub(crate) const TELEMETRY_MINUTE: &str = "telemetry_minute";
pub(crate) const TELEMETRY_HOURLY: &str = "telemetry_hourly";

/// How many days of each table to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Retention {
    pub usage_raw_days: u32,
    pub usage_hourly_days: u32,
    pub telemetry_raw_days: u32,
    pub telemetry_minute_days: u32,
    pub telemetry_hourly_days: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Self::from(&moebox_config::LedgerConfig::default())
    }
}

impl From<&moebox_config::LedgerConfig> for Retention {
    /// The windows `[ledger]` sets.
    fn from(config: &moebox_config::LedgerConfig) -> Self {
        Self {
            usage_raw_days: config.usage_raw_days,
            usage_hourly_days: config.usage_hourly_days,
            telemetry_raw_days: config.telemetry_raw_days,
            telemetry_minute_days: config.telemetry_minute_days,
            telemetry_hourly_days: config.telemetry_hourly_days,
        }
    }
}

impl Retention {
    /// The rule `[ledger]` is checked by ([`moebox_config::check_retention`]), checked again
    /// here for a caller that builds its windows itself.
    pub fn validate(&self) -> Result<(), LedgerError> {
        moebox_config::check_retention([
            ("usage_raw_days", self.usage_raw_days),
            ("usage_hourly_days", self.usage_hourly_days),
            ("telemetry_raw_days", self.telemetry_raw_days),
            ("telemetry_minute_days", self.telemetry_minute_days),
            ("telemetry_hourly_days", self.telemetry_hourly_days),
        ])
        .map_err(|(field, message)| LedgerError::InvalidField { field, message })
    }
}

/// What one [`Ledger::compact`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Compaction {
    pub usage_records_deleted: u64,
    pub usage_hourly_deleted: u64,
    pub telemetry_samples_deleted: u64,
    pub telemetry_minutes_deleted: u64,
    pub telemetry_hours_deleted: u64,
    /// Pages given back to the file system.
    pub pages_freed: u64,
}

/// The time from which on table `name` is complete; `i64::MIN` when nothing was ever deleted.
pub(crate) fn floor(connection: &Connection, name: &str) -> Result<i64, LedgerError> {
    connection
        .prepare("SELECT floor FROM retention_floors WHERE name = ?1")
        .and_then(|mut statement| {
            statement
                .query_row(params![name], |row| row.get(0))
                .optional()
        })
        .map(|floor| floor.unwrap_or(i64::MIN))
        .map_err(sqlite("read retention floor"))
}

/// One table's retention: the floor's name, the table, its time column and whether that
/// column holds milliseconds.
struct Target {
    floor: &'static str,
    table: &'static str,
    column: &'static str,
    key: &'static str,
    in_millis: bool,
}

const TARGETS: [Target; 5] = [
    Target {
        floor: USAGE_RAW,
        table: "usage",
        column: "started_at_ms",
        key: "id",
        in_millis: true,
    },
    Target {
        floor: USAGE_HOURLY,
        table: "usage_hourly",
        column: "bucket",
        key: "bucket, key_id, team, model",
        in_millis: false,
    },
    Target {
        floor: TELEMETRY_RAW,
        table: "telemetry",
        column: "at_ms",
        key: "at_ms, source",
        in_millis: true,
    },
    Target {
        floor: TELEMETRY_MINUTE,
        table: "telemetry_minutely",
        column: "bucket",
        key: "bucket, source",
        in_millis: false,
    },
    Target {
        floor: TELEMETRY_HOURLY,
        table: "telemetry_hourly",
        column: "bucket",
        key: "bucket, source",
        in_millis: false,
    },
];

impl Ledger {
    /// Applies `retention` as of `now`: moves each table's floor to the start of the UTC day
    /// `days` before `now` (never backwards), deletes the rows below it in chunks of
    /// [`COMPACTION_CHUNK_ROWS`], and gives freed pages back to the file system. Idempotent;
    /// safe to run while the writer writes: each chunk is its own short transaction, and this
    /// `Ledger`'s connection is free for other callers between chunks. It blocks: call it
    /// from a blocking thread (`spawn_blocking`), e.g. hourly.
    pub fn compact(
        &self,
        now: UnixSeconds,
        retention: &Retention,
    ) -> Result<Compaction, LedgerError> {
        retention.validate()?;
        let days = [
            retention.usage_raw_days,
            retention.usage_hourly_days,
            retention.telemetry_raw_days,
            retention.telemetry_minute_days,
            retention.telemetry_hourly_days,
        ];
        let mut connection = self.connection()?;
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite("begin compaction"))?;
        let mut floors = [0i64; 5];
        for (index, (target, days)) in TARGETS.iter().zip(days).enumerate() {
            let wanted = floor_to(now.0.saturating_sub(i64::from(days) * DAY), DAY);
            let current = floor(&transaction, target.floor)?;
            floors[index] = wanted.max(current);
            transaction
                .execute(
                    "INSERT INTO retention_floors (name, floor) VALUES (?1, ?2) \
                     ON CONFLICT (name) DO UPDATE SET floor = max(floor, excluded.floor)",
                    params![target.floor, floors[index]],
                )
                .map_err(sqlite("move retention floor"))?;
        }
        transaction
            .commit()
            .map_err(sqlite("move retention floors"))?;
        // Let others use this connection between chunks (key checks, the writer).
        drop(connection);

        let mut deleted = [0u64; 5];
        for (index, target) in TARGETS.iter().enumerate() {
            let below = if target.in_millis {
                millis(floors[index])
            } else {
                floors[index]
            };
            let sql = format!(
                "DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} \
                 WHERE {column} < ?1 ORDER BY {column} LIMIT ?2)",
                table = target.table,
                key = target.key,
                column = target.column,
            );
            loop {
                let removed = self
                    .connection()?
                    .execute(&sql, params![below, COMPACTION_CHUNK_ROWS])
                    .map_err(sqlite("delete expired rows"))?;
                deleted[index] += removed as u64;
                if removed < COMPACTION_CHUNK_ROWS as usize {
                    break;
                }
            }
        }
        let connection = self.connection()?;
        let free_before: i64 = connection
            .query_row("PRAGMA freelist_count", [], |row| row.get(0))
            .map_err(sqlite("count free pages"))?;
        // Works when the database was created with auto_vacuum = INCREMENTAL (every
        // database this crate creates; a no-op on older files). It frees one page per step.
        connection
            .prepare("PRAGMA incremental_vacuum")
            .and_then(|mut statement| {
                let mut rows = statement.query([])?;
                while rows.next()?.is_some() {}
                Ok(())
            })
            .map_err(sqlite("free pages"))?;
        let free_after: i64 = connection
            .query_row("PRAGMA freelist_count", [], |row| row.get(0))
            .map_err(sqlite("count free pages"))?;
        // Copy the WAL back into the file and truncate it, so the space shows on disk; a busy
        // reader only postpones that, it is not an error.
        connection
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(sqlite("checkpoint"))?;
        let compaction = Compaction {
            usage_records_deleted: deleted[0],
            usage_hourly_deleted: deleted[1],
            telemetry_samples_deleted: deleted[2],
            telemetry_minutes_deleted: deleted[3],
            telemetry_hours_deleted: deleted[4],
            pages_freed: u64::try_from(free_before - free_after).unwrap_or(0),
        };
        tracing::info!(?compaction, "ledger compacted");
        Ok(compaction)
    }
}

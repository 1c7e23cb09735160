//! The appliance's database: one SQLite file under `/var/lib/moebox` (`ledger.database`).
//! The ledger is the only code that reads or writes it.
//!
//! SQLite in WAL mode (readers, the CLI and exports, never block the writer), `synchronous =
//! FULL` (a committed row survives a crash), `auto_vacuum = INCREMENTAL` (compaction gives
//! space back), schema migrations versioned in code ([`schema::MIGRATIONS`], tracked in
//! `PRAGMA user_version`; a database from a newer release is refused).
//!
//! What it holds:
//! - API keys ([`Ledger::create_key`], [`Ledger::verify_key`], ...), stored only as SHA-256
//!   digests; the plaintext exists once, in [`CreatedKey`] (`key`).
//! - One [`UsageRecord`] per request (never content), written by the process's one
//!   [`UsageWriter`] thread with group commit: [`UsageWriter::record`] resolves once the
//!   record is durable, and a full queue is refused at once (`writer`). Each record is also
//!   added to its hourly and daily rollup in the same transaction (`usage`), so totals per
//!   team, key and model, series, a key's tokens this month ([`Ledger::tokens_used_by_key_since`])
//!   and the token mix come from a few rows whatever the period; raw records page out with
//!   [`Ledger::usage_records`].
//! - [`TelemetrySample`]s per GPU (or CPU package), rolled up per minute, hour and day, for
//!   energy ([`Ledger::energy_kwh`], per hour for time-of-use tariffs), utilisation and power
//!   series and the latest sample per source (`telemetry`).
//! - The asset register, the TCO assets of the config with history ([`Ledger::sync_assets`],
//!   [`Ledger::assets_at`]; `assets`).
//!
//! [`Ledger::compact`] applies the [`Retention`] windows: finer rows older than their window
//! are deleted and queries answer those periods from coarser rollups, so totals never change
//! when it runs (`retention`, `period`). [`export`] writes CSV (RFC 4180, formula-injection
//! guard) and JSON from the same values.
//!
//! The gateway process is the one writer: usage and telemetry go through its [`UsageWriter`]
//! (on a [`Ledger`] of its own, so a commit's fsync never delays key checks), keys and
//! compaction through short transactions that wait for SQLite's lock (`BEGIN IMMEDIATE`,
//! [`BUSY_TIMEOUT`]); `moebox keys` writes from its own short-lived process the same way.

#![forbid(unsafe_code)]

mod assets;
pub mod export;
pub mod key;
mod period;
mod retention;
mod schema;
mod telemetry;
mod usage;
mod writer;

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

pub use assets::{
    AmortisationMethod, AssetRow, AssetSync, AssetVersion, MAX_AMORTISATION_MONTHS, MAX_ASSETS,
};
pub use key::{KeyFormatError, PresentedKey};
pub use period::{MAX_SERIES_POINTS, Step};
pub use retention::{COMPACTION_CHUNK_ROWS, Compaction, Retention};
pub use telemetry::{
    EnergyPoint, JOULES_PER_KWH, MAX_GPU_INDEX, TelemetryPoint, TelemetrySample, TelemetrySource,
};
pub use usage::{
    KeyUsage, MAX_PAGE_RECORDS, MAX_USAGE_TEXT_CHARS, ModelUsage, RecordCursor, RecordPage,
    StoredUsage, TeamUsage, TokenMix, UsageFilter, UsagePoint, UsageRecord, UsageTotals,
};
pub use writer::{
    DEFAULT_WRITER_QUEUE_CAPACITY, MAX_WRITER_QUEUE_CAPACITY, UsageWriter, WriteError,
    WriterThread, open_with_writer,
};

/// How long a statement waits for another process's write lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest key name or team name.
pub const MAX_LABEL_CHARS: usize = 64;
/// The team a key belongs to when none is given.
pub const DEFAULT_TEAM: &str = "default";
/// SQLite's page cache per connection, in KiB (SQLite's own default). The cache fills with
/// every page the connection touches until it reaches this size, so it is the bound on how
/// far the gateway's memory follows the database's growth: the 200-client soak showed
/// +1.2 MB a minute with 32 MiB per connection (docs/reliability.md). The hot pages (the
/// current hour's rollup rows, the key index) fit in 2 MiB many times over.
pub const PAGE_CACHE_KIB: i64 = 2 * 1024;
/// How large the WAL file stays after a checkpoint.
pub const WAL_SIZE_LIMIT_BYTES: i64 = 64 << 20;

/// Seconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UnixSeconds(pub i64);

impl UnixSeconds {
    pub fn now() -> Self {
        let seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self(i64::try_from(seconds).unwrap_or(i64::MAX))
    }

    /// 00:00 UTC on the first day of this instant's month: where monthly token budgets
    /// start.
    pub fn month_start(self) -> Self {
        let days = self.0.div_euclid(86_400);
        let (_, _, day) = civil_from_days(days);
        Self((days - i64::from(day) + 1) * 86_400)
    }

    /// `YYYY-MM-DDTHH:MM:SSZ`.
    pub fn to_rfc3339(self) -> String {
        let days = self.0.div_euclid(86_400);
        let seconds = self.0.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60
        )
    }
}

/// Milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    pub fn now() -> Self {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        Self(i64::try_from(millis).unwrap_or(i64::MAX))
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    pub fn to_rfc3339(self) -> String {
        let seconds = UnixSeconds(self.0.div_euclid(1000)).to_rfc3339();
        let millis = self.0.rem_euclid(1000);
        format!("{}.{millis:03}Z", seconds.trim_end_matches('Z'))
    }
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// What a key may do. Admin keys may also do everything a user key may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The OpenAI API.
    User,
    /// The OpenAI API, `/admin/` and `/metrics`.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "user" => Some(Self::User),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// A key to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub name: String,
    pub team: String,
    pub scope: Scope,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    pub monthly_token_budget: Option<u64>,
}

impl NewKey {
    pub fn new(name: impl Into<String>, scope: Scope) -> Self {
        Self {
            name: name.into(),
            team: DEFAULT_TEAM.to_owned(),
            scope,
            requests_per_minute: None,
            tokens_per_minute: None,
            monthly_token_budget: None,
        }
    }
}

/// A stored key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRecord {
    pub id: i64,
    pub name: String,
    pub team: String,
    pub scope: Scope,
    /// `mbx_` and the first characters of the secret, to tell keys apart.
    pub hint: String,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    pub monthly_token_budget: Option<u64>,
    pub created_at: UnixSeconds,
    pub revoked_at: Option<UnixSeconds>,
}

impl KeyRecord {
    pub fn is_admin(&self) -> bool {
        self.scope == Scope::Admin
    }
}

/// A key just created: the only time its plaintext exists.
#[derive(Debug)]
pub struct CreatedKey {
    pub record: KeyRecord,
    pub key: PresentedKey,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot open the database {path}: {cause}")]
    Open {
        path: PathBuf,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("database {operation}: {cause}")]
    Sqlite {
        operation: &'static str,
        cause: rusqlite::Error,
    },
    #[error(
        "the database is at schema version {found}, newer than this moebox knows ({known}): \
         it was written by a newer release"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("{field}: {message}")]
    InvalidField {
        field: &'static str,
        message: String,
    },
    #[error("no key with id {0}")]
    KeyNotFound(i64),
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    #[error("the database was locked by a thread that panicked")]
    Poisoned,
    #[error("cannot start the ledger writer thread: {0}")]
    WriterThread(std::io::Error),
}

impl LedgerError {
    /// Whether SQLite found the disk (or `PRAGMA max_page_count`) full.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            Self::Sqlite {
                cause: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error {
                        code: rusqlite::ErrorCode::DiskFull,
                        ..
                    },
                    _
                ),
                ..
            }
        )
    }
}

pub(crate) fn sqlite(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> LedgerError {
    move |cause| LedgerError::Sqlite { operation, cause }
}

/// Each counter (absent ones pass) fits SQLite's INTEGER, a signed 64-bit number; the error
/// names the first that does not.
pub(crate) fn check_integers<const N: usize>(
    fields: [(&'static str, Option<u64>); N],
) -> Result<(), LedgerError> {
    match fields
        .into_iter()
        .find(|(_, value)| value.is_some_and(|v| i64::try_from(v).is_err()))
    {
        Some((field, _)) => Err(LedgerError::InvalidField {
            field,
            message: format!("must be at most {}", i64::MAX),
        }),
        None => Ok(()),
    }
}

/// Why a presented key is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed API key: {0}")]
    Malformed(#[from] KeyFormatError),
    #[error("unknown API key")]
    Unknown,
    #[error("the API key was revoked")]
    Revoked,
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// What [`Ledger::revoke_key`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    Revoked,
    AlreadyRevoked(UnixSeconds),
}

/// The open database. One per process; cheap operations take its connection in turn.
#[derive(Debug)]
pub struct Ledger {
    connection: Mutex<Connection>,
}

impl Ledger {
    /// Opens (creating, with mode 0600) the database at `path` and brings its schema up to
    /// date. The parent folder must exist.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let open_error = |cause: Box<dyn std::error::Error + Send + Sync>| LedgerError::Open {
            path: path.to_owned(),
            cause,
        };
        create_private_file(path).map_err(|e| open_error(Box::new(e)))?;
        let connection = Connection::open(path).map_err(|e| open_error(Box::new(e)))?;
        Self::with_connection(connection).map_err(|e| match e {
            LedgerError::Sqlite { cause, .. } => open_error(Box::new(cause)),
            other => other,
        })
    }

    /// A private database in memory, for tests.
    pub fn open_in_memory() -> Result<Self, LedgerError> {
        let connection = Connection::open_in_memory().map_err(sqlite("open in memory"))?;
        Self::with_connection(connection)
    }

    fn with_connection(mut connection: Connection) -> Result<Self, LedgerError> {
        connection
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(sqlite("set busy timeout"))?;
        // Only takes effect on a new, empty file (before migration 1): compaction can then
        // give deleted pages back to the file system (`PRAGMA incremental_vacuum`).
        connection
            .pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(sqlite("set auto vacuum"))?;
        // WAL: readers never block the writer. FULL: a committed row survives power loss.
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite("enable WAL"))?;
        connection
            .pragma_update(None, "synchronous", "FULL")
            .map_err(sqlite("set synchronous"))?;
        connection
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(sqlite("enable foreign keys"))?;
        // The rollups' and indexes' hot pages stay in memory across commits.
        connection
            .pragma_update(None, "cache_size", -PAGE_CACHE_KIB)
            .map_err(sqlite("set page cache size"))?;
        // After a burst, a checkpoint truncates the WAL back to this size.
        connection
            .pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)
            .map_err(sqlite("limit WAL size"))?;
        schema::migrate(&mut connection)?;
        Ok(Self {
            connection: Mutex::new(connection),
        })
    }

    fn connection(&self) -> Result<MutexGuard<'_, Connection>, LedgerError> {
        self.connection.lock().map_err(|_| LedgerError::Poisoned)
    }

    /// Writes usage records and telemetry samples in one transaction (`BEGIN IMMEDIATE`, so
    /// it waits for another process's write lock instead of failing on it). All or nothing.
    /// Returns how many samples were new.
    pub(crate) fn write_batch(
        &self,
        records: &[UsageRecord],
        samples: &[TelemetrySample],
    ) -> Result<usize, LedgerError> {
        for record in records {
            record.validate()?;
        }
        for sample in samples {
            sample.validate()?;
        }
        let mut connection = self.connection()?;
        let transaction = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sqlite("begin write"))?;
        usage::insert(&transaction, records).map_err(sqlite("store usage"))?;
        let stored = telemetry::insert(&transaction, samples)?;
        transaction.commit().map_err(sqlite("commit"))?;
        Ok(stored)
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> Result<i64, LedgerError> {
        schema::version(&*self.connection()?)
    }

    /// Creates a key; the returned [`CreatedKey`] holds the only copy of its plaintext.
    pub fn create_key(&self, new: &NewKey, now: UnixSeconds) -> Result<CreatedKey, LedgerError> {
        let name = check_label("name", &new.name)?;
        let team = check_label("team", &new.team)?;
        for (field, value) in [
            ("requests_per_minute", new.requests_per_minute),
            ("tokens_per_minute", new.tokens_per_minute),
        ] {
            if value == Some(0) {
                return Err(LedgerError::InvalidField {
                    field,
                    message: "must be at least 1 (leave it out for no limit)".to_owned(),
                });
            }
        }
        let budget = match new.monthly_token_budget {
            Some(0) => {
                return Err(LedgerError::InvalidField {
                    field: "monthly_token_budget",
                    message: "must be at least 1 (leave it out for no budget)".to_owned(),
                });
            }
            Some(value) => Some(i64::try_from(value).map_err(|_| LedgerError::InvalidField {
                field: "monthly_token_budget",
                message: format!("must be at most {}, got {value}", i64::MAX),
            })?),
            None => None,
        };
        let key = key::generate().map_err(|e| LedgerError::Random(e.to_string()))?;
        let connection = self.connection()?;
        connection
            .execute(
                "INSERT INTO keys (lookup, digest, name, team, scope, requests_per_minute, \
                 tokens_per_minute, monthly_token_budget, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    key.lookup(),
                    key.digest().as_slice(),
                    name,
                    team,
                    new.scope.as_str(),
                    new.requests_per_minute,
                    new.tokens_per_minute,
                    budget,
                    now.0,
                ],
            )
            .map_err(sqlite("insert key"))?;
        let id = connection.last_insert_rowid();
        drop(connection);
        let record = KeyRecord {
            id,
            name: name.to_owned(),
            team: team.to_owned(),
            scope: new.scope,
            hint: hint(key.lookup()),
            requests_per_minute: new.requests_per_minute,
            tokens_per_minute: new.tokens_per_minute,
            monthly_token_budget: new.monthly_token_budget,
            created_at: now,
            revoked_at: None,
        };
        Ok(CreatedKey { record, key })
    }

    /// Every key, revoked ones included, oldest first.
    pub fn list_keys(&self) -> Result<Vec<KeyRecord>, LedgerError> {
        let connection = self.connection()?;
        let mut statement = connection
            .prepare(&format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY id"))
            .map_err(sqlite("list keys"))?;
        let rows = statement
            .query_map([], key_record)
            .map_err(sqlite("list keys"))?;
        rows.map(|row| row.map_err(sqlite("read key")))
            .collect::<Result<Vec<_>, _>>()
    }

    /// Revokes key `id` from `now` on. Revoking twice is not an error; the first time stands.
    pub fn revoke_key(&self, id: i64, now: UnixSeconds) -> Result<Revocation, LedgerError> {
        let connection = self.connection()?;
        let revoked_at: Option<Option<i64>> = connection
            .query_row(
                "SELECT revoked_at FROM keys WHERE id = ?1",
                params![id],
                |row| row.get(0),
            )
            .optional()
            .map_err(sqlite("find key"))?;
        match revoked_at {
            None => Err(LedgerError::KeyNotFound(id)),
            Some(Some(at)) => Ok(Revocation::AlreadyRevoked(UnixSeconds(at))),
            Some(None) => {
                connection
                    .execute(
                        "UPDATE keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                        params![id, now.0],
                    )
                    .map_err(sqlite("revoke key"))?;
                Ok(Revocation::Revoked)
            }
        }
    }

    /// The key with id `id`, revoked or not; `None` when there is none.
    pub fn key(&self, id: i64) -> Result<Option<KeyRecord>, LedgerError> {
        let connection = self.connection()?;
        connection
            .query_row(
                &format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = ?1"),
                params![id],
                key_record,
            )
            .optional()
            .map_err(sqlite("find key"))
    }

    /// The key record for a presented key, if it is well formed, known and not revoked. The
    /// shape and checksum are checked before the database is touched.
    pub fn verify_key(&self, presented: &str) -> Result<KeyRecord, VerifyError> {
        let key = PresentedKey::parse(presented)?;
        let digest = key.digest();
        let connection = self.connection().map_err(VerifyError::Ledger)?;
        let mut statement = connection
            .prepare(&format!(
                "SELECT {KEY_COLUMNS}, digest FROM keys WHERE lookup = ?1"
            ))
            .map_err(sqlite("verify key"))?;
        let mut rows = statement
            .query(params![key.lookup()])
            .map_err(sqlite("verify key"))?;
        let mut found = None;
        while let Some(row) = rows.next().map_err(sqlite("verify key"))? {
            let stored: Vec<u8> = row.get("digest").map_err(sqlite("read key digest"))?;
            let Ok(stored) = <[u8; 32]>::try_from(stored.as_slice()) else {
                continue;
            };
            if key::digests_equal(&stored, &digest) {
                found = Some(key_record(row).map_err(sqlite("read key"))?);
            }
        }
        match found {
            None => Err(VerifyError::Unknown),
            Some(record) if record.revoked_at.is_some() => Err(VerifyError::Revoked),
            Some(record) => Ok(record),
        }
    }
}

const KEY_COLUMNS: &str = "id, name, team, scope, lookup, requests_per_minute, \
     tokens_per_minute, monthly_token_budget, created_at, revoked_at";

fn key_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRecord> {
    let scope: String = row.get("scope")?;
    let scope = Scope::parse(&scope).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            3,
            rusqlite::types::Type::Text,
            format!("unknown scope {scope:?}").into(),
        )
    })?;
    let lookup: String = row.get("lookup")?;
    let budget: Option<i64> = row.get("monthly_token_budget")?;
    Ok(KeyRecord {
        id: row.get("id")?,
        name: row.get("name")?,
        team: row.get("team")?,
        scope,
        hint: hint(&lookup),
        requests_per_minute: row.get("requests_per_minute")?,
        tokens_per_minute: row.get("tokens_per_minute")?,
        monthly_token_budget: budget.and_then(|b| u64::try_from(b).ok()),
        created_at: UnixSeconds(row.get("created_at")?),
        revoked_at: row.get::<_, Option<i64>>("revoked_at")?.map(UnixSeconds),
    })
}

fn hint(lookup: &str) -> String {
    format!("{}{lookup}…", key::KEY_PREFIX)
}

fn check_label<'a>(field: &'static str, value: &'a str) -> Result<&'a str, LedgerError> {
    let trimmed = value.trim();
    let invalid = |message: String| LedgerError::InvalidField { field, message };
    if trimmed.is_empty() {
        return Err(invalid("must not be empty".to_owned()));
    }
    let chars = trimmed.chars().count();
    if chars > MAX_LABEL_CHARS {
        return Err(invalid(format!(
            "must be at most {MAX_LABEL_CHARS} characters, got {chars}"
        )));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(invalid("must not contain control characters".to_owned()));
    }
    Ok(trimmed)
}

/// Creates `path` readable by its owner only, if it does not exist, so SQLite (which then
/// gives its `-wal` and `-shm` files the same mode) never makes it world-readable.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;

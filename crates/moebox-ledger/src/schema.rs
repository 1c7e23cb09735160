//! Schema migrations, versioned in code. Migration `n` (1-based) brings `PRAGMA user_version`
//! from `n - 1` to `n`, in one transaction. Append only: a released migration never changes.
//!
//! 1 keys, 2 usage records and their hourly and daily rollups, 3 telemetry samples and their
//! minute, hour and day rollups, 4 the asset register.
//!
//! Rollup rows are kept up to date by the same transaction that inserts the raw row (see
//! [`crate::usage`] and [`crate::telemetry`]), so a rollup bucket always equals the sum of the
//! raw rows that started in it; retention ([`crate::retention`]) can then drop raw rows without
//! changing any total.

use rusqlite::Connection;

use crate::LedgerError;

pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: API keys. `lookup` (the secret's first characters) selects the row, `digest` (SHA-256
    // of the whole key) is compared in constant time; the plaintext is never stored. Ids are
    // AUTOINCREMENT so a deleted key's id is never reused by another key's usage records.
    "CREATE TABLE keys (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        lookup TEXT NOT NULL,
        digest BLOB NOT NULL CHECK (length(digest) = 32),
        name TEXT NOT NULL,
        team TEXT NOT NULL,
        scope TEXT NOT NULL CHECK (scope IN ('user', 'admin')),
        requests_per_minute INTEGER CHECK (requests_per_minute > 0),
        tokens_per_minute INTEGER CHECK (tokens_per_minute > 0),
        monthly_token_budget INTEGER CHECK (monthly_token_budget > 0),
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    ) STRICT;
    CREATE INDEX keys_by_lookup ON keys (lookup);",
    // 2: usage, one row per request, never content. No foreign key to `keys`: a usage record
    // must never be refused (and its batch with it) because of the state of a key. Times are
    // milliseconds since the epoch; a request belongs to the bucket its start falls in.
    // `retention_floors` says from when on each table is complete (see `crate::retention`).
    "CREATE TABLE usage (
        id INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL,
        started_at_ms INTEGER NOT NULL,
        ended_at_ms INTEGER NOT NULL CHECK (ended_at_ms >= started_at_ms),
        key_id INTEGER NOT NULL,
        team TEXT NOT NULL,
        model TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL CHECK (prompt_tokens >= 0),
        completion_tokens INTEGER NOT NULL CHECK (completion_tokens >= 0),
        time_to_first_token_ms INTEGER CHECK (time_to_first_token_ms >= 0),
        latency_ms INTEGER NOT NULL CHECK (latency_ms >= 0),
        status INTEGER NOT NULL CHECK (status BETWEEN 100 AND 599),
        engine TEXT,
        finish_reason TEXT
    ) STRICT;
    -- No (key_id, time) index on raw or hourly rows: a key's totals read them only for the
    -- partial days at a period's ends (none for a budget month from midnight), and such an
    -- index touches a page per key per commit (each halved the writer's throughput). The
    -- daily rollup has one; it gains a row per key and model once a day.
    CREATE INDEX usage_by_time ON usage (started_at_ms);
    CREATE TABLE usage_hourly (
        bucket INTEGER NOT NULL,
        key_id INTEGER NOT NULL,
        team TEXT NOT NULL,
        model TEXT NOT NULL,
        requests INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        client_errors INTEGER NOT NULL,
        server_errors INTEGER NOT NULL,
        latency_ms INTEGER NOT NULL,
        PRIMARY KEY (bucket, key_id, team, model)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE usage_daily (
        bucket INTEGER NOT NULL,
        key_id INTEGER NOT NULL,
        team TEXT NOT NULL,
        model TEXT NOT NULL,
        requests INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        client_errors INTEGER NOT NULL,
        server_errors INTEGER NOT NULL,
        latency_ms INTEGER NOT NULL,
        PRIMARY KEY (bucket, key_id, team, model)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX usage_daily_by_key ON usage_daily (key_id, bucket);
    CREATE TABLE retention_floors (
        name TEXT PRIMARY KEY,
        floor INTEGER NOT NULL
    ) STRICT;",
    // 3: telemetry samples (one per source and time; energy is the delta since the source's
    // previous sample), their minute, hour and day rollups, and the latest sample per source.
    "CREATE TABLE telemetry (
        at_ms INTEGER NOT NULL,
        source TEXT NOT NULL,
        utilisation_percent REAL,
        memory_used_bytes INTEGER,
        memory_total_bytes INTEGER,
        power_watts REAL,
        energy_joules REAL,
        temperature_celsius REAL,
        sm_clock_mhz INTEGER,
        ecc_errors INTEGER,
        throttle_reasons INTEGER,
        PRIMARY KEY (at_ms, source)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE telemetry_latest (
        source TEXT PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        utilisation_percent REAL,
        memory_used_bytes INTEGER,
        memory_total_bytes INTEGER,
        power_watts REAL,
        energy_joules REAL,
        temperature_celsius REAL,
        sm_clock_mhz INTEGER,
        ecc_errors INTEGER,
        throttle_reasons INTEGER
    ) STRICT;
    CREATE TABLE telemetry_minutely (
        bucket INTEGER NOT NULL,
        source TEXT NOT NULL,
        samples INTEGER NOT NULL,
        utilisation_sum REAL NOT NULL,
        utilisation_samples INTEGER NOT NULL,
        utilisation_max REAL,
        power_sum REAL NOT NULL,
        power_samples INTEGER NOT NULL,
        power_max REAL,
        energy_joules REAL NOT NULL,
        memory_used_max INTEGER,
        memory_total_max INTEGER,
        temperature_max REAL,
        sm_clock_max INTEGER,
        ecc_errors_max INTEGER,
        throttle_reasons INTEGER NOT NULL,
        PRIMARY KEY (bucket, source)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE telemetry_hourly (
        bucket INTEGER NOT NULL,
        source TEXT NOT NULL,
        samples INTEGER NOT NULL,
        utilisation_sum REAL NOT NULL,
        utilisation_samples INTEGER NOT NULL,
        utilisation_max REAL,
        power_sum REAL NOT NULL,
        power_samples INTEGER NOT NULL,
        power_max REAL,
        energy_joules REAL NOT NULL,
        memory_used_max INTEGER,
        memory_total_max INTEGER,
        temperature_max REAL,
        sm_clock_max INTEGER,
        ecc_errors_max INTEGER,
        throttle_reasons INTEGER NOT NULL,
        PRIMARY KEY (bucket, source)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE telemetry_daily (
        bucket INTEGER NOT NULL,
        source TEXT NOT NULL,
        samples INTEGER NOT NULL,
        utilisation_sum REAL NOT NULL,
        utilisation_samples INTEGER NOT NULL,
        utilisation_max REAL,
        power_sum REAL NOT NULL,
        power_samples INTEGER NOT NULL,
        power_max REAL,
        energy_joules REAL NOT NULL,
        memory_used_max INTEGER,
        memory_total_max INTEGER,
        temperature_max REAL,
        sm_clock_max INTEGER,
        ecc_errors_max INTEGER,
        throttle_reasons INTEGER NOT NULL,
        PRIMARY KEY (bucket, source)
    ) STRICT, WITHOUT ROWID;",
    // 4: the asset register, a mirror of the configured TCO assets with history: a changed or
    // removed asset's row gets `retired_at` and is never deleted. `valid_from` is NULL for the
    // first version of a name (it applies as far back as reports go).
    "CREATE TABLE assets (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        purchase_price_minor INTEGER NOT NULL CHECK (purchase_price_minor >= 0),
        currency TEXT NOT NULL,
        purchase_date TEXT NOT NULL,
        amortisation_months INTEGER NOT NULL CHECK (amortisation_months > 0),
        residual_value_minor INTEGER NOT NULL
            CHECK (residual_value_minor BETWEEN 0 AND purchase_price_minor),
        method TEXT NOT NULL CHECK (method IN ('straight_line', 'declining_balance')),
        declining_factor_micros INTEGER CHECK (declining_factor_micros > 0),
        valid_from INTEGER,
        retired_at INTEGER
    ) STRICT;
    CREATE UNIQUE INDEX assets_in_force ON assets (name) WHERE retired_at IS NULL;",
];

pub(crate) fn version(connection: &Connection) -> Result<i64, LedgerError> {
    connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|cause| LedgerError::Sqlite {
            operation: "read schema version",
            cause,
        })
}

pub(crate) fn migrate(connection: &mut Connection) -> Result<(), LedgerError> {
    let known = MIGRATIONS.len() as i64;
    let found = version(connection)?;
    if found > known {
        return Err(LedgerError::SchemaTooNew { found, known });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let target = index as i64 + 1;
        let sqlite = |cause| LedgerError::Sqlite {
            operation: "migrate schema",
            cause,
        };
        let transaction = connection.transaction().map_err(sqlite)?;
        transaction.execute_batch(sql).map_err(sqlite)?;
        transaction
            .pragma_update(None, "user_version", target)
            .map_err(sqlite)?;
        transaction.commit().map_err(sqlite)?;
        tracing::info!(version = target, "database schema migrated");
    }
    Ok(())
}

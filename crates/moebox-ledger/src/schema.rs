//! Schema migrations, versioned in code. Migration `n` (1-based) brings `PRAGMA user_version`
//! from `n - 1` to `n`, in one transaction. Append only: a released migration never changes.
//!
//! Planned (issue 5): 2 usage records (one row per request: time, key id, team, model, token
//! counts, latency, status, engine, finish reason; never content), 3 telemetry samples,
//! 4 the asset register, then the rollup tables.

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

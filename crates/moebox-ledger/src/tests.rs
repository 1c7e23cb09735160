use super::*;

fn ledger() -> Ledger {
    Ledger::open_in_memory().expect("in-memory ledger")
}

#[test]
fn created_key_verifies_and_lists_without_its_secret() {
    let ledger = ledger();
    let mut new = NewKey::new("alice laptop", Scope::User);
    new.team = "audit".to_owned();
    new.requests_per_minute = Some(60);
    new.monthly_token_budget = Some(1_000_000);
    let created = ledger
        .create_key(&new, UnixSeconds(1_700_000_000))
        .expect("created");
    assert_eq!(created.record.name, "alice laptop");
    assert_eq!(created.record.team, "audit");
    let verified = ledger.verify_key(created.key.expose()).expect("verifies");
    assert_eq!(verified, created.record);
    let listed = ledger.list_keys().expect("lists");
    assert_eq!(listed, vec![created.record.clone()]);
    let secret_tail = &created.key.expose()[key::KEY_PREFIX.len() + key::LOOKUP_LEN..];
    assert!(!format!("{listed:?}").contains(secret_tail));
}

#[test]
fn revoked_key_is_refused_and_revoking_twice_keeps_the_first_time() {
    let ledger = ledger();
    let created = ledger
        .create_key(&NewKey::new("ci", Scope::Admin), UnixSeconds(10))
        .expect("created");
    assert!(
        ledger
            .verify_key(created.key.expose())
            .expect("ok")
            .is_admin()
    );
    assert_eq!(
        ledger
            .revoke_key(created.record.id, UnixSeconds(20))
            .expect("revoked"),
        Revocation::Revoked
    );
    assert!(matches!(
        ledger.verify_key(created.key.expose()),
        Err(VerifyError::Revoked)
    ));
    assert_eq!(
        ledger
            .revoke_key(created.record.id, UnixSeconds(30))
            .expect("again"),
        Revocation::AlreadyRevoked(UnixSeconds(20))
    );
    assert!(matches!(
        ledger.revoke_key(999, UnixSeconds(30)),
        Err(LedgerError::KeyNotFound(999))
    ));
}

#[test]
fn unknown_and_malformed_keys_are_told_apart() {
    let ledger = ledger();
    let stranger = key::generate().expect("random");
    assert!(matches!(
        ledger.verify_key(stranger.expose()),
        Err(VerifyError::Unknown)
    ));
    assert!(matches!(
        ledger.verify_key("Bearer nonsense"),
        Err(VerifyError::Malformed(KeyFormatError::Prefix))
    ));
}

#[test]
fn a_key_sharing_the_lookup_prefix_but_not_the_secret_is_unknown() {
    let ledger = ledger();
    let created = ledger
        .create_key(&NewKey::new("a", Scope::User), UnixSeconds(1))
        .expect("created");
    // Same selector, different digest: insert a forged row directly.
    let forged = key::generate().expect("random");
    ledger
        .connection()
        .expect("connection")
        .execute(
            "UPDATE keys SET lookup = ?1 WHERE id = ?2",
            params![forged.lookup(), created.record.id],
        )
        .expect("update");
    assert!(matches!(
        ledger.verify_key(forged.expose()),
        Err(VerifyError::Unknown)
    ));
}

#[test]
fn labels_and_limits_are_checked_by_field() {
    let ledger = ledger();
    for (new, field) in [
        (NewKey::new("  ", Scope::User), "name"),
        (
            NewKey::new("x".repeat(MAX_LABEL_CHARS + 1), Scope::User),
            "name",
        ),
        (NewKey::new("tab\there", Scope::User), "name"),
        (
            NewKey {
                team: String::new(),
                ..NewKey::new("ok", Scope::User)
            },
            "team",
        ),
        (
            NewKey {
                tokens_per_minute: Some(0),
                ..NewKey::new("ok", Scope::User)
            },
            "tokens_per_minute",
        ),
        (
            NewKey {
                monthly_token_budget: Some(u64::MAX),
                ..NewKey::new("ok", Scope::User)
            },
            "monthly_token_budget",
        ),
    ] {
        match ledger.create_key(&new, UnixSeconds(1)) {
            Err(LedgerError::InvalidField { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{new:?}: expected an error on {field}, got {other:?}"),
        }
    }
}

#[test]
fn file_database_is_private_uses_wal_and_reopens_at_the_same_version() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("moebox.sqlite");
    let key = {
        let ledger = Ledger::open(&path).expect("opens");
        assert_eq!(ledger.schema_version().expect("version"), MIGRATIONS_LEN);
        let mode: String = ledger
            .connection()
            .expect("connection")
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .expect("journal mode");
        assert_eq!(mode, "wal");
        ledger
            .create_key(&NewKey::new("kept", Scope::User), UnixSeconds::now())
            .expect("created")
            .key
    };
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    let ledger = Ledger::open(&path).expect("reopens");
    assert_eq!(ledger.schema_version().expect("version"), MIGRATIONS_LEN);
    ledger.verify_key(key.expose()).expect("still valid");
}

#[test]
fn a_database_from_a_newer_release_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("moebox.sqlite");
    {
        let connection = Connection::open(&path).expect("open");
        connection
            .pragma_update(None, "user_version", MIGRATIONS_LEN + 1)
            .expect("set version");
    }
    assert!(matches!(
        Ledger::open(&path),
        Err(LedgerError::SchemaTooNew { .. })
    ));
}

#[test]
fn a_database_at_version_1_is_migrated_and_keeps_its_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("moebox.sqlite");
    let key = {
        let mut connection = Connection::open(&path).expect("open");
        let transaction = connection.transaction().expect("transaction");
        transaction
            .execute_batch(schema::MIGRATIONS[0])
            .expect("migration 1");
        transaction
            .pragma_update(None, "user_version", 1)
            .expect("version");
        let key = key::generate().expect("random");
        // A key written by the release that knew only migration 1.
        transaction
            .execute(
                "INSERT INTO keys (lookup, digest, name, team, scope, created_at) \
                 VALUES (?1, ?2, 'old', 'default', 'user', 1)",
                params![key.lookup(), key.digest().as_slice()],
            )
            .expect("key");
        transaction.commit().expect("commit");
        key
    };
    let ledger = Ledger::open(&path).expect("migrates");
    assert_eq!(ledger.schema_version().expect("version"), MIGRATIONS_LEN);
    ledger.verify_key(key.expose()).expect("still valid");
    assert_eq!(
        ledger
            .usage_total(UnixSeconds(0), UnixSeconds(10), &UsageFilter::All)
            .expect("usage table exists"),
        UsageTotals::default()
    );
}

#[test]
fn timestamps_format_as_utc() {
    assert_eq!(UnixSeconds(0).to_rfc3339(), "1970-01-01T00:00:00Z");
    assert_eq!(
        UnixSeconds(1_709_210_096).to_rfc3339(),
        "2024-02-29T12:34:56Z"
    );
    assert_eq!(
        UnixMillis(1_709_210_096_007).to_rfc3339(),
        "2024-02-29T12:34:56.007Z"
    );
}

const MIGRATIONS_LEN: i64 = schema::MIGRATIONS.len() as i64;

#[test]
fn month_start_is_midnight_utc_on_the_first() {
    // 2024-02-29T13:14:15Z (a leap day) → 2024-02-01T00:00:00Z.
    let leap_day = UnixSeconds(1_709_212_455);
    assert_eq!(leap_day.month_start().to_rfc3339(), "2024-02-01T00:00:00Z");
    let first = UnixSeconds(1_706_745_600);
    assert_eq!(first.month_start(), first);
    assert_eq!(
        UnixSeconds(1_706_745_599).month_start().to_rfc3339(),
        "2024-01-01T00:00:00Z"
    );
}

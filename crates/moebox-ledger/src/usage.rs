//! Usage records: one row per request (who, which model, how many tokens, how long, how it
//! ended; never the prompt or the completion), their hourly and daily rollups, and the
//! queries the admin pages, exports and limits need.
//!
//! A request belongs to the hour and the day (UTC) its *start* falls in. Each insert also adds
//! the request to its hourly and daily rollup rows in the same transaction, so a rollup bucket
//! always equals the sum of its raw rows, late records included.

use std::collections::BTreeMap;

use rusqlite::{Transaction, params, types::Value};
use serde::Serialize;

use crate::{
    Ledger, LedgerError, UnixMillis, UnixSeconds,
    period::{self, DAY, HOUR, Step, Tier, floor_to, millis},
    retention, sqlite,
};

/// Longest request id, team, model, endpoint, engine or finish reason in a usage record.
pub const MAX_USAGE_TEXT_CHARS: usize = 256;
/// The most records one page of [`Ledger::usage_records`] returns.
pub const MAX_PAGE_RECORDS: u32 = 10_000;

/// One request, as the gateway saw it. Never holds content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRecord {
    pub request_id: String,
    /// When the request arrived; it is counted in this instant's hour and day.
    pub started_at: UnixMillis,
    /// When its response ended (or failed).
    pub ended_at: UnixMillis,
    pub key_id: i64,
    /// The key's team at the time of the request (a later change of team does not move it).
    pub team: String,
    pub model: String,
    /// The API path, e.g. `/v1/chat/completions`.
    pub endpoint: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// `None` when no token was produced.
    pub time_to_first_token_ms: Option<u64>,
    pub latency_ms: u64,
    /// The HTTP status the client got (499: the client went away).
    pub status: u16,
    /// Which engine served it, if one did.
    pub engine: Option<String>,
    /// `stop`, `length`, ... when the generation finished.
    pub finish_reason: Option<String>,
}

impl UsageRecord {
    /// Checks every field against the schema's limits, naming the field that is wrong.
    pub fn validate(&self) -> Result<(), LedgerError> {
        let invalid =
            |field: &'static str, message: String| LedgerError::InvalidField { field, message };
        for (field, value) in [
            ("request_id", Some(&self.request_id)),
            ("team", Some(&self.team)),
            ("model", Some(&self.model)),
            ("endpoint", Some(&self.endpoint)),
            ("engine", self.engine.as_ref()),
            ("finish_reason", self.finish_reason.as_ref()),
        ] {
            let Some(value) = value else { continue };
            if value.is_empty() {
                return Err(invalid(field, "must not be empty".to_owned()));
            }
            let chars = value.chars().count();
            if chars > MAX_USAGE_TEXT_CHARS {
                return Err(invalid(
                    field,
                    format!("must be at most {MAX_USAGE_TEXT_CHARS} characters, got {chars}"),
                ));
            }
        }
        if self.started_at.0 < 0 {
            return Err(invalid(
                "started_at",
                format!("must not be before 1970, got {} ms", self.started_at.0),
            ));
        }
        if self.ended_at < self.started_at {
            return Err(invalid(
                "ended_at",
                format!(
                    "must not be before started_at ({} ms), got {} ms",
                    self.started_at.0, self.ended_at.0
                ),
            ));
        }
        if !(100..=599).contains(&self.status) {
            return Err(invalid(
                "status",
                format!("must be an HTTP status 100..=599, got {}", self.status),
            ));
        }
        crate::check_integers([
            ("prompt_tokens", Some(self.prompt_tokens)),
            ("completion_tokens", Some(self.completion_tokens)),
            ("latency_ms", Some(self.latency_ms)),
            ("time_to_first_token_ms", self.time_to_first_token_ms),
        ])
    }
}

/// A stored usage record and its row id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredUsage {
    pub id: i64,
    #[serde(flatten)]
    pub record: UsageRecord,
}

/// Sums over a set of requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UsageTotals {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Requests answered 4xx (499, the client left, included).
    pub client_errors: u64,
    /// Requests answered 5xx.
    pub server_errors: u64,
    /// Sum of latencies, for the mean: `latency_ms / requests`.
    pub latency_ms: u64,
}

impl UsageTotals {
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    pub(crate) fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.client_errors += other.client_errors;
        self.server_errors += other.server_errors;
        self.latency_ms += other.latency_ms;
    }
}

/// The input/output token mix of a period, what alternatives are priced on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TokenMix {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Which requests a query counts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum UsageFilter {
    #[default]
    All,
    Team(String),
    Key(i64),
}

impl UsageFilter {
    fn sql(&self) -> (&'static str, Option<Value>) {
        match self {
            Self::All => ("", None),
            Self::Team(team) => (" AND team = ?3", Some(Value::Text(team.clone()))),
            Self::Key(id) => (" AND key_id = ?3", Some(Value::Integer(*id))),
        }
    }
}

/// Totals of one team over a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TeamUsage {
    pub team: String,
    pub totals: UsageTotals,
}

/// Totals of one key over a period, with the key's current name and team.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyUsage {
    pub key_id: i64,
    /// `None` when the key is not (or no longer) in the key table.
    pub name: Option<String>,
    pub team: Option<String>,
    pub totals: UsageTotals,
}

/// Totals of one model over a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelUsage {
    pub model: String,
    pub totals: UsageTotals,
}

/// One point of a usage series: the bucket starting at `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UsagePoint {
    pub start: UnixSeconds,
    pub totals: UsageTotals,
}

/// Where a page of [`Ledger::usage_records`] ended; pass it back for the next page. Its text
/// form (`started_ms.id`) fits a query string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RecordCursor {
    pub started_at_ms: i64,
    pub id: i64,
}

impl std::fmt::Display for RecordCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.started_at_ms, self.id)
    }
}

impl std::str::FromStr for RecordCursor {
    type Err = LedgerError;

    fn from_str(text: &str) -> Result<Self, LedgerError> {
        let invalid = || LedgerError::InvalidField {
            field: "after",
            message: format!("{text:?} is not a cursor from a previous page (`<ms>.<id>`)"),
        };
        let (started, id) = text.split_once('.').ok_or_else(invalid)?;
        Ok(Self {
            started_at_ms: started.parse().map_err(|_| invalid())?,
            id: id.parse().map_err(|_| invalid())?,
        })
    }
}

/// A page of raw usage records, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordPage {
    pub records: Vec<StoredUsage>,
    /// `Some` when more records may follow.
    pub next: Option<RecordCursor>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    None,
    Team,
    Key,
    Model,
}

impl Group {
    fn column(self) -> &'static str {
        match self {
            Self::None => "NULL",
            Self::Team => "team",
            Self::Key => "key_id",
            Self::Model => "model",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum GroupValue {
    All,
    Text(String),
    Id(i64),
}

const USAGE_TIERS: [&str; 3] = ["usage_daily", "usage_hourly", "usage"];

const INSERT_USAGE: &str = "INSERT INTO usage (request_id, started_at_ms, ended_at_ms, key_id, \
     team, model, endpoint, prompt_tokens, completion_tokens, time_to_first_token_ms, \
     latency_ms, status, engine, finish_reason) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";

fn upsert_rollup(table: &str) -> String {
    format!(
        "INSERT INTO {table} (bucket, key_id, team, model, requests, prompt_tokens, \
         completion_tokens, client_errors, server_errors, latency_ms) \
         VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?7, ?8, ?9) \
         ON CONFLICT (bucket, key_id, team, model) DO UPDATE SET \
         requests = requests + 1, \
         prompt_tokens = prompt_tokens + excluded.prompt_tokens, \
         completion_tokens = completion_tokens + excluded.completion_tokens, \
         client_errors = client_errors + excluded.client_errors, \
         server_errors = server_errors + excluded.server_errors, \
         latency_ms = latency_ms + excluded.latency_ms"
    )
}

fn to_i64(value: u64) -> i64 {
    // Validated before: every count fits.
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Inserts validated records and adds them to their rollups, inside the caller's transaction.
pub(crate) fn insert(
    transaction: &Transaction<'_>,
    records: &[UsageRecord],
) -> rusqlite::Result<()> {
    let mut raw = transaction.prepare(INSERT_USAGE)?;
    let mut hourly = transaction.prepare(&upsert_rollup("usage_hourly"))?;
    let mut daily = transaction.prepare(&upsert_rollup("usage_daily"))?;
    for record in records {
        raw.execute(params![
            record.request_id,
            record.started_at.0,
            record.ended_at.0,
            record.key_id,
            record.team,
            record.model,
            record.endpoint,
            to_i64(record.prompt_tokens),
            to_i64(record.completion_tokens),
            record.time_to_first_token_ms.map(to_i64),
            to_i64(record.latency_ms),
            record.status,
            record.engine,
            record.finish_reason,
        ])?;
        let started = record.started_at.0.div_euclid(1000);
        let client_error = i64::from((400..500).contains(&record.status));
        let server_error = i64::from(record.status >= 500);
        for (statement, bucket) in [
            (&mut hourly, floor_to(started, HOUR)),
            (&mut daily, floor_to(started, DAY)),
        ] {
            statement.execute(params![
                bucket,
                record.key_id,
                record.team,
                record.model,
                to_i64(record.prompt_tokens),
                to_i64(record.completion_tokens),
                client_error,
                server_error,
                to_i64(record.latency_ms),
            ])?;
        }
    }
    Ok(())
}

fn totals_from_row(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<UsageTotals> {
    let get = |index: usize| -> rusqlite::Result<u64> {
        Ok(row
            .get::<_, Option<i64>>(first + index)?
            .map_or(0, |v| u64::try_from(v).unwrap_or(0)))
    };
    Ok(UsageTotals {
        requests: get(0)?,
        prompt_tokens: get(1)?,
        completion_tokens: get(2)?,
        client_errors: get(3)?,
        server_errors: get(4)?,
        latency_ms: get(5)?,
    })
}

const ROLLUP_SUMS: &str = "SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), \
     SUM(client_errors), SUM(server_errors), SUM(latency_ms)";
const RAW_SUMS: &str = "COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), \
     SUM(status BETWEEN 400 AND 499), SUM(status >= 500), SUM(latency_ms)";

impl Ledger {
    /// Writes usage records in one transaction, each also added to its hourly and daily
    /// rollup. All or nothing: an invalid record (named by field) or a database error (a full
    /// disk) writes none of them. The gateway writes through [`crate::UsageWriter`], which
    /// calls this with whatever is queued.
    pub fn record_usage(&self, records: &[UsageRecord]) -> Result<(), LedgerError> {
        self.write_batch(records, &[]).map(|_| ())
    }

    fn usage_tiers(&self, connection: &rusqlite::Connection) -> Result<[Tier; 3], LedgerError> {
        Ok([
            Tier {
                bucket: DAY,
                floor: i64::MIN,
            },
            Tier {
                bucket: HOUR,
                floor: retention::floor(connection, retention::USAGE_HOURLY)?,
            },
            Tier {
                bucket: 0,
                floor: retention::floor(connection, retention::USAGE_RAW)?,
            },
        ])
    }

    fn usage_sums(
        &self,
        from: UnixSeconds,
        to: UnixSeconds,
        filter: &UsageFilter,
        group: Group,
    ) -> Result<BTreeMap<GroupValue, UsageTotals>, LedgerError> {
        period::check_period(from, to)?;
        let connection = self.connection()?;
        let tiers = self.usage_tiers(&connection)?;
        let (filter_sql, filter_value) = filter.sql();
        let column = group.column();
        let mut sums: BTreeMap<GroupValue, UsageTotals> = BTreeMap::new();
        for segment in period::plan(from.0, to.0, &tiers) {
            let table = USAGE_TIERS[segment.tier];
            let (sql, low, high) = if tiers[segment.tier].bucket == 0 {
                (
                    format!(
                        "SELECT {column}, {RAW_SUMS} FROM usage WHERE started_at_ms >= ?1 \
                         AND started_at_ms < ?2{filter_sql} GROUP BY 1"
                    ),
                    millis(segment.from),
                    millis(segment.to),
                )
            } else {
                (
                    format!(
                        "SELECT {column}, {ROLLUP_SUMS} FROM {table} WHERE bucket >= ?1 \
                         AND bucket < ?2{filter_sql} GROUP BY 1"
                    ),
                    segment.from,
                    segment.to,
                )
            };
            let mut values = vec![Value::Integer(low), Value::Integer(high)];
            values.extend(filter_value.clone());
            let mut statement = connection.prepare(&sql).map_err(sqlite("sum usage"))?;
            let mut rows = statement
                .query(rusqlite::params_from_iter(values))
                .map_err(sqlite("sum usage"))?;
            while let Some(row) = rows.next().map_err(sqlite("sum usage"))? {
                let key = match group {
                    Group::None => GroupValue::All,
                    Group::Key => GroupValue::Id(row.get(0).map_err(sqlite("read usage"))?),
                    Group::Team | Group::Model => {
                        GroupValue::Text(row.get(0).map_err(sqlite("read usage"))?)
                    }
                };
                let totals = totals_from_row(row, 1).map_err(sqlite("read usage"))?;
                if totals.requests > 0 {
                    sums.entry(key).or_default().add(&totals);
                }
            }
        }
        Ok(sums)
    }

    /// Totals of the requests that started in `[from, to)`. Where raw records have been
    /// compacted away (older than the raw retention), a bound rounds down to its hour; where
    /// hourly rollups have too, to its day (UTC). Totals never change when compaction runs.
    pub fn usage_total(
        &self,
        from: UnixSeconds,
        to: UnixSeconds,
        filter: &UsageFilter,
    ) -> Result<UsageTotals, LedgerError> {
        Ok(self
            .usage_sums(from, to, filter, Group::None)?
            .remove(&GroupValue::All)
            .unwrap_or_default())
    }

    /// The actual input/output token mix over `[from, to)` (bounds as [`Self::usage_total`]).
    pub fn token_mix(&self, from: UnixSeconds, to: UnixSeconds) -> Result<TokenMix, LedgerError> {
        let totals = self.usage_total(from, to, &UsageFilter::All)?;
        Ok(TokenMix {
            prompt_tokens: totals.prompt_tokens,
            completion_tokens: totals.completion_tokens,
        })
    }

    /// Totals per team over `[from, to)` (bounds as [`Self::usage_total`]), by team name.
    pub fn usage_by_team(
        &self,
        from: UnixSeconds,
        to: UnixSeconds,
    ) -> Result<Vec<TeamUsage>, LedgerError> {
        Ok(self
            .usage_sums(from, to, &UsageFilter::All, Group::Team)?
            .into_iter()
            .filter_map(|(key, totals)| match key {
                GroupValue::Text(team) => Some(TeamUsage { team, totals }),
                _ => None,
            })
            .collect())
    }

    /// Totals per model over `[from, to)` (bounds as [`Self::usage_total`]), by model name.
    pub fn usage_by_model(
        &self,
        from: UnixSeconds,
        to: UnixSeconds,
    ) -> Result<Vec<ModelUsage>, LedgerError> {
        Ok(self
            .usage_sums(from, to, &UsageFilter::All, Group::Model)?
            .into_iter()
            .filter_map(|(key, totals)| match key {
                GroupValue::Text(model) => Some(ModelUsage { model, totals }),
                _ => None,
            })
            .collect())
    }

    /// Totals per key over `[from, to)` (bounds as [`Self::usage_total`]), by key id, with
    /// each key's current name and team.
    pub fn usage_by_key(
        &self,
        from: UnixSeconds,
        to: UnixSeconds,
    ) -> Result<Vec<KeyUsage>, LedgerError> {
        let sums = self.usage_sums(from, to, &UsageFilter::All, Group::Key)?;
        let connection = self.connection()?;
        let mut statement = connection
            .prepare("SELECT name, team FROM keys WHERE id = ?1")
            .map_err(sqlite("read key names"))?;
        let mut result = Vec::with_capacity(sums.len());
        for (key, totals) in sums {
            let GroupValue::Id(key_id) = key else {
                continue;
            };
            let names: Option<(String, String)> = rusqlite::OptionalExtension::optional(
                statement.query_row(params![key_id], |row| Ok((row.get(0)?, row.get(1)?))),
            )
            .map_err(sqlite("read key names"))?;
            let (name, team) = names.map_or((None, None), |(n, t)| (Some(n), Some(t)));
            result.push(KeyUsage {
                key_id,
                name,
                team,
                totals,
            });
        }
        Ok(result)
    }

    /// Prompt plus completion tokens of key `key_id` in requests started at or after `since`
    /// (the start of the budget's month): a few indexed lookups, cheap enough per request.
    pub fn tokens_used_by_key_since(
        &self,
        key_id: i64,
        since: UnixSeconds,
    ) -> Result<u64, LedgerError> {
        Ok(self
            .usage_total(since, UnixSeconds(i64::MAX), &UsageFilter::Key(key_id))?
            .total_tokens())
    }

    /// Totals per hour or day (UTC) from the bucket holding `from` up to `to`, one point per
    /// bucket (zeros included), at most [`period::MAX_SERIES_POINTS`]. Buckets are whole:
    /// the first and last may reach outside `[from, to)`. Hours older than the hourly
    /// rollups' retention are left out.
    pub fn usage_series(
        &self,
        from: UnixSeconds,
        to: UnixSeconds,
        step: Step,
        filter: &UsageFilter,
    ) -> Result<Vec<UsagePoint>, LedgerError> {
        let table = match step {
            Step::Hour => "usage_hourly",
            Step::Day => "usage_daily",
            Step::Minute => {
                return Err(LedgerError::InvalidField {
                    field: "step",
                    message: "usage is kept per hour and per day, not per minute".to_owned(),
                });
            }
        };
        let buckets = period::series_buckets(from, to, step)?;
        let (Some(&first), Some(&last)) = (buckets.first(), buckets.last()) else {
            return Ok(Vec::new());
        };
        let connection = self.connection()?;
        let floor = match step {
            Step::Hour => retention::floor(&connection, retention::USAGE_HOURLY)?,
            _ => i64::MIN,
        };
        let (filter_sql, filter_value) = filter.sql();
        let mut values = vec![Value::Integer(first), Value::Integer(last + step.seconds())];
        values.extend(filter_value);
        let mut statement = connection
            .prepare(&format!(
                "SELECT bucket, {ROLLUP_SUMS} FROM {table} WHERE bucket >= ?1 AND bucket < ?2\
                 {filter_sql} GROUP BY bucket"
            ))
            .map_err(sqlite("usage series"))?;
        let mut found = BTreeMap::new();
        let mut rows = statement
            .query(rusqlite::params_from_iter(values))
            .map_err(sqlite("usage series"))?;
        while let Some(row) = rows.next().map_err(sqlite("usage series"))? {
            let bucket: i64 = row.get(0).map_err(sqlite("read usage series"))?;
            found.insert(
                bucket,
                totals_from_row(row, 1).map_err(sqlite("read usage series"))?,
            );
        }
        Ok(buckets
            .into_iter()
            .filter(|&bucket| bucket >= floor)
            .map(|bucket| UsagePoint {
                start: UnixSeconds(bucket),
                totals: found.remove(&bucket).unwrap_or_default(),
            })
            .collect())
    }

    /// Raw records of requests started in `[from, to)`, oldest first, `limit` (at most
    /// [`MAX_PAGE_RECORDS`]) at a time: pass the returned `next` as `after` for the following
    /// page. Only records younger than the raw retention are kept.
    pub fn usage_records(
        &self,
        from: UnixSeconds,
        to: UnixSeconds,
        filter: &UsageFilter,
        after: Option<RecordCursor>,
        limit: u32,
    ) -> Result<RecordPage, LedgerError> {
        period::check_period(from, to)?;
        if !(1..=MAX_PAGE_RECORDS).contains(&limit) {
            return Err(LedgerError::InvalidField {
                field: "limit",
                message: format!("must be 1..={MAX_PAGE_RECORDS}, got {limit}"),
            });
        }
        let (filter_sql, filter_value) = filter.sql();
        let after = after.unwrap_or(RecordCursor {
            started_at_ms: i64::MIN,
            id: i64::MIN,
        });
        let mut values = vec![Value::Integer(millis(from.0)), Value::Integer(millis(to.0))];
        values.push(filter_value.unwrap_or(Value::Null));
        values.extend([
            Value::Integer(after.started_at_ms),
            Value::Integer(after.id),
            Value::Integer(i64::from(limit)),
        ]);
        let connection = self.connection()?;
        let mut statement = connection
            .prepare(&format!(
                "SELECT id, request_id, started_at_ms, ended_at_ms, key_id, team, model, \
                 endpoint, prompt_tokens, completion_tokens, time_to_first_token_ms, \
                 latency_ms, status, engine, finish_reason FROM usage \
                 WHERE started_at_ms >= ?1 AND started_at_ms < ?2{filter_sql} \
                 AND (started_at_ms, id) > (?4, ?5) ORDER BY started_at_ms, id LIMIT ?6"
            ))
            .map_err(sqlite("list usage records"))?;
        let records = statement
            .query_map(rusqlite::params_from_iter(values), stored_usage)
            .map_err(sqlite("list usage records"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sqlite("read usage record"))?;
        let next = (records.len() == limit as usize)
            .then(|| records.last())
            .flatten()
            .map(|last| RecordCursor {
                started_at_ms: last.record.started_at.0,
                id: last.id,
            });
        Ok(RecordPage { records, next })
    }
}

fn stored_usage(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredUsage> {
    let unsigned = |index: usize| -> rusqlite::Result<u64> {
        Ok(u64::try_from(row.get::<_, i64>(index)?).unwrap_or(0))
    };
    Ok(StoredUsage {
        id: row.get(0)?,
        record: UsageRecord {
            request_id: row.get(1)?,
            started_at: UnixMillis(row.get(2)?),
            ended_at: UnixMillis(row.get(3)?),
            key_id: row.get(4)?,
            team: row.get(5)?,
            model: row.get(6)?,
            endpoint: row.get(7)?,
            prompt_tokens: unsigned(8)?,
            completion_tokens: unsigned(9)?,
            time_to_first_token_ms: row
                .get::<_, Option<i64>>(10)?
                .map(|v| u64::try_from(v).unwrap_or(0)),
            latency_ms: unsigned(11)?,
            status: row.get(12)?,
            engine: row.get(13)?,
            finish_reason: row.get(14)?,
        },
    })
}

/// Test data shared by this crate's tests.
#[cfg(test)]
pub(crate) fn sample_record(
    n: u64,
    started_at: UnixMillis,
    team: &str,
    key_id: i64,
) -> UsageRecord {
    UsageRecord {
        request_id: format!("req-{n}"),
        started_at,
        ended_at: UnixMillis(started_at.0 + 1_500),
        key_id,
        team: team.to_owned(),
        model: if n.is_multiple_of(3) {
            "gpt-oss-20b"
        } else {
            "phi-3.5-moe"
        }
        .to_owned(),
        endpoint: "/v1/chat/completions".to_owned(),
        prompt_tokens: 100 + n % 57,
        completion_tokens: 20 + n % 31,
        time_to_first_token_ms: Some(80 + n % 7),
        latency_ms: 1_500,
        status: match n % 23 {
            0 => 503,
            1 => 499,
            2 => 400,
            _ => 200,
        },
        engine: Some(format!("gpu{}", n % 2)),
        finish_reason: Some("stop".to_owned()),
    }
}

#[cfg(test)]
mod tests;

use super::*;
use crate::{Retention, period::MINUTE};

fn ledger() -> Ledger {
    Ledger::open_in_memory().expect("in-memory ledger")
}

const DAY0: i64 = 20_000 * DAY;

/// Deterministic pseudo-random numbers (SplitMix64), so failures reproduce.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: i64) -> i64 {
        (self.next() % n as u64) as i64
    }
}

/// `count` records spread over `days` days from DAY0, three teams, five keys.
fn spread(count: u64, days: i64, random: &mut Random) -> Vec<UsageRecord> {
    (0..count)
        .map(|n| {
            let at = DAY0 * 1000 + random.below(days * DAY * 1000);
            let key = 1 + (n % 5) as i64;
            let team = ["audit", "tax", "advisory"][(key % 3) as usize];
            sample_record(n, UnixMillis(at), team, key)
        })
        .collect()
}

fn brute_force(records: &[UsageRecord], from: i64, to: i64, filter: &UsageFilter) -> UsageTotals {
    let mut totals = UsageTotals::default();
    for r in records {
        let inside = r.started_at.0 >= millis(from) && r.started_at.0 < millis(to);
        let chosen = match filter {
            UsageFilter::All => true,
            UsageFilter::Team(team) => &r.team == team,
            UsageFilter::Key(id) => r.key_id == *id,
        };
        if inside && chosen {
            totals.add(&UsageTotals {
                requests: 1,
                prompt_tokens: r.prompt_tokens,
                completion_tokens: r.completion_tokens,
                client_errors: u64::from((400..500).contains(&r.status)),
                server_errors: u64::from(r.status >= 500),
                latency_ms: r.latency_ms,
            });
        }
    }
    totals
}

#[test]
fn invalid_records_name_their_field_and_the_batch_writes_nothing() {
    let ledger = ledger();
    let good = sample_record(1, UnixMillis(DAY0 * 1000), "audit", 1);
    for (record, field) in [
        (
            UsageRecord {
                team: String::new(),
                ..good.clone()
            },
            "team",
        ),
        (
            UsageRecord {
                model: "m".repeat(MAX_USAGE_TEXT_CHARS + 1),
                ..good.clone()
            },
            "model",
        ),
        (
            UsageRecord {
                status: 99,
                ..good.clone()
            },
            "status",
        ),
        (
            UsageRecord {
                ended_at: UnixMillis(good.started_at.0 - 1),
                ..good.clone()
            },
            "ended_at",
        ),
        (
            UsageRecord {
                prompt_tokens: u64::MAX,
                ..good.clone()
            },
            "prompt_tokens",
        ),
        (
            UsageRecord {
                engine: Some(String::new()),
                ..good.clone()
            },
            "engine",
        ),
    ] {
        match ledger.record_usage(&[good.clone(), record]) {
            Err(LedgerError::InvalidField { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    let everything = ledger
        .usage_total(UnixSeconds(0), UnixSeconds(i64::MAX), &UsageFilter::All)
        .expect("total");
    assert_eq!(everything, UsageTotals::default());
}

#[test]
fn totals_per_team_key_and_model_match_the_records() {
    let ledger = ledger();
    let records = spread(3_000, 20, &mut Random(1));
    ledger.record_usage(&records).expect("stored");
    let (from, to) = (DAY0 + 2 * DAY + 5 * HOUR + 17, DAY0 + 15 * DAY + 123);
    let (f, t) = (UnixSeconds(from), UnixSeconds(to));
    let all = ledger.usage_total(f, t, &UsageFilter::All).expect("total");
    assert_eq!(all, brute_force(&records, from, to, &UsageFilter::All));
    assert!(all.client_errors > 0 && all.server_errors > 0);
    let teams = ledger.usage_by_team(f, t).expect("teams");
    assert_eq!(
        teams.iter().map(|t| t.team.as_str()).collect::<Vec<_>>(),
        ["advisory", "audit", "tax"]
    );
    for team in &teams {
        assert_eq!(
            team.totals,
            brute_force(&records, from, to, &UsageFilter::Team(team.team.clone()))
        );
    }
    let keys = ledger.usage_by_key(f, t).expect("keys");
    assert_eq!(keys.len(), 5);
    for key in &keys {
        assert_eq!(key.name, None, "no such key in the key table");
        assert_eq!(
            key.totals,
            brute_force(&records, from, to, &UsageFilter::Key(key.key_id))
        );
    }
    let models = ledger.usage_by_model(f, t).expect("models");
    let sum: u64 = models.iter().map(|m| m.totals.requests).sum();
    assert_eq!(sum, all.requests);
    let mix = ledger.token_mix(f, t).expect("mix");
    assert_eq!(
        (mix.prompt_tokens, mix.completion_tokens),
        (all.prompt_tokens, all.completion_tokens)
    );
    assert!(matches!(
        ledger.usage_total(t, f, &UsageFilter::All),
        Err(LedgerError::InvalidField { field: "to", .. })
    ));
}

/// Raw rows and rollups combined answer any period exactly as the raw rows alone would.
#[test]
fn any_period_is_answered_exactly_from_raw_rows_and_rollups_together() {
    let ledger = ledger();
    let mut random = Random(7);
    let records = spread(2_000, 10, &mut random);
    ledger.record_usage(&records).expect("stored");
    for _ in 0..300 {
        let a = DAY0 - DAY + random.below(12 * DAY);
        let b = a + random.below(4 * DAY);
        // Aligned bounds half of the time, to exercise the whole-bucket paths.
        let (a, b) = match random.below(4) {
            0 => (floor_to(a, DAY), ceil_to_day(b)),
            1 => (floor_to(a, HOUR), floor_to(b, HOUR)),
            _ => (a, b),
        };
        let filter = match random.below(3) {
            0 => UsageFilter::All,
            1 => UsageFilter::Team("tax".to_owned()),
            _ => UsageFilter::Key(1 + random.below(5)),
        };
        assert_eq!(
            ledger
                .usage_total(UnixSeconds(a), UnixSeconds(b), &filter)
                .expect("total"),
            brute_force(&records, a, b, &filter),
            "{a}..{b} {filter:?}"
        );
    }
}

fn ceil_to_day(t: i64) -> i64 {
    period::ceil_to(t, DAY)
}

#[test]
fn totals_are_the_same_before_and_after_compaction() {
    let ledger = ledger();
    let mut random = Random(3);
    // 26 months of requests; raw kept 400 days, hourly rollups 600.
    let records = spread(20_000, 800, &mut random);
    ledger.record_usage(&records).expect("stored");
    let now = DAY0 + 800 * DAY + 13 * HOUR;
    let month = 30 * DAY;
    let periods: Vec<(i64, i64)> = vec![
        (DAY0, DAY0 + 800 * DAY),
        (DAY0 + 2 * month, DAY0 + 3 * month),
        (DAY0 + 10 * DAY, DAY0 + 11 * DAY),
        // Hour-aligned, where only hourly rollups will be left.
        (DAY0 + 300 * DAY + 5 * HOUR, DAY0 + 302 * DAY + 20 * HOUR),
        // Anywhere inside the raw window.
        (DAY0 + 500 * DAY + 7 * MINUTE + 3, DAY0 + 501 * DAY + 55),
        (DAY0 + 700 * DAY + 1, i64::MAX),
    ];
    let filters = [
        UsageFilter::All,
        UsageFilter::Team("audit".to_owned()),
        UsageFilter::Key(3),
    ];
    let measure = |ledger: &Ledger| {
        let mut all = Vec::new();
        for &(a, b) in &periods {
            for filter in &filters {
                all.push(
                    ledger
                        .usage_total(UnixSeconds(a), UnixSeconds(b), filter)
                        .expect("total"),
                );
            }
            all.extend(
                ledger
                    .usage_by_team(UnixSeconds(a), UnixSeconds(b))
                    .expect("teams")
                    .into_iter()
                    .map(|t| t.totals),
            );
        }
        let since = ledger
            .tokens_used_by_key_since(2, UnixSeconds(DAY0 + 650 * DAY))
            .expect("since");
        let days = ledger
            .usage_series(
                UnixSeconds(DAY0),
                UnixSeconds(DAY0 + 800 * DAY),
                Step::Day,
                &UsageFilter::All,
            )
            .expect("days");
        (all, since, days)
    };
    let before = measure(&ledger);
    // Before compaction the answers are the raw rows' own.
    assert_eq!(
        before.0[0],
        brute_force(&records, DAY0, DAY0 + 800 * DAY, &UsageFilter::All)
    );
    let retention = Retention {
        usage_raw_days: 400,
        usage_hourly_days: 600,
        ..Retention::default()
    };
    let compaction = ledger
        .compact(UnixSeconds(now), &retention)
        .expect("compacted");
    assert!(
        compaction.usage_records_deleted > 9_000 && compaction.usage_hourly_deleted > 1_000,
        "{compaction:?}"
    );
    assert_eq!(measure(&ledger), before);
    let again = ledger.compact(UnixSeconds(now), &retention).expect("again");
    assert_eq!(
        (again.usage_records_deleted, again.usage_hourly_deleted),
        (0, 0)
    );
    assert_eq!(measure(&ledger), before);
    // Raw records are gone from before the floor; the hourly series from before its own.
    let floor = floor_to(now - 400 * DAY, DAY);
    let page = ledger
        .usage_records(
            UnixSeconds(DAY0),
            UnixSeconds(floor),
            &UsageFilter::All,
            None,
            10,
        )
        .expect("page");
    assert!(page.records.is_empty());
    let hours = ledger
        .usage_series(
            UnixSeconds(now - 601 * DAY),
            UnixSeconds(now - 599 * DAY),
            Step::Hour,
            &UsageFilter::All,
        )
        .expect("hours");
    assert!(hours.len() < 48 && !hours.is_empty(), "{}", hours.len());
    assert!(
        hours
            .iter()
            .all(|p| p.start.0 >= floor_to(now - 600 * DAY, DAY))
    );
}

#[test]
fn series_are_zero_filled_and_add_up_to_the_totals() {
    let ledger = ledger();
    let records = spread(1_000, 5, &mut Random(11));
    ledger.record_usage(&records).expect("stored");
    let (from, to) = (UnixSeconds(DAY0 - DAY), UnixSeconds(DAY0 + 6 * DAY));
    let days = ledger
        .usage_series(from, to, Step::Day, &UsageFilter::All)
        .expect("days");
    assert_eq!(days.len(), 7);
    assert_eq!(days[0].totals, UsageTotals::default());
    assert_eq!(days[6].totals, UsageTotals::default());
    let hours = ledger
        .usage_series(from, to, Step::Hour, &UsageFilter::Team("tax".to_owned()))
        .expect("hours");
    assert_eq!(hours.len(), 7 * 24);
    let day_tokens: u64 = days.iter().map(|p| p.totals.total_tokens()).sum();
    assert_eq!(
        day_tokens,
        ledger
            .usage_total(from, to, &UsageFilter::All)
            .expect("total")
            .total_tokens()
    );
    let tax_hours: u64 = hours.iter().map(|p| p.totals.requests).sum();
    assert_eq!(
        tax_hours,
        brute_force(&records, from.0, to.0, &UsageFilter::Team("tax".to_owned())).requests
    );
    assert!(matches!(
        ledger.usage_series(from, to, Step::Minute, &UsageFilter::All),
        Err(LedgerError::InvalidField { field: "step", .. })
    ));
}

#[test]
fn pages_of_records_cover_the_period_once_in_time_order() {
    let ledger = ledger();
    let mut records = spread(1_234, 3, &mut Random(5));
    // Two requests starting in the same millisecond: the id breaks the tie.
    records[1].started_at = records[0].started_at;
    records[1].ended_at = records[0].ended_at;
    ledger.record_usage(&records).expect("stored");
    let (from, to) = (UnixSeconds(DAY0), UnixSeconds(DAY0 + 2 * DAY));
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = ledger
            .usage_records(from, to, &UsageFilter::All, after, 100)
            .expect("page");
        seen.extend(page.records);
        match page.next {
            Some(cursor) => {
                let text = cursor.to_string();
                after = Some(text.parse().expect("cursor round-trips"));
            }
            None => break,
        }
    }
    let expected = records
        .iter()
        .filter(|r| r.started_at.0 >= from.0 * 1000 && r.started_at.0 < to.0 * 1000)
        .count();
    assert_eq!(seen.len(), expected);
    assert!(
        seen.windows(2)
            .all(|w| { (w[0].record.started_at, w[0].id) < (w[1].record.started_at, w[1].id) })
    );
    let stored = &seen[0];
    assert_eq!(stored.record, records[(stored.id - 1) as usize]);
    for limit in [0, MAX_PAGE_RECORDS + 1] {
        assert!(matches!(
            ledger.usage_records(from, to, &UsageFilter::All, None, limit),
            Err(LedgerError::InvalidField { field: "limit", .. })
        ));
    }
    assert!(matches!(
        "12x".parse::<RecordCursor>(),
        Err(LedgerError::InvalidField { field: "after", .. })
    ));
}

#[test]
fn monthly_budget_lookup_is_exact_and_uses_the_key_indexes() {
    let ledger = ledger();
    let records = spread(2_000, 60, &mut Random(9));
    ledger.record_usage(&records).expect("stored");
    let since = DAY0 + 31 * DAY + 7 * HOUR + 5;
    let expected = brute_force(&records, since, i64::MAX, &UsageFilter::Key(4)).total_tokens();
    assert_eq!(
        ledger
            .tokens_used_by_key_since(4, UnixSeconds(since))
            .expect("used"),
        expected
    );
    let connection = ledger.connection().expect("connection");
    for (table, column, index) in [
        ("usage", "started_at_ms", "usage_by_time"),
        ("usage_hourly", "bucket", "PRIMARY KEY"),
        ("usage_daily", "bucket", "usage_daily_by_key"),
    ] {
        let plan: Vec<String> = connection
            .prepare(&format!(
                "EXPLAIN QUERY PLAN SELECT SUM(prompt_tokens) FROM {table} \
                 WHERE {column} >= 1 AND {column} < 2 AND key_id = 3"
            ))
            .expect("explain")
            .query_map([], |row| row.get::<_, String>(3))
            .expect("plan")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert!(
            plan.iter()
                .any(|step| step.starts_with("SEARCH") && step.contains(index)),
            "{table}: {plan:?}"
        );
    }
}

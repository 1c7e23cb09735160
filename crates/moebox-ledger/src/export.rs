//! CSV and JSON exports of usage. Both formats are written from the same value (a
//! [`UsageReport`] or a page of [`StoredUsage`]), so they agree to the token.
//!
//! CSV follows RFC 4180: CRLF line ends, a header row, and a field quoted (with `"` doubled)
//! when it holds a comma, a quote, CR or LF, so any team or model name round-trips.
//!
//! **Formula injection.** Spreadsheets run a cell that starts with `=`, `+`, `-` or `@` (and,
//! in some, a tab or CR) as a formula, and team, key and model names are chosen by people. A
//! *text* cell starting with one of those characters is therefore written with a single
//! quote `'` in front (OWASP's advice): spreadsheets show the text, not a formula result.
//! Readers that want the exact name back drop that one leading `'` from text cells whose
//! next character is one of the six; numeric columns are never prefixed. JSON is exact.

use serde::Serialize;

use crate::{Ledger, LedgerError, StoredUsage, UnixMillis, UnixSeconds, UsageTotals};

/// First characters that make a spreadsheet read a cell as a formula.
pub const FORMULA_TRIGGERS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// Appends one text field: guarded against formula injection, quoted when needed.
pub fn push_text_cell(out: &mut String, text: &str) {
    let guard = text.starts_with(FORMULA_TRIGGERS);
    let quote = text.contains(['"', ',', '\n', '\r']);
    if quote {
        out.push('"');
    }
    if guard {
        out.push('\'');
    }
    if quote {
        out.push_str(&text.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(text);
    }
}

fn push_row(out: &mut String, cells: &[Cell<'_>]) {
    for (index, cell) in cells.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        match cell {
            Cell::Text(text) => push_text_cell(out, text),
            Cell::Number(n) => out.push_str(&n.to_string()),
            Cell::Empty => {}
        }
    }
    out.push_str("\r\n");
}

enum Cell<'a> {
    Text(&'a str),
    Number(i128),
    Empty,
}

fn text(value: &Option<String>) -> Cell<'_> {
    value.as_deref().map_or(Cell::Empty, Cell::Text)
}

fn number(n: impl Into<i128>) -> Cell<'static> {
    Cell::Number(n.into())
}

/// How a report groups requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportGroup {
    Team,
    Key,
}

/// One row of a usage report: a team, or a key with its current name and team.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    pub team: Option<String>,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub client_errors: u64,
    pub server_errors: u64,
}

impl ReportRow {
    fn new(
        key_id: Option<i64>,
        key_name: Option<String>,
        team: Option<String>,
        t: &UsageTotals,
    ) -> Self {
        Self {
            key_id,
            key_name,
            team,
            requests: t.requests,
            prompt_tokens: t.prompt_tokens,
            completion_tokens: t.completion_tokens,
            total_tokens: t.total_tokens(),
            client_errors: t.client_errors,
            server_errors: t.server_errors,
        }
    }
}

/// Usage per team or per key over a period, with its total: what the admin pages show and
/// export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageReport {
    pub from: String,
    pub to: String,
    pub group: ReportGroup,
    pub rows: Vec<ReportRow>,
    pub total: ReportRow,
}

impl UsageReport {
    /// The report as CSV: a header and one row per team or key (the total is their sum).
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        let counts = [
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "client_errors",
            "server_errors",
        ];
        let mut header: Vec<Cell<'_>> = match self.group {
            ReportGroup::Team => vec![Cell::Text("team")],
            ReportGroup::Key => vec![
                Cell::Text("key_id"),
                Cell::Text("key_name"),
                Cell::Text("team"),
            ],
        };
        header.extend(counts.map(Cell::Text));
        push_row(&mut out, &header);
        for row in &self.rows {
            let mut cells = match self.group {
                ReportGroup::Team => vec![text(&row.team)],
                ReportGroup::Key => vec![
                    row.key_id.map_or(Cell::Empty, number),
                    text(&row.key_name),
                    text(&row.team),
                ],
            };
            cells.extend([
                number(row.requests),
                number(row.prompt_tokens),
                number(row.completion_tokens),
                number(row.total_tokens),
                number(row.client_errors),
                number(row.server_errors),
            ]);
            push_row(&mut out, &cells);
        }
        out
    }

    /// The report as JSON: `{"from", "to", "group", "rows": [...], "total": {...}}`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// Raw usage records as CSV, one row per request (times in RFC 3339 UTC with milliseconds).
pub fn records_to_csv(records: &[StoredUsage]) -> String {
    let mut out = String::new();
    push_row(
        &mut out,
        &[
            "id",
            "request_id",
            "started_at",
            "ended_at",
            "key_id",
            "team",
            "model",
            "endpoint",
            "prompt_tokens",
            "completion_tokens",
            "time_to_first_token_ms",
            "latency_ms",
            "status",
            "engine",
            "finish_reason",
        ]
        .map(Cell::Text),
    );
    for stored in records {
        let r = &stored.record;
        let started = UnixMillis::to_rfc3339(r.started_at);
        let ended = UnixMillis::to_rfc3339(r.ended_at);
        push_row(
            &mut out,
            &[
                number(stored.id),
                Cell::Text(&r.request_id),
                Cell::Text(&started),
                Cell::Text(&ended),
                number(r.key_id),
                Cell::Text(&r.team),
                Cell::Text(&r.model),
                Cell::Text(&r.endpoint),
                number(r.prompt_tokens),
                number(r.completion_tokens),
                r.time_to_first_token_ms.map_or(Cell::Empty, number),
                number(r.latency_ms),
                number(r.status),
                r.engine.as_deref().map_or(Cell::Empty, Cell::Text),
                r.finish_reason.as_deref().map_or(Cell::Empty, Cell::Text),
            ],
        );
    }
    out
}

/// Raw usage records as a JSON array.
pub fn records_to_json(records: &[StoredUsage]) -> String {
    serde_json::to_string_pretty(records).unwrap_or_else(|_| "[]".to_owned())
}

impl Ledger {
    /// Usage per team or per key over `[from, to)` (bounds as [`Ledger::usage_total`]), the
    /// one value both export formats are written from.
    pub fn usage_report(
        &self,
        from: UnixSeconds,
        to: UnixSeconds,
        group: ReportGroup,
    ) -> Result<UsageReport, LedgerError> {
        let mut total = UsageTotals::default();
        let rows = match group {
            ReportGroup::Team => self
                .usage_by_team(from, to)?
                .into_iter()
                .map(|team| {
                    total.add(&team.totals);
                    ReportRow::new(None, None, Some(team.team), &team.totals)
                })
                .collect(),
            ReportGroup::Key => self
                .usage_by_key(from, to)?
                .into_iter()
                .map(|key| {
                    total.add(&key.totals);
                    ReportRow::new(Some(key.key_id), key.name, key.team, &key.totals)
                })
                .collect(),
        };
        Ok(UsageReport {
            from: from.to_rfc3339(),
            to: to.to_rfc3339(),
            group,
            rows,
            total: ReportRow::new(None, None, None, &total),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NewKey, Scope, UsageFilter, usage::sample_record};

    /// A strict RFC 4180 reader, to check what the writer wrote.
    fn parse_csv(text: &str) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        let mut row = Vec::new();
        let mut field = String::new();
        let mut chars = text.chars().peekable();
        let mut quoted = false;
        while let Some(c) = chars.next() {
            if quoted {
                match c {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    '"' => quoted = false,
                    other => field.push(other),
                }
                continue;
            }
            match c {
                '"' if field.is_empty() => quoted = true,
                '"' => panic!("bare quote inside an unquoted field: {text:?}"),
                ',' => row.push(std::mem::take(&mut field)),
                '\r' => {
                    assert_eq!(chars.next(), Some('\n'), "CR without LF");
                    row.push(std::mem::take(&mut field));
                    rows.push(std::mem::take(&mut row));
                }
                '\n' => panic!("bare LF ends a record: {text:?}"),
                other => field.push(other),
            }
        }
        assert!(row.is_empty() && field.is_empty(), "no final CRLF");
        rows
    }

    /// Drops the formula guard as the module docs tell readers to.
    fn unguard(cell: &str) -> &str {
        match cell.strip_prefix('\'') {
            Some(rest) if rest.starts_with(FORMULA_TRIGGERS) => rest,
            _ => cell,
        }
    }

    #[test]
    fn text_cells_are_quoted_and_guarded() {
        let cell = |text: &str| {
            let mut out = String::new();
            push_text_cell(&mut out, text);
            out
        };
        assert_eq!(cell("plain"), "plain");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("=1+1"), "'=1+1");
        assert_eq!(cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(cell("-2"), "'-2");
        assert_eq!(cell("+\"x\",y"), "\"'+\"\"x\"\",y\"");
        assert_eq!(cell("it's"), "it's");
    }

    #[test]
    fn hostile_team_names_round_trip_and_csv_agrees_with_json_to_the_token() {
        let ledger = Ledger::open_in_memory().expect("ledger");
        let hostile = [
            "finance, \"audit\"\r\nand tax",
            "=HYPERLINK(\"http://evil\",\"x\")",
            "@cmd|' /C calc'!A0",
            "-1+1",
            "plain",
        ];
        let mut records = Vec::new();
        for (index, team) in hostile.iter().enumerate() {
            let key = ledger
                .create_key(
                    &NewKey {
                        team: "t".to_owned(),
                        ..NewKey::new(format!("=key{index}"), Scope::User)
                    },
                    UnixSeconds(1),
                )
                .expect("key");
            for n in 0..(5 + index as u64) {
                records.push(sample_record(
                    n + 100 * index as u64,
                    UnixMillis(1_700_000_000_000 + n as i64 * 60_000),
                    team,
                    key.record.id,
                ));
            }
        }
        ledger.record_usage(&records).expect("stored");
        let (from, to) = (UnixSeconds(1_699_000_000), UnixSeconds(1_701_000_000));
        for group in [ReportGroup::Team, ReportGroup::Key] {
            let report = ledger.usage_report(from, to, group).expect("report");
            let csv = parse_csv(&report.to_csv());
            let json: serde_json::Value =
                serde_json::from_str(&report.to_json()).expect("json parses");
            let json_rows = json["rows"].as_array().expect("rows");
            assert_eq!(csv.len(), json_rows.len() + 1);
            let header = &csv[0];
            let column = |name: &str| header.iter().position(|h| h == name).expect(name);
            let mut csv_sum = 0u64;
            for (line, row) in csv[1..].iter().zip(json_rows) {
                let team = unguard(&line[column("team")]);
                assert_eq!(Some(team), row["team"].as_str());
                for name in [
                    "requests",
                    "prompt_tokens",
                    "completion_tokens",
                    "total_tokens",
                ] {
                    let from_csv: u64 = line[column(name)].parse().expect("number");
                    assert_eq!(Some(from_csv), row[name].as_u64(), "{name}");
                }
                csv_sum += line[column("total_tokens")].parse::<u64>().expect("number");
                if group == ReportGroup::Key {
                    assert_eq!(
                        Some(unguard(&line[column("key_name")])),
                        row["key_name"].as_str()
                    );
                    assert!(line[column("key_name")].starts_with("'="));
                }
            }
            assert_eq!(Some(csv_sum), json["total"]["total_tokens"].as_u64());
            let expected: u64 = records
                .iter()
                .map(|r| r.prompt_tokens + r.completion_tokens)
                .sum();
            assert_eq!(csv_sum, expected);
        }
        let teams: Vec<String> = ledger
            .usage_by_team(from, to)
            .expect("teams")
            .into_iter()
            .map(|t| t.team)
            .collect();
        let mut sorted = hostile.map(str::to_owned).to_vec();
        sorted.sort();
        assert_eq!(teams, sorted);

        // Raw records: every field of every record comes back from the CSV.
        let page = ledger
            .usage_records(from, to, &UsageFilter::All, None, 1_000)
            .expect("records");
        let csv = parse_csv(&records_to_csv(&page.records));
        let json: serde_json::Value =
            serde_json::from_str(&records_to_json(&page.records)).expect("json");
        assert_eq!(csv.len(), page.records.len() + 1);
        for (line, (stored, row)) in csv[1..]
            .iter()
            .zip(page.records.iter().zip(json.as_array().expect("array")))
        {
            assert_eq!(unguard(&line[5]), stored.record.team);
            assert_eq!(row["team"].as_str(), Some(stored.record.team.as_str()));
            assert_eq!(line[8], stored.record.prompt_tokens.to_string());
            assert_eq!(
                row["prompt_tokens"].as_u64(),
                Some(stored.record.prompt_tokens)
            );
            assert_eq!(line[2], stored.record.started_at.to_rfc3339());
        }
    }
}

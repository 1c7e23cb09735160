//! `moebox tco report` output: the report as text for people, JSON and CSV for programs.
//!
//! All three carry the same figures. JSON is the [`Report`] as serde writes it (amounts as
//! decimal numbers of the major unit, dates `YYYY-MM-DD`). CSV is one figure per row,
//! `section,item,value,unit` (the report's notes first, as `note` rows), with RFC 4180 quoting; a cell a spreadsheet would run as a
//! formula (starting `=`, `+`, `-`, `@`, tab or CR, other than a negative number) is prefixed
//! with `'`, since team and key names come from users.

use std::fmt::Write as _;

use crate::{
    money::{Energy, Money},
    report::Report,
};

fn percent(basis_points: u32) -> String {
    format!("{}.{:02}%", basis_points / 100, basis_points % 100)
}

/// The report for a terminal: headline figures, then each table.
pub fn text(report: &Report) -> String {
    let c = &report.currency;
    let mut out = String::new();
    let money = |m: Money| m.display(c);
    let _ = writeln!(
        out,
        "moebox TCO report {} to {} ({} days, {})",
        report.from, report.to, report.days, c
    );
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Cost");
    let _ = writeln!(
        out,
        "  depreciation          {:>16}",
        money(report.depreciation)
    );
    let _ = writeln!(out, "  fixed costs           {:>16}", money(report.fixed));
    let _ = writeln!(
        out,
        "  energy                {:>16}",
        money(report.energy_cost)
    );
    let _ = writeln!(out, "  total                 {:>16}", money(report.total));
    let _ = writeln!(
        out,
        "  of which idle         {:>16}  ({} of {} hours without a request)",
        money(report.idle_cost),
        report.idle_hours,
        report.hours
    );
    let _ = writeln!(
        out,
        "  per million tokens    {:>16}",
        report
            .cost_per_million_tokens
            .map_or_else(|| "no tokens".to_owned(), |m| m.display_rate(c))
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "Usage");
    let _ = writeln!(out, "  requests              {:>16}", report.requests);
    let _ = writeln!(out, "  input tokens          {:>16}", report.input_tokens);
    let _ = writeln!(out, "  output tokens         {:>16}", report.output_tokens);
    let _ = writeln!(
        out,
        "  busy hours            {:>16}",
        percent(report.busy_basis_points())
    );
    let _ = writeln!(
        out,
        "  energy (IT)           {:>12} kWh",
        report.energy_it.kwh_display()
    );
    let _ = writeln!(
        out,
        "  energy (× PUE {})    {:>12} kWh",
        report.pue,
        report.energy_facility.kwh_display()
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "Months");
    let _ = writeln!(
        out,
        "  {:<8} {:>4} {:>16} {:>16} {:>16} {:>16}",
        "month", "days", "depreciation", "fixed", "energy", "total"
    );
    for m in &report.months {
        let _ = writeln!(
            out,
            "  {:<8} {:>4} {:>16} {:>16} {:>16} {:>16}",
            m.month.to_string(),
            m.days,
            money(m.depreciation),
            money(m.fixed),
            money(m.energy),
            money(m.total)
        );
    }
    if !report.assets.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "Assets (depreciation in period, book value at end)");
        for a in &report.assets {
            let _ = writeln!(
                out,
                "  {:<32} {:>16} {:>16}",
                a.name,
                money(a.depreciation),
                money(a.book_value)
            );
        }
    }
    if !report.fixed_costs.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "Fixed costs");
        for line in &report.fixed_costs {
            let _ = writeln!(out, "  {:<32} {:>16}", line.name, money(line.amount));
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Alternatives (the same tokens and hours)");
    for a in &report.alternatives {
        let _ = writeln!(
            out,
            "  {:<32} {:>16}  per million {:>12}  saving {:>16}",
            a.name,
            money(a.cost),
            a.per_million_tokens
                .map_or_else(|| "-".to_owned(), |m| m.display_rate(c)),
            money(a.saving)
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Break-even (cash, at this period's run rate)");
    for b in &report.break_even {
        let _ = writeln!(
            out,
            "  {:<32} {}",
            b.alternative,
            b.date.map_or_else(
                || format!("not within the horizon (to {})", b.horizon_end),
                |d| d.to_string()
            )
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Chargeback (total cost by token share)");
    for t in &report.chargeback {
        let _ = writeln!(
            out,
            "  {:<32} {:>8} {:>16}",
            t.team,
            percent(t.share_basis_points),
            money(t.amount)
        );
    }
    let _ = writeln!(
        out,
        "  {:<32} {:>8} {:>16}",
        "unallocated",
        "",
        money(report.unallocated)
    );
    out
}

/// The report as pretty JSON.
pub fn json(report: &Report) -> String {
    serde_json::to_string_pretty(report)
        .unwrap_or_else(|e| format!("{{\"error\":\"cannot serialise the report: {e}\"}}"))
}

/// One CSV cell: quoted when needed, formula-looking text defused.
pub fn csv_cell(text: &str) -> String {
    // A negative amount is data, not a formula: only non-numbers are defused.
    let negative_number = text.strip_prefix('-').is_some_and(|rest| {
        !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    });
    let defused = if !negative_number && text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if defused.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", defused.replace('"', "\"\""))
    } else {
        defused
    }
}

/// The report as CSV, one figure per row: `section,item,value,unit`.
pub fn csv(report: &Report) -> String {
    let c = &report.currency;
    let code = c.code().to_owned();
    let mut rows: Vec<[String; 4]> = Vec::new();
    let mut row = |section: &str, item: &str, value: String, unit: &str| {
        rows.push([section.to_owned(), item.to_owned(), value, unit.to_owned()]);
    };
    let amount = |m: Money| m.plain(c);
    let kwh = |e: Energy| e.kwh_plain();
    for note in &report.notes {
        row("note", "", note.clone(), "");
    }
    row("period", "from", report.from.to_string(), "date");
    row("period", "to", report.to.to_string(), "date");
    row("period", "days", report.days.to_string(), "days");
    row("cost", "depreciation", amount(report.depreciation), &code);
    row("cost", "fixed", amount(report.fixed), &code);
    row("cost", "energy", amount(report.energy_cost), &code);
    row("cost", "total", amount(report.total), &code);
    row("cost", "idle", amount(report.idle_cost), &code);
    if let Some(per_million) = report.cost_per_million_tokens {
        row("cost", "per_million_tokens", amount(per_million), &code);
    }
    row("usage", "requests", report.requests.to_string(), "requests");
    row(
        "usage",
        "input_tokens",
        report.input_tokens.to_string(),
        "tokens",
    );
    row(
        "usage",
        "output_tokens",
        report.output_tokens.to_string(),
        "tokens",
    );
    row(
        "usage",
        "busy_hours",
        report.busy_hours.to_string(),
        "hours",
    );
    row(
        "usage",
        "idle_hours",
        report.idle_hours.to_string(),
        "hours",
    );
    row("energy", "it", kwh(report.energy_it), "kWh");
    row("energy", "facility", kwh(report.energy_facility), "kWh");
    row("energy", "pue", report.pue.to_string(), "ratio");
    for m in &report.months {
        let month = m.month.to_string();
        row("month_depreciation", &month, amount(m.depreciation), &code);
        row("month_fixed", &month, amount(m.fixed), &code);
        row("month_energy", &month, amount(m.energy), &code);
        row("month_total", &month, amount(m.total), &code);
    }
    for a in &report.assets {
        row("asset_depreciation", &a.name, amount(a.depreciation), &code);
        row("asset_book_value", &a.name, amount(a.book_value), &code);
    }
    for line in &report.fixed_costs {
        row("fixed_cost", &line.name, amount(line.amount), &code);
    }
    for a in &report.alternatives {
        row("alternative_cost", &a.name, amount(a.cost), &code);
        if let Some(per_million) = a.per_million_tokens {
            row(
                "alternative_per_million_tokens",
                &a.name,
                amount(per_million),
                &code,
            );
        }
        row("alternative_saving", &a.name, amount(a.saving), &code);
    }
    for b in &report.break_even {
        row(
            "break_even",
            &b.alternative,
            b.date
                .map_or_else(|| "not within horizon".to_owned(), |d| d.to_string()),
            "date",
        );
    }
    for t in &report.chargeback {
        row("chargeback", &t.team, amount(t.amount), &code);
        row(
            "chargeback_tokens",
            &t.team,
            (u128::from(t.input_tokens) + u128::from(t.output_tokens)).to_string(),
            "tokens",
        );
    }
    row(
        "chargeback",
        "(unallocated)",
        amount(report.unallocated),
        &code,
    );
    let mut out = String::from("section,item,value,unit\n");
    for cells in rows {
        let line: Vec<String> = cells.iter().map(|cell| csv_cell(cell)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

//! What the ledger measured, in the cost model's terms: the one place that turns usage
//! records and energy samples into `moebox_tco::Measurements`, for the admin pages, the cost
//! gauges of `/metrics` and `moebox tco report`.

use std::collections::BTreeMap;

use moebox_ledger::{Ledger, LedgerError, Step, UnixSeconds, UsageFilter};
use moebox_tco::{
    CostModel, Date, Energy, HourUsage, Measurements, Report, ReportError, TeamTokens,
};

#[derive(Debug, thiserror::Error)]
pub enum AccountingError {
    #[error("reading the ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("the cost model: {0}")]
    Report(#[from] ReportError),
}

/// Seconds at 00:00 UTC of `date`, and at 00:00 UTC of the day after `to` (the end of an
/// inclusive period).
fn span(from: Date, to: Date) -> (UnixSeconds, UnixSeconds) {
    (
        UnixSeconds(from.unix_seconds()),
        UnixSeconds(to.unix_seconds() + 86_400),
    )
}

/// The hours of `from..=to` (UTC) with requests, tokens or energy, and the tokens per team.
pub fn measurements(ledger: &Ledger, from: Date, to: Date) -> Result<Measurements, LedgerError> {
    let (start, end) = span(from, to);
    let mut hours: BTreeMap<(Date, u8), HourUsage> = BTreeMap::new();
    // The ledger's hourly buckets may reach past the period's ends: keep the hours inside.
    let inside = |seconds: i64| {
        Date::from_unix_seconds(seconds).filter(|(date, _)| from <= *date && *date <= to)
    };
    fn hour(
        hours: &mut BTreeMap<(Date, u8), HourUsage>,
        (date, hour): (Date, u8),
    ) -> &mut HourUsage {
        hours.entry((date, hour)).or_insert_with(|| HourUsage {
            date,
            hour,
            requests: 0,
            input_tokens: 0,
            output_tokens: 0,
            energy: Energy::default(),
        })
    }
    for point in ledger.usage_series(start, end, Step::Hour, &UsageFilter::All)? {
        if point.totals.requests == 0 {
            continue;
        }
        if let Some(at) = inside(point.start.0) {
            let entry = hour(&mut hours, at);
            entry.requests += point.totals.requests;
            entry.input_tokens += point.totals.prompt_tokens;
            entry.output_tokens += point.totals.completion_tokens;
        }
    }
    for point in ledger.energy_kwh_by_hour(start, end)? {
        if point.kwh <= 0.0 {
            continue;
        }
        if let Some(at) = inside(point.start.0) {
            hour(&mut hours, at).energy = Energy::from_kwh_rounded(point.kwh);
        }
    }
    let teams = ledger
        .usage_by_team(start, end)?
        .into_iter()
        .map(|team| TeamTokens {
            team: team.team,
            input_tokens: team.totals.prompt_tokens,
            output_tokens: team.totals.completion_tokens,
        })
        .collect();
    Ok(Measurements {
        hours: hours.into_values().collect(),
        band_energy: Vec::new(),
        teams,
    })
}

/// The cost report for `from..=to` from the ledger's measurements.
pub fn report(
    ledger: &Ledger,
    model: &CostModel,
    from: Date,
    to: Date,
) -> Result<Report, AccountingError> {
    let measured = measurements(ledger, from, to)?;
    Ok(moebox_tco::report(model, from, to, &measured)?)
}

/// The UTC day of a Unix time (`None` past the year 9999).
pub fn date_of(now: UnixSeconds) -> Option<Date> {
    Date::from_unix_seconds(now.0).map(|(date, _)| date)
}

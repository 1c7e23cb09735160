//! What the ledger measured, in the cost model's terms: the one place that turns usage
//! records and energy samples into `moebox_tco::Measurements`, for the admin pages, the cost
//! gauges of `/metrics` and `moebox tco report`.

use std::collections::BTreeMap;

use moebox_ledger::{
    AmortisationMethod, AssetRow, Ledger, LedgerError, Step, UnixSeconds, UsageFilter,
};
use moebox_tco::{
    CostModel, Date, Energy, HourUsage, Measurements, Method, Report, ReportError, TeamTokens,
};

#[derive(Debug, thiserror::Error)]
pub enum AccountingError {
    #[error("reading the ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("the cost model: {0}")]
    Report(#[from] ReportError),
}

/// Seconds at 00:00 UTC of `from`, and at 00:00 UTC of the day after `to`: the half-open
/// ledger range of the inclusive period `from..=to`.
pub fn span(from: Date, to: Date) -> (UnixSeconds, UnixSeconds) {
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

/// The configured assets as the ledger's register keeps them (minor units of the currency).
pub fn asset_rows(model: &CostModel) -> Vec<AssetRow> {
    let minor = model.currency.minor_unit_micros().max(1);
    model
        .assets
        .iter()
        .map(|asset| AssetRow {
            name: asset.name.clone(),
            purchase_price_minor: asset.purchase_price.micros() / minor,
            currency: model.currency.code().to_owned(),
            purchase_date: asset.purchase_date.to_string(),
            amortisation_months: asset.amortisation_months,
            residual_value_minor: asset.residual_value.micros() / minor,
            method: match asset.method() {
                Method::StraightLine => AmortisationMethod::StraightLine,
                Method::DecliningBalance { factor } => AmortisationMethod::DecliningBalance {
                    factor_micros: factor.micros(),
                },
            },
        })
        .collect()
}

/// Records the configured assets in the ledger's register (history kept: a changed or
/// removed asset is retired, not deleted). The gateway calls it at start.
pub fn sync_assets(ledger: &Ledger, model: &CostModel) -> Result<(), LedgerError> {
    let sync = ledger.sync_assets(&asset_rows(model), UnixSeconds::now())?;
    tracing::info!(?sync, "asset register synced with tco.assets");
    Ok(())
}

/// The UTC day of a Unix time (`None` past the year 9999).
pub fn date_of(now: UnixSeconds) -> Option<Date> {
    Date::from_unix_seconds(now.0).map(|(date, _)| date)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_assets_reach_the_register_in_minor_units() {
        let ledger = Ledger::open_in_memory().expect("ledger");
        let model = CostModel::default();
        sync_assets(&ledger, &model).expect("synced");
        let assets = ledger.assets_at(UnixSeconds::now()).expect("register");
        assert_eq!(assets.len(), 1);
        let row = &assets[0];
        assert!(format!("{row:?}").contains("2880000"), "{row:?}");
        // Syncing the same config again changes nothing.
        sync_assets(&ledger, &model).expect("synced again");
        assert_eq!(ledger.asset_history().expect("history").len(), 1);
    }

    #[test]
    fn an_empty_ledger_reports_zero_usage_and_the_configured_costs() {
        let ledger = Ledger::open_in_memory().expect("ledger");
        let from = Date::parse("2026-03-01").expect("date");
        let to = Date::parse("2026-03-31").expect("date");
        let report = report(&ledger, &CostModel::default(), from, to).expect("report");
        assert_eq!(report.tokens(), 0);
        assert_eq!(report.depreciation.display(&report.currency), "$1,200.00");
    }
}

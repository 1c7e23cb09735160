//! The overview: this month's cost, cost per million tokens against the alternatives,
//! utilisation, energy, break-even, the charts, and the chargeback. Printed, it is the monthly
//! report.

use std::fmt::Write as _;

use moebox_tco::{
    CostModel, Date, Money, Report, chart_months, cumulative, schedule as amortisation,
};

use crate::{
    charts::{self, Series, Unit},
    layout::{Nav, card, count, escape, page, percent},
};

/// Tokens of one day, for the daily chart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyTokens {
    pub date: Date,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// Everything the overview shows. `report` is normally the current month to date.
#[derive(Debug, Clone)]
pub struct OverviewPage<'a> {
    pub model: &'a CostModel,
    pub report: &'a Report,
    /// One entry per day of the period, zero days included.
    pub daily_tokens: &'a [DailyTokens],
    /// Mean GPU utilisation over the period from telemetry, percent; `None` when unmeasured.
    pub gpu_utilisation_percent: Option<f64>,
    /// When the figures were gathered, as the gateway writes it (`2026-03-15 14:02 UTC`).
    pub generated_at: &'a str,
}

/// Amortisation charged in the report's last month by the schedules, whole month: the figure
/// the books show "per month".
fn amortisation_per_month(model: &CostModel, report: &Report) -> Money {
    let month = report.to.year_month();
    model
        .assets
        .iter()
        .flat_map(|asset| amortisation(asset, &model.currency))
        .filter(|row| row.month == month)
        .map(|row| row.depreciation)
        .sum()
}

pub fn overview(input: &OverviewPage<'_>) -> String {
    let report = input.report;
    let c = &report.currency;
    let money = |m: Money| m.display(c);
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>Cost overview</h1><p class=\"sub\">{} to {} · {} days · generated {}</p>",
        report.from,
        report.to,
        report.days,
        escape(input.generated_at)
    );
    for note in &report.notes {
        let _ = write!(body, "<p class=\"note\">{}</p>", escape(note));
    }

    // Headline figures.
    body.push_str("<div class=\"cards\">");
    body.push_str(&card(
        "Cost this period",
        &money(report.total),
        &format!(
            "depreciation {} · fixed {} · energy {}",
            money(report.depreciation),
            money(report.fixed),
            money(report.energy_cost)
        ),
        "total-cost",
    ));
    body.push_str(&card(
        "Amortisation per month",
        &money(amortisation_per_month(input.model, report)),
        &match input.model.assets.len() {
            1 => "1 asset, by the schedule".to_owned(),
            n => format!("{n} assets, by the schedule"),
        },
        "amortisation-per-month",
    ));
    let per_million = report
        .cost_per_million_tokens
        .map_or_else(|| "no tokens yet".to_owned(), |m| m.display_rate(c));
    let versus = report
        .alternatives
        .first()
        .map(|a| {
            format!(
                "{}: {}",
                a.name,
                a.per_million_tokens
                    .map_or_else(|| "-".to_owned(), |m| m.display_rate(c))
            )
        })
        .unwrap_or_default();
    body.push_str(&card(
        "Cost per million tokens",
        &per_million,
        &versus,
        "cost-per-million",
    ));
    body.push_str(&card(
        "Utilisation",
        &percent(report.busy_basis_points()),
        &format!(
            "hours with requests ({} of {}){}",
            report.busy_hours,
            report.hours,
            input
                .gpu_utilisation_percent
                .map(|u| format!(" · GPU busy {u:.1}%"))
                .unwrap_or_default()
        ),
        "utilisation",
    ));
    body.push_str(&card(
        "Energy",
        &format!("{} kWh", report.energy_facility.kwh_display()),
        &format!(
            "measured {} kWh × PUE {} · {}",
            report.energy_it.kwh_display(),
            report.pue,
            money(report.energy_cost)
        ),
        "energy",
    ));
    let (break_even_value, break_even_detail) = match report.break_even.first() {
        Some(b) => (
            b.date
                .map_or_else(|| "not within horizon".to_owned(), |d| d.to_string()),
            format!("against {} (to {})", b.alternative, b.horizon_end),
        ),
        None => ("-".to_owned(), "no alternative configured".to_owned()),
    };
    body.push_str(&card(
        "Break-even",
        &break_even_value,
        &break_even_detail,
        "break-even",
    ));
    body.push_str("</div>");

    // Where the money went.
    body.push_str(
        "<h2>Cost this period</h2><div class=\"scroll\"><table id=\"cost-table\">\
         <thead><tr><th>Line</th><th class=\"num\">Amount</th></tr></thead><tbody>",
    );
    for asset in &report.assets {
        let _ = write!(
            body,
            "<tr><td>Depreciation: {}</td><td class=\"num\">{}</td></tr>",
            escape(&asset.name),
            money(asset.depreciation)
        );
    }
    for line in &report.fixed_costs {
        let _ = write!(
            body,
            "<tr><td>{}</td><td class=\"num\">{}</td></tr>",
            escape(&line.name),
            money(line.amount)
        );
    }
    let _ = write!(
        body,
        "<tr><td>Energy ({} kWh at the tariff, × PUE {})</td><td class=\"num\">{}</td></tr>\
         <tr class=\"total\"><td>Total</td><td class=\"num\">{}</td></tr>\
         <tr><td>of which idle: {} hours without a request</td><td class=\"num\">{}</td></tr>\
         </tbody></table></div>",
        report.energy_it.kwh_display(),
        report.pue,
        money(report.energy_cost),
        money(report.total),
        report.idle_hours,
        money(report.idle_cost)
    );

    // The same work elsewhere.
    let _ = write!(
        body,
        "<h2>Against the alternatives</h2><p class=\"sub\">The same {} input and {} output \
         tokens, and the same {} hours, priced elsewhere.</p><div class=\"scroll\">\
         <table id=\"alternatives\"><thead><tr><th>Option</th><th class=\"num\">Cost</th>\
         <th class=\"num\">Per million tokens</th><th class=\"num\">moebox saves</th>\
         <th>Break-even</th></tr></thead><tbody><tr><td>moebox (this appliance)</td>\
         <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\"></td><td></td></tr>",
        count(report.input_tokens),
        count(report.output_tokens),
        report.hours,
        money(report.total),
        escape(&per_million)
    );
    for (a, b) in report.alternatives.iter().zip(&report.break_even) {
        let class = if a.saving >= Money::ZERO {
            "good"
        } else {
            "bad"
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num {class}\">{}</td><td>{}</td></tr>",
            escape(&a.name),
            money(a.cost),
            escape(
                &a.per_million_tokens
                    .map_or_else(|| "-".to_owned(), |m| m.display_rate(c))
            ),
            money(a.saving),
            escape(&b.date.map_or_else(
                || format!("not within horizon (to {})", b.horizon_end),
                |d| d.to_string()
            ))
        );
    }
    body.push_str("</tbody></table></div>");

    // Charts.
    let labels: Vec<String> = input
        .daily_tokens
        .iter()
        .map(|d| {
            let month = d.date.year_month().label();
            format!(
                "{} {}",
                d.date.day(),
                month.split(' ').next().unwrap_or_default()
            )
        })
        .collect();
    body.push_str(&charts::stacked_bars(
        "Tokens per day",
        &labels,
        &[
            Series {
                name: "input".to_owned(),
                values: input
                    .daily_tokens
                    .iter()
                    .map(|d| Some(d.input_tokens as f64))
                    .collect(),
            },
            Series {
                name: "output".to_owned(),
                values: input
                    .daily_tokens
                    .iter()
                    .map(|d| Some(d.output_tokens as f64))
                    .collect(),
            },
        ],
        Unit::Count,
    ));
    let months = chart_months(input.model, &report.break_even, report.from, report.to);
    let points = cumulative(input.model, &report.run_rate(), report.from, months, c);
    let month_labels: Vec<String> = points.iter().map(|p| p.date.year_month().label()).collect();
    let major = |m: Money| Some(m.micros() as f64 / 1e6);
    let mut series = vec![Series {
        name: "moebox (cash: hardware paid up front)".to_owned(),
        values: points.iter().map(|p| major(p.self_hosted)).collect(),
    }];
    for (i, a) in report.alternatives.iter().enumerate() {
        series.push(Series {
            name: a.name.clone(),
            values: points
                .iter()
                .map(|p| p.alternatives.get(i).and_then(|m| major(*m)))
                .collect(),
        });
    }
    body.push_str(&charts::line_chart(
        "Cumulative cost: self-hosted vs the alternatives, at this period's run rate",
        &month_labels,
        &series,
        Unit::Money {
            prefix: money_prefix(c.code()),
        },
    ));

    // Who used it.
    body.push_str(
        "<h2>Chargeback by team</h2><p class=\"sub\">The period's total cost split by each \
         team's share of tokens.</p><div class=\"scroll\"><table id=\"chargeback\"><thead><tr>\
         <th>Team</th><th class=\"num\">Tokens</th><th class=\"num\">Share</th>\
         <th class=\"num\">Charge</th></tr></thead><tbody>",
    );
    for t in &report.chargeback {
        let _ = write!(
            body,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td></tr>",
            escape(&t.team),
            count(t.input_tokens.saturating_add(t.output_tokens)),
            percent(t.share_basis_points),
            money(t.amount)
        );
    }
    if !report.unallocated.is_zero() || report.chargeback.is_empty() {
        let _ = write!(
            body,
            "<tr><td>Unallocated (no tokens)</td><td class=\"num\">0</td><td class=\"num\"></td>\
             <td class=\"num\">{}</td></tr>",
            money(report.unallocated)
        );
    }
    let _ = write!(
        body,
        "<tr class=\"total\"><td>Total</td><td class=\"num\">{}</td><td class=\"num\"></td>\
         <td class=\"num\">{}</td></tr></tbody></table></div>",
        count(report.tokens()),
        money(report.total)
    );
    page("Cost overview", Nav::Overview, &body)
}

/// The axis prefix for whole amounts; codes without a symbol go without one.
pub(crate) fn money_prefix(code: &str) -> &'static str {
    match code {
        "USD" => "$",
        "EUR" => "€",
        "GBP" => "£",
        "JPY" => "¥",
        _ => "",
    }
}

//! The amortisation schedule: every asset, then month by month the opening book value,
//! depreciation and closing book value (summed over the assets; each asset's own table follows
//! when there are several).

use std::{collections::BTreeMap, fmt::Write as _};

use moebox_tco::{CostModel, Date, Method, Money, ScheduleRow, YearMonth, schedule as rows_of};

use crate::layout::{Nav, escape, page};

#[derive(Debug, Clone)]
pub struct SchedulePage<'a> {
    pub model: &'a CostModel,
    /// Today, to mark the current month.
    pub today: Date,
    pub generated_at: &'a str,
}

fn table(
    id: &str,
    rows: &[ScheduleRow],
    today: YearMonth,
    money: &dyn Fn(Money) -> String,
) -> String {
    let mut out = format!(
        "<div class=\"scroll\"><table id=\"{}\"><thead><tr><th>Month</th>\
         <th class=\"num\">Opening book value</th><th class=\"num\">Depreciation</th>\
         <th class=\"num\">Closing book value</th></tr></thead><tbody>",
        escape(id)
    );
    for row in rows {
        let class = if row.month == today {
            " class=\"current\""
        } else {
            ""
        };
        let _ = write!(
            out,
            "<tr{class}><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td></tr>",
            row.month.label(),
            money(row.opening),
            money(row.depreciation),
            money(row.closing)
        );
    }
    let total: Money = rows.iter().map(|r| r.depreciation).sum();
    let _ = write!(
        out,
        "<tr class=\"total\"><td>Total</td><td></td><td class=\"num\">{}</td><td></td></tr>\
         </tbody></table></div>",
        money(total)
    );
    out
}

pub fn schedule(input: &SchedulePage<'_>) -> String {
    let model = input.model;
    let c = &model.currency;
    let money = |m: Money| m.display(c);
    let today = input.today.year_month();
    let mut body = format!(
        "<h1>Amortisation schedule</h1><p class=\"sub\">{} · generated {} · partial first and \
         last months are pro rata by days in service</p>",
        c,
        escape(input.generated_at)
    );
    body.push_str(
        "<div class=\"scroll\"><table id=\"assets\"><thead><tr><th>Asset</th>\
         <th class=\"num\">Price</th><th>Bought</th><th class=\"num\">Months</th><th>Method</th>\
         <th class=\"num\">Residual</th><th class=\"num\">Book value now</th></tr></thead><tbody>",
    );
    let schedules: Vec<Vec<ScheduleRow>> =
        model.assets.iter().map(|asset| rows_of(asset, c)).collect();
    for (asset, rows) in model.assets.iter().zip(&schedules) {
        let method = match asset.method() {
            Method::StraightLine => "straight line".to_owned(),
            Method::DecliningBalance { factor } => format!("declining balance × {factor}"),
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            escape(&asset.name),
            money(asset.purchase_price),
            asset.purchase_date,
            asset.amortisation_months,
            escape(&method),
            money(asset.residual_value),
            money(moebox_tco::amortisation::book_value_at(rows, asset, today))
        );
    }
    body.push_str("</tbody></table></div>");
    if model.assets.is_empty() {
        body.push_str("<p class=\"empty\">No assets in the register (tco.assets).</p>");
        return page("Amortisation schedule", Nav::Schedule, &body);
    }

    // All assets together: per month, sums of the rows; an asset not yet bought or already
    // written off contributes its book value to opening and closing.
    let mut months: BTreeMap<YearMonth, (Money, Money, Money)> = BTreeMap::new();
    let first = schedules
        .iter()
        .filter_map(|r| r.first())
        .map(|r| r.month)
        .min();
    let last = schedules
        .iter()
        .filter_map(|r| r.last())
        .map(|r| r.month)
        .max();
    if let (Some(first), Some(last)) = (first, last) {
        let mut month = first;
        while month <= last {
            let mut entry = (Money::ZERO, Money::ZERO, Money::ZERO);
            for (asset, rows) in model.assets.iter().zip(&schedules) {
                match rows.iter().find(|r| r.month == month) {
                    Some(row) => {
                        entry.0 += row.opening;
                        entry.1 += row.depreciation;
                        entry.2 += row.closing;
                    }
                    // Not yet bought: not on the books.
                    None if month < asset.purchase_date.year_month() => {}
                    None => {
                        let book = moebox_tco::amortisation::book_value_at(rows, asset, month);
                        entry.0 += book;
                        entry.2 += book;
                    }
                }
            }
            months.insert(month, entry);
            match month.next() {
                Some(next) => month = next,
                None => break,
            }
        }
    }
    let combined: Vec<ScheduleRow> = months
        .into_iter()
        .map(|(month, (opening, depreciation, closing))| ScheduleRow {
            month,
            days_in_service: month.days(),
            opening,
            depreciation,
            closing,
        })
        .collect();
    body.push_str("<h2>All assets</h2>");
    body.push_str(&table("schedule", &combined, today, &money));
    if model.assets.len() > 1 {
        for (index, (asset, rows)) in model.assets.iter().zip(&schedules).enumerate() {
            let _ = write!(body, "<h2>{}</h2>", escape(&asset.name));
            body.push_str(&table(&format!("schedule-{index}"), rows, today, &money));
        }
    }
    page("Amortisation schedule", Nav::Schedule, &body)
}

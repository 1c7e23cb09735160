//! Break-even: the day the appliance has paid for itself against an alternative.
//!
//! This is a cash comparison, not an accounting one. Self-hosted, the hardware is paid in full
//! on its purchase date (amortisation spreads it in the books, but the money is gone), and the
//! running costs (fixed lines and energy) accrue every day from the first purchase. The
//! alternative costs its own running rate from the same day, and nothing up front. Both rates
//! are the *current* run rate: the report period's costs per day, projected over the whole
//! span. Break-even is the first day on which the cumulative alternative cost reaches the
//! cumulative self-hosted cost; none within `tco.break_even_horizon_months` is reported as
//! such. Residual value is not credited (conservative: the box must pay for itself without
//! being sold).

use serde::Serialize;

use crate::{
    date::{Date, YearMonth},
    model::CostModel,
    money::{Currency, Money},
};

/// The period's costs that recur, from which every day is projected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRate {
    /// Days of the period the costs below were measured over (at least 1).
    pub days: u32,
    /// Self-hosted running costs of the period: fixed lines and energy (not depreciation).
    pub operating: Money,
    /// Each alternative's cost for the period, by name.
    pub alternatives: Vec<(String, Money)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakEven {
    pub alternative: String,
    /// The day cumulative alternative cost reaches cumulative self-hosted cost; `None` when not
    /// within the horizon.
    pub date: Option<Date>,
    /// The last day looked at.
    pub horizon_end: Date,
}

/// Cumulative costs at the end of one month, for the chart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CumulativePoint {
    pub date: Date,
    pub self_hosted: Money,
    /// In the order of [`RunRate::alternatives`].
    pub alternatives: Vec<Money>,
}

/// The day the books start: the first purchase, or `fallback` when no asset is registered.
fn start(model: &CostModel, fallback: Date) -> Date {
    model.first_purchase().unwrap_or(fallback)
}

/// The last day of the horizon: `months` after `start`, the day before the same day of month
/// (clamped to the month's length).
fn horizon_end(start: Date, months: u32) -> Date {
    let month = start
        .year_month()
        .add_months(months)
        .unwrap_or(start.year_month());
    let day = u32::from(start.day().min(month.days()));
    Date::new(month.year(), u32::from(month.month()), day)
        .ok()
        .and_then(|d| d.add_days(-1))
        .unwrap_or(start)
}

/// Purchases paid by the end of `date`, in micros.
fn capital_by(model: &CostModel, date: Date) -> i128 {
    model
        .assets
        .iter()
        .filter(|asset| asset.purchase_date <= date)
        .map(|asset| i128::from(asset.purchase_price.micros()))
        .sum()
}

/// For each alternative, the break-even day at the run rate.
pub fn break_even(model: &CostModel, rate: &RunRate, fallback_start: Date) -> Vec<BreakEven> {
    let start = start(model, fallback_start);
    let end = horizon_end(start, model.break_even_horizon_months);
    let days = i128::from(rate.days.max(1));
    let operating = i128::from(rate.operating.micros());
    rate.alternatives
        .iter()
        .map(|(name, cost)| {
            let alternative = i128::from(cost.micros());
            let mut date = None;
            let mut day = start;
            let mut elapsed = 0_i128;
            while day <= end {
                elapsed += 1;
                // Compared multiplied by the period's days, so no per-day rounding.
                let self_hosted = capital_by(model, day) * days + operating * elapsed;
                if alternative * elapsed >= self_hosted {
                    date = Some(day);
                    break;
                }
                match day.add_days(1) {
                    Some(next) => day = next,
                    None => break,
                }
            }
            BreakEven {
                alternative: name.clone(),
                date,
                horizon_end: end,
            }
        })
        .collect()
}

/// Shortest span of the cumulative chart, in months.
pub const MIN_CHART_MONTHS: u32 = 12;
/// Months shown past the latest break-even, so the crossing is not at the edge.
pub const CHART_MONTHS_AFTER_BREAK_EVEN: u32 = 3;

/// How many months the cumulative chart should span: from the start of the books to a few
/// months past the latest break-even reached (or `through`, if later), within the horizon.
pub fn chart_months(
    model: &CostModel,
    results: &[BreakEven],
    fallback_start: Date,
    through: Date,
) -> u32 {
    let start = start(model, fallback_start).year_month();
    let last = results
        .iter()
        .filter_map(|b| b.date)
        .chain(std::iter::once(through))
        .max()
        .unwrap_or(through)
        .year_month();
    let months = start.months_until(last).max(0) as u32 + 1 + CHART_MONTHS_AFTER_BREAK_EVEN;
    months.clamp(
        MIN_CHART_MONTHS,
        model.break_even_horizon_months.max(MIN_CHART_MONTHS),
    )
}

/// Cumulative self-hosted and alternative cost at the end of each month from the start of the
/// books, for `months` months, at the run rate (the chart beside the break-even date).
pub fn cumulative(
    model: &CostModel,
    rate: &RunRate,
    fallback_start: Date,
    months: u32,
    currency: &Currency,
) -> Vec<CumulativePoint> {
    let start = start(model, fallback_start);
    let days = i128::from(rate.days.max(1));
    let mut points = Vec::with_capacity(months as usize);
    let mut month: YearMonth = start.year_month();
    for _ in 0..months {
        let date = month.last_day();
        let elapsed = i128::from(start.days_until(date) + 1);
        let self_hosted = Money::from_micros(1).mul_div_posted(
            capital_by(model, date) * days + i128::from(rate.operating.micros()) * elapsed,
            days,
            currency,
        );
        let alternatives = rate
            .alternatives
            .iter()
            .map(|(_, cost)| cost.mul_div_posted(elapsed, days, currency))
            .collect();
        points.push(CumulativePoint {
            date,
            self_hosted,
            alternatives,
        });
        match month.next() {
            Some(next) => month = next,
            None => break,
        }
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Date {
        Date::parse(text).expect(text)
    }

    fn model() -> CostModel {
        let mut model = CostModel::default();
        model.assets[0].purchase_date = d("2026-01-01");
        model
    }

    #[test]
    fn break_even_day_against_a_monthly_rate() {
        // $28,800 up front, $300 a month to run; the API would cost $2,100 a month (30 days).
        // Net $1,800 a month: 16 months, i.e. 480 days of this 30-day rate.
        let rate = RunRate {
            days: 30,
            operating: Money::from_major(300),
            alternatives: vec![("api".to_owned(), Money::from_major(2_100))],
        };
        let result = break_even(&model(), &rate, d("2026-06-01"));
        let expected = d("2026-01-01").add_days(479).expect("in range");
        assert_eq!(result[0].date, Some(expected));
        assert_eq!(result[0].horizon_end, d("2030-12-31"));
        // The day before, it had not yet paid for itself.
        let elapsed = 479_i128;
        assert!(2_100 * elapsed < 28_800 * 30 + 300 * elapsed);
    }

    #[test]
    fn no_break_even_when_the_alternative_is_cheaper_to_run() {
        let rate = RunRate {
            days: 30,
            operating: Money::from_major(300),
            alternatives: vec![("cheap".to_owned(), Money::from_major(250))],
        };
        let result = break_even(&model(), &rate, d("2026-06-01"));
        assert_eq!(result[0].date, None);
        // Nor when it would take longer than the horizon: $500/month net needs 58 months.
        let mut short = model();
        short.break_even_horizon_months = 12;
        let rate = RunRate {
            days: 30,
            operating: Money::ZERO,
            alternatives: vec![("slow".to_owned(), Money::from_major(500))],
        };
        let result = break_even(&short, &rate, d("2026-06-01"));
        assert_eq!(result[0].date, None);
        assert_eq!(result[0].horizon_end, d("2026-12-31"));
    }

    #[test]
    fn cumulative_series_crosses_where_break_even_says() {
        let rate = RunRate {
            days: 30,
            operating: Money::from_major(300),
            alternatives: vec![("api".to_owned(), Money::from_major(2_100))],
        };
        let model = model();
        let currency = Currency::default();
        let points = cumulative(&model, &rate, d("2026-06-01"), 24, &currency);
        assert_eq!(points.len(), 24);
        assert_eq!(points[0].date, d("2026-01-31"));
        // 31 days: 28,800 + 300 × 31/30.
        assert_eq!(points[0].self_hosted, Money::from_major(29_110));
        assert_eq!(points[0].alternatives[0], Money::from_major(2_170));
        let crossing = points
            .iter()
            .position(|p| p.alternatives[0] >= p.self_hosted)
            .expect("crosses");
        let break_even = break_even(&model, &rate, d("2026-06-01"))[0]
            .date
            .expect("reached");
        assert_eq!(points[crossing].date.year_month(), break_even.year_month());
    }
}

//! The amortisation schedule: month by month, opening book value, depreciation, closing book
//! value.
//!
//! Conventions (documented here because auditors will ask):
//! - **Partial first month, pro rata by days.** An asset bought on day `d` of a month of `D`
//!   days is in service for `D − d + 1` days of it (the purchase day counts), so the first
//!   month carries that fraction of a full month. The life then runs whole months, and a last
//!   partial month carries the rest, so the asset is written off over exactly
//!   `amortisation_months` months of time. Bought on the 1st: exactly that many rows. February
//!   has 29 days in leap years, so a purchase on 29 February 2024 is charged 1/29 of a month.
//! - **Rounding.** Depreciation is posted in the currency's minor unit. Straight line posts
//!   the change of the cumulative amount `round(T × elapsed ÷ life)`, so no rounding error
//!   builds up and the rows sum to exactly `T = price − residual`. Declining balance rounds
//!   each month and the last month takes what is left down to the residual.
//! - **Declining balance** charges `opening × factor ÷ life_months` each month (pro rata in a
//!   partial month), and switches to straight line over the remaining life (`(opening −
//!   residual) × this month's share ÷ remaining months`) from the first month in which that is
//!   larger. Book value never goes below the residual value.

use serde::Serialize;

use crate::{
    date::{Date, YearMonth},
    model::{Asset, Method},
    money::{Currency, MICROS, Money, div_round},
};

/// One month of one asset's schedule. Amounts are posted (whole minor units).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ScheduleRow {
    pub month: YearMonth,
    /// Days of the month the asset was in service (the first and last months may be partial).
    pub days_in_service: u8,
    pub opening: Money,
    pub depreciation: Money,
    pub closing: Money,
}

/// The schedule of one asset, from the month of purchase to the month its book value reaches
/// the residual value. The asset must have passed [`crate::CostModel::validate`].
pub fn schedule(asset: &Asset, currency: &Currency) -> Vec<ScheduleRow> {
    let unit = i128::from(currency.minor_unit_micros());
    let to_units = |money: Money| div_round(i128::from(money.micros()), unit);
    let from_units = |units: i128| Money::from_micros(i64::try_from(units * unit).unwrap_or(0));

    let price = to_units(asset.purchase_price);
    let residual = to_units(asset.residual_value);
    let total = (price - residual).max(0);
    let life = i128::from(asset.amortisation_months.max(1));

    let purchase = asset.purchase_date;
    let first_month = purchase.year_month();
    // Time is counted in units of 1/D month, D the days of the purchase month: the first month
    // contributes `first_share` of them, every later month D, and the life is `life × D`.
    let purchase_month_days = i128::from(first_month.days());
    let first_share = purchase_month_days - i128::from(purchase.day()) + 1;
    let life_units = life * purchase_month_days;

    let mut rows = Vec::with_capacity(asset.amortisation_months as usize + 1);
    let mut month = first_month;
    let mut elapsed = 0_i128;
    let mut book = price;
    while elapsed < life_units {
        let share = if elapsed == 0 {
            first_share
        } else {
            purchase_month_days.min(life_units - elapsed)
        };
        let is_last = elapsed + share >= life_units;
        let depreciation = match asset.method() {
            Method::StraightLine => {
                let before = div_round(total * elapsed, life_units);
                let after = div_round(total * (elapsed + share), life_units);
                after - before
            }
            Method::DecliningBalance { factor } => {
                if is_last {
                    book - residual
                } else {
                    let declining = div_round(
                        book * i128::from(factor.micros()) * share,
                        i128::from(MICROS) * life_units,
                    );
                    let straight = div_round((book - residual) * share, life_units - elapsed);
                    declining.max(straight).min(book - residual)
                }
            }
        };
        let days_in_service = days_in_service(purchase, month, is_last);
        rows.push(ScheduleRow {
            month,
            days_in_service,
            opening: from_units(book),
            depreciation: from_units(depreciation),
            closing: from_units(book - depreciation),
        });
        book -= depreciation;
        elapsed += share;
        match month.next() {
            Some(next) => month = next,
            None => break,
        }
    }
    rows
}

/// Days of `month` in service: from the purchase day in the first month, up to the day before
/// the anniversary day in the last (partial) month.
fn days_in_service(purchase: Date, month: YearMonth, is_last: bool) -> u8 {
    if month == purchase.year_month() {
        month.days() - purchase.day() + 1
    } else if is_last && purchase.day() > 1 {
        (purchase.day() - 1).min(month.days())
    } else {
        month.days()
    }
}

/// The depreciation an asset's schedule charges to the days `from..=to` of `row`'s month:
/// the row's amount, pro rata by the in-service days that fall inside the range, posted.
pub fn depreciation_in_range(
    asset: &Asset,
    row: &ScheduleRow,
    from: Date,
    to: Date,
    currency: &Currency,
) -> Money {
    let month = row.month;
    let (service_start, service_end) = if month == asset.purchase_date.year_month() {
        (asset.purchase_date.day(), month.days())
    } else if row.days_in_service < month.days() {
        (1, row.days_in_service)
    } else {
        (1, month.days())
    };
    let first = if from.year_month() == month {
        from.day().max(service_start)
    } else if from > month.last_day() {
        return Money::ZERO;
    } else {
        service_start
    };
    let last = if to.year_month() == month {
        to.day().min(service_end)
    } else if to < month.first_day() {
        return Money::ZERO;
    } else {
        service_end
    };
    if last < first {
        return Money::ZERO;
    }
    let covered = i128::from(last - first + 1);
    let in_service = i128::from(row.days_in_service.max(1));
    if covered == in_service {
        row.depreciation
    } else {
        row.depreciation
            .mul_div_posted(covered, in_service, currency)
    }
}

/// Book value of `asset` at the end of `date`'s month (its price before purchase, the residual
/// after the schedule ends).
pub fn book_value_at(rows: &[ScheduleRow], asset: &Asset, month: YearMonth) -> Money {
    match rows.iter().find(|row| row.month == month) {
        Some(row) => row.closing,
        None if month < asset.purchase_date.year_month() => asset.purchase_price,
        None => rows.last().map_or(asset.purchase_price, |row| row.closing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DEFAULT_DECLINING_FACTOR, MethodKind};
    use crate::money::Factor;

    fn usd() -> Currency {
        Currency::default()
    }

    fn asset(price: i64, date: &str, months: u32) -> Asset {
        Asset {
            name: "A100 servers".to_owned(),
            purchase_price: Money::from_major(price),
            purchase_date: Date::parse(date).expect(date),
            amortisation_months: months,
            residual_value: Money::ZERO,
            method: MethodKind::StraightLine,
            declining_factor: DEFAULT_DECLINING_FACTOR,
        }
    }

    fn total(rows: &[ScheduleRow]) -> Money {
        rows.iter().map(|row| row.depreciation).sum()
    }

    fn check_continuity(rows: &[ScheduleRow]) {
        for pair in rows.windows(2) {
            assert_eq!(pair[0].closing, pair[1].opening, "{pair:?}");
        }
        for row in rows {
            assert_eq!(row.opening - row.depreciation, row.closing, "{row:?}");
            assert!(row.depreciation >= Money::ZERO, "{row:?}");
        }
    }

    #[test]
    fn worked_example_28800_over_24_months_is_1200_a_month() {
        let rows = schedule(&asset(28_800, "2026-01-01", 24), &usd());
        assert_eq!(rows.len(), 24);
        assert!(
            rows.iter()
                .all(|row| row.depreciation == Money::from_major(1_200))
        );
        assert_eq!(rows[0].month, YearMonth::new(2026, 1).expect("valid"));
        assert_eq!(rows[0].opening, Money::from_major(28_800));
        assert_eq!(rows[0].closing, Money::from_major(27_600));
        assert_eq!(rows[23].month, YearMonth::new(2027, 12).expect("valid"));
        assert_eq!(rows[23].closing, Money::ZERO);
        check_continuity(&rows);
    }

    #[test]
    fn residual_value_is_never_depreciated() {
        let mut asset = asset(28_800, "2026-01-01", 24);
        asset.residual_value = Money::from_major(4_800);
        let rows = schedule(&asset, &usd());
        assert!(
            rows.iter()
                .all(|row| row.depreciation == Money::from_major(1_000))
        );
        assert_eq!(rows.last().expect("rows").closing, Money::from_major(4_800));
        check_continuity(&rows);
    }

    #[test]
    fn uneven_amounts_sum_exactly_without_drift() {
        // $10,000 over 36 months is $277.777…: cents are spread, the total is exact.
        let rows = schedule(&asset(10_000, "2025-07-01", 36), &usd());
        assert_eq!(rows.len(), 36);
        assert_eq!(total(&rows), Money::from_major(10_000));
        for row in &rows {
            let cents = row.depreciation.micros() / 10_000;
            assert!((27_777..=27_778).contains(&cents), "{row:?}");
        }
        check_continuity(&rows);
    }

    #[test]
    fn asset_bought_mid_month_is_charged_pro_rata_by_days() {
        // Bought on 16 April (30 days): in service 15 days, half a month.
        let rows = schedule(&asset(28_800, "2026-04-16", 24), &usd());
        assert_eq!(rows.len(), 25);
        assert_eq!(rows[0].days_in_service, 15);
        assert_eq!(rows[0].depreciation, Money::from_major(600));
        assert!(
            rows[1..24]
                .iter()
                .all(|row| row.depreciation == Money::from_major(1_200))
        );
        // The last month (April 2028) carries the other half: 1–15 April.
        assert_eq!(rows[24].month, YearMonth::new(2028, 4).expect("valid"));
        assert_eq!(rows[24].days_in_service, 15);
        assert_eq!(rows[24].depreciation, Money::from_major(600));
        assert_eq!(total(&rows), Money::from_major(28_800));
        check_continuity(&rows);
    }

    #[test]
    fn leap_day_purchase_counts_february_as_29_days() {
        // 29 Feb 2024: one day of a 29-day month.
        let rows = schedule(&asset(2_900, "2024-02-29", 12), &usd());
        let monthly = 2_900.0 / 12.0;
        assert_eq!(rows[0].days_in_service, 1);
        assert_eq!(
            rows[0].depreciation,
            Money::parse(&format!("{:.2}", monthly / 29.0)).expect("cents")
        );
        // 28 Feb 2023: one day of a 28-day month.
        let rows_2023 = schedule(&asset(2_800, "2023-02-28", 12), &usd());
        assert_eq!(
            rows_2023[0].depreciation,
            Money::parse("8.33").expect("cents")
        );
        for rows in [&rows, &rows_2023] {
            assert_eq!(rows.len(), 13);
            check_continuity(rows);
        }
        assert_eq!(total(&rows), Money::from_major(2_900));
        // The final partial month is February 2025 (28 days): the purchase-day rule gives
        // 28 days in service there, the rest of the life.
        assert_eq!(rows[12].month, YearMonth::new(2025, 2).expect("valid"));
        assert_eq!(rows[12].days_in_service, 28);
    }

    #[test]
    fn declining_balance_switches_to_straight_line_and_ends_at_the_residual() {
        let mut asset = asset(24_000, "2026-01-01", 24);
        asset.method = MethodKind::DecliningBalance;
        asset.declining_factor = Factor::parse("2").expect("ok");
        asset.residual_value = Money::from_major(2_000);
        let rows = schedule(&asset, &usd());
        assert_eq!(rows.len(), 24);
        // Month 1: 24,000 × 2 ÷ 24 = 2,000 (straight line would be 22,000 ÷ 24 = 916.67).
        assert_eq!(rows[0].depreciation, Money::from_major(2_000));
        // Month 2: 22,000 × 2 ÷ 24 = 1,833.33.
        assert_eq!(
            rows[1].depreciation,
            Money::parse("1833.33").expect("cents")
        );
        // Charges fall while declining balance rules, then stay flat once straight line
        // takes over, until the residual.
        let switch = rows
            .windows(2)
            .position(|pair| pair[1].depreciation >= pair[0].depreciation)
            .expect("switches to straight line");
        assert!(switch > 3 && switch < 23, "switch at {switch}");
        for pair in rows[switch + 1..23].windows(2) {
            let difference = (pair[0].depreciation.micros() - pair[1].depreciation.micros()).abs();
            assert!(difference <= 10_000, "flat after the switch: {pair:?}");
        }
        assert_eq!(rows.last().expect("rows").closing, Money::from_major(2_000));
        assert_eq!(total(&rows), Money::from_major(22_000));
        check_continuity(&rows);
    }

    #[test]
    fn declining_balance_mid_month_purchase_is_pro_rata_and_complete() {
        let mut asset = asset(10_000, "2024-02-15", 36);
        asset.method = MethodKind::DecliningBalance;
        asset.declining_factor = Factor::parse("1.5").expect("ok");
        let rows = schedule(&asset, &usd());
        assert_eq!(rows.len(), 37);
        // 15 of 29 days: 10,000 × 1.5 ÷ 36 × 15/29.
        assert_eq!(rows[0].depreciation, Money::parse("215.52").expect("cents"));
        assert_eq!(total(&rows), Money::from_major(10_000));
        check_continuity(&rows);
    }

    #[test]
    fn depreciation_in_a_date_range_is_pro_rata_by_days() {
        let asset = asset(28_800, "2026-01-01", 24);
        let rows = schedule(&asset, &usd());
        let d = |s: &str| Date::parse(s).expect(s);
        let usd = usd();
        // All of January.
        assert_eq!(
            depreciation_in_range(&asset, &rows[0], d("2026-01-01"), d("2026-01-31"), &usd),
            Money::from_major(1_200)
        );
        // June has 30 days: ten of them are a third.
        assert_eq!(
            depreciation_in_range(&asset, &rows[5], d("2026-06-01"), d("2026-06-10"), &usd),
            Money::from_major(400)
        );
        // Outside the range.
        assert_eq!(
            depreciation_in_range(&asset, &rows[5], d("2026-07-01"), d("2026-07-31"), &usd),
            Money::ZERO
        );
        assert_eq!(
            book_value_at(&rows, &asset, YearMonth::new(2025, 12).expect("v")),
            asset.purchase_price
        );
        assert_eq!(
            book_value_at(&rows, &asset, YearMonth::new(2030, 1).expect("v")),
            Money::ZERO
        );
    }
}

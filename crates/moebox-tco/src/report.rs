//! The report for a period: what the box cost, what it did, what the same work would have cost
//! elsewhere, when it pays for itself, and who used it.
//!
//! Everything measured comes in as [`Measurements`] (from the ledger's hourly rollups); the
//! model never reads a clock or a file. Hours are the appliance's civil hours, and every day
//! counts 24 of them (a daylight-saving day is not special-cased: the ledger rolls up by the
//! same clock the tariff is written in).
//!
//! How each figure is made:
//! - **Depreciation** of a month is its schedule row, pro rata by the in-service days that fall
//!   in the period. **Fixed costs** are monthly, pro rata by days of the month in the period.
//! - **Energy** is measured IT energy × PUE × the price of the hour it was used in (tariff
//!   bands), or, where only per-band totals are known, × the band's price; rounded once a month.
//! - **Idle cost**: the box costs the same at 3 a.m. Hours without a request carry their share
//!   of depreciation and fixed costs (by hours) plus the energy measured in them.
//! - **Cost per million tokens** is the period's whole cost ÷ (input + output tokens).
//! - **Alternatives** are priced on the period's *actual* input and output tokens, plus their
//!   hourly rate × the period's hours.
//! - **Chargeback** splits the period's total cost between teams by their share of tokens
//!   (input and output alike), by largest remainder in minor units, so the charges add up to the
//!   total exactly; with no tokens at all nothing is allocated and the total is shown as
//!   unallocated.
//! - **Break-even** is a cash question: see [`crate::break_even`].

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    amortisation::{self, ScheduleRow},
    break_even::{self, BreakEven, RunRate},
    date::{Date, YearMonth},
    model::CostModel,
    money::{Currency, Energy, Factor, MICROS, Money, div_round},
};

/// The longest period one report may cover (ten years).
pub const MAX_PERIOD_DAYS: i64 = 3_660;
/// Most teams in one chargeback.
pub const MAX_TEAMS: usize = 10_000;

/// What the ledger measured in one hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HourUsage {
    pub date: Date,
    /// 0–23.
    pub hour: u8,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// IT energy measured in this hour (GPUs, and the CPU package where readable).
    pub energy: Energy,
}

/// Energy known only as a total per tariff band for a month (a meter with band registers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BandEnergy {
    pub month: YearMonth,
    /// A `tco.energy.tariff_bands[].name`, or `None` for hours outside every band.
    pub band: Option<String>,
    pub energy: Energy,
}

/// One team's tokens in the period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TeamTokens {
    pub team: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// Everything measured for the period.
///
/// From the ledger: `usage_series(from, to, Step::Hour, &UsageFilter::All)` and
/// `energy_kwh_by_hour(from, to)` give one point per UTC hour; key both by
/// [`Date::from_unix_seconds`] of the point's start, keep the hours inside the period (the
/// ledger's buckets may reach past its ends), and merge them into one [`HourUsage`] per hour
/// (energy through [`Energy::from_kwh_rounded`]). `usage_by_team` gives `teams`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Measurements {
    /// At most one record per hour; hours without a record had no traffic and no energy
    /// reading.
    pub hours: Vec<HourUsage>,
    /// Per-band energy, for months without hourly energy.
    pub band_energy: Vec<BandEnergy>,
    pub teams: Vec<TeamTokens>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("the period ends ({to}) before it starts ({from})")]
    PeriodInverted { from: Date, to: Date },
    #[error("the period {from}..={to} is longer than {MAX_PERIOD_DAYS} days")]
    PeriodTooLong { from: Date, to: Date },
    #[error("usage for {date} hour {hour} is outside the period {from}..={to} or not an hour 0–23")]
    HourOutside {
        date: Date,
        hour: u8,
        from: Date,
        to: Date,
    },
    #[error("usage for {date} hour {hour} is given twice")]
    HourTwice { date: Date, hour: u8 },
    #[error("band energy names {band:?}, which is not in tco.energy.tariff_bands")]
    UnknownBand { band: String },
    #[error("energy for {month} is given both per hour and per band")]
    EnergyTwice { month: YearMonth },
    #[error("band energy for {month} is outside the period")]
    BandMonthOutside { month: YearMonth },
    #[error("team {team:?} is listed twice")]
    TeamTwice { team: String },
    #[error("at most {MAX_TEAMS} teams, got {count}")]
    TooManyTeams { count: usize },
}

/// One month (or the part of it in the period).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MonthCost {
    pub month: YearMonth,
    pub days: u8,
    pub depreciation: Money,
    pub fixed: Money,
    pub energy: Money,
    pub total: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AssetCost {
    pub name: String,
    pub depreciation: Money,
    /// Book value at the end of the period's last month.
    pub book_value: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineCost {
    pub name: String,
    pub amount: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlternativeCost {
    pub name: String,
    /// What the period's actual tokens and hours would have cost there.
    pub cost: Money,
    pub per_million_tokens: Option<Money>,
    /// `cost` − the appliance's total: positive means the appliance saved that much.
    pub saving: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TeamCharge {
    pub team: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Share of all tokens, in basis points (1/100 of a percent), for display.
    pub share_basis_points: u32,
    pub amount: Money,
}

/// The figures of one period, every amount posted in the currency's minor unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub currency: Currency,
    pub from: Date,
    pub to: Date,
    pub days: u32,
    pub hours: u32,
    pub months: Vec<MonthCost>,
    pub assets: Vec<AssetCost>,
    pub fixed_costs: Vec<LineCost>,
    pub depreciation: Money,
    pub fixed: Money,
    pub energy_cost: Money,
    pub total: Money,
    /// Measured IT energy.
    pub energy_it: Energy,
    /// IT energy × PUE: what the building paid for.
    pub energy_facility: Energy,
    pub pue: Factor,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Hours with at least one request.
    pub busy_hours: u32,
    pub idle_hours: u32,
    pub idle_cost: Money,
    pub cost_per_million_tokens: Option<Money>,
    pub alternatives: Vec<AlternativeCost>,
    pub break_even: Vec<BreakEven>,
    pub chargeback: Vec<TeamCharge>,
    /// The part of the total no team's tokens carry (all of it when nobody used the box).
    pub unallocated: Money,
    /// Plain-language caveats about missing measurements, shown with the figures.
    pub notes: Vec<String>,
}

impl Report {
    pub fn tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// The period's recurring costs, from which break-even and the cumulative chart project.
    pub fn run_rate(&self) -> RunRate {
        RunRate {
            days: self.days,
            operating: self.fixed + self.energy_cost,
            alternatives: self
                .alternatives
                .iter()
                .map(|a| (a.name.clone(), a.cost))
                .collect(),
        }
    }

    /// Share of the period's hours with traffic, in basis points.
    pub fn busy_basis_points(&self) -> u32 {
        if self.hours == 0 {
            0
        } else {
            (u64::from(self.busy_hours) * 10_000 / u64::from(self.hours)) as u32
        }
    }
}

/// Computes the report for `from..=to` (both days included). The model must have passed
/// [`CostModel::validate`].
pub fn report(
    model: &CostModel,
    from: Date,
    to: Date,
    measurements: &Measurements,
) -> Result<Report, ReportError> {
    if to < from {
        return Err(ReportError::PeriodInverted { from, to });
    }
    let days = from.days_until(to) + 1;
    if days > MAX_PERIOD_DAYS {
        return Err(ReportError::PeriodTooLong { from, to });
    }
    let days = days as u32;
    let hours = days * 24;
    let currency = &model.currency;
    let pue = model.energy.pue;

    // Months of the period with the days of each inside it.
    let mut months: Vec<(YearMonth, u8)> = Vec::new();
    let mut month = from.year_month();
    while month <= to.year_month() {
        let first = if month == from.year_month() {
            from.day()
        } else {
            1
        };
        let last = if month == to.year_month() {
            to.day()
        } else {
            month.days()
        };
        months.push((month, last - first + 1));
        match month.next() {
            Some(next) => month = next,
            None => break,
        }
    }

    // Hourly usage: checked, then summed per month.
    let mut seen = std::collections::HashSet::new();
    let mut energy_raw: BTreeMap<YearMonth, i128> = BTreeMap::new(); // mWh × micros-per-kWh
    let mut hourly_energy_months = std::collections::HashSet::new();
    let mut idle_energy_raw: i128 = 0;
    let mut energy_it = Energy::ZERO;
    let (mut requests, mut input_tokens, mut output_tokens) = (0_u64, 0_u64, 0_u64);
    let mut busy_hours = 0_u32;
    for usage in &measurements.hours {
        if usage.date < from || usage.date > to || usage.hour > 23 {
            return Err(ReportError::HourOutside {
                date: usage.date,
                hour: usage.hour,
                from,
                to,
            });
        }
        if !seen.insert((usage.date, usage.hour)) {
            return Err(ReportError::HourTwice {
                date: usage.date,
                hour: usage.hour,
            });
        }
        requests = requests.saturating_add(usage.requests);
        input_tokens = input_tokens.saturating_add(usage.input_tokens);
        output_tokens = output_tokens.saturating_add(usage.output_tokens);
        energy_it += usage.energy;
        let raw = i128::from(usage.energy.milliwatt_hours())
            * i128::from(model.energy.price_at(usage.hour).micros());
        *energy_raw.entry(usage.date.year_month()).or_default() += raw;
        if usage.energy != Energy::ZERO {
            hourly_energy_months.insert(usage.date.year_month());
        }
        if usage.requests > 0 {
            busy_hours += 1;
        } else {
            idle_energy_raw += raw;
        }
    }
    for band_energy in &measurements.band_energy {
        let month = band_energy.month;
        if !months.iter().any(|(m, _)| *m == month) {
            return Err(ReportError::BandMonthOutside { month });
        }
        if hourly_energy_months.contains(&month) {
            return Err(ReportError::EnergyTwice { month });
        }
        let price = match &band_energy.band {
            None => model.energy.price_per_kwh,
            Some(name) => model
                .energy
                .tariff_bands
                .iter()
                .find(|band| &band.name == name)
                .map(|band| band.price_per_kwh)
                .ok_or_else(|| ReportError::UnknownBand { band: name.clone() })?,
        };
        energy_it += band_energy.energy;
        *energy_raw.entry(month).or_default() +=
            i128::from(band_energy.energy.milliwatt_hours()) * i128::from(price.micros());
    }
    // mWh × micros/kWh × PUE-micros ÷ (1,000,000 mWh/kWh × 1,000,000 PUE-micros) = micros.
    let energy_scale = 1_000_000_i128 * i128::from(MICROS);
    let post_energy = |raw: i128| {
        Money::from_micros(
            i64::try_from(div_round(raw * i128::from(pue.micros()), energy_scale)).unwrap_or(0),
        )
        .posted(currency)
    };

    // Depreciation per asset and month.
    let schedules: Vec<Vec<ScheduleRow>> = model
        .assets
        .iter()
        .map(|asset| amortisation::schedule(asset, currency))
        .collect();
    let mut asset_costs: Vec<AssetCost> = model
        .assets
        .iter()
        .zip(&schedules)
        .map(|(asset, rows)| AssetCost {
            name: asset.name.clone(),
            depreciation: Money::ZERO,
            book_value: amortisation::book_value_at(rows, asset, to.year_month()),
        })
        .collect();
    let mut fixed_costs: Vec<LineCost> = model
        .fixed_costs
        .iter()
        .map(|line| LineCost {
            name: line.name.clone(),
            amount: Money::ZERO,
        })
        .collect();

    let mut month_costs = Vec::with_capacity(months.len());
    for &(month, covered_days) in &months {
        let mut depreciation = Money::ZERO;
        for ((asset, rows), cost) in model.assets.iter().zip(&schedules).zip(&mut asset_costs) {
            if let Some(row) = rows.iter().find(|row| row.month == month) {
                let amount = amortisation::depreciation_in_range(asset, row, from, to, currency);
                cost.depreciation += amount;
                depreciation += amount;
            }
        }
        let mut fixed = Money::ZERO;
        for (line, cost) in model.fixed_costs.iter().zip(&mut fixed_costs) {
            let amount = line.monthly.mul_div_posted(
                i128::from(covered_days),
                i128::from(month.days()),
                currency,
            );
            cost.amount += amount;
            fixed += amount;
        }
        let energy = post_energy(energy_raw.get(&month).copied().unwrap_or(0));
        month_costs.push(MonthCost {
            month,
            days: covered_days,
            depreciation,
            fixed,
            energy,
            total: depreciation + fixed + energy,
        });
    }
    let depreciation: Money = month_costs.iter().map(|m| m.depreciation).sum();
    let fixed: Money = month_costs.iter().map(|m| m.fixed).sum();
    let energy_cost: Money = month_costs.iter().map(|m| m.energy).sum();
    let total = depreciation + fixed + energy_cost;

    let idle_hours = hours - busy_hours;
    let idle_cost =
        (depreciation + fixed).mul_div_posted(i128::from(idle_hours), i128::from(hours), currency)
            + post_energy(idle_energy_raw);

    let tokens = input_tokens.saturating_add(output_tokens);
    let per_million =
        |cost: Money| (tokens > 0).then(|| cost.mul_div(i128::from(MICROS), i128::from(tokens)));
    let alternatives: Vec<AlternativeCost> = model
        .alternatives
        .iter()
        .map(|alternative| {
            let raw = i128::from(input_tokens) * i128::from(alternative.input_per_million.micros())
                + i128::from(output_tokens) * i128::from(alternative.output_per_million.micros())
                + i128::from(hours)
                    * i128::from(alternative.per_hour.micros())
                    * i128::from(MICROS);
            let cost = Money::from_micros(1).mul_div_posted(raw, i128::from(MICROS), currency);
            AlternativeCost {
                name: alternative.name.clone(),
                cost,
                per_million_tokens: per_million(cost),
                saving: cost - total,
            }
        })
        .collect();

    let (chargeback, unallocated) = chargeback(&measurements.teams, total, currency)?;

    let run_rate = RunRate {
        days,
        operating: fixed + energy_cost,
        alternatives: alternatives
            .iter()
            .map(|a| (a.name.clone(), a.cost))
            .collect(),
    };
    let break_even = break_even::break_even(model, &run_rate, from);

    let mut notes = Vec::new();
    if measurements.hours.is_empty() {
        notes.push(
            "No usage was measured in this period: tokens, requests and utilisation are zero, \
             and the alternatives' per-token prices have nothing to apply to."
                .to_owned(),
        );
    }
    if energy_it == Energy::ZERO {
        notes.push("No energy was measured in this period: the energy cost is zero.".to_owned());
    }

    Ok(Report {
        currency: currency.clone(),
        from,
        to,
        days,
        hours,
        months: month_costs,
        assets: asset_costs,
        fixed_costs,
        depreciation,
        fixed,
        energy_cost,
        total,
        energy_it,
        energy_facility: energy_it.scaled(pue),
        pue,
        requests,
        input_tokens,
        output_tokens,
        busy_hours,
        idle_hours,
        idle_cost,
        cost_per_million_tokens: per_million(total),
        alternatives,
        break_even,
        chargeback,
        unallocated,
        notes,
    })
}

/// Splits `total` between teams by token share, by largest remainder in minor units (ties go
/// to the team listed first after sorting by name), so the charges sum to `total` exactly.
pub fn chargeback(
    teams: &[TeamTokens],
    total: Money,
    currency: &Currency,
) -> Result<(Vec<TeamCharge>, Money), ReportError> {
    if teams.len() > MAX_TEAMS {
        return Err(ReportError::TooManyTeams { count: teams.len() });
    }
    let mut sorted: Vec<&TeamTokens> = teams.iter().collect();
    sorted.sort_by(|a, b| a.team.cmp(&b.team));
    for pair in sorted.windows(2) {
        if pair[0].team == pair[1].team {
            return Err(ReportError::TeamTwice {
                team: pair[0].team.clone(),
            });
        }
    }
    let weight = |t: &TeamTokens| u128::from(t.input_tokens) + u128::from(t.output_tokens);
    let all: u128 = sorted.iter().map(|t| weight(t)).sum();
    let unit = i128::from(currency.minor_unit_micros());
    let total = total.posted(currency);
    let total_units = i128::from(total.micros()) / unit;
    let mut charges: Vec<TeamCharge> = sorted
        .iter()
        .map(|t| TeamCharge {
            team: t.team.clone(),
            input_tokens: t.input_tokens,
            output_tokens: t.output_tokens,
            share_basis_points: (weight(t) * 10_000).checked_div(all).unwrap_or(0) as u32,
            amount: Money::ZERO,
        })
        .collect();
    if all == 0 {
        return Ok((charges, total));
    }
    // Integer part of each share, then one more minor unit to the largest remainders.
    let all = all as i128;
    let mut remainders = Vec::with_capacity(sorted.len());
    let mut given = 0_i128;
    for (index, t) in sorted.iter().enumerate() {
        let exact = total_units * weight(t) as i128;
        let units = exact.div_euclid(all);
        remainders.push((exact.rem_euclid(all), index));
        charges[index].amount = Money::from_micros((units * unit) as i64);
        given += units;
    }
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut left = total_units - given;
    for (_, index) in remainders {
        if left <= 0 {
            break;
        }
        charges[index].amount += Money::from_micros(unit as i64);
        left -= 1;
    }
    Ok((charges, Money::ZERO))
}

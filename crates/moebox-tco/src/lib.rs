//! The TCO cost model: what every million tokens really costs.
//!
//! Pure functions over plain values: no files, no clock, no environment. The config gives the
//! [`CostModel`] (assets, fixed costs, energy prices, alternatives), the ledger gives the
//! [`Measurements`] (tokens, requests and energy per hour, tokens per team), the caller gives
//! the period; [`report()`] returns every figure the admin pages and `moebox tco report` show,
//! and [`format`](mod@format) writes it as text, JSON or CSV.
//!
//! Money is exact: [`Money`] counts millionths of the currency unit in an integer and every
//! figure in a report is rounded once, to the currency's minor unit, where it is made (see
//! [`money`]).

#![forbid(unsafe_code)]

pub mod amortisation;
pub mod break_even;
pub mod date;
pub mod format;
pub mod model;
pub mod money;
pub mod report;

pub use amortisation::{ScheduleRow, schedule};
pub use break_even::{BreakEven, CumulativePoint, RunRate, chart_months, cumulative};
pub use date::{Date, DateError, YearMonth};
pub use model::{
    Alternative, Asset, CostModel, EnergyPricing, FixedCost, Method, MethodKind, ModelError,
    TariffBand,
};
pub use money::{Currency, Energy, Factor, Money};
pub use report::{
    AlternativeCost, AssetCost, BandEnergy, HourUsage, LineCost, Measurements, MonthCost, Report,
    ReportError, TeamCharge, TeamTokens, report,
};

//! The cost model's inputs as the admin writes them (`[tco]` in `moebox.toml`), their
//! defaults, and their validation with the path of the field at fault.

use serde::{Deserialize, Serialize};

use crate::{
    date::Date,
    money::{Currency, Factor, MICROS, Money},
};

/// The appliance's hardware when the config lists none: the pair of A100 servers, as priced in
/// the design brief. Admins set their own invoice's figures and date.
pub const DEFAULT_ASSET_NAME: &str = "A100 server pair";
/// `tco.assets[].purchase_price` of the default asset: $28,800, so $1,200 a month over 24.
pub const DEFAULT_ASSET_PURCHASE_PRICE: Money = Money::from_major(28_800);
/// `tco.assets[].purchase_date` of the default asset (YYYY-MM-DD).
pub const DEFAULT_ASSET_PURCHASE_DATE: &str = "2026-01-01";
/// `tco.assets[].amortisation_months`: the hardware's useful life in the books.
pub const DEFAULT_AMORTISATION_MONTHS: u32 = 24;
/// Upper bound of `amortisation_months` (20 years): schedules stay small.
pub const MAX_AMORTISATION_MONTHS: u32 = 240;
/// `tco.assets[].declining_factor`: 2 is double-declining balance.
pub const DEFAULT_DECLINING_FACTOR: Factor = Factor::from_micros(2 * MICROS);
/// Bounds of `declining_factor`: above 1 (else it never beats straight line), at most 4.
pub const MIN_DECLINING_FACTOR: Factor = Factor::from_micros(MICROS);
pub const MAX_DECLINING_FACTOR: Factor = Factor::from_micros(4 * MICROS);
/// Most assets in the register.
pub const MAX_ASSETS: usize = 256;
/// Most fixed-cost lines.
pub const MAX_FIXED_COSTS: usize = 64;
/// Most alternatives to compare against.
pub const MAX_ALTERNATIVES: usize = 16;
/// Longest name of an asset, cost line, tariff band or alternative.
pub const MAX_NAME_CHARS: usize = 120;

/// `tco.energy.price_per_kwh`: a typical business tariff; set the one on your bill.
pub const DEFAULT_ENERGY_PRICE_PER_KWH: Money = Money::from_micros(150_000);
/// `tco.energy.pue`: 1.0 counts the measured IT energy only; set your room's measured power
/// usage effectiveness to include cooling and distribution losses.
pub const DEFAULT_PUE: Factor = Factor::ONE;
/// Upper bound of `tco.energy.pue`: no working machine room is worse.
pub const MAX_PUE: Factor = Factor::from_micros(3 * MICROS);

/// The hosted frontier-model API the appliance replaces.
pub const DEFAULT_API_NAME: &str = "Hosted frontier API";
/// Its price per million input tokens.
pub const DEFAULT_API_INPUT_PER_MILLION: Money = Money::from_major(3);
/// Its price per million output tokens.
pub const DEFAULT_API_OUTPUT_PER_MILLION: Money = Money::from_major(15);
/// Rented cloud GPUs of the same size.
pub const DEFAULT_CLOUD_NAME: &str = "Rented cloud GPU pair";
/// Its hourly rate: $6.575 × 730 h (an average month, 8,760 h ÷ 12) ≈ $4,800 a month, the
/// figure in the design brief.
pub const DEFAULT_CLOUD_PER_HOUR: Money = Money::from_micros(6_575_000);

/// `tco.break_even_horizon_months`: how far ahead break-even is looked for.
pub const DEFAULT_BREAK_EVEN_HORIZON_MONTHS: u32 = 60;
/// Upper bound of the horizon (50 years).
pub const MAX_BREAK_EVEN_HORIZON_MONTHS: u32 = 600;

/// `[tco]`: everything the cost model knows that is not measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostModel {
    pub currency: Currency,
    pub assets: Vec<Asset>,
    pub fixed_costs: Vec<FixedCost>,
    pub energy: EnergyPricing,
    pub alternatives: Vec<Alternative>,
    pub break_even_horizon_months: u32,
}

impl Default for CostModel {
    fn default() -> Self {
        Self {
            currency: Currency::default(),
            assets: vec![Asset::default()],
            fixed_costs: Vec::new(),
            energy: EnergyPricing::default(),
            alternatives: vec![
                Alternative {
                    name: DEFAULT_API_NAME.to_owned(),
                    input_per_million: DEFAULT_API_INPUT_PER_MILLION,
                    output_per_million: DEFAULT_API_OUTPUT_PER_MILLION,
                    per_hour: Money::ZERO,
                },
                Alternative {
                    name: DEFAULT_CLOUD_NAME.to_owned(),
                    input_per_million: Money::ZERO,
                    output_per_million: Money::ZERO,
                    per_hour: DEFAULT_CLOUD_PER_HOUR,
                },
            ],
            break_even_horizon_months: DEFAULT_BREAK_EVEN_HORIZON_MONTHS,
        }
    }
}

/// A piece of hardware in the register, written off over its useful life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asset {
    pub name: String,
    pub purchase_price: Money,
    /// The day it was bought (or put in service); that month is charged pro rata by days.
    pub purchase_date: Date,
    #[serde(default = "default_amortisation_months")]
    pub amortisation_months: u32,
    /// What it is expected to be worth at the end; the book value never goes below it.
    #[serde(default)]
    pub residual_value: Money,
    #[serde(default)]
    pub method: MethodKind,
    /// Only for `declining_balance`: the multiple of the straight-line rate.
    #[serde(default = "default_declining_factor")]
    pub declining_factor: Factor,
}

fn default_amortisation_months() -> u32 {
    DEFAULT_AMORTISATION_MONTHS
}

fn default_declining_factor() -> Factor {
    DEFAULT_DECLINING_FACTOR
}

impl Default for Asset {
    fn default() -> Self {
        Self {
            name: DEFAULT_ASSET_NAME.to_owned(),
            purchase_price: DEFAULT_ASSET_PURCHASE_PRICE,
            purchase_date: Date::parse(DEFAULT_ASSET_PURCHASE_DATE)
                .unwrap_or_else(|_| unreachable!("DEFAULT_ASSET_PURCHASE_DATE is a valid date")),
            amortisation_months: DEFAULT_AMORTISATION_MONTHS,
            residual_value: Money::ZERO,
            method: MethodKind::StraightLine,
            declining_factor: DEFAULT_DECLINING_FACTOR,
        }
    }
}

/// How `tco.assets[].method` is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodKind {
    #[default]
    StraightLine,
    DecliningBalance,
}

/// The depreciation method with its parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Equal amounts each month: (price − residual) ÷ months.
    StraightLine,
    /// Each month, opening book value × factor ÷ months; switches to straight line over the
    /// remaining life as soon as that is larger (the usual convention, which also lands the
    /// book value exactly on the residual at the end of the life).
    DecliningBalance { factor: Factor },
}

impl Asset {
    pub fn method(&self) -> Method {
        match self.method {
            MethodKind::StraightLine => Method::StraightLine,
            MethodKind::DecliningBalance => Method::DecliningBalance {
                factor: self.declining_factor,
            },
        }
    }
}

/// A cost the box incurs every month whatever it does: hosting, support contract, staff time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedCost {
    pub name: String,
    pub monthly: Money,
}

/// What a kWh costs, and how much the room adds to what the machine measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnergyPricing {
    /// The price outside every tariff band.
    pub price_per_kwh: Money,
    /// Power usage effectiveness: facility energy ÷ IT energy.
    pub pue: Factor,
    /// Time-of-use bands; hours no band covers pay `price_per_kwh`.
    pub tariff_bands: Vec<TariffBand>,
}

impl Default for EnergyPricing {
    fn default() -> Self {
        Self {
            price_per_kwh: DEFAULT_ENERGY_PRICE_PER_KWH,
            pue: DEFAULT_PUE,
            tariff_bands: Vec::new(),
        }
    }
}

/// A time-of-use band: hours `from_hour..to_hour` of the local day (0–24; a band may wrap past
/// midnight, `22..6`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TariffBand {
    pub name: String,
    pub from_hour: u8,
    pub to_hour: u8,
    pub price_per_kwh: Money,
}

impl TariffBand {
    pub fn covers(&self, hour: u8) -> bool {
        if self.from_hour < self.to_hour {
            (self.from_hour..self.to_hour).contains(&hour)
        } else {
            hour >= self.from_hour || hour < self.to_hour
        }
    }
}

impl EnergyPricing {
    /// The price of a kWh used in `hour` (0–23) of the day.
    pub fn price_at(&self, hour: u8) -> Money {
        self.tariff_bands
            .iter()
            .find(|band| band.covers(hour))
            .map_or(self.price_per_kwh, |band| band.price_per_kwh)
    }
}

/// What the same work would cost elsewhere: per million input and output tokens, per hour, or
/// both (an API with a monthly seat fee is written as its hourly equivalent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alternative {
    pub name: String,
    #[serde(default)]
    pub input_per_million: Money,
    #[serde(default)]
    pub output_per_million: Money,
    #[serde(default)]
    pub per_hour: Money,
}

/// A mistake in the cost model, with the path of the field below `[tco]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ModelError {
    /// Relative to `[tco]`: `assets[0].amortisation_months`.
    pub path: String,
    pub message: String,
}

fn error(path: impl Into<String>, message: impl Into<String>) -> ModelError {
    ModelError {
        path: path.into(),
        message: message.into(),
    }
}

fn check_name(path: String, name: &str) -> Result<(), ModelError> {
    if name.trim().is_empty() {
        return Err(error(path, "must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(error(
            path,
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    Ok(())
}

fn check_not_negative(path: String, value: Money, currency: &Currency) -> Result<(), ModelError> {
    if value < Money::ZERO {
        return Err(error(
            path,
            format!(
                "must not be negative, got {}",
                value.display_price(currency)
            ),
        ));
    }
    Ok(())
}

impl CostModel {
    /// Checks every field once; the first mistake is returned with its path.
    pub fn validate(&self) -> Result<(), ModelError> {
        let currency = &self.currency;
        if self.assets.len() > MAX_ASSETS {
            return Err(error(
                "assets",
                format!("at most {MAX_ASSETS} assets, got {}", self.assets.len()),
            ));
        }
        for (index, asset) in self.assets.iter().enumerate() {
            let at = |field: &str| format!("assets[{index}].{field}");
            check_name(at("name"), &asset.name)?;
            if asset.purchase_price <= Money::ZERO {
                return Err(error(
                    at("purchase_price"),
                    format!(
                        "must be more than zero, got {}",
                        asset.purchase_price.display_price(currency)
                    ),
                ));
            }
            if !(1..=MAX_AMORTISATION_MONTHS).contains(&asset.amortisation_months) {
                return Err(error(
                    at("amortisation_months"),
                    format!(
                        "must be between 1 and {MAX_AMORTISATION_MONTHS}, got {}",
                        asset.amortisation_months
                    ),
                ));
            }
            check_not_negative(at("residual_value"), asset.residual_value, currency)?;
            if asset.residual_value >= asset.purchase_price {
                return Err(error(
                    at("residual_value"),
                    format!(
                        "must be less than purchase_price ({}), got {}",
                        asset.purchase_price.display_price(currency),
                        asset.residual_value.display_price(currency)
                    ),
                ));
            }
            if asset.declining_factor <= MIN_DECLINING_FACTOR
                || asset.declining_factor > MAX_DECLINING_FACTOR
            {
                return Err(error(
                    at("declining_factor"),
                    format!(
                        "must be more than {MIN_DECLINING_FACTOR} and at most \
                         {MAX_DECLINING_FACTOR}, got {}",
                        asset.declining_factor
                    ),
                ));
            }
            // The schedule's last month must still be a representable date.
            if asset
                .purchase_date
                .year_month()
                .add_months(asset.amortisation_months)
                .is_none()
            {
                return Err(error(
                    at("purchase_date"),
                    "the amortisation would end after the year 9999",
                ));
            }
        }
        if self.fixed_costs.len() > MAX_FIXED_COSTS {
            return Err(error(
                "fixed_costs",
                format!(
                    "at most {MAX_FIXED_COSTS} lines, got {}",
                    self.fixed_costs.len()
                ),
            ));
        }
        for (index, line) in self.fixed_costs.iter().enumerate() {
            check_name(format!("fixed_costs[{index}].name"), &line.name)?;
            check_not_negative(
                format!("fixed_costs[{index}].monthly"),
                line.monthly,
                currency,
            )?;
        }
        self.validate_energy()?;
        if self.alternatives.len() > MAX_ALTERNATIVES {
            return Err(error(
                "alternatives",
                format!(
                    "at most {MAX_ALTERNATIVES} alternatives, got {}",
                    self.alternatives.len()
                ),
            ));
        }
        for (index, alternative) in self.alternatives.iter().enumerate() {
            let at = |field: &str| format!("alternatives[{index}].{field}");
            check_name(at("name"), &alternative.name)?;
            if self.alternatives[..index]
                .iter()
                .any(|other| other.name == alternative.name)
            {
                return Err(error(
                    at("name"),
                    format!("{:?} is named twice", alternative.name),
                ));
            }
            for (field, value) in [
                ("input_per_million", alternative.input_per_million),
                ("output_per_million", alternative.output_per_million),
                ("per_hour", alternative.per_hour),
            ] {
                check_not_negative(at(field), value, currency)?;
            }
            if alternative.input_per_million.is_zero()
                && alternative.output_per_million.is_zero()
                && alternative.per_hour.is_zero()
            {
                return Err(error(
                    format!("alternatives[{index}]"),
                    "needs a price: input_per_million, output_per_million or per_hour",
                ));
            }
        }
        if !(1..=MAX_BREAK_EVEN_HORIZON_MONTHS).contains(&self.break_even_horizon_months) {
            return Err(error(
                "break_even_horizon_months",
                format!(
                    "must be between 1 and {MAX_BREAK_EVEN_HORIZON_MONTHS}, got {}",
                    self.break_even_horizon_months
                ),
            ));
        }
        Ok(())
    }

    fn validate_energy(&self) -> Result<(), ModelError> {
        let energy = &self.energy;
        check_not_negative(
            "energy.price_per_kwh".to_owned(),
            energy.price_per_kwh,
            &self.currency,
        )?;
        if energy.pue < Factor::ONE || energy.pue > MAX_PUE {
            return Err(error(
                "energy.pue",
                format!("must be between 1.0 and {MAX_PUE}, got {}", energy.pue),
            ));
        }
        let mut owner: [Option<usize>; 24] = [None; 24];
        for (index, band) in energy.tariff_bands.iter().enumerate() {
            let at = |field: &str| format!("energy.tariff_bands[{index}].{field}");
            check_name(at("name"), &band.name)?;
            if band.from_hour > 23 {
                return Err(error(
                    at("from_hour"),
                    format!("must be an hour 0..=23, got {}", band.from_hour),
                ));
            }
            if band.to_hour > 24 || band.to_hour == band.from_hour {
                return Err(error(
                    at("to_hour"),
                    format!(
                        "must be an hour 0..=24 other than from_hour ({}), got {}",
                        band.from_hour, band.to_hour
                    ),
                ));
            }
            check_not_negative(at("price_per_kwh"), band.price_per_kwh, &self.currency)?;
            for hour in 0..24u8 {
                if !band.covers(hour) {
                    continue;
                }
                if let Some(other) = owner[usize::from(hour)] {
                    return Err(error(
                        format!("energy.tariff_bands[{index}]"),
                        format!("overlaps energy.tariff_bands[{other}] at hour {hour}"),
                    ));
                }
                owner[usize::from(hour)] = Some(index);
            }
        }
        Ok(())
    }

    /// The day the books start: the earliest purchase, if any asset is registered.
    pub fn first_purchase(&self) -> Option<Date> {
        self.assets.iter().map(|asset| asset.purchase_date).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(text: &str) -> CostModel {
        toml::from_str(text).expect(text)
    }

    #[test]
    fn defaults_are_the_appliance_of_the_design_brief() {
        let model = CostModel::default();
        model.validate().expect("defaults are valid");
        assert_eq!(model.assets.len(), 1);
        assert_eq!(model.assets[0].purchase_price, Money::from_major(28_800));
        assert_eq!(model.assets[0].amortisation_months, 24);
        assert_eq!(model.assets[0].method(), Method::StraightLine);
        assert_eq!(
            model.alternatives[0].input_per_million,
            Money::from_major(3)
        );
        assert_eq!(
            model.alternatives[0].output_per_million,
            Money::from_major(15)
        );
        // The cloud pair costs about $4,800 in an average month of 730 hours.
        let month = DEFAULT_CLOUD_PER_HOUR.mul_div(730, 1);
        assert!(
            (month.micros() - 4_800 * MICROS).abs() < MICROS,
            "{month:?}"
        );
    }

    #[test]
    fn mistakes_name_the_field() {
        for (text, path) in [
            (
                "[[assets]]\nname = \"gpu\"\npurchase_price = 100\npurchase_date = \"2024-01-01\"\namortisation_months = 0\n",
                "assets[0].amortisation_months",
            ),
            (
                "[[assets]]\nname = \"gpu\"\npurchase_price = 100\npurchase_date = \"2024-01-01\"\nresidual_value = 100\n",
                "assets[0].residual_value",
            ),
            (
                "[[assets]]\nname = \"gpu\"\npurchase_price = 0\npurchase_date = \"2024-01-01\"\n",
                "assets[0].purchase_price",
            ),
            (
                "[[assets]]\nname = \"gpu\"\npurchase_price = 10\npurchase_date = \"2024-01-01\"\nmethod = \"declining_balance\"\ndeclining_factor = 1\n",
                "assets[0].declining_factor",
            ),
            (
                "[[fixed_costs]]\nname = \"\"\nmonthly = 5\n",
                "fixed_costs[0].name",
            ),
            (
                "[[fixed_costs]]\nname = \"support\"\nmonthly = -5\n",
                "fixed_costs[0].monthly",
            ),
            ("[energy]\npue = 0.9\n", "energy.pue"),
            (
                "[[energy.tariff_bands]]\nname = \"peak\"\nfrom_hour = 7\nto_hour = 7\nprice_per_kwh = 0.3\n",
                "energy.tariff_bands[0].to_hour",
            ),
            (
                "[[energy.tariff_bands]]\nname = \"night\"\nfrom_hour = 22\nto_hour = 6\nprice_per_kwh = 0.1\n\
                 [[energy.tariff_bands]]\nname = \"peak\"\nfrom_hour = 5\nto_hour = 9\nprice_per_kwh = 0.3\n",
                "energy.tariff_bands[1]",
            ),
            ("[[alternatives]]\nname = \"free\"\n", "alternatives[0]"),
            (
                "break_even_horizon_months = 0\n",
                "break_even_horizon_months",
            ),
        ] {
            let err = model(text).validate().expect_err(text);
            assert_eq!(err.path, path, "{text}: {err}");
        }
    }

    #[test]
    fn tariff_bands_wrap_past_midnight() {
        let model = model(
            "[energy]\nprice_per_kwh = 0.2\n[[energy.tariff_bands]]\nname = \"night\"\nfrom_hour = 22\nto_hour = 6\nprice_per_kwh = 0.1\n\
             [[energy.tariff_bands]]\nname = \"peak\"\nfrom_hour = 17\nto_hour = 20\nprice_per_kwh = 0.35\n",
        );
        model.validate().expect("valid");
        let price = |hour| model.energy.price_at(hour).micros();
        assert_eq!(price(23), 100_000);
        assert_eq!(price(0), 100_000);
        assert_eq!(price(5), 100_000);
        assert_eq!(price(6), 200_000);
        assert_eq!(price(17), 350_000);
        assert_eq!(price(19), 350_000);
        assert_eq!(price(20), 200_000);
    }
}

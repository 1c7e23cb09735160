//! Exact amounts: money, ratios and energy as integers, never floats.
//!
//! [`Money`] counts millionths of the currency's major unit (micro-dollars) in an `i64`: a price
//! per kWh or per hour keeps six decimals, and sums never drift. Amounts that appear in the
//! books — a month's depreciation, a line of the report, a team's charge — are *posted*: rounded
//! half away from zero to the currency's minor unit (cents) once, where they are made, and only
//! posted amounts are added into totals, so every table adds up to the cent as printed.
//! Products (kWh × price × PUE) are taken in `i128` and rounded once at the end.
//!
//! Amounts are bounded by [`MAX_MAJOR_UNITS`] so that they fit 15 significant digits: config
//! files write them as TOML numbers, and every such number then reads back to the same micros.

use std::fmt;

use serde::{Deserialize, Serialize, de};

/// Micro-units per major unit.
pub const MICROS: i64 = 1_000_000;
/// The largest amount, in major units, that a price or total may have (one billion).
pub const MAX_MAJOR_UNITS: i64 = 1_000_000_000;

/// An amount of the model's currency, in millionths of its major unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money {
    micros: i64,
}

/// A dimensionless ratio with six decimals (PUE, declining-balance factor).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Factor {
    micros: i64,
}

/// Energy in milliwatt-hours: one hour of a 400 W GPU is 400,000 mWh, and NVML's millijoule
/// counter converts without losing more than 3.6 J. Serialised as a number of kWh.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Energy {
    milliwatt_hours: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("{0:?} is not a decimal number")]
    Syntax(String),
    #[error("{0} has more than six decimals")]
    TooPrecise(String),
    #[error("{0} is beyond the bound of {MAX_MAJOR_UNITS}")]
    OutOfRange(String),
}

/// Parses a decimal `[-]digits[.digits]` into millionths, exactly.
fn parse_micros(text: &str) -> Result<i64, AmountError> {
    let trimmed = text.trim();
    let (negative, body) = match trimmed.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    let (whole, fraction) = body.split_once('.').unwrap_or((body, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) {
        return Err(AmountError::Syntax(text.to_owned()));
    }
    let fraction = fraction.trim_end_matches('0');
    if fraction.len() > 6 {
        return Err(AmountError::TooPrecise(text.to_owned()));
    }
    let whole = whole.trim_start_matches('0');
    if whole.len() > 10 {
        return Err(AmountError::OutOfRange(text.to_owned()));
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole
            .parse()
            .map_err(|_| AmountError::Syntax(text.to_owned()))?
    };
    let mut fraction_micros: i64 = 0;
    for (place, b) in fraction.bytes().enumerate() {
        fraction_micros += i64::from(b - b'0') * 10_i64.pow(5 - place as u32);
    }
    if whole > MAX_MAJOR_UNITS || (whole == MAX_MAJOR_UNITS && fraction_micros > 0) {
        return Err(AmountError::OutOfRange(text.to_owned()));
    }
    let micros = whole * MICROS + fraction_micros;
    Ok(if negative { -micros } else { micros })
}

/// Writes millionths as a decimal with at least `min_decimals` and no trailing zeros beyond.
fn write_micros(micros: i64, min_decimals: usize, grouping: bool) -> String {
    let negative = micros < 0;
    let abs = micros.unsigned_abs();
    let whole = abs / MICROS as u64;
    let mut fraction = format!("{:06}", abs % MICROS as u64);
    while fraction.len() > min_decimals && fraction.ends_with('0') {
        fraction.pop();
    }
    let whole = if grouping {
        group_thousands(whole)
    } else {
        whole.to_string()
    };
    let sign = if negative { "-" } else { "" };
    if fraction.is_empty() {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{fraction}")
    }
}

/// `1234567` → `1,234,567`.
pub fn group_thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `numerator / denominator`, rounded half away from zero; `denominator` must be positive.
pub(crate) fn div_round(numerator: i128, denominator: i128) -> i128 {
    debug_assert!(denominator > 0);
    let half = denominator / 2;
    if numerator >= 0 {
        (numerator + half) / denominator
    } else {
        -((-numerator + half) / denominator)
    }
}

/// Saturates an `i128` into micros; the bounds on every input make saturation unreachable in
/// practice, but a report must never panic on a hostile config.
fn saturate(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

impl Money {
    pub const ZERO: Self = Self { micros: 0 };

    pub const fn from_micros(micros: i64) -> Self {
        Self { micros }
    }

    /// Whole major units: `Money::from_major(1_200)` is $1,200.
    pub const fn from_major(units: i64) -> Self {
        Self {
            micros: units * MICROS,
        }
    }

    pub fn parse(text: &str) -> Result<Self, AmountError> {
        parse_micros(text).map(Self::from_micros)
    }

    pub const fn micros(self) -> i64 {
        self.micros
    }

    pub fn is_zero(self) -> bool {
        self.micros == 0
    }

    /// Rounded half away from zero to the currency's minor unit: the posted amount.
    pub fn posted(self, currency: &Currency) -> Self {
        let unit = currency.minor_unit_micros();
        Self::from_micros(saturate(
            div_round(i128::from(self.micros), i128::from(unit)) * i128::from(unit),
        ))
    }

    /// `self × numerator ÷ denominator`, rounded to the micro; `denominator` must be positive.
    pub fn mul_div(self, numerator: i128, denominator: i128) -> Self {
        Self::from_micros(saturate(div_round(
            i128::from(self.micros) * numerator,
            denominator,
        )))
    }

    /// `self × numerator ÷ denominator`, rounded to the currency's minor unit.
    pub fn mul_div_posted(self, numerator: i128, denominator: i128, currency: &Currency) -> Self {
        let unit = i128::from(currency.minor_unit_micros());
        Self::from_micros(saturate(
            div_round(i128::from(self.micros) * numerator, denominator * unit) * unit,
        ))
    }

    pub fn checked_add(self, other: Self) -> Option<Self> {
        self.micros.checked_add(other.micros).map(Self::from_micros)
    }

    /// Plain decimal with the currency's minor digits, no grouping (CSV, JSON): `1200.00`.
    pub fn plain(self, currency: &Currency) -> String {
        write_micros(self.micros, usize::from(currency.minor_digits()), false)
    }

    /// A price (per kWh, per hour, per million tokens): up to six decimals, at least the
    /// currency's minor digits, with the symbol: `$0.1234`, `$3.00`.
    pub fn display_price(self, currency: &Currency) -> String {
        currency.with_symbol(&write_micros(
            self.micros,
            usize::from(currency.minor_digits()),
            true,
        ))
    }

    /// A computed rate (cost per million tokens): to the minor unit from one major unit up,
    /// to four decimals below it, so `$6.59` and `$0.0123` both read well.
    pub fn display_rate(self, currency: &Currency) -> String {
        if self.micros.unsigned_abs() >= MICROS as u64 {
            self.display(currency)
        } else {
            let rounded = Self::from_micros(div_round(i128::from(self.micros), 100) as i64 * 100);
            rounded.display_price(currency)
        }
    }

    /// A posted amount with symbol and thousands separators: `$1,200.00`, `-$3.50`.
    pub fn display(self, currency: &Currency) -> String {
        let posted = self.posted(currency);
        currency.with_symbol(&write_micros(
            posted.micros,
            usize::from(currency.minor_digits()),
            true,
        ))
    }
}

impl std::ops::Add for Money {
    type Output = Self;
    fn add(self, rhs: Self) -> Self {
        Self::from_micros(self.micros.saturating_add(rhs.micros))
    }
}

impl std::ops::Sub for Money {
    type Output = Self;
    fn sub(self, rhs: Self) -> Self {
        Self::from_micros(self.micros.saturating_sub(rhs.micros))
    }
}

impl std::ops::AddAssign for Money {
    fn add_assign(&mut self, rhs: Self) {
        *self = *self + rhs;
    }
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::ZERO, |a, b| a + b)
    }
}

impl Factor {
    pub const ONE: Self = Self { micros: MICROS };

    pub const fn from_micros(micros: i64) -> Self {
        Self { micros }
    }

    pub fn parse(text: &str) -> Result<Self, AmountError> {
        parse_micros(text).map(Self::from_micros)
    }

    pub const fn micros(self) -> i64 {
        self.micros
    }
}

impl fmt::Display for Factor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&write_micros(self.micros, 1, false))
    }
}

impl Energy {
    pub const ZERO: Self = Self { milliwatt_hours: 0 };

    pub const fn from_milliwatt_hours(milliwatt_hours: u64) -> Self {
        Self { milliwatt_hours }
    }

    pub const fn from_watt_hours(watt_hours: u64) -> Self {
        Self {
            milliwatt_hours: watt_hours.saturating_mul(1_000),
        }
    }

    /// From NVML's total-energy counter unit; rounded to the nearest milliwatt-hour.
    pub const fn from_millijoules(millijoules: u64) -> Self {
        Self {
            milliwatt_hours: millijoules.saturating_add(1_800) / 3_600,
        }
    }

    /// From kilowatt-hours held as a float (the ledger sums joules as SQLite REALs): rounded
    /// once to the milliwatt-hour at this boundary; negative or non-finite values are zero.
    pub fn from_kwh_rounded(kwh: f64) -> Self {
        let milliwatt_hours = (kwh * 1_000_000.0).round();
        Self {
            milliwatt_hours: if milliwatt_hours.is_finite() && milliwatt_hours > 0.0 {
                milliwatt_hours as u64
            } else {
                0
            },
        }
    }

    pub const fn milliwatt_hours(self) -> u64 {
        self.milliwatt_hours
    }

    /// `self × factor` (PUE), rounded to the milliwatt-hour.
    pub fn scaled(self, factor: Factor) -> Self {
        let value = div_round(
            i128::from(self.milliwatt_hours) * i128::from(factor.micros),
            i128::from(MICROS),
        );
        Self {
            milliwatt_hours: u64::try_from(value.max(0)).unwrap_or(u64::MAX),
        }
    }

    /// Kilowatt-hours with three decimals, for display: `1,234.567 kWh` without the unit.
    pub fn kwh_display(self) -> String {
        let watt_hours = (self.milliwatt_hours + 500) / 1_000;
        format!(
            "{}.{:03}",
            group_thousands(watt_hours / 1_000),
            watt_hours % 1_000
        )
    }

    /// Kilowatt-hours as a plain decimal (CSV, JSON).
    pub fn kwh_plain(self) -> String {
        let watt_hours = (self.milliwatt_hours + 500) / 1_000;
        format!("{}.{:03}", watt_hours / 1_000, watt_hours % 1_000)
    }

    /// The cost of this energy at `price_per_kwh`, in micros (not yet posted).
    pub fn cost(self, price_per_kwh: Money) -> Money {
        // mWh × micros-per-kWh ÷ 1,000,000 mWh-per-kWh.
        Money::from_micros(saturate(div_round(
            i128::from(self.milliwatt_hours) * i128::from(price_per_kwh.micros()),
            1_000_000,
        )))
    }
}

impl Serialize for Energy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.milliwatt_hours as f64 / 1_000_000.0)
    }
}

impl std::ops::Add for Energy {
    type Output = Self;
    fn add(self, rhs: Self) -> Self {
        Self {
            milliwatt_hours: self.milliwatt_hours.saturating_add(rhs.milliwatt_hours),
        }
    }
}

impl std::ops::AddAssign for Energy {
    fn add_assign(&mut self, rhs: Self) {
        *self = *self + rhs;
    }
}

impl std::iter::Sum for Energy {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::ZERO, |a, b| a + b)
    }
}

/// An ISO 4217 code; it decides the symbol and how many decimals a posted amount has.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency {
    code: String,
}

/// `tco.currency` when the config names none.
pub const DEFAULT_CURRENCY: &str = "USD";

impl Default for Currency {
    fn default() -> Self {
        Self {
            code: DEFAULT_CURRENCY.to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an ISO 4217 currency code (three capital letters, such as USD or EUR)")]
pub struct CurrencyError(String);

impl TryFrom<String> for Currency {
    type Error = CurrencyError;
    fn try_from(code: String) -> Result<Self, Self::Error> {
        if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Self { code })
        } else {
            Err(CurrencyError(code))
        }
    }
}

impl From<Currency> for String {
    fn from(currency: Currency) -> Self {
        currency.code
    }
}

impl Currency {
    pub fn code(&self) -> &str {
        &self.code
    }

    /// Decimals of the minor unit (ISO 4217's exponent): 0 for yen, 3 for dinars, else 2.
    pub fn minor_digits(&self) -> u8 {
        match self.code.as_str() {
            "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF"
            | "UGX" | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
            "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
            _ => 2,
        }
    }

    /// Micros per minor unit: 10,000 for cents.
    pub fn minor_unit_micros(&self) -> i64 {
        10_i64.pow(6 - u32::from(self.minor_digits()))
    }

    fn with_symbol(&self, number: &str) -> String {
        let (sign, number) = match number.strip_prefix('-') {
            Some(rest) => ("-", rest),
            None => ("", number),
        };
        let symbol = match self.code.as_str() {
            "USD" => "$",
            "EUR" => "€",
            "GBP" => "£",
            "JPY" => "¥",
            _ => return format!("{sign}{number} {}", self.code),
        };
        format!("{sign}{symbol}{number}")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.code)
    }
}

/// Amounts and factors are written in TOML as numbers (`0.15`) or strings (`"0.15"`). A TOML
/// float is turned back into its shortest decimal text (which is what the admin typed, for any
/// number of at most 15 significant digits) and parsed exactly, so `0.1` is 100,000 micros.
struct DecimalVisitor;

impl de::Visitor<'_> for DecimalVisitor {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a decimal number with at most six decimals")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        if v.unsigned_abs() > MAX_MAJOR_UNITS as u64 {
            return Err(E::custom(AmountError::OutOfRange(v.to_string())));
        }
        Ok(v * MICROS)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        if v > MAX_MAJOR_UNITS as u64 {
            return Err(E::custom(AmountError::OutOfRange(v.to_string())));
        }
        Ok(v as i64 * MICROS)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        if !v.is_finite() {
            return Err(E::custom(AmountError::Syntax(v.to_string())));
        }
        // `{}` on f64 is the shortest text that reads back to the same float, never exponent
        // notation.
        parse_micros(&format!("{v}")).map_err(E::custom)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        parse_micros(v).map_err(E::custom)
    }
}

fn serialize_micros<S: serde::Serializer>(micros: i64, serializer: S) -> Result<S::Ok, S::Error> {
    // Within MAX_MAJOR_UNITS the f64 holds the decimal exactly enough to print it back.
    if micros % MICROS == 0 {
        serializer.serialize_i64(micros / MICROS)
    } else {
        serializer.serialize_f64(micros as f64 / MICROS as f64)
    }
}

impl Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_micros(self.micros, serializer)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(DecimalVisitor)
            .map(Self::from_micros)
    }
}

impl Serialize for Factor {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_micros(self.micros, serializer)
    }
}

impl<'de> Deserialize<'de> for Factor {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(DecimalVisitor)
            .map(Self::from_micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::default()
    }

    #[test]
    fn parses_decimals_exactly() {
        assert_eq!(Money::parse("0.1").expect("ok").micros(), 100_000);
        assert_eq!(
            Money::parse("28800").expect("ok"),
            Money::from_major(28_800)
        );
        assert_eq!(Money::parse("-3.50").expect("ok").micros(), -3_500_000);
        assert_eq!(Money::parse("0.123456").expect("ok").micros(), 123_456);
        assert!(matches!(
            Money::parse("0.1234567"),
            Err(AmountError::TooPrecise(_))
        ));
        assert!(matches!(Money::parse("1e3"), Err(AmountError::Syntax(_))));
        assert!(matches!(
            Money::parse("1000000001"),
            Err(AmountError::OutOfRange(_))
        ));
    }

    #[test]
    fn toml_floats_read_as_the_decimal_written() {
        #[derive(Deserialize, Serialize)]
        struct Holder {
            a: Money,
            b: Money,
            c: Money,
            pue: Factor,
        }
        let holder: Holder =
            toml::from_str("a = 0.1\nb = 28800\nc = \"6.575\"\npue = 1.4\n").expect("parses");
        assert_eq!(holder.a.micros(), 100_000);
        assert_eq!(holder.b, Money::from_major(28_800));
        assert_eq!(holder.c.micros(), 6_575_000);
        assert_eq!(holder.pue.micros(), 1_400_000);
        // Ten sums of 0.1 are exactly 1: the float drift `0.1 + 0.2 != 0.3` cannot happen.
        let sum: Money = std::iter::repeat_n(holder.a, 10).sum();
        assert_eq!(sum, Money::from_major(1));
        let text = toml::to_string(&holder).expect("serialises");
        let back: Holder = toml::from_str(&text).expect("reads back");
        assert_eq!(back.c, holder.c);
        assert_eq!(back.a, holder.a);
    }

    #[test]
    fn posting_rounds_half_away_from_zero_to_the_minor_unit() {
        let usd = usd();
        assert_eq!(
            Money::from_micros(1_005_000).posted(&usd).micros(),
            1_010_000
        );
        assert_eq!(
            Money::from_micros(1_004_999).posted(&usd).micros(),
            1_000_000
        );
        assert_eq!(
            Money::from_micros(-1_005_000).posted(&usd).micros(),
            -1_010_000
        );
        let yen = Currency::try_from("JPY".to_owned()).expect("valid");
        assert_eq!(
            Money::from_micros(1_500_000).posted(&yen),
            Money::from_major(2)
        );
    }

    #[test]
    fn display_groups_thousands_with_the_symbol() {
        let usd = usd();
        assert_eq!(Money::from_major(1_200).display(&usd), "$1,200.00");
        assert_eq!(Money::from_major(-28_800).display(&usd), "-$28,800.00");
        assert_eq!(Money::from_micros(123_400).display_price(&usd), "$0.1234");
        assert_eq!(Money::from_major(3).display_price(&usd), "$3.00");
        assert_eq!(Money::from_micros(6_587_893).display_rate(&usd), "$6.59");
        assert_eq!(Money::from_micros(12_345).display_rate(&usd), "$0.0123");
        assert_eq!(Money::from_micros(500_000).display_rate(&usd), "$0.50");
        let chf = Currency::try_from("CHF".to_owned()).expect("valid");
        assert_eq!(
            Money::from_major(1_234_567).display(&chf),
            "1,234,567.00 CHF"
        );
        assert!(Currency::try_from("usd".to_owned()).is_err());
    }

    #[test]
    fn energy_cost_is_exact() {
        // 1,000 kWh at $0.15 is $150 exactly.
        let energy = Energy::from_watt_hours(1_000_000);
        assert_eq!(
            energy.cost(Money::parse("0.15").expect("ok")),
            Money::from_major(150)
        );
        assert_eq!(
            energy.scaled(Factor::parse("1.4").expect("ok")),
            Energy::from_watt_hours(1_400_000)
        );
        assert_eq!(
            Energy::from_millijoules(3_600_000),
            Energy::from_watt_hours(1)
        );
        assert_eq!(
            Energy::from_watt_hours(1_234_567).kwh_display(),
            "1,234.567"
        );
    }
}

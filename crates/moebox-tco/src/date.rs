//! Civil dates without a clock or a time zone: the model is told what day it is.
//!
//! A small type of our own rather than a date crate: the model needs only days, months, leap
//! years and `YYYY-MM-DD`, and this keeps the crate free of dependencies beyond serde.

use std::fmt;

use serde::{Deserialize, Serialize, de};

/// The earliest year a date may name; nothing in the appliance's books predates it.
pub const MIN_YEAR: i32 = 1970;
/// The latest year a date may name: a bound so month arithmetic can never overflow.
pub const MAX_YEAR: i32 = 9999;

/// A day in the proleptic Gregorian calendar, `MIN_YEAR-01-01 ..= MAX_YEAR-12-31`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    year: i32,
    month: u8,
    day: u8,
}

/// A calendar month, the unit of the amortisation schedule and the monthly report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct YearMonth {
    year: i32,
    month: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    #[error("{0:?} is not a date written YYYY-MM-DD")]
    Syntax(String),
    #[error("{year:04}-{month:02}-{day:02} is not a day of the calendar")]
    NoSuchDay { year: i32, month: u32, day: u32 },
    #[error("year {0} is outside {MIN_YEAR}..={MAX_YEAR}")]
    YearOutOfRange(i32),
}

pub fn is_leap_year(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// Days in `month` (1..=12) of `year`; February has 29 in leap years.
pub fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap_year(year) => 29,
        _ => 28,
    }
}

impl Date {
    pub fn new(year: i32, month: u32, day: u32) -> Result<Self, DateError> {
        if !(MIN_YEAR..=MAX_YEAR).contains(&year) {
            return Err(DateError::YearOutOfRange(year));
        }
        let no_such_day = DateError::NoSuchDay { year, month, day };
        let month = u8::try_from(month)
            .ok()
            .filter(|m| (1..=12).contains(m))
            .ok_or(no_such_day.clone())?;
        let day = u8::try_from(day)
            .ok()
            .filter(|d| *d >= 1 && *d <= days_in_month(year, month))
            .ok_or(no_such_day)?;
        Ok(Self { year, month, day })
    }

    /// Parses `YYYY-MM-DD` (exactly that shape: four, two and two digits).
    pub fn parse(text: &str) -> Result<Self, DateError> {
        let syntax = || DateError::Syntax(text.to_owned());
        let bytes = text.as_bytes();
        if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
            return Err(syntax());
        }
        let number = |range: std::ops::Range<usize>| -> Result<u32, DateError> {
            let part = &text[range];
            if !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            part.parse().map_err(|_| syntax())
        };
        let year = i32::try_from(number(0..4)?).map_err(|_| syntax())?;
        Self::new(year, number(5..7)?, number(8..10)?)
    }

    pub fn year(self) -> i32 {
        self.year
    }

    pub fn month(self) -> u8 {
        self.month
    }

    pub fn day(self) -> u8 {
        self.day
    }

    pub fn year_month(self) -> YearMonth {
        YearMonth {
            year: self.year,
            month: self.month,
        }
    }

    /// Days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
    pub fn days_since_epoch(self) -> i64 {
        let year = i64::from(self.year) - i64::from(self.month <= 2);
        let era = year.div_euclid(400);
        let year_of_era = year - era * 400;
        let month = i64::from(self.month);
        let day_of_year =
            (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
        era * 146_097 + day_of_era - 719_468
    }

    /// The date `days` after 1970-01-01, or `None` outside the supported years.
    pub fn from_days_since_epoch(days: i64) -> Option<Self> {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z - era * 146_097;
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let mp = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        Self::new(
            i32::try_from(year).ok()?,
            u32::try_from(month).ok()?,
            u32::try_from(day).ok()?,
        )
        .ok()
    }

    /// The date `days` later (or earlier), or `None` outside the supported years.
    pub fn add_days(self, days: i64) -> Option<Self> {
        Self::from_days_since_epoch(self.days_since_epoch().checked_add(days)?)
    }

    /// The UTC day and hour (0–23) holding `seconds` since the Unix epoch: how the ledger's
    /// hourly buckets (`UnixSeconds`) become [`crate::HourUsage`] keys. `None` before
    /// [`MIN_YEAR`] or after [`MAX_YEAR`].
    pub fn from_unix_seconds(seconds: i64) -> Option<(Self, u8)> {
        let date = Self::from_days_since_epoch(seconds.div_euclid(86_400))?;
        let hour = u8::try_from(seconds.rem_euclid(86_400) / 3_600).ok()?;
        Some((date, hour))
    }

    /// Seconds since the Unix epoch at the start of this day, UTC.
    pub fn unix_seconds(self) -> i64 {
        self.days_since_epoch() * 86_400
    }

    /// Days from `self` to `later` (negative when `later` is earlier).
    pub fn days_until(self, later: Self) -> i64 {
        later.days_since_epoch() - self.days_since_epoch()
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl std::str::FromStr for Date {
    type Err = DateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Date {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Date {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DateVisitor)
    }
}

struct DateVisitor;

impl<'de> de::Visitor<'de> for DateVisitor {
    type Value = Date;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a date YYYY-MM-DD")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Date, E> {
        Date::parse(v).map_err(E::custom)
    }

    /// TOML's native dates (`purchase_date = 2026-01-15`, unquoted) reach serde as a one-entry
    /// map holding the date's text; accepting it lets admins write either form.
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Date, A::Error> {
        let Some((_, text)) = map.next_entry::<de::IgnoredAny, String>()? else {
            return Err(de::Error::custom("expected a date YYYY-MM-DD"));
        };
        if map.next_key::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::custom("expected a date YYYY-MM-DD"));
        }
        Date::parse(&text).map_err(de::Error::custom)
    }
}

impl YearMonth {
    pub fn new(year: i32, month: u32) -> Result<Self, DateError> {
        Date::new(year, month, 1).map(Date::year_month)
    }

    pub fn year(self) -> i32 {
        self.year
    }

    pub fn month(self) -> u8 {
        self.month
    }

    pub fn days(self) -> u8 {
        days_in_month(self.year, self.month)
    }

    pub fn first_day(self) -> Date {
        Date {
            year: self.year,
            month: self.month,
            day: 1,
        }
    }

    pub fn last_day(self) -> Date {
        Date {
            year: self.year,
            month: self.month,
            day: self.days(),
        }
    }

    /// The month `n` later, or `None` past [`MAX_YEAR`].
    pub fn add_months(self, n: u32) -> Option<Self> {
        let index = i64::from(self.year) * 12 + i64::from(self.month - 1) + i64::from(n);
        let year = i32::try_from(index.div_euclid(12)).ok()?;
        let month = u32::try_from(index.rem_euclid(12) + 1).ok()?;
        Self::new(year, month).ok()
    }

    pub fn next(self) -> Option<Self> {
        self.add_months(1)
    }

    /// Whole months from `self` to `later` (negative when `later` is earlier).
    pub fn months_until(self, later: Self) -> i64 {
        (i64::from(later.year) - i64::from(self.year)) * 12 + i64::from(later.month)
            - i64::from(self.month)
    }

    /// Short English name and year, as a table or chart label: `Feb 2024`.
    pub fn label(self) -> String {
        const NAMES: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        format!("{} {}", NAMES[usize::from(self.month - 1)], self.year)
    }
}

impl fmt::Display for YearMonth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl Serialize for YearMonth {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> Date {
        Date::parse(text).expect(text)
    }

    #[test]
    fn leap_years_follow_the_gregorian_rule() {
        assert!(is_leap_year(2024));
        assert!(is_leap_year(2000));
        assert!(!is_leap_year(2100));
        assert!(!is_leap_year(2025));
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2025, 2), 28);
        assert!(Date::parse("2024-02-29").is_ok());
        assert!(matches!(
            Date::parse("2025-02-29"),
            Err(DateError::NoSuchDay { .. })
        ));
    }

    #[test]
    fn parse_refuses_other_shapes() {
        for text in [
            "2024-2-01",
            "2024/02/01",
            "24-02-01",
            "2024-02-01T00",
            "+202-02-01",
            "",
        ] {
            assert!(Date::parse(text).is_err(), "{text}");
        }
        assert!(matches!(
            Date::parse("1969-12-31"),
            Err(DateError::YearOutOfRange(1969))
        ));
    }

    #[test]
    fn epoch_days_round_trip_across_leap_days() {
        assert_eq!(date("1970-01-01").days_since_epoch(), 0);
        assert_eq!(date("2000-03-01").days_since_epoch(), 11_017);
        let mut day = date("2023-12-25");
        for _ in 0..800 {
            let next = day.add_days(1).expect("in range");
            assert_eq!(day.days_until(next), 1);
            assert_eq!(
                Date::from_days_since_epoch(next.days_since_epoch()),
                Some(next)
            );
            day = next;
        }
        assert_eq!(date("2024-02-28").add_days(1), Some(date("2024-02-29")));
        assert_eq!(date("2024-02-29").add_days(1), Some(date("2024-03-01")));
        assert_eq!(date("2023-02-28").add_days(1), Some(date("2023-03-01")));
        assert_eq!(date("2024-01-01").days_until(date("2025-01-01")), 366);
    }

    #[test]
    fn unix_seconds_map_to_utc_day_and_hour() {
        assert_eq!(Date::from_unix_seconds(0), Some((date("1970-01-01"), 0)));
        // 2024-02-29T23:59:59Z.
        let leap_evening = date("2024-02-29").unix_seconds() + 23 * 3_600 + 3_599;
        assert_eq!(
            Date::from_unix_seconds(leap_evening),
            Some((date("2024-02-29"), 23))
        );
        assert_eq!(
            Date::from_unix_seconds(leap_evening + 1),
            Some((date("2024-03-01"), 0))
        );
        assert_eq!(Date::from_unix_seconds(-1), None);
    }

    #[test]
    fn month_arithmetic() {
        let jan = YearMonth::new(2024, 1).expect("valid");
        assert_eq!(jan.add_months(13), YearMonth::new(2025, 2).ok());
        assert_eq!(
            jan.months_until(YearMonth::new(2026, 1).expect("valid")),
            24
        );
        assert_eq!(
            YearMonth::new(2024, 2).expect("valid").last_day(),
            date("2024-02-29")
        );
        assert_eq!(YearMonth::new(9999, 12).expect("valid").next(), None);
        assert_eq!(jan.label(), "Jan 2024");
    }

    #[test]
    fn deserialises_quoted_and_native_toml_dates() {
        #[derive(Deserialize)]
        struct Holder {
            quoted: Date,
            native: Date,
        }
        let holder: Holder =
            toml::from_str("quoted = \"2024-02-29\"\nnative = 2024-02-29\n").expect("parses");
        assert_eq!(holder.quoted, date("2024-02-29"));
        assert_eq!(holder.native, date("2024-02-29"));
        let err = toml::from_str::<Holder>("quoted = \"2024-02-30\"\nnative = 2024-01-01\n")
            .err()
            .expect("no such day");
        assert!(err.to_string().contains("2024-02-30"), "{err}");
    }
}

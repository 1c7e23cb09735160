//! The asset register: a mirror of the TCO assets in the config, with history.
//!
//! [`Ledger::sync_assets`] runs at start with the configured assets. An asset whose figures
//! changed gets a new version (the old one is retired at that moment), an asset no longer in
//! the config is retired, and nothing is ever deleted, so a report over a past month
//! ([`Ledger::assets_at`]) uses the assets as they were then. The first version of a name
//! applies as far back as reports go: the config names the purchase date, the register only
//! records when moebox learnt of a change.

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use crate::{Ledger, LedgerError, UnixSeconds, check_label, sqlite};

/// The most assets one sync accepts.
pub const MAX_ASSETS: usize = 1_000;
/// Longest amortisation period accepted (50 years).
pub const MAX_AMORTISATION_MONTHS: u32 = 600;

/// How an asset loses value, as `tco.assets[].method` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "method")]
pub enum AmortisationMethod {
    StraightLine,
    /// With the multiple of the straight-line rate, in millionths (2.0 = 2,000,000).
    DecliningBalance {
        factor_micros: i64,
    },
}

impl AmortisationMethod {
    fn label(self) -> &'static str {
        match self {
            Self::StraightLine => "straight_line",
            Self::DecliningBalance { .. } => "declining_balance",
        }
    }

    fn factor(self) -> Option<i64> {
        match self {
            Self::StraightLine => None,
            Self::DecliningBalance { factor_micros } => Some(factor_micros),
        }
    }
}

/// One configured asset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AssetRow {
    pub name: String,
    /// In the currency's minor unit (cents).
    pub purchase_price_minor: i64,
    /// ISO 4217 code, e.g. `USD`.
    pub currency: String,
    /// `YYYY-MM-DD`.
    pub purchase_date: String,
    pub amortisation_months: u32,
    /// In the currency's minor unit; at most the purchase price.
    pub residual_value_minor: i64,
    pub method: AmortisationMethod,
}

impl AssetRow {
    pub fn validate(&self) -> Result<(), LedgerError> {
        let invalid =
            |field: &'static str, message: String| LedgerError::InvalidField { field, message };
        check_label("name", &self.name)?;
        if self.name.trim() != self.name {
            return Err(invalid(
                "name",
                "must not start or end with spaces".to_owned(),
            ));
        }
        if self.purchase_price_minor < 0 {
            return Err(invalid(
                "purchase_price",
                format!("must not be negative, got {}", self.purchase_price_minor),
            ));
        }
        if !(0..=self.purchase_price_minor).contains(&self.residual_value_minor) {
            return Err(invalid(
                "residual_value",
                format!(
                    "must be between 0 and the purchase price ({}), got {}",
                    self.purchase_price_minor, self.residual_value_minor
                ),
            ));
        }
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(invalid(
                "currency",
                format!(
                    "must be an ISO 4217 code of three capital letters, got {:?}",
                    self.currency
                ),
            ));
        }
        if !is_calendar_date(&self.purchase_date) {
            return Err(invalid(
                "purchase_date",
                format!("must be a date YYYY-MM-DD, got {:?}", self.purchase_date),
            ));
        }
        if !(1..=MAX_AMORTISATION_MONTHS).contains(&self.amortisation_months) {
            return Err(invalid(
                "amortisation_months",
                format!(
                    "must be 1..={MAX_AMORTISATION_MONTHS}, got {}",
                    self.amortisation_months
                ),
            ));
        }
        if let AmortisationMethod::DecliningBalance { factor_micros } = self.method
            && factor_micros <= 0
        {
            return Err(invalid(
                "declining_factor",
                format!("must be above 0, got {factor_micros} millionths"),
            ));
        }
        Ok(())
    }
}

/// A version of an asset in the register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AssetVersion {
    pub id: i64,
    #[serde(flatten)]
    pub asset: AssetRow,
    /// When this version replaced an earlier one; `None` for a name's first version.
    pub valid_from: Option<UnixSeconds>,
    /// When it was changed or removed from the config; `None` while in force.
    pub retired_at: Option<UnixSeconds>,
}

/// What [`Ledger::sync_assets`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AssetSync {
    pub added: usize,
    pub changed: usize,
    pub retired: usize,
    pub unchanged: usize,
}

fn is_calendar_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return false;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = text.get(range)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let (Some(year), Some(month), Some(day)) = (number(0..4), number(5..7), number(8..10)) else {
        return false;
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    year >= 1970 && (1..=days).contains(&day)
}

const ASSET_COLUMNS: &str = "id, name, purchase_price_minor, currency, purchase_date, \
     amortisation_months, residual_value_minor, method, declining_factor_micros, valid_from, \
     retired_at";

fn asset_version(row: &rusqlite::Row<'_>) -> rusqlite::Result<AssetVersion> {
    let method: String = row.get(7)?;
    let factor: Option<i64> = row.get(8)?;
    let method = match (method.as_str(), factor) {
        ("straight_line", _) => AmortisationMethod::StraightLine,
        ("declining_balance", Some(factor_micros)) => {
            AmortisationMethod::DecliningBalance { factor_micros }
        }
        _ => {
            return Err(rusqlite::Error::FromSqlConversionFailure(
                7,
                rusqlite::types::Type::Text,
                format!("unknown amortisation method {method:?}").into(),
            ));
        }
    };
    Ok(AssetVersion {
        id: row.get(0)?,
        asset: AssetRow {
            name: row.get(1)?,
            purchase_price_minor: row.get(2)?,
            currency: row.get(3)?,
            purchase_date: row.get(4)?,
            amortisation_months: row.get(5)?,
            residual_value_minor: row.get(6)?,
            method,
        },
        valid_from: row.get::<_, Option<i64>>(9)?.map(UnixSeconds),
        retired_at: row.get::<_, Option<i64>>(10)?.map(UnixSeconds),
    })
}

impl Ledger {
    /// Makes the register's assets in force equal `assets` as of `now` (see the module
    /// docs). Names must be unique; all or nothing.
    pub fn sync_assets(
        &self,
        assets: &[AssetRow],
        now: UnixSeconds,
    ) -> Result<AssetSync, LedgerError> {
        if assets.len() > MAX_ASSETS {
            return Err(LedgerError::InvalidField {
                field: "assets",
                message: format!("at most {MAX_ASSETS} assets, got {}", assets.len()),
            });
        }
        for (index, asset) in assets.iter().enumerate() {
            asset.validate()?;
            if assets[..index].iter().any(|a| a.name == asset.name) {
                return Err(LedgerError::InvalidField {
                    field: "name",
                    message: format!("asset {:?} is named twice", asset.name),
                });
            }
        }
        let mut connection = self.connection()?;
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite("begin asset sync"))?;
        let in_force = {
            let mut statement = transaction
                .prepare(&format!(
                    "SELECT {ASSET_COLUMNS} FROM assets WHERE retired_at IS NULL"
                ))
                .map_err(sqlite("read assets"))?;
            statement
                .query_map([], asset_version)
                .map_err(sqlite("read assets"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sqlite("read assets"))?
        };
        let mut sync = AssetSync::default();
        let retire = |id: i64| {
            transaction
                .execute(
                    "UPDATE assets SET retired_at = ?2 WHERE id = ?1",
                    params![id, now.0],
                )
                .map_err(sqlite("retire asset"))
        };
        for old in &in_force {
            match assets.iter().find(|a| a.name == old.asset.name) {
                None => {
                    retire(old.id)?;
                    sync.retired += 1;
                }
                Some(new) if *new == old.asset => sync.unchanged += 1,
                Some(_) => {
                    retire(old.id)?;
                    sync.changed += 1;
                }
            }
        }
        for asset in assets {
            if in_force.iter().any(|old| old.asset == *asset) {
                continue;
            }
            let known: Option<i64> = transaction
                .query_row(
                    "SELECT id FROM assets WHERE name = ?1 LIMIT 1",
                    params![asset.name],
                    |row| row.get(0),
                )
                .optional()
                .map_err(sqlite("find asset"))?;
            // New, or back in the config after a retirement (a change was counted above).
            if !in_force.iter().any(|old| old.asset.name == asset.name) {
                sync.added += 1;
            }
            transaction
                .execute(
                    "INSERT INTO assets (name, purchase_price_minor, currency, purchase_date, \
                     amortisation_months, residual_value_minor, method, \
                     declining_factor_micros, valid_from) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        asset.name,
                        asset.purchase_price_minor,
                        asset.currency,
                        asset.purchase_date,
                        asset.amortisation_months,
                        asset.residual_value_minor,
                        asset.method.label(),
                        asset.method.factor(),
                        known.map(|_| now.0),
                    ],
                )
                .map_err(sqlite("insert asset"))?;
        }
        transaction.commit().map_err(sqlite("commit asset sync"))?;
        if sync.added + sync.changed + sync.retired > 0 {
            tracing::info!(?sync, "asset register updated from the config");
        }
        Ok(sync)
    }

    /// The asset versions in force at `at`, by name.
    pub fn assets_at(&self, at: UnixSeconds) -> Result<Vec<AssetVersion>, LedgerError> {
        let connection = self.connection()?;
        let mut statement = connection
            .prepare(&format!(
                "SELECT {ASSET_COLUMNS} FROM assets \
                 WHERE (valid_from IS NULL OR valid_from <= ?1) \
                 AND (retired_at IS NULL OR ?1 < retired_at) ORDER BY name, id"
            ))
            .map_err(sqlite("read assets"))?;
        statement
            .query_map(params![at.0], asset_version)
            .map_err(sqlite("read assets"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sqlite("read assets"))
    }

    /// Every version of every asset, oldest first.
    pub fn asset_history(&self) -> Result<Vec<AssetVersion>, LedgerError> {
        let connection = self.connection()?;
        let mut statement = connection
            .prepare(&format!("SELECT {ASSET_COLUMNS} FROM assets ORDER BY id"))
            .map_err(sqlite("read assets"))?;
        statement
            .query_map([], asset_version)
            .map_err(sqlite("read assets"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sqlite("read assets"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers() -> AssetRow {
        AssetRow {
            name: "A100 servers".to_owned(),
            purchase_price_minor: 2_880_000,
            currency: "USD".to_owned(),
            purchase_date: "2026-01-15".to_owned(),
            amortisation_months: 24,
            residual_value_minor: 0,
            method: AmortisationMethod::StraightLine,
        }
    }

    fn switch() -> AssetRow {
        AssetRow {
            name: "switch".to_owned(),
            purchase_price_minor: 150_000,
            method: AmortisationMethod::DecliningBalance {
                factor_micros: 2_000_000,
            },
            ..servers()
        }
    }

    fn names(versions: &[AssetVersion]) -> Vec<(&str, i64)> {
        versions
            .iter()
            .map(|v| (v.asset.name.as_str(), v.asset.purchase_price_minor))
            .collect()
    }

    #[test]
    fn sync_keeps_history_so_past_months_see_the_assets_as_they_were() {
        let ledger = Ledger::open_in_memory().expect("ledger");
        let first = ledger
            .sync_assets(&[servers(), switch()], UnixSeconds(1_000))
            .expect("sync");
        assert_eq!(first.added, 2);
        // A restart with the same config changes nothing.
        let same = ledger
            .sync_assets(&[servers(), switch()], UnixSeconds(1_500))
            .expect("sync");
        assert_eq!((same.unchanged, same.added), (2, 0));
        // The switch leaves the config; the servers' price is corrected.
        let corrected = AssetRow {
            purchase_price_minor: 2_900_000,
            ..servers()
        };
        let second = ledger
            .sync_assets(std::slice::from_ref(&corrected), UnixSeconds(2_000))
            .expect("sync");
        assert_eq!((second.changed, second.retired), (1, 1));
        // Before the first sync (the purchase predates moebox): the first versions.
        assert_eq!(
            names(&ledger.assets_at(UnixSeconds(10)).expect("at")),
            [("A100 servers", 2_880_000), ("switch", 150_000)]
        );
        assert_eq!(
            names(&ledger.assets_at(UnixSeconds(1_999)).expect("at")),
            [("A100 servers", 2_880_000), ("switch", 150_000)]
        );
        assert_eq!(
            names(&ledger.assets_at(UnixSeconds(2_000)).expect("at")),
            [("A100 servers", 2_900_000)]
        );
        let history = ledger.asset_history().expect("history");
        assert_eq!(history.len(), 3);
        assert_eq!(history[1].asset, switch());
        assert_eq!(history[1].retired_at, Some(UnixSeconds(2_000)));
        assert_eq!(history[2].valid_from, Some(UnixSeconds(2_000)));
    }

    #[test]
    fn bad_assets_are_refused_by_field_and_change_nothing() {
        let ledger = Ledger::open_in_memory().expect("ledger");
        for (asset, field) in [
            (
                AssetRow {
                    purchase_date: "2025-02-29".to_owned(),
                    ..servers()
                },
                "purchase_date",
            ),
            (
                AssetRow {
                    residual_value_minor: 3_000_000,
                    ..servers()
                },
                "residual_value",
            ),
            (
                AssetRow {
                    currency: "usd".to_owned(),
                    ..servers()
                },
                "currency",
            ),
            (
                AssetRow {
                    amortisation_months: 0,
                    ..servers()
                },
                "amortisation_months",
            ),
            (
                AssetRow {
                    method: AmortisationMethod::DecliningBalance { factor_micros: 0 },
                    ..servers()
                },
                "declining_factor",
            ),
        ] {
            match ledger.sync_assets(&[switch(), asset], UnixSeconds(1)) {
                Err(LedgerError::InvalidField { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert!(matches!(
            ledger.sync_assets(&[servers(), servers()], UnixSeconds(1)),
            Err(LedgerError::InvalidField { field: "name", .. })
        ));
        assert!(ledger.asset_history().expect("history").is_empty());
        assert!(is_calendar_date("2024-02-29"));
        assert!(!is_calendar_date("2024-13-01"));
        assert!(!is_calendar_date("2024-1-011"));
    }
}

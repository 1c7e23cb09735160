//! Periods, buckets, and the plan that answers a period from raw rows and rollups together.
//!
//! Every table of a kind (usage: raw, hourly, daily; telemetry: raw, minute, hour, day) holds
//! the same numbers at a different resolution, because the rollups are written in the same
//! transaction as the raw row. A period `[from, to)` is answered by the coarsest rows that fit
//! entirely inside it (whole days, then whole hours at the edges, ...) and raw rows only for
//! the partial buckets at its two ends. Retention deletes the finer rows of old periods; a
//! bound that falls where the finer rows are gone is rounded down to the finest bucket still
//! kept there (documented on each query), so a total never depends on whether compaction ran.

use crate::{LedgerError, UnixSeconds};

pub(crate) const MINUTE: i64 = 60;
pub(crate) const HOUR: i64 = 3_600;
pub(crate) const DAY: i64 = 86_400;

/// The most points one series query returns (a year of hours is 8,784).
pub const MAX_SERIES_POINTS: usize = 10_000;

/// Start of the bucket of `bucket` seconds that holds `t`.
pub(crate) fn floor_to(t: i64, bucket: i64) -> i64 {
    t.div_euclid(bucket) * bucket
}

/// Start of the first bucket of `bucket` seconds that starts at or after `t`.
pub(crate) fn ceil_to(t: i64, bucket: i64) -> i64 {
    let floor = floor_to(t, bucket);
    if floor == t {
        t
    } else {
        floor.saturating_add(bucket)
    }
}

/// Seconds to milliseconds, saturating (an open-ended period ends at `i64::MAX`).
pub(crate) fn millis(seconds: i64) -> i64 {
    seconds.saturating_mul(1000)
}

/// The resolution of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// Telemetry only (usage is not rolled up per minute).
    Minute,
    Hour,
    Day,
}

impl Step {
    pub fn seconds(self) -> i64 {
        match self {
            Self::Minute => MINUTE,
            Self::Hour => HOUR,
            Self::Day => DAY,
        }
    }
}

/// Checks a period and the number of `step` buckets it spans.
pub(crate) fn check_period(from: UnixSeconds, to: UnixSeconds) -> Result<(), LedgerError> {
    if from > to {
        return Err(LedgerError::InvalidField {
            field: "to",
            message: format!(
                "the period must not end ({}) before it starts ({})",
                to.0, from.0
            ),
        });
    }
    Ok(())
}

/// The bucket starts of a series over `[from, to)`: from the bucket holding `from`, at most
/// [`MAX_SERIES_POINTS`].
pub(crate) fn series_buckets(
    from: UnixSeconds,
    to: UnixSeconds,
    step: Step,
) -> Result<Vec<i64>, LedgerError> {
    check_period(from, to)?;
    let size = step.seconds();
    let first = floor_to(from.0, size);
    let count = (to.0.saturating_sub(first)).saturating_add(size - 1) / size;
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    if count > MAX_SERIES_POINTS {
        return Err(LedgerError::InvalidField {
            field: "to",
            message: format!(
                "a series has at most {MAX_SERIES_POINTS} points; this period holds {count} \
                 buckets of {size} s"
            ),
        });
    }
    Ok((0..count as i64).map(|i| first + i * size).collect())
}

/// One resolution of a kind of data: its bucket size (0 for raw rows) and the time from which
/// on it is complete (its retention floor; `i64::MIN` when nothing was ever deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tier {
    pub bucket: i64,
    pub floor: i64,
}

/// A piece of a period answered from one tier: `[from, to)` in seconds, bucket-aligned for
/// rollup tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    pub tier: usize,
    pub from: i64,
    pub to: i64,
}

/// Splits `[from, to)` into segments, each answered by one tier. `tiers` go from coarse to
/// fine, the last being raw rows (`bucket == 0`); the coarsest must be complete (floor
/// `i64::MIN`), each bucket size must divide the coarser ones, each floor must be aligned to
/// the coarsest bucket and no finer tier may have an earlier floor than a coarser one.
pub(crate) fn plan(from: i64, to: i64, tiers: &[Tier]) -> Vec<Segment> {
    let from = effective_bound(from, tiers);
    let to = effective_bound(to, tiers);
    let mut segments = Vec::new();
    split(from, to, tiers, 0, &mut segments);
    segments
}

/// `t` itself where raw rows are kept; else `t` rounded down to the finest tier kept there.
fn effective_bound(t: i64, tiers: &[Tier]) -> i64 {
    for tier in tiers.iter().rev() {
        if t >= tier.floor {
            return if tier.bucket == 0 {
                t
            } else {
                floor_to(t, tier.bucket)
            };
        }
    }
    tiers
        .first()
        .map_or(t, |tier| floor_to(t, tier.bucket.max(1)))
}

fn split(from: i64, to: i64, tiers: &[Tier], index: usize, out: &mut Vec<Segment>) {
    if from >= to {
        return;
    }
    let Some(tier) = tiers.get(index) else {
        return;
    };
    if tier.bucket == 0 {
        out.push(Segment {
            tier: index,
            from,
            to,
        });
        return;
    }
    let start = ceil_to(from, tier.bucket);
    let end = floor_to(to, tier.bucket);
    if start < end {
        out.push(Segment {
            tier: index,
            from: start,
            to: end,
        });
        split(from, start, tiers, index + 1, out);
        split(end, to, tiers, index + 1, out);
    } else {
        split(from, to, tiers, index + 1, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: i64 = i64::MIN;

    fn tiers(raw_floor: i64, hour_floor: i64) -> [Tier; 3] {
        [
            Tier {
                bucket: DAY,
                floor: ALL,
            },
            Tier {
                bucket: HOUR,
                floor: hour_floor,
            },
            Tier {
                bucket: 0,
                floor: raw_floor,
            },
        ]
    }

    /// The segments tile `[from, to)` exactly, without overlap, and each rollup segment is
    /// bucket-aligned.
    #[test]
    fn segments_tile_the_period_with_whole_buckets() {
        let tiers = tiers(ALL, ALL);
        for (from, to) in [
            (0, 10 * DAY),
            (7, 3 * DAY + 5 * HOUR + 17),
            (DAY + 1, DAY + 2),
            (-5 * DAY - 3, 2 * HOUR),
            (HOUR, 2 * HOUR),
        ] {
            let segments = plan(from, to, &tiers);
            let mut cursor = from;
            let mut sorted = segments.clone();
            sorted.sort_by_key(|s| s.from);
            for segment in &sorted {
                assert_eq!(segment.from, cursor, "{from}..{to}: {segments:?}");
                let bucket = tiers[segment.tier].bucket;
                if bucket != 0 {
                    assert_eq!(segment.from % bucket, 0);
                    assert_eq!(segment.to % bucket, 0);
                }
                cursor = segment.to;
            }
            assert_eq!(cursor, to, "{from}..{to}: {segments:?}");
        }
    }

    #[test]
    fn a_period_of_whole_days_is_one_daily_segment() {
        assert_eq!(
            plan(DAY, 31 * DAY, &tiers(ALL, ALL)),
            vec![Segment {
                tier: 0,
                from: DAY,
                to: 31 * DAY
            }]
        );
    }

    #[test]
    fn bounds_where_raw_rows_are_gone_round_down_to_the_hour_then_the_day() {
        // Raw rows kept from day 10, hourly rows from day 5.
        let tiers = tiers(10 * DAY, 5 * DAY);
        let segments = plan(7 * DAY + 90 * MINUTE, 12 * DAY + 30, &tiers);
        // From 7d01:30 rounds down to 7d01:00; to stays exact (raw rows kept there).
        assert_eq!(
            segments,
            vec![
                Segment {
                    tier: 0,
                    from: 8 * DAY,
                    to: 12 * DAY
                },
                Segment {
                    tier: 1,
                    from: 7 * DAY + HOUR,
                    to: 8 * DAY
                },
                Segment {
                    tier: 2,
                    from: 12 * DAY,
                    to: 12 * DAY + 30
                },
            ]
        );
        // Before the hourly floor a bound rounds down to the day.
        assert_eq!(
            plan(2 * DAY + 5 * HOUR, 3 * DAY + HOUR, &tiers),
            vec![Segment {
                tier: 0,
                from: 2 * DAY,
                to: 3 * DAY
            }]
        );
    }

    #[test]
    fn open_ended_periods_do_not_overflow() {
        let segments = plan(5 * DAY + 17, i64::MAX, &tiers(ALL, ALL));
        assert!(segments.iter().any(|s| s.tier == 0 && s.from == 6 * DAY));
        assert!(millis(i64::MAX) == i64::MAX);
    }

    #[test]
    fn series_are_bounded() {
        let hours = series_buckets(UnixSeconds(30), UnixSeconds(3 * HOUR), Step::Hour).expect("ok");
        assert_eq!(hours, vec![0, HOUR, 2 * HOUR]);
        assert!(
            series_buckets(UnixSeconds(0), UnixSeconds(3 * HOUR + 1), Step::Hour)
                .expect("ok")
                .len()
                == 4
        );
        match series_buckets(UnixSeconds(0), UnixSeconds(DAY * 365 * 3), Step::Hour) {
            Err(LedgerError::InvalidField { field: "to", .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            series_buckets(UnixSeconds(10), UnixSeconds(5), Step::Day),
            Err(LedgerError::InvalidField { field: "to", .. })
        ));
    }
}

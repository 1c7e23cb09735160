//! The worked example of the design brief, with a month of plausible measured traffic: the
//! figures on the pages all come from `moebox-tco`; only the measurements are made up here.

#![allow(dead_code)]

use moebox_pages::{DailyTokens, GpuHistory, GpuSample, GpuState, GpuStatus};
use moebox_tco::{CostModel, Date, Energy, HourUsage, Measurements, Report, TeamTokens, report};

pub const HOSTILE: &str = "<script>alert('pwned')</script>";

pub fn d(text: &str) -> Date {
    Date::parse(text).expect(text)
}

/// `[tco]` left at its defaults: $28,800 of A100 servers from 2026-01-01 over 24 months.
pub fn model() -> CostModel {
    let model = CostModel::default();
    model.validate().expect("defaults are valid");
    model
}

pub struct Example {
    pub model: CostModel,
    pub report: Report,
    pub daily: Vec<DailyTokens>,
}

/// March 2026: weekdays 08:00–18:00 busy, nights and weekends idle at 2 × 55 W.
pub fn example() -> Example {
    let model = model();
    let (from, to) = (d("2026-03-01"), d("2026-03-31"));
    let mut hours = Vec::new();
    let mut daily = Vec::new();
    let mut day = from;
    let mut index = 0_u64;
    while day <= to {
        // 2026-03-01 is a Sunday.
        let weekday = !matches!(index % 7, 0 | 6);
        let (mut day_in, mut day_out) = (0, 0);
        for hour in 0..24u8 {
            let busy = weekday && (8..18).contains(&hour);
            let load = if busy {
                (u64::from(hour) * 37 + index * 11) % 40 + 60
            } else {
                0
            };
            let input = load * 9_000;
            let output = load * 1_800;
            day_in += input;
            day_out += output;
            hours.push(HourUsage {
                date: day,
                hour,
                requests: load * 3,
                input_tokens: input,
                output_tokens: output,
                energy: Energy::from_watt_hours(if busy { 110 + load * 5 } else { 110 }),
            });
        }
        daily.push(DailyTokens {
            date: day,
            input_tokens: day_in,
            output_tokens: day_out,
        });
        day = day.add_days(1).expect("in range");
        index += 1;
    }
    let all_in: u64 = hours.iter().map(|h| h.input_tokens).sum();
    let all_out: u64 = hours.iter().map(|h| h.output_tokens).sum();
    let teams = vec![
        TeamTokens {
            team: "tax".to_owned(),
            input_tokens: all_in / 2,
            output_tokens: all_out / 2,
        },
        TeamTokens {
            team: "audit".to_owned(),
            input_tokens: all_in / 3,
            output_tokens: all_out / 3,
        },
        TeamTokens {
            team: HOSTILE.to_owned(),
            input_tokens: all_in - all_in / 2 - all_in / 3,
            output_tokens: all_out - all_out / 2 - all_out / 3,
        },
    ];
    let measurements = Measurements {
        hours,
        band_energy: Vec::new(),
        teams,
    };
    let report = report(&model, from, to, &measurements).expect("report");
    Example {
        model,
        report,
        daily,
    }
}

pub fn gpus() -> (Vec<GpuStatus>, GpuHistory) {
    let status = |index: u32, util: f64, power: f64| GpuStatus {
        index,
        name: "NVIDIA A100-SXM4-80GB".to_owned(),
        state: GpuState::Ok,
        utilisation_percent: Some(util),
        memory_used_bytes: Some(61 << 30),
        memory_total_bytes: Some(80 << 30),
        power_watts: Some(power),
        power_limit_watts: Some(400.0),
        temperature_celsius: Some(54.0),
        sm_clock_mhz: Some(1_410),
        energy_kwh: Some(212.5),
        ecc_uncorrected_errors: Some(0),
        throttle_reasons: Vec::new(),
    };
    let labels: Vec<String> = (0..24).map(|h| format!("{h:02}:00")).collect();
    let history = GpuHistory {
        labels,
        gpus: (0..2)
            .map(|gpu| {
                let samples = (0..24)
                    .map(|h: u32| {
                        // A gap at 03:00 on GPU 1: a driver reload, drawn as a break.
                        if gpu == 1 && h == 3 {
                            return None;
                        }
                        let busy = (8..18).contains(&h);
                        let util = if busy {
                            55.0 + f64::from((h * 7 + gpu * 13) % 40)
                        } else {
                            2.0
                        };
                        Some(GpuSample {
                            utilisation_percent: Some(util),
                            power_watts: Some(55.0 + util * 3.2),
                        })
                    })
                    .collect();
                (format!("GPU {gpu}"), samples)
            })
            .collect(),
    };
    (
        vec![status(0, 71.0, 282.0), status(1, 64.0, 259.0)],
        history,
    )
}

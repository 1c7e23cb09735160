//! The report end to end, from a config's `[tco]` text and measured hours.

use moebox_tco::{
    BandEnergy, CostModel, Date, Energy, HourUsage, Measurements, Money, ReportError, TeamTokens,
    YearMonth, format, report, report::chargeback,
};

fn d(text: &str) -> Date {
    Date::parse(text).expect(text)
}

fn model(text: &str) -> CostModel {
    let model: CostModel = toml::from_str(text).expect(text);
    model.validate().expect("valid model");
    model
}

const WORKED_EXAMPLE: &str = r#"
currency = "USD"

[[assets]]
name = "A100 server pair"
purchase_price = 28800
purchase_date = 2026-01-01
amortisation_months = 24

[energy]
price_per_kwh = 0.20
pue = 1.5

[[energy.tariff_bands]]
name = "night"
from_hour = 22
to_hour = 6
price_per_kwh = 0.10
"#;

fn hour(date: &str, hour: u8, requests: u64, input: u64, output: u64, wh: u64) -> HourUsage {
    HourUsage {
        date: d(date),
        hour,
        requests,
        input_tokens: input,
        output_tokens: output,
        energy: Energy::from_watt_hours(wh),
    }
}

#[test]
fn worked_example_month_costs_1200_of_depreciation() {
    let model = model(WORKED_EXAMPLE);
    let report = report(
        &model,
        d("2026-03-01"),
        d("2026-03-31"),
        &Measurements::default(),
    )
    .expect("report");
    assert_eq!(report.depreciation, Money::from_major(1_200));
    assert_eq!(report.total, Money::from_major(1_200));
    assert_eq!(report.hours, 31 * 24);
    assert_eq!(report.idle_hours, report.hours);
    // Nothing ran: the whole cost is idle, and there is no cost per token to speak of.
    assert_eq!(report.idle_cost, Money::from_major(1_200));
    assert_eq!(report.cost_per_million_tokens, None);
    assert_eq!(
        report.assets[0].book_value,
        Money::from_major(28_800 - 3 * 1_200)
    );
    assert_eq!(report.unallocated, Money::from_major(1_200));
    assert_eq!(report.notes.len(), 2, "{:?}", report.notes);
    assert!(format::text(&report).contains("$1,200.00"));
}

#[test]
fn energy_is_priced_by_tariff_band_and_pue() {
    let model = model(WORKED_EXAMPLE);
    // 10 kWh at 23:00 (night, $0.10) and 10 kWh at 12:00 (day, $0.20), × PUE 1.5:
    // (1.00 + 2.00) × 1.5 = $4.50.
    let measurements = Measurements {
        hours: vec![
            hour("2026-03-02", 23, 0, 0, 0, 10_000),
            hour("2026-03-02", 12, 5, 1_000, 500, 10_000),
        ],
        ..Measurements::default()
    };
    let report = report(&model, d("2026-03-01"), d("2026-03-31"), &measurements).expect("report");
    assert_eq!(report.energy_cost, Money::parse("4.50").expect("ok"));
    assert_eq!(report.energy_it, Energy::from_watt_hours(20_000));
    assert_eq!(report.energy_facility, Energy::from_watt_hours(30_000));
    assert_eq!(report.total, Money::parse("1204.50").expect("ok"));
    // Idle: 743 of 744 hours carry their share of $1,200, plus the night hour's $1.50.
    let share = Money::from_major(1_200).mul_div_posted(743, 744, &model.currency);
    assert_eq!(report.idle_cost, share + Money::parse("1.50").expect("ok"));
    assert_eq!(report.busy_hours, 1);
}

#[test]
fn band_energy_is_priced_by_its_band_and_never_counted_twice() {
    let model = model(WORKED_EXAMPLE);
    let march = YearMonth::new(2026, 3).expect("valid");
    let measurements = Measurements {
        band_energy: vec![
            BandEnergy {
                month: march,
                band: Some("night".to_owned()),
                energy: Energy::from_watt_hours(100_000),
            },
            BandEnergy {
                month: march,
                band: None,
                energy: Energy::from_watt_hours(100_000),
            },
        ],
        ..Measurements::default()
    };
    let report = report(&model, d("2026-03-01"), d("2026-03-31"), &measurements).expect("report");
    // (100 × 0.10 + 100 × 0.20) × 1.5 = $45.
    assert_eq!(report.energy_cost, Money::from_major(45));

    let mut both = measurements.clone();
    both.hours.push(hour("2026-03-02", 12, 1, 1, 1, 1_000));
    assert_eq!(
        moebox_tco::report(&model, d("2026-03-01"), d("2026-03-31"), &both),
        Err(ReportError::EnergyTwice { month: march })
    );
    let mut unknown = measurements;
    unknown.band_energy[0].band = Some("peak".to_owned());
    assert!(matches!(
        moebox_tco::report(&model, d("2026-03-01"), d("2026-03-31"), &unknown),
        Err(ReportError::UnknownBand { .. })
    ));
}

#[test]
fn alternatives_are_priced_on_the_actual_token_mix() {
    let mut model = model(WORKED_EXAMPLE);
    model.alternatives = CostModel::default().alternatives;
    // 30 days of traffic: 100M input and 20M output tokens.
    let hours: Vec<HourUsage> = (1..=30)
        .map(|day| {
            hour(
                &format!("2026-04-{day:02}"),
                10,
                100,
                100_000_000 / 30 + u64::from(day == 30) * (100_000_000 % 30),
                20_000_000 / 30 + u64::from(day == 30) * (20_000_000 % 30),
                0,
            )
        })
        .collect();
    let measurements = Measurements {
        hours,
        ..Measurements::default()
    };
    let report = report(&model, d("2026-04-01"), d("2026-04-30"), &measurements).expect("report");
    assert_eq!(report.input_tokens, 100_000_000);
    assert_eq!(report.output_tokens, 20_000_000);
    // API: 100 × $3 + 20 × $15 = $600, on this mix $5 per million tokens.
    let api = &report.alternatives[0];
    assert_eq!(api.cost, Money::from_major(600));
    assert_eq!(api.per_million_tokens, Some(Money::from_major(5)));
    assert_eq!(api.saving, Money::from_major(600) - report.total);
    // Cloud GPUs: 720 hours × $6.575 = $4,734.
    let cloud = &report.alternatives[1];
    assert_eq!(cloud.cost, Money::from_major(4_734));
    // Self-hosted: $1,200 over 120M tokens is $10 per million.
    assert_eq!(report.cost_per_million_tokens, Some(Money::from_major(10)));
    // Break-even against the cloud pair: 28,800 ÷ 4,734 × 30 days = 182.5 → day 183.
    let cloud_break_even = &report.break_even[1];
    assert_eq!(cloud_break_even.date, d("2026-01-01").add_days(182));
    // Against the API, at $600 a month with $0 running cost: 48 months, within 60.
    assert_eq!(
        report.break_even[0].date,
        d("2026-01-01").add_days(48 * 30 - 1)
    );
}

#[test]
fn chargeback_sums_exactly_to_the_total() {
    let currency = moebox_tco::Currency::default();
    let teams = vec![
        TeamTokens {
            team: "tax".to_owned(),
            input_tokens: 1,
            output_tokens: 0,
        },
        TeamTokens {
            team: "audit".to_owned(),
            input_tokens: 1,
            output_tokens: 0,
        },
        TeamTokens {
            team: "payroll".to_owned(),
            input_tokens: 1,
            output_tokens: 0,
        },
        TeamTokens {
            team: "idle".to_owned(),
            input_tokens: 0,
            output_tokens: 0,
        },
    ];
    // $100 three ways is 33.33 + 33.33 + 33.34: one cent to the first by name.
    let (charges, unallocated) =
        chargeback(&teams, Money::from_major(100), &currency).expect("charges");
    assert_eq!(unallocated, Money::ZERO);
    let amounts: Vec<(&str, i64)> = charges
        .iter()
        .map(|c| (c.team.as_str(), c.amount.micros() / 10_000))
        .collect();
    assert_eq!(
        amounts,
        vec![
            ("audit", 3_334),
            ("idle", 0),
            ("payroll", 3_333),
            ("tax", 3_333)
        ]
    );
    // Many awkward shares still add up to the cent.
    let many: Vec<TeamTokens> = (1..=97)
        .map(|i| TeamTokens {
            team: format!("team-{i:03}"),
            input_tokens: i * 7_919,
            output_tokens: i * i,
        })
        .collect();
    let total = Money::parse("12345.67").expect("ok");
    let (charges, _) = chargeback(&many, total, &currency).expect("charges");
    assert_eq!(charges.iter().map(|c| c.amount).sum::<Money>(), total);
    // Duplicates are an error, not a silent merge.
    let mut twice = teams.clone();
    twice.push(teams[0].clone());
    assert!(matches!(
        chargeback(&twice, total, &currency),
        Err(ReportError::TeamTwice { .. })
    ));
}

#[test]
fn partial_periods_are_pro_rata_by_days() {
    let mut model = model(WORKED_EXAMPLE);
    model.fixed_costs.push(moebox_tco::FixedCost {
        name: "Support contract".to_owned(),
        monthly: Money::from_major(310),
    });
    // 10 to 19 March: 10 of 31 days.
    let report = report(
        &model,
        d("2026-03-10"),
        d("2026-03-19"),
        &Measurements::default(),
    )
    .expect("report");
    assert_eq!(report.fixed, Money::from_major(100));
    assert_eq!(
        report.depreciation,
        Money::from_major(1_200).mul_div_posted(10, 31, &model.currency)
    );
    // Across a month boundary: all of February 2027 (28 days) and one day of March.
    let report = moebox_tco::report(
        &model,
        d("2027-02-01"),
        d("2027-03-01"),
        &Measurements::default(),
    )
    .expect("report");
    assert_eq!(report.months.len(), 2);
    assert_eq!(report.months[0].days, 28);
    assert_eq!(report.months[0].fixed, Money::from_major(310));
    assert_eq!(report.months[1].fixed, Money::from_major(10));
    assert_eq!(
        report.total,
        report.months.iter().map(|m| m.total).sum::<Money>()
    );
}

#[test]
fn bad_measurements_are_refused_with_the_reason() {
    let model = model(WORKED_EXAMPLE);
    let (from, to) = (d("2026-03-01"), d("2026-03-31"));
    assert!(matches!(
        report(&model, to, from, &Measurements::default()),
        Err(ReportError::PeriodInverted { .. })
    ));
    assert!(matches!(
        report(
            &model,
            d("2000-01-01"),
            d("2020-01-01"),
            &Measurements::default()
        ),
        Err(ReportError::PeriodTooLong { .. })
    ));
    let outside = Measurements {
        hours: vec![hour("2026-04-01", 0, 1, 1, 1, 1)],
        ..Measurements::default()
    };
    assert!(matches!(
        report(&model, from, to, &outside),
        Err(ReportError::HourOutside { .. })
    ));
    let bad_hour = Measurements {
        hours: vec![hour("2026-03-01", 24, 1, 1, 1, 1)],
        ..Measurements::default()
    };
    assert!(matches!(
        report(&model, from, to, &bad_hour),
        Err(ReportError::HourOutside { .. })
    ));
    let twice = Measurements {
        hours: vec![
            hour("2026-03-01", 3, 1, 1, 1, 1),
            hour("2026-03-01", 3, 1, 1, 1, 1),
        ],
        ..Measurements::default()
    };
    assert!(matches!(
        report(&model, from, to, &twice),
        Err(ReportError::HourTwice { .. })
    ));
}

#[test]
fn formats_carry_the_same_figures() {
    let model = model(WORKED_EXAMPLE);
    let measurements = Measurements {
        hours: vec![hour("2026-03-02", 12, 5, 1_000_000, 500_000, 10_000)],
        teams: vec![
            TeamTokens {
                team: "=HYPERLINK(\"http://x\")".to_owned(),
                input_tokens: 1_000_000,
                output_tokens: 0,
            },
            TeamTokens {
                team: "tax, audit".to_owned(),
                input_tokens: 0,
                output_tokens: 500_000,
            },
        ],
        ..Measurements::default()
    };
    let report = report(&model, d("2026-03-01"), d("2026-03-31"), &measurements).expect("report");
    let text = format::text(&report);
    assert!(
        text.contains(&report.total.display(&report.currency)),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&format::json(&report)).expect("json");
    assert_eq!(json["depreciation"], serde_json::json!(1200));
    assert_eq!(json["from"], "2026-03-01");
    assert_eq!(json["input_tokens"], 1_000_000);
    assert_eq!(json["energy_it"], serde_json::json!(10.0), "kWh");
    let csv = format::csv(&report);
    assert!(csv.starts_with("section,item,value,unit\n"), "{csv}");
    assert!(csv.contains("\ncost,depreciation,1200.00,USD\n"), "{csv}");
    assert!(csv.contains(&format!(
        "\ncost,total,{},USD\n",
        report.total.plain(&report.currency)
    )));
    // Hostile team names are quoted and cannot run as spreadsheet formulas.
    assert!(
        csv.contains("\nchargeback,\"'=HYPERLINK(\"\"http://x\"\")\","),
        "{csv}"
    );
    assert!(csv.contains("\nchargeback,\"tax, audit\","), "{csv}");
    // A negative saving stays a number.
    let saving = report.alternatives[0].saving;
    assert!(saving < Money::ZERO, "the API is cheaper for so few tokens");
    assert!(
        csv.contains(&format!(
            "\nalternative_saving,Hosted frontier API,{},USD\n",
            saving.plain(&report.currency)
        )),
        "{csv}"
    );
    assert_eq!(format::csv_cell("-12.50"), "-12.50");
    assert_eq!(format::csv_cell("-x"), "'-x");
    assert_eq!(format::csv_cell("@SUM(A1)"), "'@SUM(A1)");
    let charged: Money = report.chargeback.iter().map(|c| c.amount).sum();
    assert_eq!(charged, report.total);
}

//! `moebox tco report --config FILE [--from DATE] [--to DATE] [--format text|json|csv]`: the
//! cost model's figures for a period, as the admin overview shows them.
//!
//! Usage and energy come from the ledger (`ledger.database`), read the way the admin pages
//! read it (`moebox_gateway::accounting`); without a database the measured figures are zero
//! and the output says so in a note (and on stderr), rather than showing made-up figures.

use std::{
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use moebox_config::Config;
use moebox_tco::{Date, Measurements, format};

#[derive(Debug, clap::Subcommand)]
pub enum TcoCommand {
    /// Print the cost report for a period (default: this month to date, UTC).
    Report(ReportArgs),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
    Csv,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// First day of the period, YYYY-MM-DD (default: the first of this month).
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    from: Option<Date>,
    /// Last day of the period, included, YYYY-MM-DD (default: today).
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    to: Option<Date>,
    #[arg(long, value_enum, default_value = "text")]
    format: ReportFormat,
}

fn parse_date(text: &str) -> Result<Date, String> {
    Date::parse(text).map_err(|e| e.to_string())
}

/// Today in UTC, from the system clock (the cost model itself never reads one).
fn today() -> anyhow::Result<Date> {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs();
    Date::from_days_since_epoch(i64::try_from(seconds / 86_400).unwrap_or(i64::MAX))
        .context("the system clock is beyond the year 9999")
}

pub fn run(command: TcoCommand) -> anyhow::Result<()> {
    match command {
        TcoCommand::Report(args) => report(args),
    }
}

fn report(args: ReportArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let to = match args.to {
        Some(to) => to,
        None => today()?,
    };
    let from = args.from.unwrap_or_else(|| to.year_month().first_day());
    let database = &config.ledger.database;
    let report = if database.exists() {
        let ledger = moebox_ledger::Ledger::open(database).context("ledger.database")?;
        moebox_gateway::accounting::report(&ledger, &config.tco, from, to)
            .with_context(|| format!("cannot report on {from}..={to}"))?
    } else {
        let mut report = moebox_tco::report(&config.tco, from, to, &Measurements::default())
            .with_context(|| format!("cannot report on {from}..={to}"))?;
        let note = format!(
            "no ledger at {} (ledger.database): usage (tokens, requests) and energy are zero \
             here, not measured; costs from the config (depreciation, fixed costs) are real",
            database.display()
        );
        eprintln!("moebox: note: {note}");
        report.notes.insert(0, note);
        report
    };
    let output = match args.format {
        ReportFormat::Text => format::text(&report),
        ReportFormat::Json => format::json(&report) + "\n",
        ReportFormat::Csv => format::csv(&report),
    };
    print!("{output}");
    Ok(())
}

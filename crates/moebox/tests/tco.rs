//! `moebox tco report` and `moebox config check` on `[tco]`, as an admin runs them.

use std::process::{Command, Output};

fn moebox(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moebox"))
        .args(args)
        .output()
        .expect("run moebox")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn config(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("moebox.toml");
    std::fs::write(&path, text).expect("write config");
    let path = path.to_str().expect("utf-8").to_owned();
    (dir, path)
}

const FIXED: &str = r#"
[[tco.fixed_costs]]
name = "Hosting"
monthly = 150
"#;

#[test]
fn report_in_every_format_shows_the_1200_a_month_and_says_usage_is_not_measured() {
    let (_dir, path) = config(FIXED);
    let period = ["--from", "2026-03-01", "--to", "2026-03-31"];

    let mut args = vec!["tco", "report", "--config", &path];
    args.extend_from_slice(&period);
    let output = moebox(&args);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("depreciation") && stdout.contains("$1,200.00"),
        "{stdout}"
    );
    assert!(stdout.contains("$1,350.00"), "total with hosting: {stdout}");
    assert!(stdout.contains("no ledger at"), "{stdout}");
    assert!(text(&output.stderr).contains("no ledger at"));

    let mut args = vec!["tco", "report", "--config", &path, "--format", "json"];
    args.extend_from_slice(&period);
    let output = moebox(&args);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json["depreciation"], 1200);
    assert_eq!(json["total"], 1350);
    assert_eq!(json["input_tokens"], 0);
    assert!(json["notes"][0].as_str().expect("note").contains("ledger"));

    let mut args = vec!["tco", "report", "--config", &path, "--format", "csv"];
    args.extend_from_slice(&period);
    let output = moebox(&args);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let csv = text(&output.stdout);
    assert!(csv.starts_with("section,item,value,unit\nnote,,"), "{csv}");
    assert!(csv.contains("\ncost,depreciation,1200.00,USD\n"), "{csv}");
    assert!(csv.contains("\nfixed_cost,Hosting,150.00,USD\n"), "{csv}");
}

#[test]
fn report_refuses_bad_dates_and_periods_with_the_reason() {
    let (_dir, path) = config("");
    let output = moebox(&["tco", "report", "--config", &path, "--from", "2026-02-30"]);
    assert_eq!(output.status.code(), Some(2), "a usage error");
    assert!(
        text(&output.stderr).contains("2026-02-30"),
        "{}",
        text(&output.stderr)
    );
    let output = moebox(&[
        "tco",
        "report",
        "--config",
        &path,
        "--from",
        "2026-04-01",
        "--to",
        "2026-03-01",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("before it starts"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn config_check_names_the_tco_key_at_fault() {
    let (_dir, path) = config(
        "[[tco.assets]]\nname = \"A100 pair\"\npurchase_price = 28800\n\
         purchase_date = 2026-01-01\namortisation_months = 0\n",
    );
    let output = moebox(&["config", "check", "--config", &path]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("tco.assets[0].amortisation_months"),
        "{stderr}"
    );
    assert!(stderr.contains("between 1 and 240, got 0"), "{stderr}");
}

/// With a ledger, the report counts what it recorded: tokens, and the chargeback by team.
#[test]
fn report_reads_usage_from_the_ledger() {
    use moebox_ledger::{Ledger, UnixMillis, UsageRecord};
    let dir = tempfile::tempdir().expect("tempdir");
    let database = dir.path().join("moebox.sqlite");
    let ledger = Ledger::open(&database).expect("ledger");
    // 2026-03-10 12:00 UTC.
    let at = UnixMillis(1_773_144_000_000);
    let records: Vec<UsageRecord> = [("tax", 1_000, 3_000), ("audit", 500, 500)]
        .iter()
        .enumerate()
        .map(|(i, (team, prompt, completion))| UsageRecord {
            request_id: format!("r{i}"),
            started_at: at,
            ended_at: UnixMillis(at.0 + 900),
            key_id: 1,
            team: (*team).to_owned(),
            model: "tiny-moe".into(),
            endpoint: "/v1/chat/completions".into(),
            prompt_tokens: *prompt,
            completion_tokens: *completion,
            time_to_first_token_ms: Some(40),
            latency_ms: 900,
            status: 200,
            engine: Some("engine-0".into()),
            finish_reason: Some("stop".into()),
        })
        .collect();
    ledger.record_usage(&records).expect("records");
    drop(ledger);
    let path = dir.path().join("moebox.toml");
    std::fs::write(
        &path,
        format!(
            "[ledger]\ndatabase = {:?}\n",
            database.display().to_string()
        ),
    )
    .expect("config");
    let path = path.to_str().expect("utf-8");
    let output = moebox(&[
        "tco",
        "report",
        "--config",
        path,
        "--from",
        "2026-03-01",
        "--to",
        "2026-03-31",
        "--format",
        "json",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json["input_tokens"], 1_500);
    assert_eq!(json["output_tokens"], 3_500);
    assert_eq!(json["requests"], 2);
    let teams: Vec<&str> = json["chargeback"]
        .as_array()
        .expect("chargeback")
        .iter()
        .filter_map(|c| c["team"].as_str())
        .collect();
    assert!(teams.contains(&"tax") && teams.contains(&"audit"), "{json}");
    assert!(!text(&output.stderr).contains("no ledger"));
}

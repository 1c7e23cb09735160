//! Renders the pages to files under the target directory, opens them in headless Chromium
//! (Debian package `chromium`), writes screenshots there for people to look at, and checks the
//! key figures in the DOM Chromium built. Chromium is required: CI installs it (`.ci/run`), and
//! without it this test fails and says how to install it.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use moebox_pages::{
    ExportLink, GpusPage, LoginPage, OverviewPage, SchedulePage, TeamUsage, UsagePage, escape,
};
use support::{HOSTILE, d, example};

/// One Chromium run; it starts in about a second, so this only catches a hang.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(90);
/// Desktop and phone viewports (CSS pixels).
const DESKTOP: (u32, u32) = (1280, 2400);
const PHONE: (u32, u32) = (390, 3600);
const PHONE_SHORT: (u32, u32) = (390, 844);

fn output_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target dir>/tmp`, so this follows CARGO_TARGET_DIR.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("moebox-pages");
    std::fs::create_dir_all(&dir).expect("create the output folder");
    dir
}

fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "headless Chromium is required by this test and was not found on PATH: install it with \
         `apt-get install -y --no-install-recommends chromium` (CI does, in .ci/run)"
    );
}

/// Runs Chromium headless on `page` with extra `args`; returns stdout.
fn run_chromium(page: &Path, args: &[String]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            // Root in CI containers: Chromium's sandbox needs user namespaces it may not have.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--force-device-scale-factor=1",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + CHROMIUM_TIMEOUT;
    loop {
        match child.try_wait().expect("wait for chromium") {
            Some(_) => break,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                panic!(
                    "chromium did not finish within {CHROMIUM_TIMEOUT:?} on {}",
                    page.display()
                );
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let output = child.wait_with_output().expect("chromium output");
    assert!(
        output.status.success(),
        "chromium failed on {}: {}\n{}",
        page.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Takes a screenshot; `min_bytes` catches a blank page (a white PNG compresses to a few KB).
fn screenshot(page: &Path, png: &Path, (width, height): (u32, u32), min_bytes: usize) {
    let _ = std::fs::remove_file(png);
    run_chromium(
        page,
        &[
            format!("--screenshot={}", png.display()),
            format!("--window-size={width},{height}"),
        ],
    );
    let bytes = std::fs::read(png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        png.display()
    );
    assert!(
        bytes.len() > min_bytes,
        "{} is nearly empty ({} bytes)",
        png.display(),
        bytes.len()
    );
}

fn dump_dom(page: &Path) -> String {
    run_chromium(page, &["--dump-dom".to_owned()])
}

fn write(dir: &Path, name: &str, html: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, html).expect("write the page");
    path
}

#[test]
fn overview_and_schedule_in_headless_chromium() {
    let dir = output_dir();
    let example = example();
    let report = &example.report;
    let currency = &report.currency;

    let overview = write(
        &dir,
        "overview.html",
        &moebox_pages::overview(&OverviewPage {
            model: &example.model,
            report,
            daily_tokens: &example.daily,
            gpu_utilisation_percent: Some(41.3),
            generated_at: "2026-04-01 00:05 UTC",
        }),
    );
    let schedule = write(
        &dir,
        "schedule.html",
        &moebox_pages::schedule(&SchedulePage {
            model: &example.model,
            today: d("2026-03-31"),
            generated_at: "2026-04-01 00:05 UTC",
        }),
    );
    let (gpus, history) = support::gpus();
    let gpus_page = write(
        &dir,
        "gpus.html",
        &moebox_pages::gpus(&GpusPage {
            gpus: &gpus,
            history: &history,
            sampled_at: "2026-04-01 00:05 UTC",
        }),
    );

    let teams: Vec<TeamUsage> = report
        .chargeback
        .iter()
        .map(|charge| TeamUsage {
            team: charge.team.clone(),
            requests: 0,
            input_tokens: charge.input_tokens,
            output_tokens: charge.output_tokens,
            charge: Some(charge.amount),
        })
        .collect();
    let usage_page = write(
        &dir,
        "usage.html",
        &moebox_pages::usage(&UsagePage {
            currency,
            from: report.from,
            to: report.to,
            teams: &teams,
            keys: &[],
            exports: &[ExportLink {
                label: "CSV".to_owned(),
                href: "/admin/usage.csv".to_owned(),
            }],
            generated_at: "2026-04-01 00:05 UTC",
        }),
    );
    let login_page = write(
        &dir,
        "login.html",
        &moebox_pages::login(&LoginPage {
            action: moebox_pages::PATH_LOGIN,
            csrf_token: "0123456789abcdef",
            csrf_field: "csrf",
            error: None,
        }),
    );

    // The DOM as Chromium parsed it: the figures are there, as text.
    let dom = dump_dom(&overview);
    let amortisation = &dom[dom.find("id=\"amortisation-per-month\"").expect("card")..];
    assert!(
        amortisation[..300].contains("$1,200.00"),
        "amortisation card: {}",
        &amortisation[..300]
    );
    for figure in [
        report.total.display(currency),
        report
            .cost_per_million_tokens
            .expect("tokens")
            .display_rate(currency),
        report.alternatives[0].cost.display(currency),
        report.alternatives[1].cost.display(currency),
        format!("{} kWh", report.energy_facility.kwh_display()),
    ] {
        assert!(dom.contains(&figure), "overview DOM lacks {figure}");
    }
    let break_even = report.break_even[0]
        .date
        .expect("pays for itself")
        .to_string();
    assert!(
        dom.contains(&break_even),
        "overview DOM lacks break-even {break_even}"
    );
    // The hostile team name stayed text: no script element was created from it.
    assert!(
        dom.contains(&escape(HOSTILE).replace("&#39;", "'")),
        "team name as text"
    );
    assert!(!dom.contains("<script"), "no script element in the DOM");
    assert_eq!(dom.matches("<svg").count(), 2, "two charts on the overview");

    let dom = dump_dom(&schedule);
    assert!(dom.contains("<td>Jan 2026</td><td class=\"num\">$28,800.00</td><td class=\"num\">$1,200.00</td><td class=\"num\">$27,600.00</td>"));
    assert!(dom.contains("<td>Dec 2027</td><td class=\"num\">$1,200.00</td><td class=\"num\">$1,200.00</td><td class=\"num\">$0.00</td>"));

    let dom = dump_dom(&usage_page);
    let total = report.total.display(currency);
    assert!(
        dom.contains(&format!("<td class=\"num\">{total}</td></tr></tbody>")),
        "charges add up to {total}"
    );

    let dom = dump_dom(&login_page);
    assert!(
        dom.contains("name=\"csrf\" value=\"0123456789abcdef\""),
        "{dom}"
    );

    let dom = dump_dom(&gpus_page);
    assert!(dom.contains("NVIDIA A100-SXM4-80GB") && dom.contains("282 / 400 W"));

    screenshot(&overview, &dir.join("overview.png"), DESKTOP, 20_000);
    screenshot(&overview, &dir.join("overview-phone.png"), PHONE, 20_000);
    screenshot(&schedule, &dir.join("schedule.png"), DESKTOP, 20_000);
    screenshot(&gpus_page, &dir.join("gpus.png"), (1280, 1200), 20_000);
    screenshot(&usage_page, &dir.join("usage.png"), (1280, 900), 20_000);
    screenshot(&login_page, &dir.join("login.png"), PHONE_SHORT, 6_000);
    println!("screenshots in {}", dir.display());
}

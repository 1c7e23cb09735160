//! The pages' content: figures, escaping, forms.

mod support;

use moebox_pages::{
    ExportLink, GpusPage, KeyUsage, LoginPage, OverviewPage, SchedulePage, TeamUsage, UsagePage,
    escape,
};
use moebox_tco::Money;
use support::{HOSTILE, d, example};

fn overview_html() -> (support::Example, String) {
    let example = example();
    let html = moebox_pages::overview(&OverviewPage {
        model: &example.model,
        report: &example.report,
        daily_tokens: &example.daily,
        gpu_utilisation_percent: Some(41.3),
        generated_at: "2026-04-01 00:05 UTC",
    });
    (example, html)
}

/// The text of the element with `id` (up to its first closing `</div>`; cards are flat).
fn card_text(html: &str, id: &str) -> String {
    let start = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let end = start + html[start..].find("</div></div>").expect("card closes");
    html[start..end].to_owned()
}

#[test]
fn overview_of_the_worked_example_says_1200_a_month() {
    let (example, html) = overview_html();
    let card = card_text(&html, "amortisation-per-month");
    assert!(card.contains("$1,200.00"), "{card}");
    let report = &example.report;
    assert_eq!(report.depreciation, Money::from_major(1_200));
    assert!(card_text(&html, "total-cost").contains(&report.total.display(&report.currency)));
    let per_million = report.cost_per_million_tokens.expect("tokens were used");
    assert!(
        card_text(&html, "cost-per-million").contains(&per_million.display_rate(&report.currency))
    );
    assert!(html.contains("Hosted frontier API"));
    assert!(html.contains("Rented cloud GPU pair"));
    assert!(html.contains("<svg"), "charts are inline SVG");
    assert!(
        !html.contains("<script"),
        "no script, and no unescaped data"
    );
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
}

#[test]
fn hostile_names_are_escaped_everywhere() {
    let (example, overview) = overview_html();
    assert!(
        overview.contains(&escape(HOSTILE)),
        "the team is listed, escaped"
    );
    assert!(!overview.contains(HOSTILE));

    let mut model = example.model.clone();
    model.assets[0].name = HOSTILE.to_owned();
    let schedule = moebox_pages::schedule(&SchedulePage {
        model: &model,
        today: d("2026-03-15"),
        generated_at: HOSTILE,
    });
    assert!(!schedule.contains("<script"), "{schedule}");
    assert!(schedule.contains(&escape(HOSTILE)));

    let usage = moebox_pages::usage(&UsagePage {
        currency: &model.currency,
        from: d("2026-03-01"),
        to: d("2026-03-31"),
        teams: &[TeamUsage {
            team: HOSTILE.to_owned(),
            requests: 3,
            input_tokens: 10,
            output_tokens: 5,
            charge: Some(Money::from_major(12)),
        }],
        keys: &[KeyUsage {
            name: HOSTILE.to_owned(),
            id: "mbx_\"><img".to_owned(),
            team: HOSTILE.to_owned(),
            requests: 3,
            input_tokens: 10,
            output_tokens: 5,
            revoked: true,
        }],
        exports: &[ExportLink {
            label: "CSV".to_owned(),
            href: "/admin/usage.csv?from=2026-03-01&to=\"><script>".to_owned(),
        }],
        generated_at: "now",
    });
    assert!(!usage.contains("<script"), "{usage}");
    assert!(!usage.contains("\"><img"), "{usage}");
    assert!(usage.contains("$12.00"));

    let (mut gpus, history) = support::gpus();
    gpus[0].name = HOSTILE.to_owned();
    gpus[1].state = moebox_pages::GpuState::Unavailable(HOSTILE.to_owned());
    gpus[1].throttle_reasons = vec![HOSTILE.to_owned()];
    let page = moebox_pages::gpus(&GpusPage {
        gpus: &gpus,
        history: &history,
        sampled_at: "now",
    });
    assert!(!page.contains("<script"), "{page}");
}

#[test]
fn schedule_page_lists_every_month_of_the_worked_example() {
    let (example, _) = overview_html();
    let html = moebox_pages::schedule(&SchedulePage {
        model: &example.model,
        today: d("2026-03-15"),
        generated_at: "2026-03-15 10:00 UTC",
    });
    let table = &html[html.find("id=\"schedule\"").expect("schedule table")..];
    let table = &table[..table.find("</table>").expect("table closes")];
    // A header, 24 months, a total.
    assert_eq!(table.matches("<tr").count(), 26, "{table}");
    // Each month's depreciation cell is the third: $1,200 in every one.
    for row in table.split("<tr").skip(2).take(24) {
        let cells: Vec<&str> = row.split("<td").collect();
        assert_eq!(cells[3], " class=\"num\">$1,200.00</td>", "{row}");
    }
    assert!(table.contains("<td>Jan 2026</td><td class=\"num\">$28,800.00</td><td class=\"num\">$1,200.00</td><td class=\"num\">$27,600.00</td>"));
    assert!(table.contains("<tr class=\"current\"><td>Mar 2026</td>"));
    assert!(table.contains("<td>Dec 2027</td><td class=\"num\">$1,200.00</td><td class=\"num\">$1,200.00</td><td class=\"num\">$0.00</td>"));
    assert!(table.contains("<td>Total</td><td></td><td class=\"num\">$28,800.00</td>"));
}

#[test]
fn login_form_posts_to_the_given_target_with_the_csrf_token() {
    let html = moebox_pages::login(&LoginPage {
        action: "/admin/login",
        csrf_token: "tok\"en<1>",
        csrf_field: "csrf",
        error: Some("That key is not an admin key."),
    });
    assert!(html.contains("<form class=\"login\" method=\"post\" action=\"/admin/login\""));
    assert!(html.contains("<input type=\"hidden\" name=\"csrf\" value=\"tok&quot;en&lt;1&gt;\">"));
    assert!(html.contains("name=\"key\" type=\"password\""));
    assert!(html.contains("That key is not an admin key."));
    assert!(!html.contains("<nav"), "no navigation before sign-in");
}

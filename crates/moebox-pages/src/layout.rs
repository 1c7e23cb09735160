//! The page frame: document head with the stylesheet, navigation, and HTML escaping.

use std::fmt::Write as _;

use crate::{PATH_GPUS, PATH_OVERVIEW, PATH_SCHEDULE, PATH_USAGE};

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Which navigation entry is the current page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Schedule,
    Usage,
    Gpus,
    /// The login page shows no navigation.
    None,
}

/// The stylesheet: system fonts, a card grid that reflows to one column on a phone, tables
/// that scroll sideways instead of overflowing, and a print style for the monthly report.
const STYLE: &str = r#"
:root{--ink:#1d2430;--muted:#5b6575;--line:#d9dee7;--panel:#f5f7fa;--accent:#0b5cad;--good:#1b7a3d;--bad:#b3261e;
--s0:#0b5cad;--s1:#d9822b;--s2:#1b7a3d;--s3:#8e44ad;--s4:#b3261e;--s5:#5b6575}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--ink);background:#fff}
header.top{display:flex;flex-wrap:wrap;align-items:center;gap:.5rem 1.5rem;padding:.75rem 1rem;border-bottom:1px solid var(--line);background:var(--panel)}
header.top .brand{font-weight:700;letter-spacing:.02em}
nav a{color:var(--accent);text-decoration:none;margin-right:1rem;padding:.2rem 0;display:inline-block}
nav a[aria-current=page]{color:var(--ink);font-weight:600;border-bottom:2px solid var(--accent)}
main{max-width:72rem;margin:0 auto;padding:1rem}
h1{font-size:1.5rem;margin:.25rem 0 .25rem}
h2{font-size:1.15rem;margin:1.75rem 0 .5rem}
p.sub{color:var(--muted);margin:0 0 1rem}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(13.5rem,1fr));gap:.75rem}
.card{border:1px solid var(--line);border-radius:.5rem;padding:.75rem .9rem;background:#fff}
.card .label{color:var(--muted);font-size:.85rem}
.card .value{font-size:1.45rem;font-weight:650;font-variant-numeric:tabular-nums;margin:.1rem 0}
.card .detail{color:var(--muted);font-size:.85rem}
.note{border-left:4px solid #d9822b;background:#fff6ea;padding:.5rem .75rem;margin:.5rem 0}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:.35rem .6rem;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
th{font-size:.85rem;color:var(--muted);font-weight:600}
td.num,th.num{text-align:right}
tr.total td{font-weight:650;border-top:2px solid var(--ink)}
tr.current td{background:#eef4fb}
.good{color:var(--good)}.bad{color:var(--bad)}
figure{margin:1rem 0;border:1px solid var(--line);border-radius:.5rem;padding:.5rem;overflow-x:auto}
figure svg{width:100%;max-width:50rem;min-width:30rem;height:auto;display:block;margin:0 auto}
figcaption{font-weight:600;margin:.1rem .25rem .4rem}
.legend{display:flex;flex-wrap:wrap;gap:.25rem 1rem;font-size:.85rem;color:var(--muted);margin:.25rem}
.legend i{display:inline-block;width:.8rem;height:.8rem;border-radius:2px;margin-right:.3rem;vertical-align:-1px}
svg text{font:13px system-ui,sans-serif;fill:#5b6575}
svg .grid{stroke:#e3e7ee;stroke-width:1}
svg .axis{stroke:#9aa3b2;stroke-width:1}
svg .line{fill:none;stroke-width:2.2;stroke-linejoin:round;stroke-linecap:round}
.c0{stroke:var(--s0);fill:var(--s0);background:var(--s0)}.c1{stroke:var(--s1);fill:var(--s1);background:var(--s1)}
.c2{stroke:var(--s2);fill:var(--s2);background:var(--s2)}.c3{stroke:var(--s3);fill:var(--s3);background:var(--s3)}
.c4{stroke:var(--s4);fill:var(--s4);background:var(--s4)}.c5{stroke:var(--s5);fill:var(--s5);background:var(--s5)}
svg .line.c0,svg .line.c1,svg .line.c2,svg .line.c3,svg .line.c4,svg .line.c5{fill:none}
.empty{color:var(--muted);font-style:italic;padding:.5rem}
.state-ok{color:var(--good);font-weight:600}.state-bad{color:var(--bad);font-weight:600}
form.login{max-width:22rem;margin:3rem auto;border:1px solid var(--line);border-radius:.5rem;padding:1.25rem}
form.login label{display:block;font-weight:600;margin:.75rem 0 .25rem}
form.login input[type=password]{width:100%;font:inherit;padding:.5rem;border:1px solid #9aa3b2;border-radius:.35rem}
form.login button{margin-top:1rem;font:inherit;padding:.5rem 1rem;border:0;border-radius:.35rem;background:var(--accent);color:#fff}
.error{color:var(--bad);margin:.5rem 0}
footer{color:var(--muted);font-size:.8rem;max-width:72rem;margin:1.5rem auto;padding:0 1rem}
@media (max-width:40rem){body{font-size:14px}main{padding:.6rem}.card .value{font-size:1.25rem}th,td{padding:.3rem .4rem}}
@media print{
figure svg{min-width:0;max-width:100%}
@page{size:A4;margin:14mm}
body{font-size:10pt;color:#000}
header.top{background:none;border-bottom:1px solid #000;padding:0 0 .3rem}
nav,.noprint,form{display:none!important}
main{max-width:none;padding:0}
.card,figure{break-inside:avoid;border-color:#999}
table{break-inside:auto}tr{break-inside:avoid}
h2{break-after:avoid}
.scroll{overflow:visible}
a{color:#000;text-decoration:none}
}
"#;

/// A whole document: head, top bar with navigation, `body` inside `<main>`.
pub(crate) fn page(title: &str, nav: Nav, body: &str) -> String {
    let mut out = String::with_capacity(STYLE.len() + body.len() + 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"color-scheme\" content=\"light\">\
         <title>{} · moebox</title><style>{STYLE}</style></head><body>\
         <header class=\"top\"><span class=\"brand\">moebox</span>",
        escape(title)
    );
    if nav != Nav::None {
        out.push_str("<nav aria-label=\"Admin pages\">");
        for (entry, href, label) in [
            (Nav::Overview, PATH_OVERVIEW, "Overview"),
            (Nav::Schedule, PATH_SCHEDULE, "Amortisation"),
            (Nav::Usage, PATH_USAGE, "Usage"),
            (Nav::Gpus, PATH_GPUS, "GPUs"),
        ] {
            let current = if entry == nav {
                " aria-current=\"page\""
            } else {
                ""
            };
            let _ = write!(out, "<a href=\"{href}\"{current}>{label}</a>");
        }
        out.push_str("</nav>");
    }
    out.push_str("</header><main>");
    out.push_str(body);
    out.push_str("</main></body></html>\n");
    out
}

/// A headline figure.
pub(crate) fn card(label: &str, value: &str, detail: &str, id: &str) -> String {
    format!(
        "<div class=\"card\" id=\"{}\"><div class=\"label\">{}</div><div class=\"value\">{}</div>\
         <div class=\"detail\">{}</div></div>",
        escape(id),
        escape(label),
        escape(value),
        escape(detail)
    )
}

/// Thousands separators for counts: `1,234,567`.
pub(crate) fn count(value: u64) -> String {
    moebox_tco::money::group_thousands(value)
}

/// `12.34%` from basis points.
pub(crate) fn percent(basis_points: u32) -> String {
    format!("{}.{:02}%", basis_points / 100, basis_points % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_every_markup_character() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn page_has_no_external_assets_or_scripts() {
        let html = page("T", Nav::Overview, "<p>x</p>");
        assert!(!html.contains("<script"));
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(html.contains("@media print"));
        assert!(html.contains("name=\"viewport\""));
        assert!(html.contains("href=\"/admin/\" aria-current=\"page\""));
    }
}

//! Usage per team and per key for a period, with links to the gateway's CSV and JSON exports.

use std::fmt::Write as _;

use moebox_tco::{Currency, Date, Money};

use crate::layout::{Nav, count, escape, page};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamUsage {
    pub team: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The team's chargeback for the period, when the cost model has run.
    pub charge: Option<Money>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    /// The key's name (never the key).
    pub name: String,
    /// The key's public id or prefix, as `moebox keys list` shows it.
    pub id: String,
    pub team: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportLink {
    pub label: String,
    pub href: String,
}

#[derive(Debug, Clone)]
pub struct UsagePage<'a> {
    pub currency: &'a Currency,
    pub from: Date,
    pub to: Date,
    pub teams: &'a [TeamUsage],
    pub keys: &'a [KeyUsage],
    pub exports: &'a [ExportLink],
    pub generated_at: &'a str,
}

pub fn usage(input: &UsagePage<'_>) -> String {
    let c = input.currency;
    let mut body = format!(
        "<h1>Usage</h1><p class=\"sub\">{} to {} · generated {}</p>",
        input.from,
        input.to,
        escape(input.generated_at)
    );
    if !input.exports.is_empty() {
        body.push_str("<p class=\"noprint\">Export: ");
        for (i, link) in input.exports.iter().enumerate() {
            let _ = write!(
                body,
                "{}<a href=\"{}\">{}</a>",
                if i > 0 { " · " } else { "" },
                escape(&link.href),
                escape(&link.label)
            );
        }
        body.push_str("</p>");
    }
    body.push_str(
        "<h2>Per team</h2><div class=\"scroll\"><table id=\"teams\"><thead><tr><th>Team</th>\
         <th class=\"num\">Requests</th><th class=\"num\">Input tokens</th>\
         <th class=\"num\">Output tokens</th><th class=\"num\">Charge</th></tr></thead><tbody>",
    );
    if input.teams.is_empty() {
        body.push_str(
            "<tr><td colspan=\"5\" class=\"empty\">No requests in this period.</td></tr>",
        );
    }
    let (mut requests, mut input_tokens, mut output_tokens) = (0_u64, 0_u64, 0_u64);
    let mut charged = Money::ZERO;
    for t in input.teams {
        requests = requests.saturating_add(t.requests);
        input_tokens = input_tokens.saturating_add(t.input_tokens);
        output_tokens = output_tokens.saturating_add(t.output_tokens);
        charged += t.charge.unwrap_or_default();
        let _ = write!(
            body,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            escape(&t.team),
            count(t.requests),
            count(t.input_tokens),
            count(t.output_tokens),
            t.charge.map_or_else(|| "-".to_owned(), |m| m.display(c))
        );
    }
    let _ = write!(
        body,
        "<tr class=\"total\"><td>Total</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
         <td class=\"num\">{}</td><td class=\"num\">{}</td></tr></tbody></table></div>",
        count(requests),
        count(input_tokens),
        count(output_tokens),
        charged.display(c)
    );
    body.push_str(
        "<h2>Per key</h2><div class=\"scroll\"><table id=\"keys\"><thead><tr><th>Key</th>\
         <th>Id</th><th>Team</th><th class=\"num\">Requests</th><th class=\"num\">Input tokens</th>\
         <th class=\"num\">Output tokens</th></tr></thead><tbody>",
    );
    if input.keys.is_empty() {
        body.push_str(
            "<tr><td colspan=\"6\" class=\"empty\">No keys used in this period.</td></tr>",
        );
    }
    for k in input.keys {
        let _ = write!(
            body,
            "<tr><td>{}{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            escape(&k.name),
            if k.revoked { " (revoked)" } else { "" },
            escape(&k.id),
            escape(&k.team),
            count(k.requests),
            count(k.input_tokens),
            count(k.output_tokens)
        );
    }
    body.push_str("</tbody></table></div>");
    page("Usage", Nav::Usage, &body)
}

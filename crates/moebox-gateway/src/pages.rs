//! The admin pages under `/admin/` and their exports, for a browser: an admin key as a Bearer
//! header, or an admin session cookie set by the login form.
//!
//! Sessions: the login form posts an admin key; the gateway checks it like any key (failed
//! attempts count against the client's address) and answers a random 256-bit session id in a
//! cookie that is `HttpOnly`, `SameSite=Strict`, scoped to `/admin`, and `Secure` over TLS.
//! Sessions live in memory (bounded, [`SESSION_LIFETIME`]); a revoked or demoted key ends its
//! sessions at the next request. CSRF: `SameSite=Strict` keeps the cookie off cross-site
//! requests, and every state-changing request made with a session also needs that session's
//! token (a hidden form field, or the `X-CSRF-Token` header for the key API); the login form
//! itself carries a token bound to a short-lived cookie (double submit), so a foreign page
//! cannot log a browser into an attacker's session. Pages are sent with a strict
//! Content-Security-Policy (no script, no external anything), `no-store`, `nosniff`, and
//! `frame-ancestors 'none'`.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::Mutex,
    time::{Duration, Instant},
};

use hyper::{
    HeaderMap, Response, StatusCode,
    header::{self, HeaderValue},
};
use moebox_ledger::{
    Ledger, LedgerError, Step, TelemetrySource, UnixSeconds, UsageFilter,
    export::{ReportGroup, records_to_csv, records_to_json},
};
use moebox_pages as pages;
pub use moebox_pages::{
    PATH_GPUS, PATH_LOGIN, PATH_LOGOUT, PATH_OVERVIEW, PATH_SCHEDULE, PATH_USAGE,
};
use moebox_tco::{CostModel, Date};
use rand::{TryRngCore, rngs::OsRng};

use crate::{accounting, body::GatewayBody, error::ApiError};

/// The session cookie.
pub const SESSION_COOKIE: &str = "moebox_session";
/// The login form's double-submit cookie.
pub const LOGIN_COOKIE: &str = "moebox_login";
/// The hidden form field holding a CSRF token.
pub const CSRF_FIELD: &str = "csrf";
/// The header holding a session's CSRF token on key-API calls made with the cookie.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts after sign-in (a working day and a half).
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// How long the login form may sit before it is posted.
pub const LOGIN_FORM_LIFETIME: Duration = Duration::from_secs(600);
/// Sessions held at once; the oldest is dropped beyond it (admins are few).
pub const MAX_SESSIONS: usize = 256;
/// Raw usage records one export holds at most; the page says to narrow the period beyond it.
pub const MAX_EXPORT_RECORDS: u32 = 10_000;
/// How far back the GPU charts reach.
pub const GPU_HISTORY: Duration = Duration::from_secs(24 * 3600);
/// Content-Security-Policy of every page: inline styles and data: images only.
pub const PAGE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

#[derive(Debug, Clone)]
struct Session {
    key_id: i64,
    csrf: String,
    expires: Instant,
}

/// Signed-in admin browsers.
#[derive(Debug, Default)]
pub struct Sessions {
    sessions: Mutex<HashMap<String, Session>>,
}

/// A request authenticated by a session cookie: whose, and its CSRF token.
#[derive(Debug, Clone)]
pub struct SessionAuth {
    pub key_id: i64,
    pub csrf: String,
}

impl Sessions {
    /// A new session for `key_id`: (session id, CSRF token).
    pub fn create(&self, key_id: i64, now: Instant) -> Result<(String, String), ApiError> {
        let id = random_token()?;
        let csrf = random_token()?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, session| session.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            id.clone(),
            Session {
                key_id,
                csrf: csrf.clone(),
                expires: now + SESSION_LIFETIME,
            },
        );
        Ok((id, csrf))
    }

    /// The live session named by the request's cookie.
    pub fn find(&self, headers: &HeaderMap, now: Instant) -> Option<(String, SessionAuth)> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let session = sessions.get(id).filter(|s| s.expires > now)?;
        Some((
            id.to_owned(),
            SessionAuth {
                key_id: session.key_id,
                csrf: session.csrf.clone(),
            },
        ))
    }

    pub fn remove(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

fn random_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    OsRng.try_fill_bytes(&mut bytes).map_err(|error| {
        tracing::error!(%error, "the OS random number generator failed");
        ApiError::Internal
    })?;
    Ok(bytes.iter().fold(String::with_capacity(64), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    }))
}

/// Compares two tokens in constant time for equal lengths.
pub fn tokens_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// `application/x-www-form-urlencoded` fields (`+` is a space, `%XX` a byte). Malformed
/// escapes are kept as they are; non-UTF-8 results are replaced.
pub fn form_fields(body: &[u8]) -> HashMap<String, String> {
    fn decode(text: &[u8]) -> String {
        let mut out = Vec::with_capacity(text.len());
        let mut i = 0;
        while i < text.len() {
            match text[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < text.len() => {
                    let hex = std::str::from_utf8(&text[i + 1..i + 3])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                    match hex {
                        Some(byte) => {
                            out.push(byte);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                other => out.push(other),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut parts = pair.splitn(2, |&b| b == b'=');
            let key = decode(parts.next().unwrap_or_default());
            let value = decode(parts.next().unwrap_or_default());
            (key, value)
        })
        .collect()
}

/// A page, with the headers every page carries.
pub fn html(status: StatusCode, body: String) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// A `303 See Other` to `location`.
pub fn redirect(location: &'static str) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(location));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `Set-Cookie` for `name=value` on `/admin`, living `max_age` (zero: delete).
pub fn set_cookie(
    response: &mut Response<GatewayBody>,
    name: &str,
    value: &str,
    max_age: Duration,
    secure: bool,
) {
    let text = format!(
        "{name}={value}; Path=/admin; Max-Age={}; HttpOnly; SameSite=Strict{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    if let Ok(value) = HeaderValue::from_str(&text) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// The login form, with a fresh double-submit token in its cookie and hidden field.
pub fn login_form(
    error: Option<&str>,
    status: StatusCode,
    secure: bool,
) -> Result<Response<GatewayBody>, ApiError> {
    let token = random_token()?;
    let mut response = html(
        status,
        pages::login(&pages::LoginPage {
            action: PATH_LOGIN,
            csrf_token: &token,
            csrf_field: CSRF_FIELD,
            error,
        }),
    );
    set_cookie(
        &mut response,
        LOGIN_COOKIE,
        &token,
        LOGIN_FORM_LIFETIME,
        secure,
    );
    Ok(response)
}

/// The query string's `from` and `to` (YYYY-MM-DD, both included), defaulting to this month
/// to date; a malformed date is a 400 naming the parameter.
pub fn period(query: Option<&str>, today: Date) -> Result<(Date, Date), ApiError> {
    let mut from = today.year_month().first_day();
    let mut to = today;
    for pair in query.unwrap_or_default().split('&') {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        let target = match key {
            "from" => &mut from,
            "to" => &mut to,
            _ => continue,
        };
        *target = Date::parse(value).map_err(|e| ApiError::InvalidValue {
            param: key.to_owned(),
            message: format!("`{key}` must be a date YYYY-MM-DD: {e}"),
        })?;
    }
    if to < from {
        return Err(ApiError::InvalidValue {
            param: "to".into(),
            message: format!("`to` ({to}) is before `from` ({from})"),
        });
    }
    Ok((from, to))
}

/// The value of query parameter `name`.
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

fn stamp(now: UnixSeconds) -> String {
    let text = now.to_rfc3339();
    format!("{} {} UTC", &text[..10], &text[11..16])
}

fn ledger_error(error: LedgerError) -> ApiError {
    tracing::error!(%error, "admin page: reading the ledger failed");
    ApiError::Internal
}

fn report_error(error: accounting::AccountingError) -> ApiError {
    tracing::error!(%error, "admin page: the cost report failed");
    ApiError::Internal
}

fn today(now: UnixSeconds) -> Result<Date, ApiError> {
    accounting::date_of(now).ok_or(ApiError::Internal)
}

/// `GET /admin/`: this month to date.
pub fn overview(ledger: &Ledger, model: &CostModel, now: UnixSeconds) -> Result<String, ApiError> {
    let today = today(now)?;
    let from = today.year_month().first_day();
    let report = accounting::report(ledger, model, from, today).map_err(report_error)?;
    let (start, end) = accounting::span(from, today);
    let daily = ledger
        .usage_series(start, end, Step::Day, &UsageFilter::All)
        .map_err(ledger_error)?
        .into_iter()
        .filter_map(|point| {
            let (date, _) = Date::from_unix_seconds(point.start.0)?;
            (from <= date && date <= today).then_some(pages::DailyTokens {
                date,
                input_tokens: point.totals.prompt_tokens,
                output_tokens: point.totals.completion_tokens,
            })
        })
        .collect::<Vec<_>>();
    let utilisation = mean_gpu_utilisation(ledger, start, end)?;
    Ok(pages::overview(&pages::OverviewPage {
        model,
        report: &report,
        daily_tokens: &daily,
        gpu_utilisation_percent: utilisation,
        generated_at: &stamp(now),
    }))
}

/// The mean of the GPUs' hourly utilisation over the period, from telemetry.
fn mean_gpu_utilisation(
    ledger: &Ledger,
    from: UnixSeconds,
    to: UnixSeconds,
) -> Result<Option<f64>, ApiError> {
    let points = ledger
        .telemetry_series(from, to, Step::Hour)
        .map_err(ledger_error)?;
    let values: Vec<f64> = points
        .iter()
        .filter(|p| matches!(p.source, TelemetrySource::Gpu(_)))
        .filter_map(|p| p.utilisation_mean_percent)
        .collect();
    Ok((!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64))
}

/// `GET /admin/schedule`.
pub fn schedule(model: &CostModel, now: UnixSeconds) -> Result<String, ApiError> {
    Ok(pages::schedule(&pages::SchedulePage {
        model,
        today: today(now)?,
        generated_at: &stamp(now),
    }))
}

/// `GET /admin/usage?from=&to=`: per team (with the chargeback) and per key.
pub fn usage(
    ledger: &Ledger,
    model: &CostModel,
    query: Option<&str>,
    now: UnixSeconds,
) -> Result<String, ApiError> {
    let (from, to) = period(query, today(now)?)?;
    let report = accounting::report(ledger, model, from, to).map_err(report_error)?;
    let (start, end) = accounting::span(from, to);
    let teams: Vec<pages::TeamUsage> = ledger
        .usage_by_team(start, end)
        .map_err(ledger_error)?
        .into_iter()
        .map(|team| pages::TeamUsage {
            charge: report
                .chargeback
                .iter()
                .find(|c| c.team == team.team)
                .map(|c| c.amount),
            team: team.team,
            requests: team.totals.requests,
            input_tokens: team.totals.prompt_tokens,
            output_tokens: team.totals.completion_tokens,
        })
        .collect();
    let keys_table = ledger.list_keys().map_err(ledger_error)?;
    let keys: Vec<pages::KeyUsage> = ledger
        .usage_by_key(start, end)
        .map_err(ledger_error)?
        .into_iter()
        .map(|key| {
            let record = keys_table.iter().find(|k| k.id == key.key_id);
            pages::KeyUsage {
                name: key.name.unwrap_or_else(|| format!("key {}", key.key_id)),
                id: record.map_or_else(|| key.key_id.to_string(), |r| r.hint.clone()),
                team: key.team.unwrap_or_default(),
                requests: key.totals.requests,
                input_tokens: key.totals.prompt_tokens,
                output_tokens: key.totals.completion_tokens,
                revoked: record.is_some_and(|r| r.revoked_at.is_some()),
            }
        })
        .collect();
    let range = format!("from={from}&to={to}");
    let exports: Vec<pages::ExportLink> = [
        ("Teams (CSV)", "usage.csv", "group=team&"),
        ("Teams (JSON)", "usage.json", "group=team&"),
        ("Keys (CSV)", "usage.csv", "group=key&"),
        ("Keys (JSON)", "usage.json", "group=key&"),
        ("Every request (CSV)", "records.csv", ""),
        ("Every request (JSON)", "records.json", ""),
    ]
    .into_iter()
    .map(|(label, file, group)| pages::ExportLink {
        label: label.to_owned(),
        href: format!("/admin/{file}?{group}{range}"),
    })
    .collect();
    Ok(pages::usage(&pages::UsagePage {
        currency: &model.currency,
        from,
        to,
        teams: &teams,
        keys: &keys,
        exports: &exports,
        generated_at: &stamp(now),
    }))
}

/// An export's body and content type: `usage.csv|json?group=team|key&from=&to=`, or
/// `records.csv|json?from=&to=` (at most [`MAX_EXPORT_RECORDS`]).
pub fn export(
    ledger: &Ledger,
    file: &str,
    query: Option<&str>,
    now: UnixSeconds,
) -> Result<Option<(&'static str, String, String)>, ApiError> {
    let (name, csv) = match file {
        "usage.csv" => ("usage", true),
        "usage.json" => ("usage", false),
        "records.csv" => ("records", true),
        "records.json" => ("records", false),
        _ => return Ok(None),
    };
    let (from, to) = period(query, today(now)?)?;
    let (start, end) = accounting::span(from, to);
    let body = if name == "usage" {
        let group = match query_param(query, "group").unwrap_or("team") {
            "team" => ReportGroup::Team,
            "key" => ReportGroup::Key,
            other => {
                return Err(ApiError::InvalidValue {
                    param: "group".into(),
                    message: format!("`group` must be `team` or `key`, got {other:?}"),
                });
            }
        };
        let report = ledger
            .usage_report(start, end, group)
            .map_err(ledger_error)?;
        if csv {
            report.to_csv()
        } else {
            report.to_json()
        }
    } else {
        let page = ledger
            .usage_records(start, end, &UsageFilter::All, None, MAX_EXPORT_RECORDS)
            .map_err(ledger_error)?;
        if page.next.is_some() {
            return Err(ApiError::InvalidValue {
                param: "from".into(),
                message: format!(
                    "the period holds more than {MAX_EXPORT_RECORDS} requests; export a \
                     shorter one"
                ),
            });
        }
        if csv {
            records_to_csv(&page.records)
        } else {
            records_to_json(&page.records)
        }
    };
    let content_type = if csv {
        "text/csv; charset=utf-8"
    } else {
        "application/json"
    };
    let filename = format!(
        "moebox-{name}-{from}-{to}.{}",
        if csv { "csv" } else { "json" }
    );
    Ok(Some((content_type, filename, body)))
}

/// `GET /admin/gpus`: the latest sample per GPU and the last day's charts.
pub fn gpus(ledger: &Ledger, now: UnixSeconds) -> Result<String, ApiError> {
    let latest = ledger.latest_telemetry().map_err(ledger_error)?;
    let gpus: Vec<pages::GpuStatus> = latest
        .iter()
        .filter_map(|sample| match sample.source {
            TelemetrySource::Gpu(index) => Some(pages::GpuStatus {
                index,
                name: sample.source.label(),
                state: pages::GpuState::Ok,
                utilisation_percent: sample.utilisation_percent,
                memory_used_bytes: sample.memory_used_bytes,
                memory_total_bytes: sample.memory_total_bytes,
                power_watts: sample.power_watts,
                power_limit_watts: None,
                temperature_celsius: sample.temperature_celsius,
                sm_clock_mhz: sample.sm_clock_mhz,
                energy_kwh: None,
                ecc_uncorrected_errors: sample.ecc_errors,
                throttle_reasons: Vec::new(),
            }),
            TelemetrySource::Cpu => None,
        })
        .collect();
    let from = UnixSeconds(now.0 - GPU_HISTORY.as_secs() as i64);
    let points = ledger
        .telemetry_series(from, now, Step::Hour)
        .map_err(ledger_error)?;
    let mut starts: Vec<i64> = points.iter().map(|p| p.start.0).collect();
    starts.sort_unstable();
    starts.dedup();
    let labels = starts
        .iter()
        .map(|&s| UnixSeconds(s).to_rfc3339()[11..16].to_owned())
        .collect();
    let history = pages::GpuHistory {
        labels,
        gpus: gpus
            .iter()
            .map(|gpu| {
                let samples = starts
                    .iter()
                    .map(|&start| {
                        points
                            .iter()
                            .find(|p| {
                                p.start.0 == start && p.source == TelemetrySource::Gpu(gpu.index)
                            })
                            .map(|p| pages::GpuSample {
                                utilisation_percent: p.utilisation_mean_percent,
                                power_watts: p.power_mean_watts,
                            })
                    })
                    .collect();
                (gpu.name.clone(), samples)
            })
            .collect(),
    };
    let sampled_at = latest
        .iter()
        .map(|s| s.at)
        .max()
        .map_or_else(|| "never".to_owned(), |at| stamp(UnixSeconds(at.0 / 1000)));
    Ok(pages::gpus(&pages::GpusPage {
        gpus: &gpus,
        history: &history,
        sampled_at: &sampled_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_decode_plus_and_percent() {
        let fields = form_fields(b"key=mbx_a%2Bb+c&csrf=%zz&empty=&=x");
        assert_eq!(fields["key"], "mbx_a+b c");
        assert_eq!(fields["csrf"], "%zz");
        assert_eq!(fields["empty"], "");
        let truncated = form_fields(b"k=%4");
        assert_eq!(truncated["k"], "%4");
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; moebox_session=abc"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "b"), Some("2"));
        assert_eq!(cookie(&headers, "c"), None);
    }

    #[test]
    fn sessions_expire_and_are_bounded() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let (id, csrf) = sessions.create(7, t0).expect("session");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{SESSION_COOKIE}={id}")).expect("header"),
        );
        let (_, found) = sessions.find(&headers, t0).expect("live");
        assert_eq!(found.key_id, 7);
        assert!(tokens_equal(&found.csrf, &csrf));
        assert!(sessions.find(&headers, t0 + SESSION_LIFETIME).is_none());
        for key in 0..(MAX_SESSIONS as i64 + 10) {
            sessions.create(key, t0).expect("session");
        }
        assert!(sessions.sessions.lock().expect("lock").len() <= MAX_SESSIONS);
    }

    #[test]
    fn periods_default_to_the_month_and_name_bad_dates() {
        let today = Date::parse("2026-11-26").expect("date");
        let (from, to) = period(None, today).expect("default");
        assert_eq!(
            (from.to_string(), to.to_string()),
            ("2026-11-01".into(), "2026-11-26".into())
        );
        let error = period(Some("from=2026-13-01"), today).expect_err("bad month");
        assert_eq!(error.param(), Some("from"));
        let error = period(Some("from=2026-11-20&to=2026-11-10"), today).expect_err("inverted");
        assert_eq!(error.param(), Some("to"));
    }
}

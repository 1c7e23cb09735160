//! Counters for `/metrics`, in Prometheus' text format. Labels take values from closed sets
//! (route names, status codes, engine indexes), so a client cannot grow the series.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
};

use std::time::Duration;

use crate::router::EngineStatus;

/// Bucket bounds (seconds) for time to first token: prefill of a short prompt on an idle
/// GPU is tens of milliseconds; a queued long prompt on a busy CPU, seconds.
pub const TTFT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Bucket bounds (seconds) between streamed chunks: one decode step is milliseconds.
pub const INTER_TOKEN_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Bucket bounds (seconds) for a whole generation request, up to the request deadline.
pub const E2E_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// A Prometheus histogram with fixed bounds; lock-free.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One counter per bound, plus +Inf.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let index = self
            .bounds
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(self.bounds.len());
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(value.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (index, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            match self.bounds.get(index) {
                Some(bound) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    generations_in_flight: AtomicI64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    connections_refused: AtomicU64,
    tls_handshake_failures: AtomicU64,
    ledger_failures: AtomicU64,
    pub time_to_first_token: Histogram,
    pub inter_token: Histogram,
    pub end_to_end: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::default(),
            generations_in_flight: AtomicI64::default(),
            prompt_tokens: AtomicU64::default(),
            completion_tokens: AtomicU64::default(),
            connections_refused: AtomicU64::default(),
            tls_handshake_failures: AtomicU64::default(),
            ledger_failures: AtomicU64::default(),
            time_to_first_token: Histogram::new(TTFT_BUCKETS),
            inter_token: Histogram::new(INTER_TOKEN_BUCKETS),
            end_to_end: Histogram::new(E2E_BUCKETS),
        }
    }
}

/// Counts one generation as in flight while it lives.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.generations_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn record_request(&self, route: &'static str, status: u16) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *requests.entry((route, status)).or_default() += 1;
    }

    pub fn record_tokens(&self, prompt: u32, completion: u32) {
        self.prompt_tokens
            .fetch_add(u64::from(prompt), Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(u64::from(completion), Ordering::Relaxed);
    }

    /// A connection from outside `gateway.allowed_clients`, closed at accept.
    pub fn record_connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A usage record the ledger could not store (the request got 503).
    pub fn record_ledger_failure(&self) {
        self.ledger_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_tls_handshake_failure(&self) {
        self.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> InFlight<'_> {
        self.generations_in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// `queued`: generation requests admitted by the gateway (running or waiting for an
    /// engine).
    pub fn render(&self, engines: &[EngineStatus], queued: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP moebox_gateway_requests_total HTTP requests answered, by route and status.\n\
             # TYPE moebox_gateway_requests_total counter"
        );
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for ((route, status), count) in requests {
            let _ = writeln!(
                out,
                "moebox_gateway_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        for (name, help, kind, value) in [
            (
                "moebox_gateway_generations_in_flight",
                "Generation requests admitted and not finished.",
                "gauge",
                self.generations_in_flight.load(Ordering::Relaxed).max(0) as u64,
            ),
            (
                "moebox_gateway_queued_requests",
                "Generation requests holding a place in the gateway's bounded queue \
                 (gateway.max_queued_requests), running or waiting.",
                "gauge",
                queued as u64,
            ),
            (
                "moebox_gateway_prompt_tokens_total",
                "Prompt tokens of finished generations.",
                "counter",
                self.prompt_tokens.load(Ordering::Relaxed),
            ),
            (
                "moebox_gateway_completion_tokens_total",
                "Completion tokens of finished generations.",
                "counter",
                self.completion_tokens.load(Ordering::Relaxed),
            ),
            (
                "moebox_gateway_connections_refused_total",
                "Connections closed at accept: the client is not in gateway.allowed_clients.",
                "counter",
                self.connections_refused.load(Ordering::Relaxed),
            ),
            (
                "moebox_gateway_ledger_write_failures_total",
                "Usage records the ledger could not store; those requests were answered 503.",
                "counter",
                self.ledger_failures.load(Ordering::Relaxed),
            ),
            (
                "moebox_gateway_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out.",
                "counter",
                self.tls_handshake_failures.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        self.time_to_first_token.render(
            &mut out,
            "moebox_gateway_time_to_first_token_seconds",
            "From a generation request's arrival to its first text.",
        );
        self.inter_token.render(
            &mut out,
            "moebox_gateway_inter_token_latency_seconds",
            "Between consecutive text chunks of a generation.",
        );
        self.end_to_end.render(
            &mut out,
            "moebox_gateway_request_duration_seconds",
            "From a generation request's arrival to its completion, for generations that \
             finished.",
        );
        for (name, help, value) in [
            (
                "moebox_engine_ready",
                "1 when the engine answered ready at the last poll.",
                (|e: &EngineStatus| u64::from(e.ready)) as fn(&EngineStatus) -> u64,
            ),
            (
                "moebox_engine_running",
                "Sequences in the engine's batch at the last poll.",
                |e| u64::from(e.load.running),
            ),
            (
                "moebox_engine_waiting",
                "Requests in the engine's wait queue at the last poll.",
                |e| u64::from(e.load.waiting),
            ),
            (
                "moebox_engine_gateway_in_flight",
                "Requests the gateway has open on the engine.",
                |e| u64::from(e.in_flight),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (index, engine) in engines.iter().enumerate() {
                let _ = writeln!(out, "{name}{{engine=\"{index}\"}} {}", value(engine));
            }
        }
        out
    }
}

/// The cost gauges of `/metrics`, this month to date (UTC), from the cost model's report.
/// Money in the config's currency (a label), energy in joules, as Prometheus prefers base
/// units.
pub fn render_costs(out: &mut String, report: &moebox_tco::Report) {
    let currency = report.currency.code().replace(['"', '\\', '\n'], "");
    let money = |m: moebox_tco::Money| m.micros() as f64 / 1e6;
    let _ = writeln!(
        out,
        "# HELP moebox_energy_month_to_date_joules IT energy the GPUs (or CPU) used this \
         month, from the hardware energy counters.\n\
         # TYPE moebox_energy_month_to_date_joules gauge\n\
         moebox_energy_month_to_date_joules {}",
        report.energy_it.milliwatt_hours() as f64 * 3.6
    );
    let _ = writeln!(
        out,
        "# HELP moebox_cost_month_to_date The appliance's all-in cost this month: \
         amortisation, fixed costs and energy.\n# TYPE moebox_cost_month_to_date gauge\n\
         moebox_cost_month_to_date{{currency=\"{currency}\"}} {}",
        money(report.total)
    );
    let _ = writeln!(
        out,
        "# HELP moebox_idle_cost_month_to_date The part of this month's cost spent in hours \
         without a request.\n# TYPE moebox_idle_cost_month_to_date gauge\n\
         moebox_idle_cost_month_to_date{{currency=\"{currency}\"}} {}",
        money(report.idle_cost)
    );
    if let Some(per_million) = report.cost_per_million_tokens {
        let _ = writeln!(
            out,
            "# HELP moebox_cost_per_million_tokens This month's all-in cost per million \
             tokens (prompt and completion).\n# TYPE moebox_cost_per_million_tokens gauge\n\
             moebox_cost_per_million_tokens{{currency=\"{currency}\"}} {}",
            money(per_million)
        );
    }
    let _ = writeln!(
        out,
        "# HELP moebox_alternative_cost_month_to_date What this month's tokens and hours would \
         have cost on each alternative.\n# TYPE moebox_alternative_cost_month_to_date gauge"
    );
    for alternative in &report.alternatives {
        let name = alternative.name.replace(['"', '\\', '\n'], "");
        let _ = writeln!(
            out,
            "moebox_alternative_cost_month_to_date{{alternative=\"{name}\",currency=\"{currency}\"}} {}",
            money(alternative.cost)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_engine_gauges() {
        let metrics = Metrics::default();
        metrics.record_request("chat_completions", 200);
        metrics.record_request("chat_completions", 200);
        metrics.record_tokens(3, 4);
        let guard = metrics.in_flight();
        metrics
            .time_to_first_token
            .observe(Duration::from_millis(30));
        metrics
            .time_to_first_token
            .observe(Duration::from_secs(100));
        let text = metrics.render(
            &[EngineStatus {
                ready: true,
                ..EngineStatus::default()
            }],
            5,
        );
        drop(guard);
        assert!(text.contains(
            "moebox_gateway_requests_total{route=\"chat_completions\",status=\"200\"} 2"
        ));
        assert!(text.contains("moebox_gateway_generations_in_flight 1"));
        assert!(text.contains("moebox_gateway_completion_tokens_total 4"));
        assert!(text.contains("moebox_engine_ready{engine=\"0\"} 1"));
        assert!(text.contains("moebox_gateway_queued_requests 5"));
        assert!(text.contains("moebox_gateway_time_to_first_token_seconds_bucket{le=\"0.025\"} 0"));
        assert!(text.contains("moebox_gateway_time_to_first_token_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("moebox_gateway_time_to_first_token_seconds_bucket{le=\"60\"} 1"));
        assert!(text.contains("moebox_gateway_time_to_first_token_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("moebox_gateway_time_to_first_token_seconds_sum 100.03"));
        assert!(text.contains("moebox_gateway_time_to_first_token_seconds_count 2"));
    }
}

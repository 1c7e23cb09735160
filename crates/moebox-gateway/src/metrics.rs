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

use crate::router::EngineStatus;

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    generations_in_flight: AtomicI64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    connections_refused: AtomicU64,
    tls_handshake_failures: AtomicU64,
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

    pub fn record_tls_handshake_failure(&self) {
        self.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> InFlight<'_> {
        self.generations_in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    pub fn render(&self, engines: &[EngineStatus]) -> String {
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
        let text = metrics.render(&[EngineStatus {
            ready: true,
            ..EngineStatus::default()
        }]);
        drop(guard);
        assert!(text.contains(
            "moebox_gateway_requests_total{route=\"chat_completions\",status=\"200\"} 2"
        ));
        assert!(text.contains("moebox_gateway_generations_in_flight 1"));
        assert!(text.contains("moebox_gateway_completion_tokens_total 4"));
        assert!(text.contains("moebox_engine_ready{engine=\"0\"} 1"));
    }
}

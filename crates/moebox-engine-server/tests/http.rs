//! The server over a real Unix socket, in front of a scripted backend: routing, refusals,
//! limits, streaming, client disconnects and the drain.

#[path = "../../../tests/support/unix_http.rs"]
mod unix_http;

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use moebox_engine_server::{Backend, Drained, EventStream, ServerLimits, serve};
use moebox_protocol::{
    EngineState, ErrorBody, ErrorCode, Event, FinishReason, GenerateRequest, Health, Load, Prompt,
    Usage,
    telemetry::{CounterEvent, GpuSample, Reading, TelemetryBatch},
};
use moebox_telemetry::{Recorded, Sampler, Source, TelemetryLog};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use unix_http::{get_json, send};

/// A backend whose streams the test drives by hand.
struct Scripted {
    state: Mutex<Option<EngineState>>,
    /// Senders of the streams opened with the prompt `"open"`, in order.
    open: Mutex<Vec<mpsc::Sender<Event>>>,
    /// Streams dropped by the server.
    dropped: Arc<AtomicUsize>,
    /// What the test samples into (by hand, through the real sampler).
    telemetry: TelemetryLog,
}

/// The ring of the scripted backend: small, so a test can overflow it.
const TELEMETRY_CAPACITY: usize = 4;

impl Default for Scripted {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            open: Mutex::default(),
            dropped: Arc::default(),
            telemetry: TelemetryLog::new("scripted-1", Duration::from_secs(5), TELEMETRY_CAPACITY),
        }
    }
}

struct ScriptedEvents {
    events: mpsc::Receiver<Event>,
    dropped: Arc<AtomicUsize>,
}

impl Drop for ScriptedEvents {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

impl EventStream for ScriptedEvents {
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.events.poll_recv(cx)
    }
}

fn done(completion_tokens: u32) -> Event {
    Event::Done {
        finish_reason: FinishReason::Length,
        usage: Usage {
            prompt_tokens: 2,
            completion_tokens,
        },
    }
}

impl Backend for Scripted {
    type Events = ScriptedEvents;

    fn submit(&self, request: GenerateRequest) -> Result<ScriptedEvents, ErrorBody> {
        let Prompt::Text(prompt) = request.prompt else {
            panic!("tests send text prompts");
        };
        let (sender, events) = mpsc::channel(8);
        let refuse = |code, retry_after_seconds| {
            Err(ErrorBody {
                message: format!("refused: {prompt}"),
                code,
                param: Some("prompt".into()),
                retry_after_seconds,
            })
        };
        match prompt.as_str() {
            "finite" => {
                for event in [
                    Event::Started { prompt_tokens: 2 },
                    Event::Token {
                        text: "é".into(),
                        token_ids: vec![7, 8],
                    },
                    done(2),
                ] {
                    sender.try_send(event).expect("room");
                }
            }
            "open" => self.open.lock().expect("lock").push(sender),
            "invalid" => return refuse(ErrorCode::InvalidRequest, None),
            "too long" => return refuse(ErrorCode::ContextLengthExceeded, None),
            "queue full" => return refuse(ErrorCode::QueueFull, Some(3)),
            "unavailable" => return refuse(ErrorCode::Unavailable, None),
            "internal" => return refuse(ErrorCode::Internal, None),
            other => panic!("unscripted prompt {other}"),
        }
        Ok(ScriptedEvents {
            events,
            dropped: Arc::clone(&self.dropped),
        })
    }

    fn health(&self) -> Health {
        Health {
            state: self.state().unwrap_or(EngineState::Ready),
            model: "scripted".into(),
            device: "cpu".into(),
        }
    }

    fn load(&self) -> Option<Load> {
        (self.state().is_none()).then(|| Load {
            running: self.open.lock().expect("lock").len() as u32,
            ..Load::default()
        })
    }

    fn telemetry(&self, since: u64) -> TelemetryBatch {
        self.telemetry.since(since)
    }
}

impl Scripted {
    fn state(&self) -> Option<EngineState> {
        *self.state.lock().expect("lock")
    }

    /// The sender of the `n`th open stream, once the server has submitted it.
    fn stream(&self, n: usize) -> mpsc::Sender<Event> {
        wait_until("the stream opens", || {
            self.open.lock().expect("lock").len() > n
        });
        self.open.lock().expect("lock")[n].clone()
    }
}

struct Server {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    backend: Arc<Scripted>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Drained>>,
}

impl Server {
    fn start(limits: ServerLimits) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("engine-0.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let backend = Arc::new(Scripted::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let served = Arc::clone(&backend);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::UnixListener::from_std(listener).expect("listener");
                serve(listener, served, limits, async {
                    let _ = stopped.await;
                })
                .await
            })
        });
        Self {
            _dir: dir,
            socket,
            backend,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn generate(&self, prompt: &str) -> unix_http::Response {
        let body = json!({"prompt": {"kind": "text", "value": prompt}, "max_tokens": 4});
        send(
            &self.socket,
            "POST",
            "/v1/generate",
            Some(body.to_string().as_bytes()),
        )
    }

    /// Begins the shutdown; returns how the drain ended.
    fn shut_down(&mut self) -> JoinHandle<Drained> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.thread.take().expect("running")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn generate_streams_one_event_per_line_chunked() {
    let server = Server::start(ServerLimits::default());
    let mut response = server.generate("finite");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("application/x-ndjson")
    );
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    let mut events = Vec::new();
    while let Some(line) = response.next_line() {
        events.push(serde_json::from_str::<Event>(&line).expect("an event"));
    }
    assert_eq!(
        events,
        [
            Event::Started { prompt_tokens: 2 },
            Event::Token {
                text: "é".into(),
                token_ids: vec![7, 8]
            },
            done(2)
        ]
    );
}

#[test]
fn events_reach_the_client_as_they_happen() {
    let server = Server::start(ServerLimits::default());
    let mut response = server.generate("open");
    assert_eq!(response.status, 200);
    let stream = server.backend.stream(0);
    for n in 0..3 {
        stream
            .try_send(Event::Token {
                text: format!("t{n}"),
                token_ids: vec![n],
            })
            .expect("room");
        // Each line arrives before the next event exists: nothing waits for the end.
        assert_eq!(
            response.next_json().expect("a line")["text"],
            format!("t{n}")
        );
    }
    stream.try_send(done(3)).expect("room");
    assert_eq!(response.next_json().expect("done")["event"], "done");
    assert_eq!(response.next_line(), None, "the body ends after done");
}

#[test]
fn a_client_that_hangs_up_mid_stream_drops_its_events_and_the_server_goes_on() {
    let server = Server::start(ServerLimits::default());
    let mut response = server.generate("open");
    let stream = server.backend.stream(0);
    stream
        .try_send(Event::Started { prompt_tokens: 2 })
        .expect("room");
    assert_eq!(response.next_json().expect("started")["event"], "started");
    assert_eq!(server.backend.dropped.load(Ordering::SeqCst), 0);
    // No more events come: the server notices the hang-up on the socket itself, not on a
    // failed write.
    response.hang_up();
    wait_until("the server drops the stream", || {
        server.backend.dropped.load(Ordering::SeqCst) == 1
    });
    assert!(stream.is_closed(), "the engine side sees the stream closed");
    let (status, _) = get_json(&server.socket, "/v1/health");
    assert_eq!(status, 200);
}

#[test]
fn refusals_carry_their_status_error_body_and_retry_after() {
    let server = Server::start(ServerLimits::default());
    for (prompt, status, code, retry_after) in [
        ("invalid", 400, "invalid_request", None),
        ("too long", 400, "context_length_exceeded", None),
        ("queue full", 429, "queue_full", Some("3")),
        ("unavailable", 503, "unavailable", Some("1")),
        ("internal", 500, "internal", None),
    ] {
        let response = server.generate(prompt);
        assert_eq!(response.status, status, "{prompt}");
        assert_eq!(response.header("retry-after"), retry_after, "{prompt}");
        assert_eq!(response.header("content-type"), Some("application/json"));
        let body: ErrorBody = serde_json::from_value(response.json()).expect("an ErrorBody");
        assert_eq!(serde_json::to_value(body.code).expect("code"), code);
        assert_eq!(body.message, format!("refused: {prompt}"));
        assert_eq!(body.param.as_deref(), Some("prompt"));
    }
}

#[test]
fn bad_json_is_a_400_naming_the_problem() {
    let server = Server::start(ServerLimits::default());
    for (body, expected, param) in [
        (&b"{\"prompt\": "[..], "EOF", Some("prompt")),
        (&br#"{"max_tokens": 3}"#[..], "missing field `prompt`", None),
        (
            &br#"{"prompt":{"kind":"text","value":"x"},"temperature":"hot"}"#[..],
            "field `temperature`",
            Some("temperature"),
        ),
        (&b"\xff\xfe"[..], "invalid request body", None),
    ] {
        let response = send(&server.socket, "POST", "/v1/generate", Some(body));
        assert_eq!(response.status, 400);
        let error = response.json();
        assert_eq!(error["code"], "invalid_request");
        let message = error["message"].as_str().expect("message");
        assert!(message.contains(expected), "{message}");
        assert_eq!(error["param"].as_str(), param, "{error}");
    }
}

#[test]
fn a_body_over_the_limit_is_refused_with_413() {
    let server = Server::start(ServerLimits {
        max_body_bytes: 64,
        ..ServerLimits::default()
    });
    // Declared too long: refused before reading it.
    let mut stream = UnixStream::connect(&server.socket).expect("connect");
    stream
        .write_all(
            b"POST /v1/generate HTTP/1.1\r\nHost: e\r\nConnection: close\r\nContent-Length: 65\r\n\r\n",
        )
        .expect("write");
    let response = unix_http::read_response(stream);
    assert_eq!(response.status, 413);
    assert!(
        response.json()["message"]
            .as_str()
            .expect("message")
            .contains("64 bytes")
    );
    // Chunked, no length given: cut where it passes the limit.
    let mut stream = UnixStream::connect(&server.socket).expect("connect");
    let chunk = "x".repeat(100);
    stream
        .write_all(
            format!(
                "POST /v1/generate HTTP/1.1\r\nHost: e\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n{chunk}\r\n0\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("write");
    assert_eq!(unix_http::read_response(stream).status, 413);
}

#[test]
fn the_default_body_limit_is_four_mebibytes() {
    assert_eq!(moebox_engine_server::MAX_REQUEST_BODY_BYTES, 4 << 20);
    let server = Server::start(ServerLimits::default());
    let mut stream = UnixStream::connect(&server.socket).expect("connect");
    stream
        .write_all(
            format!(
                "POST /v1/generate HTTP/1.1\r\nHost: e\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                (4 << 20) + 1
            )
            .as_bytes(),
        )
        .expect("write");
    assert_eq!(unix_http::read_response(stream).status, 413);
}

#[test]
fn unknown_paths_are_404_and_wrong_methods_405_with_an_error_body() {
    let server = Server::start(ServerLimits::default());
    let response = send(&server.socket, "GET", "/v1/nope", None);
    assert_eq!(response.status, 404);
    let body = response.json();
    assert_eq!(body["code"], "invalid_request");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("/v1/nope")
    );
    let response = send(&server.socket, "GET", "/v1/generate", None);
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("POST"));
    let response = send(&server.socket, "POST", "/v1/load", Some(b"{}"));
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("GET"));
}

#[test]
fn health_ready_and_load_follow_the_engine_state() {
    let server = Server::start(ServerLimits::default());
    *server.backend.state.lock().expect("lock") = Some(EngineState::Loading);
    let (status, health) = get_json(&server.socket, "/v1/health");
    assert_eq!((status, &health["state"]), (200, &Value::from("loading")));
    let (status, ready) = get_json(&server.socket, "/v1/ready");
    assert_eq!((status, &ready["state"]), (503, &Value::from("loading")));
    let response = send(&server.socket, "GET", "/v1/load", None);
    assert_eq!(response.status, 503);
    assert_eq!(
        response.header("retry-after"),
        Some(
            moebox_engine_server::LOADING_RETRY_AFTER_SECONDS
                .to_string()
                .as_str()
        )
    );
    assert!(
        response.json()["message"]
            .as_str()
            .expect("message")
            .contains("loading")
    );

    *server.backend.state.lock().expect("lock") = None;
    let (status, ready) = get_json(&server.socket, "/v1/ready");
    assert_eq!((status, &ready["state"]), (200, &Value::from("ready")));
    assert_eq!(ready["model"], "scripted");
    let (status, load) = get_json(&server.socket, "/v1/load");
    assert_eq!((status, &load["running"]), (200, &Value::from(0)));
    let _stream = server.generate("open");
    server.backend.stream(0);
    assert_eq!(get_json(&server.socket, "/v1/load").1["running"], 1);
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let server = Server::start(ServerLimits::default());
    let mut stream = UnixStream::connect(&server.socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buffer = vec![0; 4096];
    for _ in 0..3 {
        stream
            .write_all(b"GET /v1/health HTTP/1.1\r\nHost: e\r\n\r\n")
            .expect("write");
        let n = stream.read(&mut buffer).expect("read");
        assert!(
            buffer[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            &buffer[..n]
        );
    }
}

#[test]
fn a_client_that_sends_no_head_is_cut_off() {
    let server = Server::start(ServerLimits {
        header_read_timeout: Duration::from_millis(200),
        ..ServerLimits::default()
    });
    let mut stream = UnixStream::connect(&server.socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(b"GET /v1/heal").expect("write");
    let start = Instant::now();
    let mut rest = Vec::new();
    // The server closes the connection (after at most an error status).
    stream
        .read_to_end(&mut rest)
        .expect("closed, not timed out");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(
        rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
}

#[test]
fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let server = Server::start(ServerLimits {
        max_connections: 1,
        ..ServerLimits::default()
    });
    // The first connection holds the only slot (kept alive after its request).
    let mut first = UnixStream::connect(&server.socket).expect("connect");
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    first
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: e\r\n\r\n")
        .expect("write");
    let mut buffer = vec![0; 4096];
    let n = first.read(&mut buffer).expect("read");
    assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
    // The second waits in the backlog...
    let mut second = UnixStream::connect(&server.socket).expect("connect");
    second
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n")
        .expect("write");
    second
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let waiting = second.read(&mut buffer);
    assert!(waiting.is_err(), "served beyond the limit: {waiting:?}");
    // ... and is served once the first goes.
    drop(first);
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let response = unix_http::read_response(second);
    assert_eq!(response.status, 200);
}

#[test]
fn shutdown_stops_accepting_and_lets_running_streams_finish() {
    let mut server = Server::start(ServerLimits::default());
    let mut response = server.generate("open");
    let stream = server.backend.stream(0);
    stream
        .try_send(Event::Started { prompt_tokens: 2 })
        .expect("room");
    assert_eq!(response.next_json().expect("started")["event"], "started");
    let drained = server.shut_down();
    wait_until("the listener closes", || {
        UnixStream::connect(&server.socket).is_err()
    });
    stream
        .try_send(Event::Token {
            text: "late".into(),
            token_ids: vec![1],
        })
        .expect("room");
    stream.try_send(done(1)).expect("room");
    assert_eq!(response.next_json().expect("token")["text"], "late");
    assert_eq!(response.next_json().expect("done")["event"], "done");
    assert_eq!(response.next_line(), None);
    assert_eq!(drained.join().expect("serve ends"), Drained::Completely);
}

#[test]
fn the_drain_timeout_cuts_streams_that_do_not_finish() {
    let mut server = Server::start(ServerLimits {
        drain_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    });
    let mut response = server.generate("open");
    let stream = server.backend.stream(0);
    stream
        .try_send(Event::Started { prompt_tokens: 2 })
        .expect("room");
    assert_eq!(response.next_json().expect("started")["event"], "started");
    let start = Instant::now();
    assert_eq!(
        server.shut_down().join().expect("serve ends"),
        Drained::CutOff(1)
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(server.backend.dropped.load(Ordering::SeqCst), 1);
    assert!(
        stream.is_closed(),
        "the cut stream's generation is cancelled"
    );
}

/// Recorded NVML readings of one GPU whose energy counter climbs 1.5 kJ per 5 s sample.
fn recorded_gpu(samples: u64) -> Recorded {
    Recorded::new((0..samples).map(|n| Reading::Nvml {
        driver_version: "580.65.06".into(),
        gpus: vec![GpuSample {
            index: 0,
            uuid: Some("GPU-5c2f".into()),
            utilisation_gpu_percent: Some(97),
            power_mw: Some(301_500),
            energy_counter_mj: Some(80_000_000 + n * 1_500_000),
            ..GpuSample::default()
        }],
    }))
}

fn telemetry(server: &Server, query: &str) -> (u16, Value) {
    get_json(&server.socket, &format!("/v1/telemetry{query}"))
}

#[test]
fn telemetry_serves_the_samples_after_since_with_energy_and_gaps() {
    let server = Server::start(ServerLimits::default());
    // Served while the model loads, before the first sample too.
    *server.backend.state.lock().expect("lock") = Some(EngineState::Loading);
    let (status, empty) = telemetry(&server, "");
    assert_eq!(status, 200, "{empty}");
    assert_eq!(
        serde_json::from_value::<TelemetryBatch>(empty).expect("a batch"),
        TelemetryBatch {
            instance: "scripted-1".into(),
            interval_ms: 5000,
            capacity: TELEMETRY_CAPACITY as u32,
            latest_seq: 0,
            missed: 0,
            samples: Vec::new()
        }
    );

    let mut source = recorded_gpu(7);
    let mut sampler = Sampler::default();
    let mut sample = |n: u64| {
        let mut reading = source.read();
        sampler.integrate(&mut reading, Duration::from_secs(5 * n));
        server.backend.telemetry.push(
            1_764_000_000_000 + 5_000 * n,
            Duration::from_secs(5 * n),
            reading,
        );
    };
    for n in 0..3 {
        sample(n);
    }
    let (status, body) = telemetry(&server, "?since=0");
    assert_eq!(status, 200);
    let batch: TelemetryBatch = serde_json::from_value(body.clone()).expect("a batch");
    assert_eq!((batch.latest_seq, batch.missed), (3, 0));
    let energy: Vec<_> = batch
        .samples
        .iter()
        .map(|s| match &s.reading {
            Reading::Nvml { gpus, .. } => gpus[0].energy.expect("energy"),
            other => panic!("{other:?}"),
        })
        .map(|e| (e.total_mj, e.delta_mj, e.event))
        .collect();
    assert_eq!(
        energy,
        [
            (0, 0, Some(CounterEvent::First)),
            (1_500_000, 1_500_000, None),
            (3_000_000, 1_500_000, None)
        ]
    );
    // The wire names, as a poller in another language would read them.
    let gpu = &body["samples"][2]["reading"];
    assert_eq!(gpu["source"], "nvml");
    assert_eq!(gpu["gpus"][0]["power_mw"], 301_500);
    assert_eq!(gpu["gpus"][0]["energy"]["total_mj"], 3_000_000);
    assert_eq!(body["samples"][2]["uptime_ms"], 10_000);

    // A poller that stored up to 2 gets 3 only.
    let (_, body) = telemetry(&server, "?since=2");
    assert_eq!(body["samples"].as_array().expect("samples").len(), 1);
    assert_eq!(body["samples"][0]["seq"], 3);

    // Four more overflow the ring of four: 4..7 remain, so a poller at 2 missed 3.
    for n in 3..7 {
        sample(n);
    }
    let (_, body) = telemetry(&server, "?since=2");
    let batch: TelemetryBatch = serde_json::from_value(body).expect("a batch");
    assert_eq!((batch.latest_seq, batch.missed), (7, 1));
    let seqs: Vec<u64> = batch.samples.iter().map(|s| s.seq).collect();
    assert_eq!(seqs, [4, 5, 6, 7]);
    // Energy is not lost in the gap: the totals carry it.
    let Reading::Nvml { gpus, .. } = &batch.samples[3].reading else {
        panic!("nvml");
    };
    assert_eq!(gpus[0].energy.map(|e| e.total_mj), Some(9_000_000));
}

#[test]
fn telemetry_refuses_a_bad_since_by_name() {
    let server = Server::start(ServerLimits::default());
    for (query, param) in [("?since=abc", "since"), ("?from=3", "from")] {
        let response = send(
            &server.socket,
            "GET",
            &format!("/v1/telemetry{query}"),
            None,
        );
        assert_eq!(response.status, 400, "{query}");
        let body = response.json();
        assert_eq!(body["code"], "invalid_request");
        assert_eq!(body["param"], param, "{body}");
    }
    let response = send(&server.socket, "POST", "/v1/telemetry", None);
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("GET"));
}

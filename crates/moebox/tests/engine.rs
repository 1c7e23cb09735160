//! `moebox engine` as the gateway and systemd see it: the real binary on the bundled model,
//! spoken to over its Unix socket.

#[path = "../../../tests/support/reference.rs"]
mod reference;
#[path = "../../../tests/support/unix_http.rs"]
mod unix_http;

use std::{
    os::unix::net::{UnixDatagram, UnixStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use unix_http::{Response, get_json, send_on};

/// A prompt whose greedy completion runs to `MAX_TOKENS` without EOS on the fixture.
const PROMPT: &str = "The balance sheet shows";
const MAX_TOKENS: u32 = 240;
/// Long enough for a debug build on a busy 2-core machine.
const DEADLINE: Duration = Duration::from_secs(120);
/// `engine.telemetry_interval_ms` in the tests: the shortest allowed, so samples come quickly.
const TELEMETRY_INTERVAL_MS: u64 = 100;

struct Engine {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Engine {
    /// Starts `moebox engine --gpu 0` on `model` with a test config; `env` adds variables
    /// (the real NOTIFY_SOCKET and WATCHDOG_* never reach it).
    fn spawn(model: &Path, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("moebox.toml");
        let socket_pattern = dir.path().join("engine-{gpu}.sock");
        std::fs::write(
            &config,
            format!(
                "[engine]\nmodel = {model:?}\nexecution_provider = \"cpu\"\nsocket = {socket_pattern:?}\nkv_budget_tokens = 1024\nmax_sequence_tokens = 256\ntelemetry_interval_ms = {TELEMETRY_INTERVAL_MS}\n",
                model = model.display().to_string(),
                socket_pattern = socket_pattern.display().to_string(),
            ),
        )
        .expect("write config");
        let stderr = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_moebox"));
        command
            .args(["engine", "--gpu", "0", "--config"])
            .arg(&config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env("MOEBOX_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("start moebox engine");
        let socket = dir.path().join("engine-0.sock");
        Self { child, dir, socket }
    }

    fn start(env: &[(&str, &str)]) -> Self {
        let engine = Self::spawn(&reference::fixture(), env);
        engine.wait_ready();
        engine
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// Polls `/v1/ready` until it answers 200.
    fn wait_ready(&self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(stream) = UnixStream::connect(&self.socket) {
                let response = send_on(stream, "GET", "/v1/ready", None);
                let status = response.status;
                let health = response.json();
                if status == 200 {
                    assert_eq!(health["state"], "ready");
                    return;
                }
                assert_eq!(status, 503, "{health}");
            }
            assert!(
                Instant::now() < deadline,
                "the engine did not become ready:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn request(&self, method: &str, path: &str, body: Option<&[u8]>) -> Response {
        let stream = UnixStream::connect(&self.socket).expect("connect to the engine");
        send_on(stream, method, path, body)
    }

    fn generate(&self, prompt: &str, max_tokens: u32) -> Response {
        let body = json!({"prompt": {"kind": "text", "value": prompt}, "max_tokens": max_tokens});
        let response = self.request("POST", "/v1/generate", Some(body.to_string().as_bytes()));
        assert_eq!(response.status, 200, "{}", self.stderr());
        response
    }

    fn load(&self) -> Value {
        let (status, load) = get_json(&self.socket, "/v1/load");
        assert_eq!(status, 200, "{load}");
        load
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the engine did not exit:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One stream read to its end.
#[derive(Debug, Default)]
struct Stream {
    started: bool,
    ids: Vec<u64>,
    text: String,
    /// The last event (`done` or `error`).
    end: Value,
}

fn read_stream(mut response: Response) -> Stream {
    let mut stream = Stream::default();
    while let Some(event) = response.next_json() {
        match event["event"].as_str() {
            Some("started") => stream.started = true,
            Some("token") => {
                stream.ids.extend(
                    event["token_ids"]
                        .as_array()
                        .expect("token_ids")
                        .iter()
                        .map(|id| id.as_u64().expect("id")),
                );
                stream.text.push_str(event["text"].as_str().expect("text"));
            }
            Some("done" | "error") => stream.end = event,
            other => panic!("unexpected event {other:?}"),
        }
    }
    stream
}

/// `moebox generate --json` on the same prompt: the reference ids and text.
fn generate_json(prompt: &str, max_tokens: u32) -> Value {
    let fixture = reference::fixture();
    let output = Command::new(env!("CARGO_BIN_EXE_moebox"))
        .args(["generate", "--json", "--prompt", prompt, "--max-tokens"])
        .arg(max_tokens.to_string())
        .arg("--model")
        .arg(&fixture)
        .output()
        .expect("run moebox generate");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON")
}

fn ids(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_u64().expect("id"))
        .collect()
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn streamed_generation_equals_moebox_generate() {
    let engine = Engine::start(&[]);
    let (status, health) = get_json(&engine.socket, "/v1/health");
    assert_eq!(status, 200);
    assert_eq!(
        health,
        json!({"state": "ready", "model": "tiny-moe", "device": "cpu"})
    );
    for (prompt, max_tokens) in [
        (PROMPT, MAX_TOKENS),
        ("Hello, world!", 200),
        ("会計年度", 17),
    ] {
        let expected = generate_json(prompt, max_tokens);
        let response = engine.generate(prompt, max_tokens);
        assert_eq!(
            response.header("content-type"),
            Some("application/x-ndjson")
        );
        let stream = read_stream(response);
        assert!(stream.started);
        assert_eq!(stream.ids, ids(&expected["output_ids"]), "{prompt}");
        assert_eq!(stream.text, expected["text"], "{prompt}");
        assert_eq!(stream.end["event"], "done");
        assert_eq!(stream.end["finish_reason"], expected["finish_reason"]);
        assert_eq!(
            stream.end["usage"],
            json!({
                "prompt_tokens": expected["prompt_ids"].as_array().expect("ids").len(),
                "completion_tokens": stream.ids.len()
            })
        );
    }
}

#[test]
fn refusals_are_statuses_with_error_bodies() {
    let engine = Engine::start(&[]);
    let response = engine.request(
        "POST",
        "/v1/generate",
        Some(
            json!({"prompt": {"kind": "text", "value": PROMPT}, "max_tokens": 1000})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(response.status, 400);
    let body = response.json();
    assert_eq!(body["code"], "context_length_exceeded");
    assert!(
        body["message"].as_str().expect("message").contains("256"),
        "{body}"
    );
    let response = engine.request("POST", "/v1/generate", Some(b"{\"prompt\": 3}"));
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["param"], "prompt");
    assert_eq!(engine.request("GET", "/v1/models", None).status, 404);
}

#[test]
fn load_shows_running_requests_and_a_client_that_hangs_up_is_cancelled() {
    let engine = Engine::start(&[]);
    let expected = ids(&generate_json(PROMPT, MAX_TOKENS)["output_ids"]);
    let before = engine.load();
    assert_eq!(before["max_running"], 4, "1024 KV tokens in rows of 256");
    // Four rows run and twelve wait: a few hundred decode steps of work.
    let busy: Vec<Response> = (0..16)
        .map(|_| engine.generate(PROMPT, MAX_TOKENS))
        .collect();
    // The requests reach the engine over their own connections: poll until it has taken them.
    let mut load = engine.load();
    // Until the scheduler has admitted the first rows too (its counters are published once
    // per step, so all sixteen may show as waiting for a moment).
    wait_until("all sixteen requests reach the engine", || {
        load = engine.load();
        let running = load["running"].as_u64().unwrap_or(0);
        running >= 1 && running + load["waiting"].as_u64().unwrap_or(0) >= 5
    });
    let running = load["running"].as_u64().expect("running");
    assert!((1..=4).contains(&running), "{load}");
    assert!(load["waiting"].as_u64().expect("waiting") >= 1, "{load}");
    assert!(
        load["kv_reserved_tokens"].as_u64().expect("reserved") >= running * 251,
        "{load}"
    );
    // The seventeenth waits behind them; its client goes away.
    let victim = engine.generate(PROMPT, MAX_TOKENS);
    victim.hang_up();
    for response in busy {
        let stream = read_stream(response);
        assert_eq!(stream.ids, expected);
        assert_eq!(stream.end["finish_reason"], "length");
    }
    wait_until("the engine is idle", || {
        let load = engine.load();
        load["running"] == 0 && load["waiting"] == 0 && load["kv_reserved_tokens"] == 0
    });
    let generated = engine.load()["generated_tokens_total"]
        .as_u64()
        .expect("total")
        - before["generated_tokens_total"].as_u64().expect("total");
    assert!(
        generated < 17 * u64::from(MAX_TOKENS),
        "the abandoned request ran to its end: {generated} tokens generated"
    );
    // And the engine goes on serving.
    assert_eq!(
        read_stream(engine.generate(PROMPT, MAX_TOKENS)).ids,
        expected
    );
    assert!(engine.child.id() > 0 && UnixStream::connect(&engine.socket).is_ok());
}

/// The CPU engine samples CPU package energy (RAPL) on its own thread from the start, while the
/// model generates, and serves the samples on its socket. A host whose RAPL counters cannot be
/// read (no powercap in a VM, root-only `energy_uj`) gets samples that say why.
#[test]
fn telemetry_is_sampled_on_its_own_thread_and_served_since_a_sequence_number() {
    let engine = Engine::start(&[]);
    let telemetry = |since: u64| {
        let (status, batch) = get_json(&engine.socket, &format!("/v1/telemetry?since={since}"));
        assert_eq!(status, 200, "{batch}");
        batch
    };
    // Sampling goes on beside the scheduler, whether it decodes or idles (the fixture's
    // generations are over in a fraction of an interval).
    let response = engine.generate(PROMPT, MAX_TOKENS);
    let before = telemetry(0)["latest_seq"].as_u64().expect("latest_seq");
    wait_until("three more telemetry samples", || {
        telemetry(0)["latest_seq"].as_u64().expect("latest_seq") >= before + 3
    });
    let stream = read_stream(response);
    assert_eq!(stream.end["event"], "done");

    let batch = telemetry(0);
    assert_eq!(batch["interval_ms"], TELEMETRY_INTERVAL_MS);
    assert_eq!(batch["missed"], 0, "{batch}");
    let samples = batch["samples"].as_array().expect("samples");
    let seqs: Vec<u64> = samples
        .iter()
        .map(|s| s["seq"].as_u64().expect("seq"))
        .collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "numbered from 1 without gaps");
    let uptimes: Vec<u64> = samples
        .iter()
        .map(|s| s["uptime_ms"].as_u64().expect("uptime_ms"))
        .collect();
    assert!(uptimes.windows(2).all(|w| w[0] < w[1]), "{uptimes:?}");
    let reading = &samples[seqs.len() - 1]["reading"];
    match reading["source"].as_str() {
        Some("rapl") => {
            let packages = reading["packages"].as_array().expect("packages");
            assert!(!packages.is_empty(), "{reading}");
            assert!(packages[0]["energy"]["total_mj"].is_u64(), "{reading}");
        }
        Some("unavailable") => {
            assert_eq!(reading["tried"], "rapl", "{reading}");
            let reason = reading["reason"].as_str().expect("reason");
            assert!(reason.contains("/sys/class/powercap"), "{reason}");
            eprintln!("this host's RAPL: {} ({reason})", reading["kind"]);
        }
        other => panic!("a CPU engine reads RAPL, not {other:?}: {reading}"),
    }
    // The same instance, and only what came after.
    let latest = batch["latest_seq"].as_u64().expect("latest_seq");
    let after = telemetry(latest - 1);
    assert_eq!(after["instance"], batch["instance"]);
    assert_eq!(after["samples"][0]["seq"], latest);
    assert!(
        engine.stderr().contains("telemetry"),
        "the source's state is logged once:\n{}",
        engine.stderr()
    );
}

#[test]
fn sigterm_drains_running_streams_then_exits_cleanly() {
    let mut engine = Engine::start(&[]);
    let expected = ids(&generate_json(PROMPT, MAX_TOKENS)["output_ids"]);
    let responses: Vec<Response> = (0..16)
        .map(|_| engine.generate(PROMPT, MAX_TOKENS))
        .collect();
    engine.terminate();
    let (mut finished, mut refused) = (0, 0);
    for response in responses {
        let stream = read_stream(response);
        if stream.started {
            // Admitted before the drain: runs to its end.
            assert_eq!(stream.end["event"], "done", "{:?}", stream.end);
            assert_eq!(stream.ids, expected);
            finished += 1;
        } else {
            // Still waiting when the drain began: refused, so the gateway retries elsewhere.
            assert_eq!(stream.end["event"], "error", "{:?}", stream.end);
            assert_eq!(stream.end["code"], "unavailable");
            refused += 1;
        }
    }
    assert!(finished >= 1, "no stream was running at SIGTERM");
    assert!(refused >= 1, "SIGTERM came after all the work ended");
    let status = engine.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", engine.stderr());
    assert!(!engine.socket.exists(), "the socket file is removed");
}

/// Reads notifications as systemd does, as they come, until the returned closure is called.
fn notify_listener(path: &Path) -> impl FnOnce() -> Vec<String> {
    let listener = UnixDatagram::bind(path).expect("bind");
    listener
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            let mut messages = Vec::new();
            loop {
                match listener.recv(&mut buffer) {
                    Ok(n) => messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned()),
                    Err(_) if stop.load(std::sync::atomic::Ordering::SeqCst) => return messages,
                    Err(_) => {}
                }
            }
        })
    };
    move || {
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        reader.join().expect("reader")
    }
}

#[test]
fn systemd_hears_loading_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let notify_path = dir.path().join("notify.sock");
    let received = notify_listener(&notify_path);
    let notify = notify_path.display().to_string();
    // A 200 ms watchdog: pings every 100 ms at most, from the scheduler loop.
    let mut engine = Engine::start(&[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "200000")]);
    std::thread::sleep(Duration::from_millis(800));
    engine.terminate();
    assert_eq!(engine.wait_exit().code(), Some(0), "{}", engine.stderr());
    let messages = received();
    let position = |prefix: &str| {
        messages
            .iter()
            .position(|m| m.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {messages:#?}"))
    };
    let extend = position("EXTEND_TIMEOUT_USEC=300000000");
    let loading = position("STATUS=loading model ");
    let warming = position("STATUS=warming up on cpu");
    let ready = position("READY=1");
    let ready_status = position("STATUS=ready: 4 rows × 256 positions");
    let watchdog = position("WATCHDOG=1");
    let stopping = position("STOPPING=1");
    let stopped = position("STATUS=stopped");
    assert!(
        extend < loading && loading < warming && warming < ready,
        "{messages:#?}"
    );
    assert!(
        ready < ready_status && ready_status < stopping,
        "{messages:#?}"
    );
    assert!(watchdog < stopping && stopping < stopped, "{messages:#?}");
    let pings = messages.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!((2..=20).contains(&pings), "{pings} pings in {messages:#?}");
}

#[test]
fn a_watchdog_meant_for_another_process_is_not_pinged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let notify_path = dir.path().join("notify.sock");
    let received = notify_listener(&notify_path);
    let notify = notify_path.display().to_string();
    let mut engine = Engine::start(&[
        ("NOTIFY_SOCKET", &notify),
        ("WATCHDOG_USEC", "200000"),
        ("WATCHDOG_PID", "1"),
    ]);
    std::thread::sleep(Duration::from_millis(300));
    engine.terminate();
    assert_eq!(engine.wait_exit().code(), Some(0));
    let messages = received();
    assert!(messages.iter().any(|m| m == "READY=1"), "{messages:#?}");
    assert!(!messages.iter().any(|m| m == "WATCHDOG=1"), "{messages:#?}");
}

/// Copies the fixture, breaks it with `damage`, and runs the engine on it.
fn broken_model(damage: impl FnOnce(&Path)) -> (Option<i32>, String, bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("tiny-moe");
    std::fs::create_dir(&model).expect("mkdir");
    for entry in std::fs::read_dir(reference::fixture()).expect("fixture") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), model.join(entry.file_name())).expect("copy");
    }
    damage(&model);
    let mut engine = Engine::spawn(&model, &[("MOEBOX_LOG", "warn")]);
    let status = engine.wait_exit();
    (status.code(), engine.stderr(), engine.socket.exists())
}

/// The engine's own report is one line naming the file. (ONNX Runtime's logger may write its
/// own coloured lines before it: its log goes to stderr directly, not through `MOEBOX_LOG`.)
fn assert_one_line_naming(stderr: &str, file: &str) {
    let (ours, others): (Vec<&str>, Vec<&str>) =
        stderr.lines().partition(|line| line.starts_with("moebox"));
    for line in others {
        let escape_codes_only = line
            .trim_matches(|c: char| c.is_whitespace() || c == '\u{1b}' || c == '[' || c == 'm')
            .is_empty();
        assert!(
            line.contains("[E:onnxruntime:") || escape_codes_only,
            "not ONNX Runtime's: {line:?} in {stderr}"
        );
    }
    assert_eq!(ours.len(), 1, "{stderr}");
    assert!(
        ours[0].starts_with("moebox: cannot load the model folder "),
        "{stderr}"
    );
    assert!(ours[0].contains(file), "{stderr}");
}

#[test]
fn truncated_weights_exit_non_zero_naming_the_file() {
    let (code, stderr, socket_left) = broken_model(|model| {
        let data = model.join("model.onnx.data");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&data)
            .expect("open");
        file.set_len(1000).expect("truncate");
    });
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_line_naming(&stderr, "model.onnx.data");
    assert!(!socket_left);
}

#[test]
fn a_missing_tokenizer_exits_non_zero_naming_the_file() {
    let (code, stderr, socket_left) = broken_model(|model| {
        std::fs::remove_file(model.join("tokenizer.json")).expect("remove");
    });
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_line_naming(&stderr, "tokenizer.json");
    assert!(!socket_left);
}

#[test]
fn a_corrupt_genai_config_exits_non_zero_naming_the_file() {
    let (code, stderr, socket_left) = broken_model(|model| {
        let path = model.join("genai_config.json");
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, &text[..text.len() / 2]).expect("write");
    });
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_line_naming(&stderr, "genai_config.json");
    assert!(!socket_left);
}

#[test]
fn a_socket_in_use_is_refused() {
    let engine = Engine::start(&[]);
    // A second engine on the same socket path must not take it over.
    let config = engine.dir.path().join("moebox.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_moebox"))
        .args(["engine", "--gpu", "0", "--config"])
        .arg(&config)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("another engine is serving"), "{stderr}");
    engine.wait_ready();
}

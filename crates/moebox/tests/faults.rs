//! Fault injection with the real binaries on the bundled model: an engine killed mid-stream
//! (behind `moebox serve` with two engines, and under `moebox up`), the ledger's disk filling
//! up, a corrupted model file, and the wall clock jumping. Each test measures what issue 8's
//! targets promise, prints the figures (docs/reliability.md, "Fault injection", quotes them)
//! and checks that the server still serves the next request.

mod gateway_http;
mod harness;
#[path = "../../../tests/support/reference.rs"]
mod reference;

use std::{
    collections::HashMap,
    ffi::OsStr,
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use gateway_http::{DEADLINE, Reply, request};
use harness::{Process, Up, free_port, moebox, records};
use moebox_ledger::UsageRecord;
use serde_json::{Value, json};

const MODEL: &str = "tiny-moe";
/// A prompt (11 tokens) whose greedy completion runs to `STREAM_TOKENS` without EOS on the
/// fixture, so the streams are still running when their engine is killed.
const PROMPT: &str = "The balance sheet shows";
/// As long as the fixture's context (512) allows: about half a second of decoding on a debug
/// build, against a few milliseconds to open each stream.
const STREAM_TOKENS: u32 = 500;
/// Streams open when the engine is killed: the router alternates them between the two engines.
const STREAMS: usize = 4;
/// Issue 8's targets.
const KILL_TO_ERROR_EVENT: Duration = Duration::from_secs(1);
const KILL_TO_SURVIVOR_SUCCESS: Duration = Duration::from_secs(1);
const UP_ENGINE_BACK_SERVING: Duration = Duration::from_secs(10);
/// `gateway.retry_after_seconds` in the test configs.
const RETRY_AFTER_SECONDS: u32 = 1;
/// `gateway.engine_poll_interval_ms` in the test configs: fast, so readiness follows quickly.
const ENGINE_POLL_INTERVAL_MS: u64 = 50;
/// The ledger's small file system: room for the schema and a few hundred records, no more.
const SMALL_DISK_BYTES: u64 = 8 << 20;
/// `--rpm` of the rate-limited key in the clock-jump test: one request back every 10 s.
const LIMITED_RPM: u32 = 6;

/// One gateway's config, keys and processes, all in `dir`.
struct Site {
    dir: PathBuf,
    config: PathBuf,
    database: PathBuf,
    address: String,
}

impl Site {
    fn new(dir: &Path, engine_count: u32, model: &Path, database: &Path) -> Self {
        let address = format!("127.0.0.1:{}", free_port());
        let config = dir.join("moebox.toml");
        std::fs::write(
            &config,
            format!(
                "[engine]\nmodel = {model:?}\nexecution_provider = \"cpu\"\nsocket = {socket:?}\n\
                 kv_budget_tokens = 4096\nmax_sequence_tokens = 512\n\n\
                 [ledger]\ndatabase = {database:?}\n\n\
                 [gateway]\nlisten = {address:?}\ntls = false\nengine_count = {engine_count}\n\
                 engine_poll_interval_ms = {ENGINE_POLL_INTERVAL_MS}\n\
                 retry_after_seconds = {RETRY_AFTER_SECONDS}\n",
                model = model.display().to_string(),
                socket = dir.join("engine-{gpu}.sock").display().to_string(),
                database = database.display().to_string(),
            ),
        )
        .expect("config");
        Self {
            dir: dir.to_owned(),
            config,
            database: database.to_owned(),
            address,
        }
    }

    /// `moebox keys create ARGS`: the new key.
    fn key(&self, args: &[&str]) -> String {
        let output = moebox()
            .args(["keys", "create"])
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("keys create");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    }

    fn engine(&self, gpu: u32) -> Process {
        let mut command = moebox();
        command
            .args(["engine", "--gpu", &gpu.to_string(), "--config"])
            .arg(&self.config);
        Process::spawn(command, self.dir.join(format!("engine-{gpu}.log")))
    }

    fn serve(&self, env: &[(&str, &str)]) -> Process {
        let mut command = moebox();
        command.args(["serve", "--config"]).arg(&self.config);
        for (key, value) in env {
            command.env(key, value);
        }
        let serve = Process::spawn(command, self.dir.join("serve.log"));
        let started = Instant::now();
        while TcpStream::connect(&self.address).is_err() {
            assert!(
                started.elapsed() < DEADLINE,
                "never listened: {}",
                serve.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        serve
    }

    fn get(&self, path: &str, key: Option<&str>) -> Reply {
        request(&self.address, "GET", path, key, None)
    }

    fn post(&self, path: &str, key: &str, body: &Value) -> Reply {
        request(
            &self.address,
            "POST",
            path,
            Some(key),
            Some(body.to_string().as_bytes()),
        )
    }

    /// Whether `/metrics` says engine `index` is ready.
    fn engine_ready(&self, admin: &str, index: u32) -> bool {
        let metrics = self.get("/metrics", Some(admin));
        assert_eq!(metrics.status, 200);
        String::from_utf8_lossy(&metrics.body)
            .contains(&format!("moebox_engine_ready{{engine=\"{index}\"}} 1"))
    }

    /// Waits until every engine in `indices` is ready; returns how long that took.
    fn wait_engines_ready(&self, admin: &str, indices: &[u32], logs: &[&Process]) -> Duration {
        let started = Instant::now();
        while !indices.iter().all(|&i| self.engine_ready(admin, i)) {
            assert!(
                started.elapsed() < DEADLINE,
                "engines {indices:?} never ready:\n{}",
                logs.iter().map(|p| p.log()).collect::<Vec<_>>().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        started.elapsed()
    }

    /// Every usage record in the ledger, by request id.
    fn records(&self) -> HashMap<String, UsageRecord> {
        records(&self.database)
    }
}

fn completion(max_tokens: u32, stream: bool) -> Value {
    json!({
        "model": MODEL,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    })
}

fn request_id(reply: &Reply) -> String {
    reply
        .header("x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id: {reply:?}"))
        .to_owned()
}

/// Asserts an OpenAI error body and a Retry-After of `RETRY_AFTER_SECONDS`.
fn assert_retry_later(reply: &Reply, status: u16, code: &str) {
    assert_eq!(
        reply.status,
        status,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let error = &reply.json()["error"];
    assert_eq!(error["code"], code, "{error}");
    assert_eq!(error["type"], "server_error", "{error}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(
        reply.header("retry-after"),
        Some(RETRY_AFTER_SECONDS.to_string().as_str()),
        "{:?}",
        reply.headers
    );
}

/// One streaming request read on its own thread, each SSE event stamped as it arrives.
struct Stream {
    events_seen: Arc<AtomicUsize>,
    reader: JoinHandle<StreamLog>,
}

#[derive(Debug)]
struct StreamLog {
    status: u16,
    request_id: String,
    events: Vec<(Instant, String)>,
}

impl StreamLog {
    /// When the stream ended with a `{"error": ...}` event, that event and its arrival.
    fn error(&self) -> Option<(Instant, Value)> {
        let (at, last) = self.events.last()?;
        let value: Value = serde_json::from_str(last).ok()?;
        value.get("error").map(|error| (*at, error.clone()))
    }

    fn done(&self) -> bool {
        self.events.last().is_some_and(|(_, data)| data == "[DONE]")
    }
}

impl Stream {
    fn open(address: &str, key: &str, body: &Value) -> Self {
        let events_seen = Arc::new(AtomicUsize::new(0));
        let mut connection = TcpStream::connect(address).expect("connect");
        connection
            .set_read_timeout(Some(DEADLINE))
            .expect("read timeout");
        let body = body.to_string();
        write!(
            connection,
            "POST /v1/completions HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("send");
        let reader = std::thread::spawn({
            let events_seen = Arc::clone(&events_seen);
            move || {
                let mut lines = BufReader::new(connection).lines();
                let status_line = lines.next().expect("status line").expect("read");
                let status = status_line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|code| code.parse().ok())
                    .expect("status");
                let mut request_id = String::new();
                for line in lines.by_ref() {
                    let line = line.expect("read head");
                    if line.is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("x-request-id")
                    {
                        request_id = value.trim().to_owned();
                    }
                }
                let mut events = Vec::new();
                for line in lines {
                    let Ok(line) = line else { break };
                    if let Some(data) = line.strip_prefix("data: ") {
                        events.push((Instant::now(), data.to_owned()));
                        events_seen.fetch_add(1, Ordering::SeqCst);
                    }
                }
                StreamLog {
                    status,
                    request_id,
                    events,
                }
            }
        });
        Self {
            events_seen,
            reader,
        }
    }

    fn wait_events(&self, count: usize) {
        let started = Instant::now();
        while self.events_seen.load(Ordering::SeqCst) < count {
            assert!(!self.reader.is_finished(), "the stream ended early");
            assert!(started.elapsed() < DEADLINE, "the stream never started");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn finish(self) -> StreamLog {
        self.reader.join().expect("stream reader")
    }
}

fn max(durations: impl IntoIterator<Item = Duration>) -> Duration {
    durations.into_iter().max().unwrap_or_default()
}

/// Issue 8, "Engine kill": two engines behind one gateway, `kill -9` of one while streams run
/// on both. Its streams end with an error event within 1 s, the other engine's streams finish,
/// new requests are served by the survivor within 1 s, and a restarted engine takes work again.
#[test]
fn engine_kill_9_mid_stream_ends_its_streams_and_the_survivor_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = Site::new(
        dir.path(),
        2,
        &reference::fixture(),
        &dir.path().join("moebox.sqlite"),
    );
    let admin = site.key(&["--name", "ops", "--admin"]);
    let user = site.key(&["--name", "staff", "--team", "tax"]);
    let mut engines = [site.engine(0), site.engine(1)];
    let serve = site.serve(&[]);
    site.wait_engines_ready(&admin, &[0, 1], &[&engines[0], &engines[1], &serve]);

    // One at a time, each once the previous one streams: the router then alternates engines.
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let stream = Stream::open(&site.address, &user, &completion(STREAM_TOKENS, true));
        stream.wait_events(1);
        streams.push(stream);
    }
    for stream in &streams {
        assert!(
            !stream.reader.is_finished(),
            "a stream ended before the kill"
        );
    }
    let killed_at = engines[0].kill_9();

    // New requests right after the kill: the first is served by the survivor, and so is each
    // one after it (a request that meets the dead engine before its first token moves on).
    let mut after_kill = Vec::new();
    let mut first_success = None;
    for _ in 0..4 {
        let reply = site.post("/v1/completions", &user, &completion(4, false));
        assert_eq!(
            reply.status,
            200,
            "{}\n{}",
            String::from_utf8_lossy(&reply.body),
            serve.log()
        );
        first_success.get_or_insert_with(|| killed_at.elapsed());
        after_kill.push(request_id(&reply));
    }
    let first_success = first_success.expect("served");

    let logs: Vec<StreamLog> = streams.into_iter().map(Stream::finish).collect();
    let records = site.records();
    let engine_of = |id: &str| {
        records
            .get(id)
            .unwrap_or_else(|| panic!("no usage record for {id}"))
            .engine
            .clone()
            .unwrap_or_default()
    };
    let mut error_latencies = Vec::new();
    let mut survived = 0;
    for log in &logs {
        assert_eq!(log.status, 200, "{log:?}");
        match engine_of(&log.request_id).as_str() {
            "engine-0" => {
                let (at, error) = log
                    .error()
                    .unwrap_or_else(|| panic!("no error event at the end: {log:?}"));
                assert_eq!(error["type"], "server_error", "{error}");
                assert!(!log.done(), "{log:?}");
                error_latencies.push(at.saturating_duration_since(killed_at));
            }
            "engine-1" => {
                assert!(log.done(), "the survivor's stream did not finish: {log:?}");
                survived += 1;
            }
            other => panic!("stream on {other:?}"),
        }
    }
    assert!(
        !error_latencies.is_empty(),
        "no stream ran on the killed engine"
    );
    assert!(survived > 0, "no stream ran on the surviving engine");
    for id in &after_kill {
        assert_eq!(engine_of(id), "engine-1", "{id}");
    }
    let slowest_error = max(error_latencies.iter().copied());
    assert!(
        slowest_error < KILL_TO_ERROR_EVENT,
        "error events {error_latencies:?} after the kill"
    );
    assert!(
        first_success < KILL_TO_SURVIVOR_SUCCESS,
        "first success {first_success:?} after the kill"
    );

    // The killed engine comes back (its stale socket replaced) and takes work again.
    let restarted = Instant::now();
    engines[0] = site.engine(0);
    site.wait_engines_ready(&admin, &[0], &[&engines[0], &serve]);
    let back_ready = restarted.elapsed();
    let served_by: Vec<String> = (0..4)
        .map(|_| {
            let reply = site.post("/v1/completions", &user, &completion(4, false));
            assert_eq!(
                reply.status,
                200,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
            request_id(&reply)
        })
        .collect();
    let records = site.records();
    assert!(
        served_by
            .iter()
            .any(|id| records[id].engine.as_deref() == Some("engine-0")),
        "the restarted engine took no request"
    );
    eprintln!(
        "FIGURES engine kill behind serve: {} of {STREAMS} streams on the killed engine ended \
         with an error event after {error_latencies:?} (slowest {slowest_error:?}); {survived} \
         on the survivor finished; first success on the survivor {first_success:?} after the \
         kill; restarted engine ready in {back_ready:?}",
        error_latencies.len(),
    );
}

/// Issue 8, "Engine kill" under `up`: its supervisor restarts a `kill -9`ed engine, and the
/// gateway serves again within 10 s; meanwhile it answers 503 with Retry-After and stays live.
#[test]
fn up_serves_again_within_10_s_of_its_engine_being_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Up::start(
        dir.path(),
        &[OsStr::new("--model"), reference::fixture().as_os_str()],
        "warn",
    );
    let chat = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Summarise the ledger."}],
        "max_tokens": 4,
    });
    let post = || {
        request(
            &up.address,
            "POST",
            "/v1/chat/completions",
            Some(&up.user_key),
            Some(chat.to_string().as_bytes()),
        )
    };
    assert_eq!(post().status, 200);
    let engines = up.engine_pids();
    assert_eq!(engines.len(), 1, "one engine child: {engines:?}");
    let killed_at = Instant::now();
    assert!(harness::signal(engines[0], "KILL"));
    let mut refusals = 0;
    let back = loop {
        let reply = post();
        if reply.status == 200 {
            break killed_at.elapsed();
        }
        assert_eq!(
            reply.status,
            503,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert!(reply.header("retry-after").is_some(), "{:?}", reply.headers);
        assert_eq!(reply.json()["error"]["type"], "server_error");
        refusals += 1;
        // Live throughout; not ready until the engine is back.
        assert_eq!(up.request("GET", "/healthz", None, None).status, 200);
        let ready = up.request("GET", "/readyz", None, None).status;
        assert!(ready == 503 || ready == 200, "/readyz {ready}");
        assert!(
            killed_at.elapsed() < DEADLINE,
            "never served again:\n{}",
            up.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let engines_now = up.engine_pids();
    assert_eq!(engines_now.len(), 1);
    assert_ne!(engines_now, engines, "the engine was not restarted");
    assert_eq!(post().status, 200, "the next request");
    assert!(
        back < UP_ENGINE_BACK_SERVING,
        "served again only {back:?} after the kill"
    );
    eprintln!(
        "FIGURES engine kill under up: serving again {back:?} after kill -9 ({refusals} requests \
         answered 503 meanwhile)"
    );
}

/// A small file system for the ledger: a tmpfs mounted for the test, or where mounting is
/// refused (an unprivileged container), a folder on a `/dev/shm` that is itself small.
struct SmallDisk {
    path: PathBuf,
    mounted: bool,
    _shared_memory: Option<tempfile::TempDir>,
}

impl SmallDisk {
    fn new(path: PathBuf) -> Self {
        std::fs::create_dir(&path).expect("mount point");
        let mount = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={SMALL_DISK_BYTES},mode=0700"))
            .arg("moebox-faults")
            .arg(&path)
            .output();
        match mount {
            Ok(output) if output.status.success() => Self {
                path,
                mounted: true,
                _shared_memory: None,
            },
            refused => {
                // Docker gives a container a 64 MiB /dev/shm: small enough to fill for real.
                let available = Command::new("df")
                    .args(["--output=avail", "-B1", "/dev/shm"])
                    .output()
                    .ok()
                    .and_then(|o| {
                        String::from_utf8_lossy(&o.stdout)
                            .lines()
                            .nth(1)
                            .and_then(|l| l.trim().parse::<u64>().ok())
                    });
                let small = available.filter(|&bytes| bytes <= 32 * SMALL_DISK_BYTES);
                assert!(
                    small.is_some(),
                    "cannot make a small file system for the ledger: `mount -t tmpfs` was \
                     refused ({refused:?}) and /dev/shm has {available:?} bytes free (this test \
                     needs root, or CAP_SYS_ADMIN, or a /dev/shm of at most {} bytes)",
                    32 * SMALL_DISK_BYTES
                );
                let shared = tempfile::tempdir_in("/dev/shm").expect("/dev/shm");
                Self {
                    path: shared.path().to_owned(),
                    mounted: false,
                    _shared_memory: Some(shared),
                }
            }
        }
    }

    /// Fills the file system with one file, to the last byte; removing it gives the space back.
    fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).expect("filler");
        for chunk in [1 << 16, 1 << 12, 1] {
            let bytes = vec![0xa5_u8; chunk];
            loop {
                match file.write(&bytes) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::StorageFull => break,
                    Err(error) => panic!("filling the disk: {error}"),
                }
            }
        }
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Issue 8, disk full on the data partition: the gateway answers 503 `ledger_unavailable`
/// with Retry-After (a stream ends with that error instead of `[DONE]`), stays live, serves
/// again by itself once space returns with every served request recorded, and the database
/// passes `PRAGMA integrity_check`.
#[test]
fn a_full_data_partition_is_503_then_recovers_by_itself_with_the_ledger_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SmallDisk::new(dir.path().join("data"));
    let site = Site::new(
        dir.path(),
        1,
        &reference::fixture(),
        &disk.path.join("moebox.sqlite"),
    );
    let admin = site.key(&["--name", "ops", "--admin"]);
    let user = site.key(&["--name", "staff", "--team", "tax"]);
    let engine = site.engine(0);
    let mut serve = site.serve(&[]);
    site.wait_engines_ready(&admin, &[0], &[&engine, &serve]);
    let mut served = Vec::new();
    let reply = site.post("/v1/completions", &user, &completion(4, false));
    assert_eq!(reply.status, 200);
    served.push(request_id(&reply));

    let filler = disk.fill();
    // Space SQLite already holds may take a record or two more; the first that needs a new
    // page is refused.
    let mut refused = None;
    for _ in 0..5 {
        let reply = site.post("/v1/completions", &user, &completion(4, false));
        if reply.status == 200 {
            served.push(request_id(&reply));
            continue;
        }
        refused = Some(reply);
        break;
    }
    let refused = refused.expect("no request was refused on a full disk");
    assert_retry_later(&refused, 503, "ledger_unavailable");
    assert!(
        refused.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("data partition full")),
        "{:?}",
        refused.json()
    );
    // A stream cannot take back its text, but ends with the ledger's error instead of [DONE].
    let stream = Stream::open(&site.address, &user, &completion(8, true)).finish();
    assert_eq!(stream.status, 200);
    let (_, error) = stream.error().expect("an error event");
    assert_eq!(error["code"], "ledger_unavailable", "{stream:?}");
    assert!(!stream.done());
    assert_eq!(site.get("/healthz", None).status, 200);
    assert_eq!(site.get("/readyz", None).status, 200);
    assert_eq!(site.get("/v1/models", Some(&user)).status, 200);

    let freed = Instant::now();
    std::fs::remove_file(&filler).expect("free the space");
    let mut recovered = None;
    for _ in 0..3 {
        let reply = site.post("/v1/completions", &user, &completion(4, false));
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        recovered.get_or_insert_with(|| freed.elapsed());
        served.push(request_id(&reply));
    }
    let records = site.records();
    for id in &served {
        let record = records
            .get(id)
            .unwrap_or_else(|| panic!("served request {id} is not in the ledger"));
        assert_eq!(record.status, 200);
    }
    // Nothing else: the refused requests' records were rolled back with their batch.
    assert_eq!(records.len(), served.len(), "{records:#?}");
    serve.terminate();
    let connection = rusqlite::Connection::open(&site.database).expect("open the database");
    let integrity: String = connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity_check");
    assert_eq!(integrity, "ok");
    eprintln!(
        "FIGURES disk full ({} file system of {SMALL_DISK_BYTES} bytes): 503 ledger_unavailable \
         with Retry-After, /healthz 200; first 200 {recovered:?} after the space returned; \
         {} served requests all in the ledger; integrity_check ok",
        if disk.mounted { "tmpfs" } else { "/dev/shm" },
        served.len(),
    );
}

/// What breaks a model file: its bytes, changed in place.
type Damage = fn(&mut Vec<u8>);

/// A copy of the fixture, named like it.
fn fixture_copy(dir: &Path) -> PathBuf {
    let model = dir.join(MODEL);
    std::fs::create_dir(&model).expect("mkdir");
    for entry in std::fs::read_dir(reference::fixture()).expect("fixture") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), model.join(entry.file_name())).expect("copy");
    }
    model
}

/// Issue 8, a corrupted model file: `moebox engine` refuses to start with one line naming the
/// file; `moebox serve` in front of it is live but not ready (503 with Retry-After) and answers
/// generation requests 503; once the file is repaired and the engine started, it serves.
#[test]
fn a_corrupted_model_file_stops_the_engine_and_the_gateway_reports_not_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = fixture_copy(dir.path());
    let site = Site::new(dir.path(), 1, &model, &dir.path().join("moebox.sqlite"));
    let user = site.key(&["--name", "staff"]);
    let original = |file: &str| std::fs::read(reference::fixture().join(file)).expect("read");
    // model.onnx cut in half, and genai_config.json with bytes flipped (no longer UTF-8).
    let damages: [(&str, Damage); 2] = [
        ("model.onnx", |bytes| bytes.truncate(bytes.len() / 2)),
        ("genai_config.json", |bytes| {
            for byte in &mut bytes[..16] {
                *byte ^= 0xff;
            }
        }),
    ];
    let serve = site.serve(&[]);
    for (file, damage) in damages {
        let mut bytes = original(file);
        damage(&mut bytes);
        std::fs::write(model.join(file), bytes).expect("damage");
        let mut engine = site.engine(0);
        let exit = engine.wait_exit();
        let stderr = engine.log();
        assert_eq!(exit.code(), Some(1), "{stderr}");
        let ours: Vec<&str> = stderr.lines().filter(|l| l.starts_with("moebox")).collect();
        assert_eq!(ours.len(), 1, "{stderr}");
        assert!(
            ours[0].starts_with("moebox: cannot load the model folder ") && ours[0].contains(file),
            "{stderr}"
        );
        assert!(!site.dir.join("engine-0.sock").exists());

        assert_eq!(site.get("/healthz", None).status, 200);
        let ready = site.get("/readyz", None);
        assert_eq!(ready.status, 503);
        assert_eq!(
            ready.header("retry-after"),
            Some(RETRY_AFTER_SECONDS.to_string().as_str())
        );
        let chat = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]});
        assert_retry_later(
            &site.post("/v1/chat/completions", &user, &chat),
            503,
            "engine_unavailable",
        );
        assert_retry_later(
            &site.post("/v1/completions", &user, &completion(4, false)),
            503,
            "engine_unavailable",
        );
        // The gateway itself is fine: the next request is answered.
        assert_eq!(site.get("/v1/models", Some(&user)).status, 200);
        std::fs::write(model.join(file), original(file)).expect("repair");
    }
    let engine = site.engine(0);
    let started = Instant::now();
    while site.get("/readyz", None).status != 200 {
        assert!(
            started.elapsed() < DEADLINE,
            "{}\n{}",
            engine.log(),
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let reply = site.post("/v1/completions", &user, &completion(4, false));
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
}

/// libfaketime's preload library, from Debian's `libfaketime` (`apt-get install faketime`).
fn libfaketime() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("faketime/libfaketime.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketime.so.1")])
        .find(|path| path.is_file())
        .expect("libfaketime.so.1 not found: apt-get install faketime")
}

fn retry_after(reply: &Reply) -> u64 {
    reply
        .header("retry-after")
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {:?}", reply.headers))
}

/// The UTC day (days since 1970) a record started in.
fn day(record: &UsageRecord) -> i64 {
    record.started_at.0.div_euclid(86_400_000)
}

fn date(day: i64) -> String {
    let output = Command::new("date")
        .args(["-u", "-d"])
        .arg(format!("@{}", day * 86_400))
        .arg("+%F")
        .output()
        .expect("date");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Issue 8, clock jump: `moebox serve` runs under libfaketime, whose wall clock jumps two days
/// forward and then three back mid-test (the monotonic clock runs on, as it does when NTP
/// steps the clock). A key's requests-per-minute limit neither resets nor breaks: still 429
/// after each jump, admitting again after Retry-After. Each usage record keeps the wall time
/// it was made at, and `moebox tco report` counts it in its own day.
#[test]
fn a_wall_clock_jump_neither_resets_rate_limits_nor_moves_recorded_usage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = Site::new(
        dir.path(),
        1,
        &reference::fixture(),
        &dir.path().join("moebox.sqlite"),
    );
    let admin = site.key(&["--name", "ops", "--admin"]);
    let limited = site.key(&[
        "--name",
        "limited",
        "--team",
        "tax",
        "--rpm",
        &LIMITED_RPM.to_string(),
    ]);
    let free = site.key(&["--name", "free", "--team", "audit"]);
    let clock = dir.path().join("faketime");
    std::fs::write(&clock, "+0").expect("faketime file");
    let engine = site.engine(0);
    let library = libfaketime();
    let serve = site.serve(&[
        ("LD_PRELOAD", library.to_str().expect("utf-8 path")),
        (
            "FAKETIME_TIMESTAMP_FILE",
            clock.to_str().expect("utf-8 path"),
        ),
        // Read the file at every clock call, so a write is a jump.
        ("FAKETIME_NO_CACHE", "1"),
        // Only the wall clock jumps; CLOCK_MONOTONIC stays true, as on a real NTP step.
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]);
    site.wait_engines_ready(&admin, &[0], &[&engine, &serve]);
    let post = |key: &str| site.post("/v1/completions", key, &completion(1, false));
    let served = |key: &str| {
        let reply = post(key);
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        request_id(&reply)
    };
    let limited_out = |when: &str| {
        let reply = post(&limited);
        assert_eq!(
            reply.status,
            429,
            "{when}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.json()["error"]["type"], "rate_limit_error");
        let wait = retry_after(&reply);
        // One request comes back every 60 / LIMITED_RPM s, on the monotonic clock.
        assert!(
            (1..=u64::from(60 / LIMITED_RPM)).contains(&wait),
            "{when}: Retry-After {wait}"
        );
        wait
    };

    let mut before = (0..LIMITED_RPM)
        .map(|_| served(&limited))
        .collect::<Vec<_>>();
    limited_out("before the jump");
    before.push(served(&free));

    std::fs::write(&clock, "+2d").expect("jump forward");
    let forward = served(&free);
    limited_out("two days later by the wall clock");

    std::fs::write(&clock, "-1d").expect("jump back");
    let back = served(&free);
    let wait = limited_out("three days earlier by the wall clock");
    std::thread::sleep(Duration::from_secs(wait));
    let readmitted = served(&limited);
    assert_eq!(site.get("/healthz", None).status, 200);

    let records = site.records();
    let day_of = |id: &String| day(&records[id]);
    let today = day_of(&before[0]);
    assert!(before.iter().all(|id| day_of(id) == today));
    assert_eq!(day_of(&forward), today + 2, "the jump forward took effect");
    assert_eq!(day_of(&back), today - 1, "the jump back took effect");
    assert_eq!(day_of(&readmitted), today - 1);
    let tco_requests = |day: i64| {
        let date = date(day);
        let output = moebox()
            .args([
                "tco", "report", "--format", "json", "--from", &date, "--to", &date,
            ])
            .arg("--config")
            .arg(&site.config)
            .output()
            .expect("tco report");
        assert!(output.status.success(), "{output:?}");
        let report: Value = serde_json::from_slice(&output.stdout).expect("JSON");
        report["requests"].as_u64().expect("requests")
    };
    let counted = [
        (today - 1, tco_requests(today - 1)),
        (today, tco_requests(today)),
        (today + 2, tco_requests(today + 2)),
    ];
    assert_eq!(
        counted.map(|(_, n)| n),
        [2, before.len() as u64, 1],
        "{counted:?}"
    );
    eprintln!(
        "FIGURES clock jump: 429 before, after +2 d and after -3 d (Retry-After <= {} s); \
         readmitted after {wait} s; tco report requests per day {:?}",
        60 / LIMITED_RPM,
        counted.map(|(d, n)| (date(d), n)),
    );
}

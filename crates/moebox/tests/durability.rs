//! The ledger survives the gateway's death: `kill -9` of `moebox serve` in the middle of a
//! burst of requests, and every request whose response reached its client is in the ledger.
//! (The gateway makes a request's usage record durable before it sends the response's last
//! byte; this proves it end to end, with the real binaries on the bundled model.)

mod gateway_http;
mod harness;
#[path = "../../../tests/support/reference.rs"]
mod reference;

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use harness::{Process, free_port, moebox, records};

/// Responses completed before the kill: enough to be a burst, few enough for a debug build.
const COMPLETED_BEFORE_KILL: usize = 24;
const CLIENTS: usize = 6;

/// One whole exchange; `Some((status, x-request-id))` only when the full body arrived.
fn exchange(address: &str, key: &str, body: &[u8]) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .ok()?;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = &raw[split + 4..];
    let status: u16 = head
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    };
    let length: usize = header("content-length")?.parse().ok()?;
    (body.len() == length && serde_json::from_slice::<serde_json::Value>(body).is_ok())
        .then(|| Some((status, header("x-request-id")?)))?
}

#[test]
fn kill_9_of_the_gateway_loses_no_completed_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let address = format!("127.0.0.1:{}", free_port());
    let database = dir.path().join("moebox.sqlite");
    let config = dir.path().join("moebox.toml");
    std::fs::write(
        &config,
        format!(
            "[engine]\nmodel = {model:?}\nexecution_provider = \"cpu\"\nsocket = {socket:?}\n\
             kv_budget_tokens = 1024\nmax_sequence_tokens = 256\n\n\
             [ledger]\ndatabase = {database:?}\n\n\
             [gateway]\nlisten = {address:?}\ntls = false\nengine_count = 1\n\
             engine_poll_interval_ms = 100\n",
            model = reference::fixture().display().to_string(),
            socket = dir.path().join("engine-{gpu}.sock").display().to_string(),
            database = database.display().to_string(),
        ),
    )
    .expect("config");
    let created = moebox()
        .args([
            "keys", "create", "--name", "burst", "--team", "tax", "--config",
        ])
        .arg(&config)
        .output()
        .expect("keys create");
    assert!(created.status.success(), "{created:?}");
    let key = String::from_utf8(created.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let mut engine = moebox();
    engine
        .args(["engine", "--gpu", "0", "--config"])
        .arg(&config);
    let _engine = Process::spawn(engine, dir.path().join("engine.log"));
    let mut serve = moebox();
    serve.args(["serve", "--config"]).arg(&config);
    let mut gateway = Process::spawn(serve, dir.path().join("serve.log"));
    let started = Instant::now();
    loop {
        let ready = TcpStream::connect(&address).ok().and_then(|mut s| {
            s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").ok()?;
            let mut answer = String::new();
            s.read_to_string(&mut answer).ok()?;
            Some(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"))
        });
        if ready == Some(true) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "never ready: {}",
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let completed = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let body = serde_json::json!({
        "model": "tiny-moe",
        "messages": [{"role": "user", "content": "Summarise the ledger."}],
        "max_tokens": 8,
    })
    .to_string();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (completed, stop, address, key, body) = (
                Arc::clone(&completed),
                Arc::clone(&stop),
                address.clone(),
                key.clone(),
                body.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match exchange(&address, &key, body.as_bytes()) {
                        Some((200, id)) => completed.lock().expect("lock").push(id),
                        Some(_) => {}
                        None => break,
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    while completed.lock().expect("lock").len() < COMPLETED_BEFORE_KILL {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the burst stalled"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // SIGKILL while requests are in flight: no drain, no destructor, no final flush.
    gateway.kill_9();
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().expect("client thread");
    }
    let completed = completed.lock().expect("lock").clone();
    assert!(completed.len() >= COMPLETED_BEFORE_KILL);

    // The ledger opens after the kill, and holds every completed request.
    let stored = records(&database);
    let missing: Vec<&String> = completed
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} completed requests are not in the ledger: {missing:?}",
        missing.len(),
        completed.len()
    );
    eprintln!(
        "{} responses completed before kill -9; all in the ledger ({} records in all)",
        completed.len(),
        stored.len()
    );
}

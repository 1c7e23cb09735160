//! `moebox serve` and `moebox keys` as an operator runs them: the real binary with a config
//! file, no engine behind it.

mod gateway_http;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use gateway_http::request;

fn moebox(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_moebox"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run moebox")
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

#[test]
fn serve_answers_health_and_readiness_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("moebox.toml");
    let address = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        &config,
        format!(
            "[ledger]\ndatabase = {database:?}\n\n[gateway]\nlisten = {address:?}\n\
             engines = [{socket:?}]\nretry_after_seconds = 3\n",
            database = dir.path().join("moebox.sqlite").display().to_string(),
            socket = dir.path().join("no-engine.sock").display().to_string(),
        ),
    )
    .expect("write config");
    let created = moebox(&["keys", "create", "--name", "ops", "--admin"], &config);
    assert!(created.status.success(), "{created:?}");
    let key = String::from_utf8(created.stdout).expect("utf-8");
    let key = key.trim();
    assert!(key.starts_with("mbx_"), "{key}");

    let mut server = Command::new(env!("CARGO_BIN_EXE_moebox"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn moebox serve");
    let started = Instant::now();
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "serve never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(request(&address, "GET", "/healthz", None, None).status, 200);
    let ready = request(&address, "GET", "/readyz", None, None);
    assert_eq!(ready.status, 503);
    assert_eq!(ready.header("retry-after"), Some("3"));
    assert_eq!(
        request(&address, "GET", "/v1/models", None, None).status,
        401
    );
    let models = request(&address, "GET", "/v1/models", Some(key), None);
    assert_eq!(models.status, 200);
    assert_eq!(models.json()["data"], serde_json::json!([]));
    let metrics = request(&address, "GET", "/metrics", Some(key), None);
    assert!(
        String::from_utf8_lossy(&metrics.body).contains("moebox_engine_ready{engine=\"0\"} 0"),
        "{metrics:?}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = server.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "serve did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn plaintext_off_loopback_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("moebox.toml");
    std::fs::write(&config, "[gateway]\nlisten = \"0.0.0.0:8080\"\n").expect("write config");
    let output = moebox(&["serve"], &config);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("gateway.listen") && stderr.contains("insecure_plaintext"),
        "{stderr}"
    );
}

#[test]
fn keys_list_and_revoke_explain_themselves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("moebox.toml");
    std::fs::write(
        &config,
        format!(
            "[ledger]\ndatabase = {:?}\n",
            dir.path().join("moebox.sqlite").display().to_string()
        ),
    )
    .expect("write config");
    let created = moebox(
        &[
            "keys", "create", "--name", "ci", "--team", "audit", "--rpm", "60",
        ],
        &config,
    );
    assert!(created.status.success());
    let key = String::from_utf8(created.stdout).expect("utf-8");
    let listed = moebox(&["keys", "list"], &config);
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(table.contains("ci") && table.contains("audit") && table.contains("60 rpm"));
    assert!(!table.contains(&key.trim()[12..]), "the secret is listed");
    assert!(moebox(&["keys", "revoke", "1"], &config).status.success());
    let listed = moebox(&["keys", "list", "--json"], &config);
    let keys: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    assert!(keys[0]["revoked_at"].is_i64(), "{keys}");
    let missing = moebox(&["keys", "revoke", "99"], &config);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("99"));
    let bad = moebox(&["keys", "create", "--name", " "], &config);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("name"));
}

//! `moebox serve` and `moebox keys` as an operator runs them: the real binary with a config
//! file, no engine behind it.

mod gateway_http;
mod harness;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use gateway_http::request;
use harness::free_port;

fn moebox(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_moebox"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run moebox")
}

#[test]
fn serve_answers_health_and_readiness_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("moebox.toml");
    let address = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        &config,
        format!(
            "[ledger]\ndatabase = {database:?}\n\n[gateway]\nlisten = {address:?}\ntls = false\n\
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
    std::fs::write(
        &config,
        "[gateway]\nlisten = \"0.0.0.0:8080\"\ntls = false\n",
    )
    .expect("write config");
    let output = moebox(&["serve"], &config);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("gateway.tls") && stderr.contains("insecure_plaintext"),
        "{stderr}"
    );
}

/// What production does: systemd's socket unit binds the port and passes it (here through
/// `systemd-socket-activate`, the same protocol), the gateway generates its first-boot TLS
/// pair, and clients speak HTTPS, HTTP/2 by ALPN, trusting that certificate by name.
#[test]
fn socket_activated_serve_speaks_https_with_a_first_boot_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("moebox.toml");
    let port = free_port();
    let tls = dir.path().join("tls");
    std::fs::write(
        &config,
        format!(
            "[ledger]\ndatabase = {database:?}\n\n[gateway]\n\
             listen = \"127.0.0.1:1\"\nengines = [{socket:?}]\n\
             tls_certificate = {cert:?}\ntls_private_key = {key:?}\n",
            database = dir.path().join("moebox.sqlite").display().to_string(),
            socket = dir.path().join("no-engine.sock").display().to_string(),
            cert = tls.join("cert.pem").display().to_string(),
            key = tls.join("key.pem").display().to_string(),
        ),
    )
    .expect("write config");
    let created = moebox(&["keys", "create", "--name", "ops"], &config);
    assert!(created.status.success(), "{created:?}");
    let key = String::from_utf8(created.stdout).expect("utf-8");
    let key = key.trim().to_owned();

    // `listen` above is a port nobody may bind: serving at all proves the passed socket is used.
    let mut server = Command::new("systemd-socket-activate")
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(env!("CARGO_BIN_EXE_moebox"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn systemd-socket-activate (package systemd)");
    let curl = |args: &[&str]| {
        Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(tls.join("cert.pem"))
            .args(args)
            .output()
            .expect("run curl")
    };
    // The socket accepts at once; the first connection starts the gateway, which writes the
    // pair before serving it. Retry until the certificate exists and answers.
    let started = Instant::now();
    let health = loop {
        if tls.join("cert.pem").exists() {
            let out = curl(&[
                "-w",
                " %{http_version}",
                &format!("https://127.0.0.1:{port}/healthz"),
            ]);
            if out.status.success() {
                break String::from_utf8_lossy(&out.stdout).into_owned();
            }
        } else {
            // Socket activation starts the service on the first connection.
            let _ = std::net::TcpStream::connect(("127.0.0.1", port));
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no HTTPS answer; gateway stderr: {}",
            {
                let _ = server.kill();
                let output = server.wait_with_output().expect("output");
                String::from_utf8_lossy(&output.stderr).into_owned()
            }
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(health, "ok\n 2", "HTTP/2 negotiated by ALPN");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(tls.join("key.pem"))
            .expect("key")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the private key is the owner's only");
    let models = curl(&[
        "--http1.1",
        "-H",
        &format!("Authorization: Bearer {key}"),
        &format!("https://localhost:{port}/v1/models"),
    ]);
    assert!(models.status.success(), "{models:?}");
    assert!(
        String::from_utf8_lossy(&models.stdout).contains("\"object\":\"list\""),
        "{models:?}"
    );
    // Plaintext on the TLS port gets no HTTP answer, and the server goes on.
    let plain = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}/healthz"))
        .output()
        .expect("curl");
    assert!(!plain.status.success(), "{plain:?}");
    assert!(
        curl(&[&format!("https://127.0.0.1:{port}/healthz")])
            .status
            .success()
    );
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();
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

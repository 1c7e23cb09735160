//! `moebox provision` as systemd and an admin run it: exit status 0 / 1 / 2, the table or the
//! JSON report on stdout, the report file written, `STATUS=` lines on `NOTIFY_SOCKET`.

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn moebox(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_moebox"));
    command.args(args).env_remove("NOTIFY_SOCKET");
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(command: &mut Command) -> Output {
    command.output().expect("run moebox")
}

/// A config whose report goes to `dir`, plus `extra` TOML.
fn config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("moebox.toml");
    let report = dir.join("run/provision.json");
    std::fs::write(
        &path,
        format!("{extra}\n[provision]\nreport = \"{}\"\n", report.display()),
    )
    .expect("write config");
    path
}

/// Whether this machine has an NVIDIA GPU on its PCI bus (the live tests expect none, and say
/// what they check instead when there is one).
fn machine_has_nvidia_gpu() -> bool {
    std::fs::read_dir("/sys/bus/pci/devices")
        .map(|entries| {
            entries.flatten().any(|e| {
                std::fs::read_to_string(e.path().join("vendor")).is_ok_and(|v| v.trim() == "0x10de")
            })
        })
        .unwrap_or(false)
}

#[test]
fn live_run_without_a_gpu_fails_with_a_remedy_and_writes_the_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), "");
    let output = run(&mut moebox(&[
        "provision",
        "--config",
        config.to_str().expect("utf-8"),
    ]));
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{stdout}{}",
        text(&output.stderr)
    );
    if machine_has_nvidia_gpu() {
        assert!(!stdout.contains("no NVIDIA GPU found"), "{stdout}");
    } else {
        assert!(
            stdout.contains(
                "gpus_present            -      fail     no NVIDIA GPU found (expected 2)"
            ),
            "{stdout}"
        );
        assert!(
            stdout.contains("remedy: Check that the GPUs are seated"),
            "{stdout}"
        );
    }
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("run/provision.json")).expect("report written"),
    )
    .expect("report is JSON");
    assert_eq!(report["verdict"], "fail");
}

#[test]
fn live_run_cpu_only_passes_with_warnings_on_the_fixture() {
    if machine_has_nvidia_gpu() {
        // allow_cpu_only only relaxes the no-GPU case; with a GPU the other checks decide.
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = repo().join("tests/fixtures/tiny-moe");
    // An artefact list over the fixture, as assemble.py writes one over the image.
    let output = Command::new("sh")
        .arg("-c")
        .arg("sha256sum *")
        .current_dir(&fixture)
        .output()
        .expect("sha256sum");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let sums = text(&output.stdout).replace("  ", &format!("  {}/", fixture.display()));
    let list = dir.path().join("SHA256SUMS");
    std::fs::write(&list, sums).expect("write sums");
    let config = config(
        dir.path(),
        &format!(
            "[engine]\nmodel = \"{}\"\nexecution_provider = \"cpu\"\n",
            fixture.display()
        ),
    );
    std::fs::write(
        &config,
        format!(
            "{}allow_cpu_only = true\nartefacts = \"{}\"\n",
            std::fs::read_to_string(&config).expect("read"),
            list.display()
        ),
    )
    .expect("write config");
    let output = run(&mut moebox(&[
        "provision",
        "--config",
        config.to_str().expect("utf-8"),
        "--json",
    ]));
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("--json prints the report");
    assert_eq!(report["verdict"], "warn");
    let verdict = |id: &str| {
        report["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .find(|c| c["id"] == id)
            .map(|c| c["verdict"].clone())
    };
    assert_eq!(verdict("gpus_present"), Some("warn".into()));
    assert_eq!(verdict("artefacts"), Some("pass".into()));
    assert_eq!(verdict("cpu_reference"), Some("pass".into()));
}

#[test]
fn sysroot_run_on_the_captured_tree_passes_and_sends_status_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("lib.so"), "").expect("write");
    std::fs::write(
        dir.path().join("SHA256SUMS"),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  lib.so\n",
    )
    .expect("write");
    let config = config(dir.path(), "");
    std::fs::write(
        &config,
        format!(
            "{}artefacts = \"{}\"\n",
            std::fs::read_to_string(&config).expect("read"),
            dir.path().join("SHA256SUMS").display()
        ),
    )
    .expect("write config");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let tree = repo().join("crates/moebox-provision/tests/data/a100x2");
    let output = run(moebox(&[
        "provision",
        "--config",
        config.to_str().expect("utf-8"),
        "--sysroot",
        tree.to_str().expect("utf-8"),
    ])
    .env("NOTIFY_SOCKET", &socket_path));
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        text(&output.stderr)
    );
    assert!(stdout.starts_with("moebox provision: PASS: "), "{stdout}");
    assert!(
        stdout.contains("pcie_link               gpu1   pass     x16, Gen4 capable"),
        "{stdout}"
    );
    let mut statuses = Vec::new();
    let mut buffer = [0u8; 512];
    while let Ok(n) = socket.recv(&mut buffer) {
        let line = text(&buffer[..n]);
        let done = line.starts_with("STATUS=PASS");
        statuses.push(line);
        if done {
            break;
        }
    }
    assert_eq!(
        statuses.first().map(String::as_str),
        Some("STATUS=scanning the PCI bus")
    );
    assert!(
        statuses
            .last()
            .is_some_and(|s| s.starts_with("STATUS=PASS: ")),
        "{statuses:?}"
    );
}

#[test]
fn config_and_usage_errors_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = run(&mut moebox(&[
        "provision",
        "--config",
        "/nonexistent/moebox.toml",
    ]));
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("/nonexistent/moebox.toml"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[provision]\nexpected_gpus = 0\n").expect("write");
    let output = run(&mut moebox(&[
        "provision",
        "--config",
        bad.to_str().expect("utf-8"),
    ]));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("provision.expected_gpus"),
        "{}",
        text(&output.stderr)
    );

    let config = config(dir.path(), "");
    let output = run(&mut moebox(&[
        "provision",
        "--config",
        config.to_str().expect("utf-8"),
        "--sysroot",
        "/nonexistent/tree",
    ]));
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("--sysroot /nonexistent/tree: not a directory"));

    let output = run(&mut moebox(&["provision"]));
    assert_eq!(output.status.code(), Some(2), "clap: --config is required");
}

#[test]
fn an_unwritable_report_path_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("file"), "").expect("write");
    let path = dir.path().join("moebox.toml");
    std::fs::write(
        &path,
        format!(
            "[provision]\nallow_cpu_only = true\nreport = \"{}\"\n",
            dir.path().join("file/provision.json").display()
        ),
    )
    .expect("write");
    let tree = repo().join("crates/moebox-provision/tests/data/a100x2");
    let output = run(&mut moebox(&[
        "provision",
        "--config",
        path.to_str().expect("utf-8"),
        "--sysroot",
        tree.to_str().expect("utf-8"),
    ]));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("cannot write the report"),
        "{}",
        text(&output.stderr)
    );
}

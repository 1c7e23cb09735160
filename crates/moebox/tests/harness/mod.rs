//! The real `moebox` binary as the integration tests run it: a command with the systemd
//! environment removed, child processes killed and reaped when dropped, and `moebox up` started
//! on a free port in a given folder, with what it printed parsed.

#![allow(dead_code)]

use std::{
    collections::HashMap,
    ffi::OsStr,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use moebox_ledger::{Ledger, UnixSeconds, UsageFilter, UsageRecord};

use crate::gateway_http::{DEADLINE, Reply, request};

/// Every usage record in the ledger at `database` (up to 10,000), by request id.
pub fn records(database: &Path) -> HashMap<String, UsageRecord> {
    Ledger::open(database)
        .expect("the ledger opens")
        .usage_records(
            UnixSeconds(0),
            UnixSeconds(4_000_000_000),
            &UsageFilter::All,
            None,
            10_000,
        )
        .expect("records")
        .records
        .into_iter()
        .map(|stored| (stored.record.request_id.clone(), stored.record))
        .collect()
}

/// A port nothing listens on now (the listener is closed before it is returned).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `moebox` with stdin closed, logging at `warn`, and none of systemd's variables from the
/// environment the tests run in.
pub fn moebox() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_moebox"));
    command
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env("MOEBOX_LOG", "warn")
        .stdin(Stdio::null());
    command
}

/// A child process, killed (SIGKILL) and reaped when dropped; its stderr goes to a file.
pub struct Process {
    pub child: Child,
    log: PathBuf,
}

impl Process {
    pub fn spawn(mut command: Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        let child = command
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn moebox");
        Self { child, log }
    }

    /// What it wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`; returns the instant just before the signal was sent.
    pub fn kill_9(&mut self) -> Instant {
        let at = Instant::now();
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaped");
        at
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&mut self) {
        assert!(signal(self.child.id(), "TERM"), "kill -TERM");
        let exit = self.wait_exit();
        assert!(exit.success(), "{exit:?}: {}", self.log());
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(started.elapsed() < DEADLINE, "did not exit: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The processes it started that run `moebox engine` (`up`'s engine), read from /proc.
    pub fn engine_children(&self) -> Vec<u32> {
        let parent = self.child.id();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces, so split after the ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<u32>().ok());
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if ppid == Some(parent) && cmdline.split(|&b| b == 0).any(|arg| arg == b"engine") {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `signal` (a name `kill` knows: TERM, KILL) to `pid`; false if it could not.
pub fn signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// `moebox up` as a user runs it, on a free port with its data folder under `dir`; dropping it
/// stops it (SIGTERM, then SIGKILL for it and its engine if it lingers).
pub struct Up {
    pub process: Process,
    pub address: String,
    pub admin_key: String,
    pub user_key: String,
    pub config: PathBuf,
}

impl Up {
    /// Starts `up` with `args` besides `--listen` and `--data-dir`, logging at `log_level`, and
    /// waits for its `ready` line.
    pub fn start(dir: &Path, args: &[&OsStr], log_level: &str) -> Self {
        let log = dir.join("up.log");
        let mut child = moebox()
            .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .args(args)
            .env("MOEBOX_LOG", log_level)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn moebox up");
        let stdout = child.stdout.take().expect("stdout");
        let process = Process { child, log };
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut printed: Vec<String> = Vec::new();
        let started = Instant::now();
        while !printed.iter().any(|l| l == "ready") {
            match received.recv_timeout(DEADLINE.saturating_sub(started.elapsed())) {
                Ok(line) => printed.push(line),
                Err(_) => panic!(
                    "`moebox up` printed no `ready`: stdout {printed:#?}\nstderr:\n{}",
                    process.log()
                ),
            }
        }
        let field = |prefix: &str| {
            printed
                .iter()
                .find_map(|line| line.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("no `{prefix}` line in {printed:#?}"))
                .to_owned()
        };
        let url = field("url: ");
        let user_key = field("user key: ");
        let curl = field("curl: ");
        assert!(curl.contains(&url) && curl.contains(&user_key), "{curl}");
        Self {
            address: url
                .strip_prefix("http://")
                .expect("an http:// URL")
                .to_owned(),
            admin_key: field("admin key: "),
            user_key,
            config: PathBuf::from(field("config: ")),
            process,
        }
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&[u8]>,
    ) -> Reply {
        request(&self.address, method, path, key, body)
    }

    pub fn post(&self, path: &str, key: &str, body: &serde_json::Value) -> Reply {
        self.request("POST", path, Some(key), Some(body.to_string().as_bytes()))
    }

    /// `moebox keys ARGS --config CONFIG`, which must succeed.
    pub fn keys(&self, args: &[&str]) -> std::process::Output {
        let output = moebox()
            .arg("keys")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("run moebox keys");
        assert!(
            output.status.success(),
            "moebox keys {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Everything `up` and its engine logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The engine processes `up` supervises.
    pub fn engine_pids(&self) -> Vec<u32> {
        self.process.engine_children()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let engines = self.engine_pids();
        // SIGTERM lets `up` stop its engine; SIGKILL after a while in case it hangs.
        signal(self.process.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.process.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in engines {
            signal(pid, "KILL");
        }
        // Process's own drop kills and reaps `up` if it is still there.
    }
}

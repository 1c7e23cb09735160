//! The service manager protocol (`sd_notify`), the watchdog and socket activation, with the
//! standard library (no libsystemd to load).
//!
//! systemd tells a `Type=notify` service where to report through environment variables:
//! `NOTIFY_SOCKET` (a Unix datagram socket: a path, or `@name` in the abstract namespace),
//! `WATCHDOG_USEC` (ping at least this often) and `WATCHDOG_PID` (whom the watchdog is for).
//! [`SystemdEnv::from_process`] reads them once, at start, in the binary; everything else takes
//! them as values, so tests never touch the real environment.
//!
//! Without `NOTIFY_SOCKET` (a person at a terminal, a test) there is no [`Notifier`] and nothing
//! to do. A socket that cannot be reached is logged and ignored: progress reports never stop
//! the service.

// One `unsafe` block: taking ownership of the socket systemd passes (activation.rs).
#![deny(unsafe_code)]

pub mod activation;

use std::{
    cell::Cell,
    ffi::{OsStr, OsString},
    os::{
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixDatagram},
    },
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";
pub const WATCHDOG_USEC_ENV: &str = "WATCHDOG_USEC";
pub const WATCHDOG_PID_ENV: &str = "WATCHDOG_PID";

pub use activation::{ActivationError, LISTEN_FDS_ENV, LISTEN_PID_ENV};

/// What the service manager put in this process's environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemdEnv {
    pub notify_socket: Option<OsString>,
    pub watchdog_usec: Option<OsString>,
    pub watchdog_pid: Option<OsString>,
    pub listen_fds: Option<OsString>,
    pub listen_pid: Option<OsString>,
}

impl SystemdEnv {
    /// Reads the variables. Call it once, at start, in the binary.
    pub fn from_process() -> Self {
        Self {
            notify_socket: std::env::var_os(NOTIFY_SOCKET_ENV),
            watchdog_usec: std::env::var_os(WATCHDOG_USEC_ENV),
            watchdog_pid: std::env::var_os(WATCHDOG_PID_ENV),
            listen_fds: std::env::var_os(LISTEN_FDS_ENV),
            listen_pid: std::env::var_os(LISTEN_PID_ENV),
        }
    }

    /// The sockets systemd passed to process `pid` (socket activation); empty when none.
    /// Call it once: the descriptors become owned by the caller.
    pub fn listen_fds(&self, pid: u32) -> Result<Vec<std::os::fd::OwnedFd>, ActivationError> {
        activation::listen_fds(self.listen_fds.as_deref(), self.listen_pid.as_deref(), pid)
    }

    /// The notifier, when `NOTIFY_SOCKET` names a usable address.
    pub fn notifier(&self) -> Option<Notifier> {
        Notifier::from_env_value(self.notify_socket.clone())
    }

    /// How often to ping the watchdog, for the process `pid`: half of `WATCHDOG_USEC`, so one
    /// late ping does not get the service killed. `None` when no watchdog is set, when it is
    /// meant for another process (`WATCHDOG_PID`), or when the value is not a positive number.
    pub fn watchdog_interval(&self, pid: u32) -> Option<Duration> {
        watchdog_interval(
            self.watchdog_usec.as_deref(),
            self.watchdog_pid.as_deref(),
            pid,
        )
    }
}

fn watchdog_interval(usec: Option<&OsStr>, for_pid: Option<&OsStr>, pid: u32) -> Option<Duration> {
    let usec = usec.filter(|v| !v.is_empty())?;
    if let Some(for_pid) = for_pid.filter(|v| !v.is_empty()) {
        match for_pid.to_str().and_then(|v| v.parse::<u32>().ok()) {
            Some(for_pid) if for_pid == pid => {}
            Some(_) => return None,
            None => {
                tracing::warn!(value = ?for_pid, "{WATCHDOG_PID_ENV} is not a process id; no watchdog");
                return None;
            }
        }
    }
    match usec.to_str().and_then(|v| v.parse::<u64>().ok()) {
        Some(usec) if usec > 0 => Some(Duration::from_micros(usec) / 2),
        _ => {
            tracing::warn!(value = ?usec, "{WATCHDOG_USEC_ENV} is not a positive number; no watchdog");
            None
        }
    }
}

/// Sends notifications to the service manager.
#[derive(Debug)]
pub struct Notifier {
    address: SocketAddr,
    socket: UnixDatagram,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`'s value: a path, or `@name` for the abstract namespace. `None` when
    /// unset or empty, or when the address or the sending socket cannot be made (logged).
    pub fn from_env_value(value: Option<OsString>) -> Option<Self> {
        let value = value.filter(|v| !v.is_empty())?;
        let bytes = value.as_encoded_bytes();
        let address = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name),
            None => SocketAddr::from_pathname(PathBuf::from(&value)),
        };
        let address = match address {
            Ok(address) => address,
            Err(err) => {
                tracing::warn!(socket = ?value, error = %err, "NOTIFY_SOCKET is not a usable address");
                return None;
            }
        };
        // Non-blocking: a service manager that does not read (its queue holds about ten
        // datagrams) must cost a lost message, never a scheduler stuck in a watchdog ping.
        match UnixDatagram::unbound().and_then(|socket| {
            socket.set_nonblocking(true)?;
            Ok(socket)
        }) {
            Ok(socket) => Some(Self { address, socket }),
            Err(err) => {
                tracing::warn!(error = %err, "cannot create the sd_notify socket");
                None
            }
        }
    }

    /// `STATUS=<text>`: one line for `systemctl status` (newlines would end the assignment;
    /// they become spaces).
    pub fn status(&self, text: &str) {
        self.send(&format!("STATUS={}", text.replace('\n', " ")));
    }

    /// `READY=1`: start-up is complete; systemd starts the units ordered after this one.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// `STOPPING=1`: the service is shutting down.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// `WATCHDOG=1`: the service is alive.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// `EXTEND_TIMEOUT_USEC=…`: start-up (or shutdown) needs up to `by` more from now, beyond
    /// the unit's `TimeoutStartSec`.
    pub fn extend_timeout(&self, by: Duration) {
        self.send(&format!("EXTEND_TIMEOUT_USEC={}", by.as_micros()));
    }

    fn send(&self, message: &str) {
        if let Err(err) = self.socket.send_to_addr(message.as_bytes(), &self.address) {
            tracing::debug!(error = %err, message, "sd_notify failed");
        }
    }
}

/// Rate-limited watchdog pings, for a loop that calls [`Watchdog::ping_if_due`] far more often
/// than the watchdog needs (the scheduler's heartbeat): pings at most once per `interval`.
#[derive(Debug)]
pub struct Watchdog {
    notifier: Arc<Notifier>,
    interval: Duration,
    last: Cell<Option<Instant>>,
}

impl Watchdog {
    pub fn new(notifier: Arc<Notifier>, interval: Duration) -> Self {
        Self {
            notifier,
            interval,
            last: Cell::new(None),
        }
    }

    pub fn ping_if_due(&self) {
        if self.due(Instant::now()) {
            self.notifier.watchdog();
        }
    }

    /// Whether a ping is due at `now`, recording it as sent when it is.
    fn due(&self, now: Instant) -> bool {
        let due = self
            .last
            .get()
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if due {
            self.last.set(Some(now));
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(value: &str) -> Option<OsString> {
        Some(value.into())
    }

    fn listener() -> (tempfile::TempDir, PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).expect("bind");
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        (dir, path, listener)
    }

    fn receive(listener: &UnixDatagram) -> String {
        let mut buffer = [0u8; 256];
        let n = listener.recv(&mut buffer).expect("receives");
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    }

    #[test]
    fn unset_or_empty_means_no_notifier() {
        assert!(Notifier::from_env_value(None).is_none());
        assert!(Notifier::from_env_value(Some(OsString::new())).is_none());
        assert!(SystemdEnv::default().notifier().is_none());
    }

    #[test]
    fn every_message_reaches_a_path_socket() {
        let (_dir, path, listener) = listener();
        let notifier = Notifier::from_env_value(Some(path.into())).expect("notifier");
        notifier.status("checking gpu0\necc");
        notifier.extend_timeout(Duration::from_secs(300));
        notifier.ready();
        notifier.watchdog();
        notifier.stopping();
        let received: Vec<String> = (0..5).map(|_| receive(&listener)).collect();
        assert_eq!(
            received,
            [
                "STATUS=checking gpu0 ecc",
                "EXTEND_TIMEOUT_USEC=300000000",
                "READY=1",
                "WATCHDOG=1",
                "STOPPING=1"
            ]
        );
    }

    #[test]
    fn status_lines_reach_an_abstract_socket() {
        let name = format!("moebox-systemd-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).expect("address");
        let listener = UnixDatagram::bind_addr(&address).expect("bind");
        let notifier = Notifier::from_env_value(Some(format!("@{name}").into())).expect("notifier");
        notifier.status("PASS");
        assert_eq!(receive(&listener), "STATUS=PASS");
    }

    #[test]
    fn an_absent_socket_is_ignored() {
        let notifier = Notifier::from_env_value(Some("/nonexistent/notify.sock".into()))
            .expect("the address is valid");
        notifier.status("nobody listens");
        notifier.ready();
    }

    #[test]
    fn a_service_manager_that_does_not_read_never_blocks_the_sender() {
        let (_dir, path, _listener) = listener();
        let notifier = Notifier::from_env_value(Some(path.into())).expect("notifier");
        // Far more than the socket's queue holds; the extra messages are dropped.
        for _ in 0..1000 {
            notifier.watchdog();
        }
    }

    #[test]
    fn the_watchdog_pings_at_half_its_timeout_and_only_for_its_process() {
        let env = |usec: &str, pid: Option<&str>| SystemdEnv {
            notify_socket: None,
            watchdog_usec: os(usec),
            watchdog_pid: pid.and_then(os),
            ..SystemdEnv::default()
        };
        let half = Some(Duration::from_secs(15));
        assert_eq!(env("30000000", None).watchdog_interval(42), half);
        assert_eq!(env("30000000", Some("42")).watchdog_interval(42), half);
        assert_eq!(env("30000000", Some("")).watchdog_interval(42), half);
        assert_eq!(env("30000000", Some("41")).watchdog_interval(42), None);
        assert_eq!(env("30000000", Some("me")).watchdog_interval(42), None);
        assert_eq!(env("0", None).watchdog_interval(42), None);
        assert_eq!(env("soon", None).watchdog_interval(42), None);
        assert_eq!(env("", None).watchdog_interval(42), None);
        assert_eq!(SystemdEnv::default().watchdog_interval(42), None);
    }

    #[test]
    fn watchdog_pings_are_rate_limited() {
        let (_dir, path, listener) = listener();
        let notifier = Arc::new(Notifier::from_env_value(Some(path.into())).expect("notifier"));
        let watchdog = Watchdog::new(Arc::clone(&notifier), Duration::from_secs(10));
        let start = Instant::now();
        assert!(watchdog.due(start), "the first ping goes at once");
        assert!(!watchdog.due(start + Duration::from_millis(250)));
        assert!(!watchdog.due(start + Duration::from_millis(9_999)));
        assert!(watchdog.due(start + Duration::from_secs(10)));
        assert!(!watchdog.due(start + Duration::from_secs(11)));
        // The real clock: one ping, then none for the next calls.
        let watchdog = Watchdog::new(notifier, Duration::from_secs(3600));
        for _ in 0..3 {
            watchdog.ping_if_due();
        }
        assert_eq!(receive(&listener), "WATCHDOG=1");
        listener.set_nonblocking(true).expect("nonblocking");
        let mut buffer = [0u8; 64];
        assert!(listener.recv(&mut buffer).is_err(), "only one ping");
    }
}

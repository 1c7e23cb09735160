//! Socket activation (`sd_listen_fds`): systemd binds the listening socket (port 443, as root,
//! before the service starts) and hands it over as file descriptor 3, announcing it with
//! `LISTEN_PID` (the process it is meant for) and `LISTEN_FDS` (how many, from 3 on).
//!
//! The service then needs no capability to bind a privileged port, and connections that
//! arrive while it restarts wait in the socket's backlog instead of being refused.

use std::{ffi::OsStr, os::fd::OwnedFd, path::PathBuf};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: i32 = 3;
/// More descriptors than any moebox unit configures: a garbled `LISTEN_FDS` is an error, not a
/// reason to claim half the descriptor table.
pub const MAX_LISTEN_FDS: usize = 16;

pub const LISTEN_FDS_ENV: &str = "LISTEN_FDS";
pub const LISTEN_PID_ENV: &str = "LISTEN_PID";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivationError {
    #[error("{LISTEN_FDS_ENV}={value:?} is not a count of at most {MAX_LISTEN_FDS} descriptors")]
    BadCount { value: String },
    #[error("{LISTEN_PID_ENV}={value:?} is not a process id")]
    BadPid { value: String },
    #[error("systemd announced descriptor {fd}, but it is not an open socket in this process")]
    NotASocket { fd: i32 },
}

/// The descriptors passed to process `pid`, from the values of `LISTEN_FDS` and `LISTEN_PID`.
/// Empty when none were passed, or when they were meant for another process (a parent that
/// did not clear the variables before starting us).
pub fn listen_fds(
    listen_fds: Option<&OsStr>,
    listen_pid: Option<&OsStr>,
    pid: u32,
) -> Result<Vec<OwnedFd>, ActivationError> {
    let Some(count) = listen_fds.filter(|v| !v.is_empty()) else {
        return Ok(Vec::new());
    };
    if let Some(for_pid) = listen_pid.filter(|v| !v.is_empty()) {
        match for_pid.to_str().and_then(|v| v.parse::<u32>().ok()) {
            Some(for_pid) if for_pid == pid => {}
            Some(_) => return Ok(Vec::new()),
            None => {
                return Err(ActivationError::BadPid {
                    value: for_pid.to_string_lossy().into_owned(),
                });
            }
        }
    } else {
        // sd_listen_fds(3) requires LISTEN_PID; without it the descriptors may belong to
        // someone else.
        return Ok(Vec::new());
    }
    let count = count
        .to_str()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n <= MAX_LISTEN_FDS)
        .ok_or_else(|| ActivationError::BadCount {
            value: count.to_string_lossy().into_owned(),
        })?;
    (0..count)
        .map(|offset| take_socket(LISTEN_FDS_START + offset as i32))
        .collect()
}

/// Takes ownership of the passed socket `fd`, after checking that it is one.
fn take_socket(fd: i32) -> Result<OwnedFd, ActivationError> {
    // /proc names what the descriptor is without touching it: `socket:[inode]` for a socket.
    let target = std::fs::read_link(PathBuf::from(format!("/proc/self/fd/{fd}")))
        .map_err(|_| ActivationError::NotASocket { fd })?;
    if !target
        .as_os_str()
        .as_encoded_bytes()
        .starts_with(b"socket:")
    {
        return Err(ActivationError::NotASocket { fd });
    }
    #[allow(unsafe_code)]
    // SAFETY: `fd` is open (just checked through /proc) and is a socket that systemd passed to
    // this process (LISTEN_PID is ours). Nothing else in the process owns it: it is taken once,
    // at start, by the one caller of `listen_fds`.
    let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(value: &str) -> Option<&OsStr> {
        Some(OsStr::new(value))
    }

    #[test]
    fn nothing_passed_is_no_descriptors() {
        assert!(listen_fds(None, None, 7).expect("no error").is_empty());
        assert!(listen_fds(os(""), os("7"), 7).expect("no error").is_empty());
    }

    #[test]
    fn descriptors_for_another_process_are_left_alone() {
        assert!(
            listen_fds(os("1"), os("8"), 7)
                .expect("no error")
                .is_empty()
        );
        assert!(listen_fds(os("1"), None, 7).expect("no error").is_empty());
    }

    #[test]
    fn garbled_values_are_errors_naming_the_variable() {
        let error = listen_fds(os("many"), os("7"), 7).expect_err("an error");
        assert!(error.to_string().contains("LISTEN_FDS"), "{error}");
        let error = listen_fds(os("1000"), os("7"), 7).expect_err("an error");
        assert!(error.to_string().contains("at most 16"), "{error}");
        let error = listen_fds(os("1"), os("me"), 7).expect_err("an error");
        assert!(error.to_string().contains("LISTEN_PID"), "{error}");
    }

    #[test]
    fn a_descriptor_that_is_not_a_socket_is_refused() {
        // Descriptor 0 of a test process is a terminal, a pipe or /dev/null, never a listening
        // socket handed over by systemd.
        assert_eq!(
            take_socket(0).expect_err("refused"),
            ActivationError::NotASocket { fd: 0 }
        );
        assert_eq!(
            take_socket(100_000).expect_err("refused"),
            ActivationError::NotASocket { fd: 100_000 }
        );
    }
}

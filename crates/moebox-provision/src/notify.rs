//! `STATUS=` lines to systemd (`sd_notify`), over the Unix datagram socket named by
//! `NOTIFY_SOCKET`. Nothing to do when the variable is unset (a person at a terminal);
//! a socket that cannot be reached is logged and ignored: progress reports never stop
//! provisioning.

use std::{
    ffi::OsString,
    os::unix::net::UnixDatagram,
    os::{linux::net::SocketAddrExt, unix::net::SocketAddr},
    path::PathBuf,
};

#[derive(Debug)]
pub struct Notifier {
    address: SocketAddr,
    socket: UnixDatagram,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`'s value (taken as a value, so tests never read the environment):
    /// a path, or `@name` for the abstract namespace.
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
        match UnixDatagram::unbound() {
            Ok(socket) => Some(Self { address, socket }),
            Err(err) => {
                tracing::warn!(error = %err, "cannot create the sd_notify socket");
                None
            }
        }
    }

    /// Sends `STATUS=<text>` (newlines would end the assignment; they become spaces).
    pub fn status(&self, text: &str) {
        let message = format!("STATUS={}", text.replace('\n', " "));
        if let Err(err) = self.socket.send_to_addr(message.as_bytes(), &self.address) {
            tracing::debug!(error = %err, "sd_notify failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_or_empty_means_no_notifier() {
        assert!(Notifier::from_env_value(None).is_none());
        assert!(Notifier::from_env_value(Some(OsString::new())).is_none());
    }

    #[test]
    fn status_lines_reach_a_path_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier::from_env_value(Some(path.clone().into())).expect("notifier");
        notifier.status("checking gpu0\necc");
        let mut buffer = [0u8; 256];
        let n = listener.recv(&mut buffer).expect("receives");
        assert_eq!(&buffer[..n], b"STATUS=checking gpu0 ecc");
    }

    #[test]
    fn status_lines_reach_an_abstract_socket() {
        let name = format!("moebox-provision-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).expect("address");
        let listener = UnixDatagram::bind_addr(&address).expect("bind");
        let notifier = Notifier::from_env_value(Some(format!("@{name}").into())).expect("notifier");
        notifier.status("PASS");
        let mut buffer = [0u8; 64];
        let n = listener.recv(&mut buffer).expect("receives");
        assert_eq!(&buffer[..n], b"STATUS=PASS");
    }

    #[test]
    fn an_absent_socket_is_ignored() {
        let notifier = Notifier::from_env_value(Some("/nonexistent/notify.sock".into()))
            .expect("the address is valid");
        notifier.status("nobody listens");
    }
}

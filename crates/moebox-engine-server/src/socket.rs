//! The socket file: a stale one (left by a crashed engine) is replaced, a live one (another
//! engine serving the same GPU) or a file that is not a socket is refused; ours is created with
//! mode 0660 and removed when the engine ends.

use std::{
    io,
    os::unix::{
        fs::{FileTypeExt, MetadataExt, PermissionsExt},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
};

/// Owner and group (the gateway's) may connect; nobody else.
pub const SOCKET_MODE: u32 = 0o660;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{path}: another engine is serving on this socket")]
    InUse { path: PathBuf },
    #[error("{path}: exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("{path}: cannot {during}: {cause}")]
    Io {
        path: PathBuf,
        during: &'static str,
        cause: io::Error,
    },
}

/// The bound socket's file; removed on drop if it is still the one this process created.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// Device, inode and change time of the file once bound: inode numbers are reused at once
    /// on tmpfs, so the change time tells our file from a newer one.
    identity: (u64, u64, i64, i64),
}

impl SocketFile {
    /// Binds `path`, replacing a stale socket file, and sets its mode to [`SOCKET_MODE`].
    pub fn bind(path: &Path) -> Result<(Self, UnixListener), SocketError> {
        let io = |during| {
            let path = path.to_owned();
            move |cause| SocketError::Io {
                path,
                during,
                cause,
            }
        };
        match std::fs::symlink_metadata(path) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io("inspect the socket path")(err)),
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(SocketError::NotASocket {
                    path: path.to_owned(),
                });
            }
            Ok(_) => match UnixStream::connect(path) {
                Ok(_) => {
                    return Err(SocketError::InUse {
                        path: path.to_owned(),
                    });
                }
                Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "removing a stale socket file");
                    std::fs::remove_file(path).map_err(io("remove the stale socket file"))?;
                }
                Err(err) => return Err(io("check the existing socket")(err)),
            },
        }
        let listener = UnixListener::bind(path).map_err(io("bind the socket"))?;
        // Between bind and chmod the file has the umask's mode; its folder (/run/moebox, 0750)
        // keeps others out meanwhile.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(io("set the socket's mode"))?;
        let meta = std::fs::symlink_metadata(path).map_err(io("inspect the socket"))?;
        Ok((
            Self {
                path: path.to_owned(),
                identity: identity(&meta),
            },
            listener,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| identity(&meta) == self.identity);
        if ours && let Err(err) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %err, "cannot remove the socket file");
        }
    }
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_with_mode_0660_and_removes_the_file_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("engine-0.sock");
        let (file, _listener) = SocketFile::bind(&path).expect("binds");
        let meta = std::fs::metadata(&path).expect("exists");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, SOCKET_MODE);
        UnixStream::connect(&path).expect("accepts connections");
        drop(file);
        assert!(!path.exists());
    }

    #[test]
    fn a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("engine-0.sock");
        // A listener that is gone leaves its file behind, as a crashed engine does.
        drop(UnixListener::bind(&path).expect("binds"));
        assert!(path.exists());
        let (_file, _listener) = SocketFile::bind(&path).expect("replaces the stale file");
        UnixStream::connect(&path).expect("ours now");
    }

    #[test]
    fn a_live_socket_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("engine-0.sock");
        let _other = UnixListener::bind(&path).expect("binds");
        let err = SocketFile::bind(&path).expect_err("refused");
        assert!(matches!(err, SocketError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("engine-0.sock"), "{err}");
        UnixStream::connect(&path).expect("the other engine still serves");
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_refused_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("engine-0.sock");
        std::fs::write(&path, "data").expect("writes");
        let err = SocketFile::bind(&path).expect_err("refused");
        assert!(matches!(err, SocketError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&path).expect("kept"), "data");
    }

    #[test]
    fn a_missing_folder_is_named() {
        let err =
            SocketFile::bind(Path::new("/nonexistent/moebox/engine-0.sock")).expect_err("refused");
        assert!(
            err.to_string()
                .starts_with("/nonexistent/moebox/engine-0.sock: cannot bind"),
            "{err}"
        );
    }

    #[test]
    fn a_replaced_file_is_not_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("engine-0.sock");
        let (file, listener) = SocketFile::bind(&path).expect("binds");
        drop(listener);
        std::fs::remove_file(&path).expect("removes");
        let (_newer, _listener) = SocketFile::bind(&path).expect("binds again");
        drop(file);
        assert!(path.exists(), "the newer engine's socket stays");
    }
}

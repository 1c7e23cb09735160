//! Finding and loading the ONNX Runtime shared library.
//!
//! The library is never downloaded by a build script: it comes from the pinned PyPI wheel
//! (`provisioning/manifest.toml`), unpacked by the set-up step or the image build, and is loaded
//! at run time. A missing or wrong library is one clear line naming the path and the version.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

pub use moebox_config::{
    DEFAULT_ONNXRUNTIME_LIBRARY, ONNXRUNTIME_LIBRARY_ENV, ONNXRUNTIME_VERSION,
};

/// File name of the library inside the wheel (`onnxruntime/capi/`).
pub const LIBRARY_FILE_NAME: &str = "libonnxruntime.so.1.31.1";
/// Where the development set-up unpacks the library, relative to the repository root.
pub const DEV_CACHE_DIR: &str = ".moebox/onnxruntime";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found at {path} ({origin}); moebox needs ONNX Runtime {ONNXRUNTIME_VERSION}: run `./dev setup`, or set `onnxruntime.library` in the config or {ONNXRUNTIME_LIBRARY_ENV}"
    )]
    Missing {
        path: PathBuf,
        origin: LibraryOrigin,
    },
    #[error(
        "cannot load ONNX Runtime from {path} ({origin}): {cause}; moebox needs ONNX Runtime {ONNXRUNTIME_VERSION}"
    )]
    Load {
        path: PathBuf,
        origin: LibraryOrigin,
        cause: String,
    },
    #[error(
        "ONNX Runtime at {path} is version {found}; moebox needs ONNX Runtime {ONNXRUNTIME_VERSION}"
    )]
    WrongVersion { path: PathBuf, found: String },
    #[error("cannot create the ONNX Runtime environment: {0}")]
    Environment(String),
}

/// Which setting chose the library, so an error says what to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibraryOrigin {
    Config,
    Environment,
    DevelopmentCache,
    BesideBinary,
    Default,
}

impl std::fmt::Display for LibraryOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Config => "from onnxruntime.library in the config",
            Self::Environment => "from ORT_DYLIB_PATH",
            Self::DevelopmentCache => "from the development cache .moebox/onnxruntime",
            Self::BesideBinary => "beside the moebox binary",
            Self::Default => "the default path",
        })
    }
}

/// Picks the library: the config key, then `ORT_DYLIB_PATH`, then a copy beside the binary
/// (`../lib/moebox/onnxruntime/`), then the development cache in an ancestor of the binary's
/// folder, then the image's default path. Inputs are values so tests never read the real
/// environment.
pub fn resolve_library(
    configured: Option<&Path>,
    env_value: Option<OsString>,
    executable: Option<&Path>,
) -> (PathBuf, LibraryOrigin) {
    if let Some(path) = configured {
        return (path.to_owned(), LibraryOrigin::Config);
    }
    if let Some(value) = env_value.filter(|v| !v.is_empty()) {
        return (PathBuf::from(value), LibraryOrigin::Environment);
    }
    if let Some(exe_dir) = executable.and_then(Path::parent) {
        let beside = exe_dir
            .join("../lib/moebox/onnxruntime")
            .join(LIBRARY_FILE_NAME);
        if beside.is_file() {
            return (beside, LibraryOrigin::BesideBinary);
        }
        for ancestor in exe_dir.ancestors() {
            let candidate = ancestor.join(DEV_CACHE_DIR).join(LIBRARY_FILE_NAME);
            if candidate.is_file() {
                return (candidate, LibraryOrigin::DevelopmentCache);
            }
        }
    }
    (
        PathBuf::from(DEFAULT_ONNXRUNTIME_LIBRARY),
        LibraryOrigin::Default,
    )
}

/// The process's ONNX Runtime: the library loaded and the environment sessions are made in.
#[derive(Clone)]
pub struct Runtime {
    pub library: PathBuf,
    pub environment: ort::environment::Environment,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("library", &self.library)
            .finish_non_exhaustive()
    }
}

/// Loads ONNX Runtime once per process and checks its version. Later calls return the runtime
/// loaded first.
pub fn load(configured: Option<&Path>) -> Result<Runtime, RuntimeError> {
    static LOADED: std::sync::OnceLock<Runtime> = std::sync::OnceLock::new();
    if let Some(runtime) = LOADED.get() {
        return Ok(runtime.clone());
    }
    let exe = std::env::current_exe().ok();
    let (path, origin) = resolve_library(
        configured,
        std::env::var_os(ONNXRUNTIME_LIBRARY_ENV),
        exe.as_deref(),
    );
    if !path.is_file() {
        return Err(RuntimeError::Missing { path, origin });
    }
    let builder = ort::init_from(&path).map_err(|e| match e {
        ort::LoadDynamicError::BadVersion { version_str, path } => RuntimeError::WrongVersion {
            path,
            found: version_str,
        },
        other => RuntimeError::Load {
            path: path.clone(),
            origin,
            cause: other.to_string(),
        },
    })?;
    let found = build_version(ort::info());
    if let Some(found) = found.filter(|v| v != ONNXRUNTIME_VERSION) {
        return Err(RuntimeError::WrongVersion { path, found });
    }
    let environment = builder
        .with_name("moebox")
        .with_logger(std::sync::Arc::new(forward_log))
        .build()
        .map_err(|e| RuntimeError::Environment(e.to_string()))?;
    tracing::info!(path = %path.display(), version = ONNXRUNTIME_VERSION, "loaded ONNX Runtime");
    Ok(LOADED
        .get_or_init(|| Runtime {
            library: path,
            environment,
        })
        .clone())
}

/// ONNX Runtime's own log lines, through `tracing` (target `onnxruntime`) instead of straight to
/// stderr. Its errors are also returned to the caller, which reports them once on one line, so
/// they are logged at debug; so are its warnings (mostly node placement notes). Show them with
/// `MOEBOX_LOG=onnxruntime=debug` (or `=trace` for its verbose log).
fn forward_log(
    level: ort::logging::LogLevel,
    category: &str,
    _id: &str,
    location: &str,
    message: &str,
) {
    use ort::logging::LogLevel;
    match level {
        LogLevel::Fatal => tracing::error!(target: "onnxruntime", category, location, "{message}"),
        LogLevel::Error | LogLevel::Warning | LogLevel::Info => {
            tracing::debug!(target: "onnxruntime", ?level, category, location, "{message}")
        }
        LogLevel::Verbose => {
            tracing::trace!(target: "onnxruntime", category, location, "{message}")
        }
    }
}

/// The release version in ONNX Runtime's build string (`git-branch=rel-1.31.1, ...`).
fn build_version(info: &str) -> Option<String> {
    let start = info.find("git-branch=rel-")? + "git-branch=rel-".len();
    let version: String = info[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (!version.is_empty()).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_key_wins_over_everything() {
        let (path, origin) =
            resolve_library(Some(Path::new("/x/lib.so")), Some("/y/lib.so".into()), None);
        assert_eq!(
            (path.as_path(), origin),
            (Path::new("/x/lib.so"), LibraryOrigin::Config)
        );
    }

    #[test]
    fn environment_comes_second_and_empty_is_unset() {
        let (path, origin) = resolve_library(None, Some("/y/lib.so".into()), None);
        assert_eq!(
            (path.as_path(), origin),
            (Path::new("/y/lib.so"), LibraryOrigin::Environment)
        );
        let (_, origin) = resolve_library(None, Some("".into()), None);
        assert_eq!(origin, LibraryOrigin::Default);
    }

    #[test]
    fn development_cache_is_found_from_the_binary() {
        let repo = tempfile::tempdir().expect("tempdir");
        let cache = repo.path().join(DEV_CACHE_DIR);
        std::fs::create_dir_all(&cache).expect("mkdir");
        std::fs::write(cache.join(LIBRARY_FILE_NAME), b"").expect("write");
        let exe = repo.path().join("target/debug/moebox");
        let (path, origin) = resolve_library(None, None, Some(&exe));
        assert_eq!(origin, LibraryOrigin::DevelopmentCache);
        assert_eq!(path, cache.join(LIBRARY_FILE_NAME));
    }

    #[test]
    fn falls_back_to_the_image_path() {
        let (path, origin) =
            resolve_library(None, None, Some(Path::new("/nonexistent/bin/moebox")));
        assert_eq!(origin, LibraryOrigin::Default);
        assert_eq!(path, Path::new(DEFAULT_ONNXRUNTIME_LIBRARY));
    }

    #[test]
    fn missing_library_message_names_path_and_version() {
        let err = RuntimeError::Missing {
            path: PathBuf::from("/nowhere/libonnxruntime.so"),
            origin: LibraryOrigin::Environment,
        };
        let text = err.to_string();
        assert!(text.contains("/nowhere/libonnxruntime.so"), "{text}");
        assert!(text.contains(ONNXRUNTIME_VERSION), "{text}");
        assert!(text.contains("ORT_DYLIB_PATH"), "{text}");
        assert!(!text.contains('\n'));
    }

    #[test]
    fn build_version_is_read_from_the_build_string() {
        let info = "ORT Build Info: git-branch=rel-1.31.1, git-commit-id=abc, build type=Release";
        assert_eq!(build_version(info).as_deref(), Some("1.31.1"));
        assert_eq!(build_version("something else"), None);
    }
}

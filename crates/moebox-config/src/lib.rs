//! The schema of `moebox.toml`.
//!
//! Every limit and path is a named, typed default next to the key that sets it. Parsing takes
//! the file's text as a value, so tests never touch `/etc`; every mistake is reported with the
//! dotted path of the key at fault.

#![forbid(unsafe_code)]

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Where production reads its configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/moebox/moebox.toml";

/// Where the image installs the ONNX Runtime library (`onnxruntime.library`).
pub const DEFAULT_ONNXRUNTIME_LIBRARY: &str =
    "/usr/lib/moebox/onnxruntime/libonnxruntime.so.1.31.1";
/// The ONNX Runtime version the engine is built and tested against.
pub const ONNXRUNTIME_VERSION: &str = "1.31.1";
/// Environment variable that overrides `onnxruntime.library` when the key is not set.
pub const ONNXRUNTIME_LIBRARY_ENV: &str = "ORT_DYLIB_PATH";

/// Where the image installs the model folder (`engine.model`).
pub const DEFAULT_MODEL_DIR: &str = "/usr/share/moebox/model";
/// `engine.intra_op_threads`: 0 lets ONNX Runtime pick one thread per physical core.
pub const DEFAULT_INTRA_OP_THREADS: usize = 0;
/// `engine.max_tokens`: completion length when a request names none.
pub const DEFAULT_MAX_TOKENS: u32 = 256;
/// `engine.cuda.memory_limit_bytes`: 0 means no limit beyond the device's memory.
pub const DEFAULT_CUDA_MEMORY_LIMIT_BYTES: u64 = 0;

/// The whole file. Unknown keys are errors, so a typo never silently falls back to a default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub onnxruntime: OnnxRuntimeConfig,
    pub engine: EngineConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OnnxRuntimeConfig {
    /// Path of `libonnxruntime.so`. Unset: `ORT_DYLIB_PATH`, then the library found beside the
    /// binary or in the development cache, then [`DEFAULT_ONNXRUNTIME_LIBRARY`].
    pub library: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// An onnxruntime-genai model folder (`genai_config.json`, `model.onnx`, tokenizer).
    pub model: PathBuf,
    pub execution_provider: ExecutionProviderKind,
    /// Run on the CPU when the CUDA provider cannot be registered (logged as a warning). Off in
    /// production: a GPU box silently serving from the CPU is a fault, not a fallback.
    pub allow_cpu_fallback: bool,
    pub intra_op_threads: usize,
    pub max_tokens: u32,
    pub cuda: CudaConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::from(DEFAULT_MODEL_DIR),
            execution_provider: ExecutionProviderKind::Cuda,
            allow_cpu_fallback: false,
            intra_op_threads: DEFAULT_INTRA_OP_THREADS,
            max_tokens: DEFAULT_MAX_TOKENS,
            cuda: CudaConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProviderKind {
    Cpu,
    Cuda,
}

impl fmt::Display for ExecutionProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CudaConfig {
    pub memory_limit_bytes: u64,
    pub arena_extend_strategy: ArenaExtendStrategy,
    /// cuDNN convolution algorithm search; the decoder has no convolutions, so searching only
    /// costs start-up time.
    pub cudnn_conv_algo_search: CudnnConvAlgoSearch,
    pub tf32: bool,
}

impl Default for CudaConfig {
    fn default() -> Self {
        Self {
            memory_limit_bytes: DEFAULT_CUDA_MEMORY_LIMIT_BYTES,
            arena_extend_strategy: ArenaExtendStrategy::SameAsRequested,
            cudnn_conv_algo_search: CudnnConvAlgoSearch::Default,
            tf32: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArenaExtendStrategy {
    NextPowerOfTwo,
    SameAsRequested,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CudnnConvAlgoSearch {
    Exhaustive,
    Heuristic,
    Default,
}

/// A mistake in the configuration, with the dotted path of the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{origin}: invalid TOML: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: key `{key}`: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// The dotted key path at fault, when the mistake is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

impl Config {
    /// Parses `text`; `origin` names it in messages (a path, or `<inline>`).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let deserializer = toml::Deserializer::parse(text).map_err(|e| ConfigError::Syntax {
            origin: origin.to_owned(),
            message: e.message().to_owned(),
        })?;
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let message = e.inner().message().to_owned();
            ConfigError::Invalid {
                origin: origin.to_owned(),
                key,
                message,
            }
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Checks that need more than one key's type.
    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            key: key.to_owned(),
            message,
        };
        if self.engine.max_tokens == 0 {
            return Err(invalid(
                "engine.max_tokens",
                "must be at least 1, got 0".to_owned(),
            ));
        }
        if self.engine.model.as_os_str().is_empty() {
            return Err(invalid(
                "engine.model",
                "must name a model folder".to_owned(),
            ));
        }
        if let Some(library) = &self.onnxruntime.library
            && library.as_os_str().is_empty()
        {
            return Err(invalid(
                "onnxruntime.library",
                "must be a path to libonnxruntime.so, or be left out".to_owned(),
            ));
        }
        Ok(())
    }

    /// The configuration as TOML, for `up` to write beside its data.
    pub fn to_toml_string(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot serialise config: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_every_default() {
        let config = Config::from_toml_str("", "<test>").expect("empty config is valid");
        assert_eq!(config, Config::default());
        assert_eq!(config.engine.max_tokens, DEFAULT_MAX_TOKENS);
        assert_eq!(
            config.engine.execution_provider,
            ExecutionProviderKind::Cuda
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let err = Config::from_toml_str("[engine.cuda]\nmemory_limit = 5\n", "<test>")
            .expect_err("typo must be rejected");
        assert_eq!(err.key(), Some("engine.cuda.memory_limit"));
        let text = err.to_string();
        assert!(text.contains("memory_limit"), "{text}");
    }

    #[test]
    fn wrong_type_is_named_with_its_path() {
        let err = Config::from_toml_str("[engine]\nmax_tokens = \"many\"\n", "moebox.toml")
            .expect_err("string for integer must be rejected");
        assert_eq!(err.key(), Some("engine.max_tokens"));
        assert!(
            err.to_string()
                .starts_with("moebox.toml: key `engine.max_tokens`"),
            "{err}"
        );
    }

    #[test]
    fn bad_enum_value_lists_the_choices() {
        let err = Config::from_toml_str("[engine]\nexecution_provider = \"tpu\"\n", "<test>")
            .expect_err("unknown provider must be rejected");
        assert_eq!(err.key(), Some("engine.execution_provider"));
        let text = err.to_string();
        assert!(text.contains("cpu") && text.contains("cuda"), "{text}");
    }

    #[test]
    fn zero_max_tokens_is_rejected() {
        let err = Config::from_toml_str("[engine]\nmax_tokens = 0\n", "<test>").expect_err("zero");
        assert_eq!(err.key(), Some("engine.max_tokens"));
    }

    #[test]
    fn syntax_error_is_reported() {
        let err = Config::from_toml_str("[engine\n", "<test>").expect_err("broken TOML");
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    }

    #[test]
    fn round_trips_through_toml() {
        let mut config = Config::default();
        config.engine.execution_provider = ExecutionProviderKind::Cpu;
        config.onnxruntime.library = Some(PathBuf::from("/opt/ort/libonnxruntime.so"));
        let text = config.to_toml_string();
        assert_eq!(
            Config::from_toml_str(&text, "<roundtrip>").expect("parses"),
            config
        );
    }
}

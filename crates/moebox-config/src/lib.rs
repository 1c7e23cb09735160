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
/// `engine.kv_budget_tokens`: KV positions the engine holds in all (split into batch rows).
pub const DEFAULT_KV_BUDGET_TOKENS: usize = 32_768;
/// `engine.max_sequence_tokens`: positions one request may hold (prompt + completion); 0 means
/// the model's context length. Each running request reserves a row this long.
pub const DEFAULT_MAX_SEQUENCE_TOKENS: usize = 4_096;
/// `engine.max_waiting`: requests that may wait for a free batch row before new ones are
/// refused with Retry-After.
pub const DEFAULT_MAX_WAITING: usize = 64;
/// `engine.prefill_chunk_tokens`: prompt tokens prefilled per scheduler step, so a long prompt
/// does not stall the running streams.
pub const DEFAULT_PREFILL_CHUNK_TOKENS: usize = 512;
/// `engine.socket`: the engine's Unix socket; `{gpu}` is replaced by the GPU index.
pub const DEFAULT_ENGINE_SOCKET: &str = "/run/moebox/engine-{gpu}.sock";
/// `engine.cuda.memory_limit_bytes`: 0 means no limit beyond the device's memory.
pub const DEFAULT_CUDA_MEMORY_LIMIT_BYTES: u64 = 0;

/// `provision.expected_gpus`: the appliance is built with two A100s.
pub const DEFAULT_EXPECTED_GPUS: u32 = 2;
/// `provision.allow_cpu_only`: a box without a GPU is a fault unless this says otherwise.
pub const DEFAULT_ALLOW_CPU_ONLY: bool = false;
/// `provision.mig_enabled`: one engine per whole GPU, so MIG is expected off.
pub const DEFAULT_MIG_ENABLED: bool = false;
/// `provision.report`: where `moebox provision` writes its report (tmpfs, rewritten each boot).
pub const DEFAULT_PROVISION_REPORT: &str = "/run/moebox/provision.json";
/// `provision.artefacts`: the `sha256sum`-format list of installed artefacts that the image
/// build writes (`provisioning/assemble.py`).
pub const DEFAULT_ARTEFACT_SUMS: &str = "/usr/lib/moebox/SHA256SUMS";
/// `provision.smoke_tokens`: greedy tokens compared between the CUDA and CPU providers.
pub const DEFAULT_SMOKE_TOKENS: u32 = 8;
/// Upper bound of `provision.smoke_tokens`: the smoke test runs at every boot.
pub const MAX_SMOKE_TOKENS: u32 = 64;
/// `provision.temperature_warn_celsius`: an idle GPU at boot above this is badly cooled. (A
/// GPU at or above its own slowdown threshold is a failure whatever this says.)
pub const DEFAULT_GPU_TEMPERATURE_WARN_CELSIUS: u32 = 80;
/// `provision.min_power_limit_percent`: an enforced power limit below this share of the
/// board's default means someone capped the GPU, and throughput with it.
pub const DEFAULT_MIN_POWER_LIMIT_PERCENT: u32 = 90;

/// The whole file. Unknown keys are errors, so a typo never silently falls back to a default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub onnxruntime: OnnxRuntimeConfig,
    pub engine: EngineConfig,
    pub provision: ProvisionConfig,
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
    pub kv_budget_tokens: usize,
    pub max_sequence_tokens: usize,
    pub max_waiting: usize,
    pub prefill_chunk_tokens: usize,
    pub socket: String,
    pub cuda: CudaConfig,
}

impl EngineConfig {
    /// The socket path for GPU `gpu`.
    pub fn socket_for(&self, gpu: u32) -> PathBuf {
        PathBuf::from(self.socket.replace("{gpu}", &gpu.to_string()))
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::from(DEFAULT_MODEL_DIR),
            execution_provider: ExecutionProviderKind::Cuda,
            allow_cpu_fallback: false,
            intra_op_threads: DEFAULT_INTRA_OP_THREADS,
            max_tokens: DEFAULT_MAX_TOKENS,
            kv_budget_tokens: DEFAULT_KV_BUDGET_TOKENS,
            max_sequence_tokens: DEFAULT_MAX_SEQUENCE_TOKENS,
            max_waiting: DEFAULT_MAX_WAITING,
            prefill_chunk_tokens: DEFAULT_PREFILL_CHUNK_TOKENS,
            socket: DEFAULT_ENGINE_SOCKET.to_owned(),
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

/// `[provision]`: what `moebox provision` expects of the machine before engines may start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvisionConfig {
    /// NVIDIA GPUs the appliance must have; fewer is a failure, more a warning.
    pub expected_gpus: u32,
    /// Pass (with warnings) when no NVIDIA GPU is present, for a CPU-only appliance.
    pub allow_cpu_only: bool,
    /// The MIG mode every GPU must be in.
    pub mig_enabled: bool,
    /// Where the report is written (atomically).
    pub report: PathBuf,
    /// `sha256sum`-format list of installed artefacts to verify.
    pub artefacts: PathBuf,
    /// Model folder for the CUDA smoke test. Unset: `engine.model`. Set it to a small fp32
    /// export when the served model cannot run on the CPU provider (a CUDA-only export).
    pub smoke_model: Option<PathBuf>,
    pub smoke_tokens: u32,
    pub temperature_warn_celsius: u32,
    pub min_power_limit_percent: u32,
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        Self {
            expected_gpus: DEFAULT_EXPECTED_GPUS,
            allow_cpu_only: DEFAULT_ALLOW_CPU_ONLY,
            mig_enabled: DEFAULT_MIG_ENABLED,
            report: PathBuf::from(DEFAULT_PROVISION_REPORT),
            artefacts: PathBuf::from(DEFAULT_ARTEFACT_SUMS),
            smoke_model: None,
            smoke_tokens: DEFAULT_SMOKE_TOKENS,
            temperature_warn_celsius: DEFAULT_GPU_TEMPERATURE_WARN_CELSIUS,
            min_power_limit_percent: DEFAULT_MIN_POWER_LIMIT_PERCENT,
        }
    }
}

impl ProvisionConfig {
    /// The model folder the smoke test loads.
    pub fn smoke_model<'a>(&'a self, engine: &'a EngineConfig) -> &'a Path {
        self.smoke_model.as_deref().unwrap_or(&engine.model)
    }
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
        for (key, value) in [
            ("engine.kv_budget_tokens", self.engine.kv_budget_tokens),
            ("engine.max_waiting", self.engine.max_waiting),
            (
                "engine.prefill_chunk_tokens",
                self.engine.prefill_chunk_tokens,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1, got 0".to_owned()));
            }
        }
        if self.engine.max_sequence_tokens != 0
            && self.engine.kv_budget_tokens < self.engine.max_sequence_tokens
        {
            return Err(invalid(
                "engine.kv_budget_tokens",
                format!(
                    "must hold at least one sequence of engine.max_sequence_tokens = {}, got {}",
                    self.engine.max_sequence_tokens, self.engine.kv_budget_tokens
                ),
            ));
        }
        if !self.engine.socket.starts_with('/') {
            return Err(invalid(
                "engine.socket",
                format!("must be an absolute path, got {:?}", self.engine.socket),
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
        self.validate_provision(origin)
    }

    fn validate_provision(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            key: key.to_owned(),
            message,
        };
        let provision = &self.provision;
        if provision.expected_gpus == 0 {
            return Err(invalid(
                "provision.expected_gpus",
                "must be at least 1, got 0 (a CPU-only appliance sets provision.allow_cpu_only = true)"
                    .to_owned(),
            ));
        }
        if !(1..=MAX_SMOKE_TOKENS).contains(&provision.smoke_tokens) {
            return Err(invalid(
                "provision.smoke_tokens",
                format!(
                    "must be between 1 and {MAX_SMOKE_TOKENS}, got {}",
                    provision.smoke_tokens
                ),
            ));
        }
        if !(1..=100).contains(&provision.min_power_limit_percent) {
            return Err(invalid(
                "provision.min_power_limit_percent",
                format!(
                    "must be between 1 and 100, got {}",
                    provision.min_power_limit_percent
                ),
            ));
        }
        for (key, path) in [
            ("provision.report", &provision.report),
            ("provision.artefacts", &provision.artefacts),
        ] {
            if path.as_os_str().is_empty() {
                return Err(invalid(key, "must be a path".to_owned()));
            }
        }
        if let Some(model) = &provision.smoke_model
            && model.as_os_str().is_empty()
        {
            return Err(invalid(
                "provision.smoke_model",
                "must name a model folder, or be left out (engine.model is used)".to_owned(),
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
    fn kv_budget_smaller_than_one_sequence_is_rejected() {
        let err = Config::from_toml_str(
            "[engine]\nkv_budget_tokens = 100\nmax_sequence_tokens = 4096\n",
            "<test>",
        )
        .expect_err("budget below one row");
        assert_eq!(err.key(), Some("engine.kv_budget_tokens"));
        assert!(err.to_string().contains("4096"), "{err}");
    }

    #[test]
    fn socket_path_takes_the_gpu_index() {
        let config = Config::default();
        assert_eq!(
            config.engine.socket_for(1),
            PathBuf::from("/run/moebox/engine-1.sock")
        );
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
    fn provision_defaults_expect_two_gpus_without_mig() {
        let config = Config::from_toml_str("", "<test>").expect("empty config is valid");
        assert_eq!(config.provision.expected_gpus, DEFAULT_EXPECTED_GPUS);
        assert!(!config.provision.allow_cpu_only);
        assert!(!config.provision.mig_enabled);
        assert_eq!(
            config.provision.smoke_model(&config.engine),
            Path::new(DEFAULT_MODEL_DIR)
        );
    }

    #[test]
    fn provision_limits_are_checked_with_their_key() {
        for (text, key) in [
            (
                "[provision]\nexpected_gpus = 0\n",
                "provision.expected_gpus",
            ),
            ("[provision]\nsmoke_tokens = 0\n", "provision.smoke_tokens"),
            ("[provision]\nsmoke_tokens = 65\n", "provision.smoke_tokens"),
            (
                "[provision]\nmin_power_limit_percent = 101\n",
                "provision.min_power_limit_percent",
            ),
            ("[provision]\nreport = \"\"\n", "provision.report"),
            ("[provision]\nsmoke_model = \"\"\n", "provision.smoke_model"),
            ("[provision]\ncpu_only = true\n", "provision.cpu_only"),
        ] {
            let err = Config::from_toml_str(text, "<test>").expect_err(text);
            assert_eq!(err.key(), Some(key), "{text}: {err}");
        }
    }

    #[test]
    fn round_trips_through_toml() {
        let mut config = Config::default();
        config.engine.execution_provider = ExecutionProviderKind::Cpu;
        config.onnxruntime.library = Some(PathBuf::from("/opt/ort/libonnxruntime.so"));
        config.provision.allow_cpu_only = true;
        config.provision.smoke_model = Some(PathBuf::from("/usr/share/moebox/smoke-model"));
        let text = config.to_toml_string();
        assert_eq!(
            Config::from_toml_str(&text, "<roundtrip>").expect("parses"),
            config
        );
    }
}

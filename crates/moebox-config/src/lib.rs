//! The schema of `moebox.toml`.
//!
//! Every limit and path is a named, typed default next to the key that sets it. Parsing takes
//! the file's text as a value, so tests never touch `/etc`; every mistake is reported with the
//! dotted path of the key at fault.

#![forbid(unsafe_code)]

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
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
/// `engine.telemetry_interval_ms`: how often the engine samples its GPU (NVML) or, on the
/// CPU, the package energy (RAPL). Energy comes from counters, so the interval sets the
/// resolution of the charts, not the accuracy of the energy.
pub const DEFAULT_TELEMETRY_INTERVAL: Duration = Duration::from_secs(5);
/// The shortest `engine.telemetry_interval_ms`: NVML's utilisation and power readings are
/// averages over about that long, and sampling faster only costs CPU.
pub const MIN_TELEMETRY_INTERVAL: Duration = Duration::from_millis(100);
/// The longest `engine.telemetry_interval_ms`: a RAPL energy counter wraps after
/// `max_energy_range_uj` (about 262 kJ: 22 minutes at 200 W), and only one wrap per interval
/// can be told apart; a minute also keeps the status page live.
pub const MAX_TELEMETRY_INTERVAL: Duration = Duration::from_secs(60);
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

/// `ledger.database`: the SQLite database of keys, usage and telemetry.
pub const DEFAULT_LEDGER_DATABASE: &str = "/var/lib/moebox/moebox.sqlite";
/// `ledger.writer_queue`: usage records waiting for the writer, at most; beyond it requests
/// get 503 instead of memory growing (it fills only when the disk stalls).
pub const DEFAULT_LEDGER_WRITER_QUEUE: usize = 4_096;
/// `ledger.usage_raw_days`: per-request records kept (admins audit them); older ones live on
/// in the hourly and daily rollups, so totals never change.
pub const DEFAULT_LEDGER_USAGE_RAW_DAYS: u32 = 400;
/// `ledger.usage_hourly_days`: hourly usage rollups kept (daily ones are kept for ever).
pub const DEFAULT_LEDGER_USAGE_HOURLY_DAYS: u32 = 1_096;
/// `ledger.telemetry_raw_days`: raw GPU samples kept.
pub const DEFAULT_LEDGER_TELEMETRY_RAW_DAYS: u32 = 2;
/// `ledger.telemetry_minute_days`: per-minute telemetry kept.
pub const DEFAULT_LEDGER_TELEMETRY_MINUTE_DAYS: u32 = 30;
/// `ledger.telemetry_hourly_days`: hourly telemetry kept (daily kept for ever).
pub const DEFAULT_LEDGER_TELEMETRY_HOURLY_DAYS: u32 = 1_096;
/// `ledger.compaction_interval_seconds`: how often the gateway rolls up and prunes.
pub const DEFAULT_LEDGER_COMPACTION_INTERVAL: Duration = Duration::from_secs(3_600);
/// Longest retention window any `ledger.*_days` key takes: a century.
pub const MAX_LEDGER_RETENTION_DAYS: u32 = 36_525;

/// The rule for the ledger's retention windows, named as the caller names them, in the order
/// usage raw, usage hourly, telemetry raw, telemetry per minute, telemetry hourly: each 1 to
/// [`MAX_LEDGER_RETENTION_DAYS`] days, and no finer table kept longer than the coarser one of
/// its kind (a query falls back from fine tables to coarse ones). The error names the window.
pub fn check_retention(windows: [(&'static str, u32); 5]) -> Result<(), (&'static str, String)> {
    for (name, days) in windows {
        if !(1..=MAX_LEDGER_RETENTION_DAYS).contains(&days) {
            return Err((
                name,
                format!("must be 1 to {MAX_LEDGER_RETENTION_DAYS} days, got {days}"),
            ));
        }
    }
    for [(fine, fine_days), (coarse, coarse_days)] in [
        [windows[0], windows[1]],
        [windows[2], windows[3]],
        [windows[3], windows[4]],
    ] {
        if fine_days > coarse_days {
            return Err((
                fine,
                format!("must not be longer than {coarse} ({coarse_days}), got {fine_days}"),
            ));
        }
    }
    Ok(())
}

/// `gateway.listen`: where the OpenAI API is served, unless systemd passes the listening
/// socket (socket activation: `moebox-gateway.socket` on port 443).
pub const DEFAULT_GATEWAY_LISTEN: &str = "127.0.0.1:8080";
/// `gateway.tls`: serve HTTPS. Plaintext (`tls = false`) is allowed on loopback, and elsewhere
/// only with `gateway.insecure_plaintext = true`.
pub const DEFAULT_GATEWAY_TLS: bool = true;
/// `gateway.insecure_plaintext`: serve plaintext HTTP on a non-loopback address.
pub const DEFAULT_GATEWAY_INSECURE_PLAINTEXT: bool = false;
/// `gateway.tls_certificate`: the PEM certificate chain, leaf first.
pub const DEFAULT_GATEWAY_TLS_CERTIFICATE: &str = "/var/lib/moebox/tls/cert.pem";
/// `gateway.tls_private_key`: the PEM private key (PKCS#8, PKCS#1 or SEC1), mode 0600.
pub const DEFAULT_GATEWAY_TLS_PRIVATE_KEY: &str = "/var/lib/moebox/tls/key.pem";
/// `gateway.tls_self_signed`: when neither file exists (first boot), generate a self-signed
/// pair there, for the host's names and `gateway.tls_names`.
pub const DEFAULT_GATEWAY_TLS_SELF_SIGNED: bool = true;
/// `gateway.tls_handshake_timeout_seconds`: a client must finish the TLS handshake within this.
pub const DEFAULT_GATEWAY_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// `gateway.idle_timeout_seconds`: a connection with no request in flight for this long is
/// closed (HTTP/1 keep-alive and HTTP/2 alike; nginx uses 75 s, OpenAI's SDKs keep idle
/// connections 5 s).
pub const DEFAULT_GATEWAY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// `gateway.max_prompt_tokens`: longest prompt one request may send, in tokens (the engine
/// counts them); 0 leaves only the engine's context limit.
pub const DEFAULT_GATEWAY_MAX_PROMPT_TOKENS: u32 = 0;
/// `gateway.max_output_tokens`: largest `max_tokens` one request may ask for; 0 leaves only
/// the engine's context limit.
pub const DEFAULT_GATEWAY_MAX_OUTPUT_TOKENS: u32 = 0;
/// `gateway.auth_failures_per_minute`: failed key checks one client address (an IPv6 /64)
/// may make per minute, in a burst of as many, before it gets 429 until the bucket refills.
/// Other clients are never affected.
pub const DEFAULT_GATEWAY_AUTH_FAILURES_PER_MINUTE: u32 = 10;
/// Client addresses the auth-failure table remembers; beyond it the least recently failing
/// are forgotten, so a spray of addresses cannot grow memory.
pub const DEFAULT_GATEWAY_AUTH_FAILURE_CLIENTS: usize = 16_384;
/// `gateway.engine_count`: engines at `engine.socket` for GPUs `0..engine_count`, when
/// `gateway.engines` lists none; one per GPU.
pub const DEFAULT_GATEWAY_ENGINE_COUNT: u32 = DEFAULT_EXPECTED_GPUS;
/// `gateway.engine_poll_interval_ms`: how often each engine's readiness and load are polled.
pub const DEFAULT_GATEWAY_ENGINE_POLL_INTERVAL: Duration = Duration::from_millis(1_000);
/// `gateway.engine_connect_timeout_ms`: connecting to an engine socket and getting its answer
/// head; a wedged engine is skipped (and the request failed over) after this.
pub const DEFAULT_GATEWAY_ENGINE_CONNECT_TIMEOUT: Duration = Duration::from_millis(2_000);
/// `gateway.telemetry_poll_interval_seconds`: how often the gateway collects each engine's
/// telemetry samples into the ledger (an engine keeps an hour of them).
pub const DEFAULT_GATEWAY_TELEMETRY_POLL_INTERVAL: Duration = Duration::from_secs(30);
/// `gateway.max_body_bytes`: largest request body; larger is 413. The longest prompt the
/// engine accepts (`engine.max_sequence_tokens`) is far smaller in JSON.
pub const DEFAULT_GATEWAY_MAX_BODY_BYTES: usize = 1024 * 1024;
/// `gateway.max_header_bytes`: HTTP/1 request line and headers, and the HTTP/2 header list;
/// larger is 431. At least [`MIN_GATEWAY_MAX_HEADER_BYTES`].
pub const DEFAULT_GATEWAY_MAX_HEADER_BYTES: usize = 16 * 1024;
/// The smallest `gateway.max_header_bytes`: hyper's smallest HTTP/1 read buffer.
pub const MIN_GATEWAY_MAX_HEADER_BYTES: usize = 8 * 1024;
/// `gateway.max_headers`: most header fields in one HTTP/1 request; more is 431.
pub const DEFAULT_GATEWAY_MAX_HEADERS: usize = 64;
/// `gateway.header_read_timeout_seconds`: a client must send a whole request head within this
/// (slowloris); on HTTP/1 it also closes connections idle between requests.
pub const DEFAULT_GATEWAY_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// `gateway.max_connections`: open client connections; beyond it new ones wait in the
/// kernel's accept backlog.
pub const DEFAULT_GATEWAY_MAX_CONNECTIONS: usize = 1_024;
/// `gateway.http2_max_concurrent_streams`: requests in flight on one HTTP/2 connection.
pub const DEFAULT_GATEWAY_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 64;
/// `gateway.request_deadline_seconds`: the most one request may take, streaming included;
/// a generation still running then is cancelled.
pub const DEFAULT_GATEWAY_REQUEST_DEADLINE: Duration = Duration::from_secs(600);
/// `gateway.sse_keepalive_seconds`: a comment line on a quiet stream, so proxies and clients
/// do not time out while a request waits for a batch row.
pub const DEFAULT_GATEWAY_SSE_KEEPALIVE: Duration = Duration::from_secs(15);
/// `gateway.per_key_max_concurrent`: requests one key may have in flight; more is 429.
pub const DEFAULT_GATEWAY_PER_KEY_MAX_CONCURRENT: usize = 16;
/// `gateway.max_queued_requests`: generation requests the gateway holds at once (running in
/// an engine or waiting for one); more is 503 with Retry-After.
pub const DEFAULT_GATEWAY_MAX_QUEUED_REQUESTS: usize = 256;
/// `gateway.retry_after_seconds`: the Retry-After sent when no engine can take a request.
pub const DEFAULT_GATEWAY_RETRY_AFTER_SECONDS: u32 = 2;
/// `gateway.shutdown_grace_seconds`: on SIGTERM, how long in-flight streams may finish.
pub const DEFAULT_GATEWAY_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The whole file. Unknown keys are errors, so a typo never silently falls back to a default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub onnxruntime: OnnxRuntimeConfig,
    pub engine: EngineConfig,
    pub provision: ProvisionConfig,
    pub ledger: LedgerConfig,
    pub gateway: GatewayConfig,
    /// `[tco]`: the cost model's prices and assets. Its types live in `moebox-tco`, which
    /// holds their named defaults (`moebox_tco::model::DEFAULT_*`) and their validation.
    pub tco: moebox_tco::CostModel,
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
    /// Between [`MIN_TELEMETRY_INTERVAL`] and [`MAX_TELEMETRY_INTERVAL`].
    pub telemetry_interval_ms: u64,
    pub cuda: CudaConfig,
}

impl EngineConfig {
    /// The socket path for GPU `gpu`.
    pub fn socket_for(&self, gpu: u32) -> PathBuf {
        PathBuf::from(self.socket.replace("{gpu}", &gpu.to_string()))
    }

    pub fn telemetry_interval(&self) -> Duration {
        Duration::from_millis(self.telemetry_interval_ms)
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
            telemetry_interval_ms: millis(DEFAULT_TELEMETRY_INTERVAL),
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

/// `[ledger]`: the database the gateway is the only writer of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    pub database: PathBuf,
    pub writer_queue: usize,
    pub usage_raw_days: u32,
    pub usage_hourly_days: u32,
    pub telemetry_raw_days: u32,
    pub telemetry_minute_days: u32,
    pub telemetry_hourly_days: u32,
    pub compaction_interval_seconds: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            database: PathBuf::from(DEFAULT_LEDGER_DATABASE),
            writer_queue: DEFAULT_LEDGER_WRITER_QUEUE,
            usage_raw_days: DEFAULT_LEDGER_USAGE_RAW_DAYS,
            usage_hourly_days: DEFAULT_LEDGER_USAGE_HOURLY_DAYS,
            telemetry_raw_days: DEFAULT_LEDGER_TELEMETRY_RAW_DAYS,
            telemetry_minute_days: DEFAULT_LEDGER_TELEMETRY_MINUTE_DAYS,
            telemetry_hourly_days: DEFAULT_LEDGER_TELEMETRY_HOURLY_DAYS,
            compaction_interval_seconds: DEFAULT_LEDGER_COMPACTION_INTERVAL.as_secs(),
        }
    }
}

impl LedgerConfig {
    pub fn compaction_interval(&self) -> Duration {
        Duration::from_secs(self.compaction_interval_seconds)
    }
}

/// `[gateway]`: the only process facing the network. Every bound is here, named.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// `ADDRESS:PORT`.
    pub listen: String,
    pub tls: bool,
    pub insecure_plaintext: bool,
    pub tls_certificate: PathBuf,
    pub tls_private_key: PathBuf,
    pub tls_self_signed: bool,
    /// Extra DNS names or IP addresses for a generated certificate (the host name,
    /// `localhost` and the loopback addresses are always in it).
    pub tls_names: Vec<String>,
    pub tls_handshake_timeout_seconds: u64,
    /// Client networks allowed to connect (`10.0.0.0/8`, `2001:db8::/32`, a single address);
    /// empty: every client. Others are disconnected at accept, before any byte is read.
    pub allowed_clients: Vec<ClientNetwork>,
    pub idle_timeout_seconds: u64,
    pub max_prompt_tokens: u32,
    pub max_output_tokens: u32,
    pub auth_failures_per_minute: u32,
    pub auth_failure_clients: usize,
    /// Engine sockets, explicitly. Empty: `engine.socket` for GPUs `0..engine_count`.
    pub engines: Vec<PathBuf>,
    pub engine_count: u32,
    pub engine_poll_interval_ms: u64,
    pub engine_connect_timeout_ms: u64,
    pub telemetry_poll_interval_seconds: u64,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout_seconds: u64,
    pub max_connections: usize,
    pub http2_max_concurrent_streams: u32,
    pub request_deadline_seconds: u64,
    pub sse_keepalive_seconds: u64,
    pub per_key_max_concurrent: usize,
    pub max_queued_requests: usize,
    pub retry_after_seconds: u32,
    pub shutdown_grace_seconds: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_GATEWAY_LISTEN.to_owned(),
            tls: DEFAULT_GATEWAY_TLS,
            insecure_plaintext: DEFAULT_GATEWAY_INSECURE_PLAINTEXT,
            tls_certificate: PathBuf::from(DEFAULT_GATEWAY_TLS_CERTIFICATE),
            tls_private_key: PathBuf::from(DEFAULT_GATEWAY_TLS_PRIVATE_KEY),
            tls_self_signed: DEFAULT_GATEWAY_TLS_SELF_SIGNED,
            tls_names: Vec::new(),
            tls_handshake_timeout_seconds: DEFAULT_GATEWAY_TLS_HANDSHAKE_TIMEOUT.as_secs(),
            allowed_clients: Vec::new(),
            idle_timeout_seconds: DEFAULT_GATEWAY_IDLE_TIMEOUT.as_secs(),
            max_prompt_tokens: DEFAULT_GATEWAY_MAX_PROMPT_TOKENS,
            max_output_tokens: DEFAULT_GATEWAY_MAX_OUTPUT_TOKENS,
            auth_failures_per_minute: DEFAULT_GATEWAY_AUTH_FAILURES_PER_MINUTE,
            auth_failure_clients: DEFAULT_GATEWAY_AUTH_FAILURE_CLIENTS,
            engines: Vec::new(),
            engine_count: DEFAULT_GATEWAY_ENGINE_COUNT,
            engine_poll_interval_ms: millis(DEFAULT_GATEWAY_ENGINE_POLL_INTERVAL),
            engine_connect_timeout_ms: millis(DEFAULT_GATEWAY_ENGINE_CONNECT_TIMEOUT),
            telemetry_poll_interval_seconds: DEFAULT_GATEWAY_TELEMETRY_POLL_INTERVAL.as_secs(),
            max_body_bytes: DEFAULT_GATEWAY_MAX_BODY_BYTES,
            max_header_bytes: DEFAULT_GATEWAY_MAX_HEADER_BYTES,
            max_headers: DEFAULT_GATEWAY_MAX_HEADERS,
            header_read_timeout_seconds: DEFAULT_GATEWAY_HEADER_READ_TIMEOUT.as_secs(),
            max_connections: DEFAULT_GATEWAY_MAX_CONNECTIONS,
            http2_max_concurrent_streams: DEFAULT_GATEWAY_HTTP2_MAX_CONCURRENT_STREAMS,
            request_deadline_seconds: DEFAULT_GATEWAY_REQUEST_DEADLINE.as_secs(),
            sse_keepalive_seconds: DEFAULT_GATEWAY_SSE_KEEPALIVE.as_secs(),
            per_key_max_concurrent: DEFAULT_GATEWAY_PER_KEY_MAX_CONCURRENT,
            max_queued_requests: DEFAULT_GATEWAY_MAX_QUEUED_REQUESTS,
            retry_after_seconds: DEFAULT_GATEWAY_RETRY_AFTER_SECONDS,
            shutdown_grace_seconds: DEFAULT_GATEWAY_SHUTDOWN_GRACE.as_secs(),
        }
    }
}

const fn millis(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

impl GatewayConfig {
    /// The listen address; [`Config::from_toml_str`] has checked that it parses.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }

    /// The engine sockets the router polls and sends to.
    pub fn engine_sockets(&self, engine: &EngineConfig) -> Vec<PathBuf> {
        if self.engines.is_empty() {
            (0..self.engine_count)
                .map(|gpu| engine.socket_for(gpu))
                .collect()
        } else {
            self.engines.clone()
        }
    }

    pub fn engine_poll_interval(&self) -> Duration {
        Duration::from_millis(self.engine_poll_interval_ms)
    }

    pub fn engine_connect_timeout(&self) -> Duration {
        Duration::from_millis(self.engine_connect_timeout_ms)
    }

    pub fn telemetry_poll_interval(&self) -> Duration {
        Duration::from_secs(self.telemetry_poll_interval_seconds)
    }

    pub fn tls_handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.tls_handshake_timeout_seconds)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_seconds)
    }

    /// Whether a connection from `peer` may be served (`allowed_clients`).
    pub fn client_allowed(&self, peer: std::net::IpAddr) -> bool {
        self.allowed_clients.is_empty()
            || self
                .allowed_clients
                .iter()
                .any(|network| network.contains(peer))
    }

    /// Whether the configured transport may be served on `address`: TLS anywhere, plaintext
    /// on loopback or when asked for by name. Also checked at run time for a socket handed
    /// over by systemd, whose address the file does not say.
    pub fn transport_allowed_on(&self, address: SocketAddr) -> bool {
        self.tls || address.ip().is_loopback() || self.insecure_plaintext
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_seconds)
    }

    pub fn request_deadline(&self) -> Duration {
        Duration::from_secs(self.request_deadline_seconds)
    }

    pub fn sse_keepalive(&self) -> Duration {
        Duration::from_secs(self.sse_keepalive_seconds)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }
}

/// A client network in `gateway.allowed_clients`: `ADDRESS/PREFIX`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientNetwork {
    address: std::net::IpAddr,
    prefix: u8,
}

impl ClientNetwork {
    /// Whether `peer` is in this network. An IPv4 client reaching a dual-stack socket shows
    /// as `::ffff:a.b.c.d` and matches IPv4 networks.
    pub fn contains(&self, peer: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        match (self.address, peer) {
            (IpAddr::V4(network), IpAddr::V4(peer)) => {
                prefix_matches(&network.octets(), &peer.octets(), self.prefix)
            }
            (IpAddr::V6(network), IpAddr::V6(peer)) => {
                prefix_matches(&network.octets(), &peer.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_matches(network: &[u8], peer: &[u8], prefix: u8) -> bool {
    let whole = usize::from(prefix / 8);
    let rest = prefix % 8;
    if network[..whole] != peer[..whole] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    network[whole] & mask == peer[whole] & mask
}

impl TryFrom<String> for ClientNetwork {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.as_str(), None),
        };
        let address: std::net::IpAddr = address.parse().map_err(|_| {
            format!("must be ADDRESS/PREFIX such as 10.0.0.0/8 or 2001:db8::/32, got {text:?}")
        })?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= bits)
                .ok_or_else(|| format!("the prefix of {text:?} must be 0 to {bits}"))?,
        };
        Ok(Self { address, prefix })
    }
}

impl From<ClientNetwork> for String {
    fn from(network: ClientNetwork) -> Self {
        format!("{}/{}", network.address, network.prefix)
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
        let interval = self.engine.telemetry_interval();
        if !(MIN_TELEMETRY_INTERVAL..=MAX_TELEMETRY_INTERVAL).contains(&interval) {
            return Err(invalid(
                "engine.telemetry_interval_ms",
                format!(
                    "must be between {} and {} (milliseconds), got {}",
                    millis(MIN_TELEMETRY_INTERVAL),
                    millis(MAX_TELEMETRY_INTERVAL),
                    self.engine.telemetry_interval_ms
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
        self.validate_provision(origin)?;
        self.validate_ledger(origin)?;
        self.validate_gateway(origin)?;
        self.tco.validate().map_err(|e| ConfigError::Invalid {
            origin: origin.to_owned(),
            key: format!("tco.{}", e.path),
            message: e.message,
        })
    }

    fn validate_ledger(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            key: key.to_owned(),
            message,
        };
        let ledger = &self.ledger;
        if ledger.database.as_os_str().is_empty() {
            return Err(invalid(
                "ledger.database",
                "must be a path to the SQLite database".to_owned(),
            ));
        }
        if ledger.writer_queue == 0 || ledger.writer_queue > 1 << 20 {
            return Err(invalid(
                "ledger.writer_queue",
                format!("must be 1 to {}, got {}", 1 << 20, ledger.writer_queue),
            ));
        }
        if ledger.compaction_interval_seconds == 0 {
            return Err(invalid(
                "ledger.compaction_interval_seconds",
                "must be at least 1, got 0".to_owned(),
            ));
        }
        check_retention([
            ("ledger.usage_raw_days", ledger.usage_raw_days),
            ("ledger.usage_hourly_days", ledger.usage_hourly_days),
            ("ledger.telemetry_raw_days", ledger.telemetry_raw_days),
            ("ledger.telemetry_minute_days", ledger.telemetry_minute_days),
            ("ledger.telemetry_hourly_days", ledger.telemetry_hourly_days),
        ])
        .map_err(|(key, message)| invalid(key, message))
    }

    fn validate_gateway(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            key: key.to_owned(),
            message,
        };
        let gateway = &self.gateway;
        let Some(listen) = gateway.listen_addr() else {
            return Err(invalid(
                "gateway.listen",
                format!(
                    "must be ADDRESS:PORT (such as {DEFAULT_GATEWAY_LISTEN}), got {:?}",
                    gateway.listen
                ),
            ));
        };
        // Plaintext leaves the machine only when asked for by name.
        if !gateway.transport_allowed_on(listen) {
            return Err(invalid(
                "gateway.tls",
                format!(
                    "plaintext HTTP on {listen}, which is not a loopback address: set \
                     gateway.tls = true, listen on 127.0.0.1 or ::1, or set \
                     gateway.insecure_plaintext = true"
                ),
            ));
        }
        if gateway.tls {
            for (key, path) in [
                ("gateway.tls_certificate", &gateway.tls_certificate),
                ("gateway.tls_private_key", &gateway.tls_private_key),
            ] {
                if !path.is_absolute() {
                    return Err(invalid(
                        key,
                        format!("must be an absolute path, got {:?}", path.display()),
                    ));
                }
            }
            if gateway.tls_certificate == gateway.tls_private_key {
                return Err(invalid(
                    "gateway.tls_private_key",
                    "must not be the same file as gateway.tls_certificate".to_owned(),
                ));
            }
        }
        for (index, name) in gateway.tls_names.iter().enumerate() {
            let valid = name.parse::<std::net::IpAddr>().is_ok()
                || (!name.is_empty()
                    && name.len() <= 253
                    && name.split('.').all(|label| {
                        !label.is_empty()
                            && label.len() <= 63
                            && label
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
                    }));
            if !valid {
                return Err(invalid(
                    &format!("gateway.tls_names[{index}]"),
                    format!("must be a DNS name or an IP address, got {name:?}"),
                ));
            }
        }
        for (index, socket) in gateway.engines.iter().enumerate() {
            if !socket.is_absolute() {
                return Err(invalid(
                    &format!("gateway.engines[{index}]"),
                    format!("must be an absolute socket path, got {}", socket.display()),
                ));
            }
        }
        if gateway.engines.is_empty() && gateway.engine_count == 0 {
            return Err(invalid(
                "gateway.engine_count",
                "must be at least 1 when gateway.engines is empty, got 0".to_owned(),
            ));
        }
        for (key, value) in [
            (
                "gateway.engine_poll_interval_ms",
                gateway.engine_poll_interval_ms,
            ),
            (
                "gateway.engine_connect_timeout_ms",
                gateway.engine_connect_timeout_ms,
            ),
            ("gateway.max_body_bytes", gateway.max_body_bytes as u64),
            ("gateway.max_headers", gateway.max_headers as u64),
            (
                "gateway.header_read_timeout_seconds",
                gateway.header_read_timeout_seconds,
            ),
            ("gateway.max_connections", gateway.max_connections as u64),
            (
                "gateway.http2_max_concurrent_streams",
                u64::from(gateway.http2_max_concurrent_streams),
            ),
            (
                "gateway.request_deadline_seconds",
                gateway.request_deadline_seconds,
            ),
            (
                "gateway.sse_keepalive_seconds",
                gateway.sse_keepalive_seconds,
            ),
            (
                "gateway.per_key_max_concurrent",
                gateway.per_key_max_concurrent as u64,
            ),
            (
                "gateway.max_queued_requests",
                gateway.max_queued_requests as u64,
            ),
            (
                "gateway.retry_after_seconds",
                u64::from(gateway.retry_after_seconds),
            ),
            (
                "gateway.tls_handshake_timeout_seconds",
                gateway.tls_handshake_timeout_seconds,
            ),
            ("gateway.idle_timeout_seconds", gateway.idle_timeout_seconds),
            (
                "gateway.telemetry_poll_interval_seconds",
                gateway.telemetry_poll_interval_seconds,
            ),
            (
                "gateway.auth_failures_per_minute",
                u64::from(gateway.auth_failures_per_minute),
            ),
            (
                "gateway.auth_failure_clients",
                gateway.auth_failure_clients as u64,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1, got 0".to_owned()));
            }
        }
        if gateway.max_output_tokens > 0 && self.engine.max_tokens > gateway.max_output_tokens {
            return Err(invalid(
                "engine.max_tokens",
                format!(
                    "the default completion length ({}) must not exceed \
                     gateway.max_output_tokens ({})",
                    self.engine.max_tokens, gateway.max_output_tokens
                ),
            ));
        }
        if gateway.max_header_bytes < MIN_GATEWAY_MAX_HEADER_BYTES {
            return Err(invalid(
                "gateway.max_header_bytes",
                format!(
                    "must be at least {MIN_GATEWAY_MAX_HEADER_BYTES}, got {}",
                    gateway.max_header_bytes
                ),
            ));
        }
        if u32::try_from(gateway.max_header_bytes).is_err() {
            return Err(invalid(
                "gateway.max_header_bytes",
                format!(
                    "must be at most {}, got {}",
                    u32::MAX,
                    gateway.max_header_bytes
                ),
            ));
        }
        Ok(())
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
    fn telemetry_interval_defaults_and_bounds() {
        let config = Config::from_toml_str("", "<test>").expect("empty config is valid");
        assert_eq!(
            config.engine.telemetry_interval(),
            DEFAULT_TELEMETRY_INTERVAL
        );
        for (ms, ok) in [
            (100, true),
            (60_000, true),
            (99, false),
            (0, false),
            (60_001, false),
        ] {
            let text = format!("[engine]\ntelemetry_interval_ms = {ms}\n");
            match Config::from_toml_str(&text, "<test>") {
                Ok(config) => {
                    assert!(ok, "{ms} accepted");
                    assert_eq!(
                        config.engine.telemetry_interval(),
                        Duration::from_millis(ms)
                    );
                }
                Err(err) => {
                    assert!(!ok, "{ms} refused: {err}");
                    assert_eq!(err.key(), Some("engine.telemetry_interval_ms"));
                    let text = err.to_string();
                    assert!(
                        text.contains("between 100 and 60000")
                            && text.contains(&format!("got {ms}")),
                        "{text}"
                    );
                }
            }
        }
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
    fn ledger_and_gateway_defaults() {
        let config = Config::from_toml_str("", "<test>").expect("empty config is valid");
        assert_eq!(
            config.ledger.database,
            PathBuf::from(DEFAULT_LEDGER_DATABASE)
        );
        assert_eq!(
            config.gateway.max_body_bytes,
            DEFAULT_GATEWAY_MAX_BODY_BYTES
        );
        assert_eq!(
            config.gateway.header_read_timeout(),
            DEFAULT_GATEWAY_HEADER_READ_TIMEOUT
        );
        assert_eq!(
            config.gateway.engine_poll_interval(),
            DEFAULT_GATEWAY_ENGINE_POLL_INTERVAL
        );
        assert!(
            config
                .gateway
                .listen_addr()
                .expect("parses")
                .ip()
                .is_loopback()
        );
        assert_eq!(
            config.gateway.engine_sockets(&config.engine),
            vec![
                PathBuf::from("/run/moebox/engine-0.sock"),
                PathBuf::from("/run/moebox/engine-1.sock")
            ]
        );
    }

    #[test]
    fn explicit_engine_sockets_replace_the_pattern() {
        let config = Config::from_toml_str("[gateway]\nengines = [\"/tmp/a.sock\"]\n", "<test>")
            .expect("valid");
        assert_eq!(
            config.gateway.engine_sockets(&config.engine),
            vec![PathBuf::from("/tmp/a.sock")]
        );
    }

    #[test]
    fn plaintext_off_loopback_needs_the_explicit_key() {
        Config::from_toml_str("[gateway]\nlisten = \"0.0.0.0:443\"\n", "<test>")
            .expect("TLS on every interface is the default");
        let err = Config::from_toml_str(
            "[gateway]\nlisten = \"0.0.0.0:8080\"\ntls = false\n",
            "<test>",
        )
        .expect_err("plaintext on every interface");
        assert_eq!(err.key(), Some("gateway.tls"));
        assert!(err.to_string().contains("insecure_plaintext"), "{err}");
        Config::from_toml_str(
            "[gateway]\nlisten = \"0.0.0.0:8080\"\ntls = false\ninsecure_plaintext = true\n",
            "<test>",
        )
        .expect("asked for by name");
        Config::from_toml_str(
            "[gateway]\nlisten = \"[::1]:8080\"\ntls = false\n",
            "<test>",
        )
        .expect("IPv6 loopback");
    }

    #[test]
    fn client_networks_parse_and_match() {
        let config = Config::from_toml_str(
            "[gateway]\nallowed_clients = [\"10.1.0.0/16\", \"192.168.7.9\", \"2001:db8::/32\"]\n",
            "<test>",
        )
        .expect("valid networks");
        let gateway = &config.gateway;
        for (peer, allowed) in [
            ("10.1.200.3", true),
            ("10.2.0.1", false),
            ("192.168.7.9", true),
            ("192.168.7.10", false),
            ("::ffff:10.1.0.1", true),
            ("2001:db8:ffff::1", true),
            ("2001:db9::1", false),
        ] {
            assert_eq!(
                gateway.client_allowed(peer.parse().expect("address")),
                allowed,
                "{peer}"
            );
        }
        assert!(
            Config::default()
                .gateway
                .client_allowed("203.0.113.5".parse().expect("ip"))
        );
        let odd = ClientNetwork::try_from("10.0.0.0/12".to_owned()).expect("valid");
        assert!(odd.contains("10.15.255.255".parse().expect("ip")));
        assert!(!odd.contains("10.16.0.0".parse().expect("ip")));
        for (text, key) in [
            (
                "[gateway]\nallowed_clients = [\"10.0.0.0/33\"]\n",
                "gateway.allowed_clients[0]",
            ),
            (
                "[gateway]\nallowed_clients = [\"intranet\"]\n",
                "gateway.allowed_clients[0]",
            ),
            ("[gateway]\ntls_names = [\"a b\"]\n", "gateway.tls_names[0]"),
            (
                "[gateway]\ntls_certificate = \"cert.pem\"\n",
                "gateway.tls_certificate",
            ),
            (
                "[gateway]\nidle_timeout_seconds = 0\n",
                "gateway.idle_timeout_seconds",
            ),
        ] {
            let err = Config::from_toml_str(text, "<test>").expect_err(text);
            assert_eq!(err.key(), Some(key), "{text}: {err}");
        }
    }

    #[test]
    fn gateway_limits_are_checked_with_their_key() {
        for (text, key) in [
            ("[gateway]\nlisten = \"localhost\"\n", "gateway.listen"),
            ("[gateway]\nmax_body_bytes = 0\n", "gateway.max_body_bytes"),
            (
                "[gateway]\nmax_header_bytes = 4096\n",
                "gateway.max_header_bytes",
            ),
            (
                "[gateway]\nmax_connections = 0\n",
                "gateway.max_connections",
            ),
            (
                "[gateway]\nper_key_max_concurrent = 0\n",
                "gateway.per_key_max_concurrent",
            ),
            (
                "[gateway]\nmax_queued_requests = 0\n",
                "gateway.max_queued_requests",
            ),
            ("[gateway]\nengine_count = 0\n", "gateway.engine_count"),
            (
                "[gateway]\nengines = [\"rel.sock\"]\n",
                "gateway.engines[0]",
            ),
            (
                "[gateway]\nsse_keepalive_seconds = 0\n",
                "gateway.sse_keepalive_seconds",
            ),
            ("[gateway]\nmax_body = 5\n", "gateway.max_body"),
            ("[ledger]\ndatabase = \"\"\n", "ledger.database"),
        ] {
            let err = Config::from_toml_str(text, "<test>").expect_err(text);
            assert_eq!(err.key(), Some(key), "{text}: {err}");
        }
    }

    #[test]
    fn tco_defaults_are_the_appliance_pair_of_a100s() {
        let config = Config::from_toml_str("", "<test>").expect("empty config is valid");
        let asset = &config.tco.assets[0];
        assert_eq!(
            asset.purchase_price,
            moebox_tco::model::DEFAULT_ASSET_PURCHASE_PRICE
        );
        assert_eq!(
            asset.amortisation_months,
            moebox_tco::model::DEFAULT_AMORTISATION_MONTHS
        );
        assert_eq!(asset.method(), moebox_tco::Method::StraightLine);
        assert_eq!(config.tco.currency.code(), "USD");
        assert_eq!(config.tco.alternatives.len(), 2);
    }

    #[test]
    fn tco_section_parses_native_dates_and_decimals() {
        let config = Config::from_toml_str(
            r#"
[tco]
currency = "EUR"

[[tco.assets]]
name = "GPU server"
purchase_price = 31500.50
purchase_date = 2024-02-29
amortisation_months = 36
residual_value = "1500"
method = "declining_balance"
declining_factor = 1.5

[[tco.fixed_costs]]
name = "Rack space"
monthly = 250

[tco.energy]
price_per_kwh = 0.2315
pue = 1.4

[[tco.energy.tariff_bands]]
name = "night"
from_hour = 22
to_hour = 6
price_per_kwh = 0.12

[[tco.alternatives]]
name = "Hosted API"
input_per_million = 2.5
output_per_million = 10
"#,
            "<test>",
        )
        .expect("valid");
        let asset = &config.tco.assets[0];
        assert_eq!(asset.purchase_date.to_string(), "2024-02-29");
        assert_eq!(asset.purchase_price.micros(), 31_500_500_000);
        assert_eq!(config.tco.energy.price_per_kwh.micros(), 231_500);
        assert_eq!(config.tco.energy.price_at(23).micros(), 120_000);
        assert_eq!(config.tco.alternatives.len(), 1);
        let text = config.to_toml_string();
        assert_eq!(
            Config::from_toml_str(&text, "<roundtrip>").expect("parses"),
            config
        );
    }

    /// The README's commented `[tco]` example, uncommented, is a valid config.
    #[test]
    fn readme_tco_example_parses() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("# [tco]\n")
            .expect("README has the [tco] example");
        let example: String = readme[start..]
            .lines()
            .take_while(|line| line.starts_with('#'))
            .map(|line| line.strip_prefix("# ").unwrap_or("").to_owned() + "\n")
            .collect();
        let config = Config::from_toml_str(&example, "README.md").expect("example is valid");
        assert_eq!(config.tco.fixed_costs.len(), 2, "{example}");
        assert_eq!(config.tco.energy.tariff_bands.len(), 1);
        assert_eq!(config.tco.alternatives.len(), 2);
        assert_eq!(config.tco.assets[0].amortisation_months, 24);
    }

    #[test]
    fn tco_mistakes_are_named_with_their_path() {
        let asset = "[[tco.assets]]\nname = \"gpu\"\npurchase_price = 1000\npurchase_date = \"2026-01-01\"\n";
        for (text, key) in [
            (
                format!("{asset}amortisation_months = 0\n"),
                "tco.assets[0].amortisation_months",
            ),
            (
                format!("{asset}amortisation_months = \"two years\"\n"),
                "tco.assets[0].amortisation_months",
            ),
            (
                format!("{asset}residual_value = 2000\n"),
                "tco.assets[0].residual_value",
            ),
            (
                format!("{asset}[[tco.assets]]\nname = \"b\"\npurchase_price = 1\npurchase_date = \"2026-02-30\"\n"),
                "tco.assets[1].purchase_date",
            ),
            (
                format!("{asset}method = \"sum_of_years\"\n"),
                "tco.assets[0].method",
            ),
            (
                format!("{asset}price = 5\n"),
                "tco.assets[0].price",
            ),
            ("[tco]\ncurrency = \"dollars\"\n".to_owned(), "tco.currency"),
            ("[tco.energy]\nprice_per_kwh = 0.1234567\n".to_owned(), "tco.energy.price_per_kwh"),
            ("[tco.energy]\npue = 0.5\n".to_owned(), "tco.energy.pue"),
            (
                "[[tco.energy.tariff_bands]]\nname = \"peak\"\nfrom_hour = 25\nto_hour = 3\nprice_per_kwh = 1\n".to_owned(),
                "tco.energy.tariff_bands[0].from_hour",
            ),
            (
                "[[tco.alternatives]]\nname = \"x\"\nper_hour = -1\n".to_owned(),
                "tco.alternatives[0].per_hour",
            ),
            ("[tco]\nbreak_even_horizon_months = 0\n".to_owned(), "tco.break_even_horizon_months"),
        ] {
            let err = Config::from_toml_str(&text, "moebox.toml").expect_err(&text);
            assert_eq!(err.key(), Some(key), "{text}: {err}");
            assert!(
                err.to_string().starts_with(&format!("moebox.toml: key `{key}`")),
                "{err}"
            );
        }
    }

    #[test]
    fn round_trips_through_toml() {
        let mut config = Config::default();
        config.engine.execution_provider = ExecutionProviderKind::Cpu;
        config.onnxruntime.library = Some(PathBuf::from("/opt/ort/libonnxruntime.so"));
        config.provision.allow_cpu_only = true;
        config.provision.smoke_model = Some(PathBuf::from("/usr/share/moebox/smoke-model"));
        config.ledger.database = PathBuf::from("/tmp/moebox/moebox.sqlite");
        config.gateway.engines = vec![PathBuf::from("/tmp/moebox/engine-0.sock")];
        config.gateway.listen = "127.0.0.1:0".to_owned();
        let text = config.to_toml_string();
        assert_eq!(
            Config::from_toml_str(&text, "<roundtrip>").expect("parses"),
            config
        );
    }
}

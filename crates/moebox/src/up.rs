//! `moebox up`: the appliance on one machine from one command, for development, demos and
//! tests. It writes `DATA_DIR/moebox.toml` (CPU execution provider, the engine socket and the
//! database in DATA_DIR), runs `moebox engine` as a supervised child (restarted when it dies,
//! killed when `up` exits), runs the gateway in this process, creates an admin and a user key,
//! and prints:
//!
//! ```text
//! url: http://127.0.0.1:8080
//! admin key: mbx_...
//! user key: mbx_...
//! curl: curl ...
//! ready                      (once an engine answers ready)
//! ```

use std::{
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use moebox_config::{Config, ExecutionProviderKind};
use moebox_ledger::{NewKey, Scope, UnixSeconds};
use tokio::{process::Command, sync::watch};

use crate::serve;

/// The bundled model, found relative to the working directory or the binary.
pub const FIXTURE_MODEL: &str = "tests/fixtures/tiny-moe";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Where `up` keeps its config, socket and database when `--data-dir` is not given.
pub const DEFAULT_DATA_DIR: &str = ".moebox/up";
/// Positions one sequence may hold under `up` (prompt + completion; the model's context
/// length if that is shorter): enough for a chat turn, and small enough that a model with a
/// long context still gets [`UP_ROWS`] rows on a laptop.
pub const UP_MAX_SEQUENCE_TOKENS: usize = 1_024;
/// Sequences the engine decodes together under `up` (at least; more when the model's context is
/// shorter than [`UP_MAX_SEQUENCE_TOKENS`]).
pub const UP_ROWS: usize = 8;
/// Engines are polled more often than in production, so a restarted engine serves again at
/// once.
pub const UP_ENGINE_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// First pause before restarting an engine that exited; doubled while it keeps dying young.
pub const ENGINE_RESTART_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_ENGINE_RESTART_BACKOFF: Duration = Duration::from_secs(10);
/// An engine that ran this long before exiting is restarted after the first backoff again.
pub const ENGINE_HEALTHY_RUN: Duration = Duration::from_secs(30);
/// Telemetry reaches the ledger (and the GPU page) sooner than in production.
pub const UP_TELEMETRY_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// How often `up` checks whether it can print `ready`.
pub const READY_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Longest Unix socket path (sockaddr_un's sun_path, less its NUL).
const MAX_SOCKET_PATH_BYTES: usize = 107;

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// An onnxruntime-genai model folder (default: the bundled tiny MoE).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Gateway address; port 0 picks a free port (the `url:` line tells which).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    listen: String,
    /// Where the config, engine socket and database go.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Cores the engine's ONNX Runtime uses (0: all of them). Fewer leaves cores to the
    /// gateway and its clients, as a GPU engine does on the appliance.
    #[arg(long, value_name = "N", default_value_t = moebox_config::DEFAULT_INTRA_OP_THREADS)]
    intra_op_threads: usize,
}

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    let model = match &args.model {
        Some(model) => model.clone(),
        None => find_fixture_model()?,
    };
    let model =
        std::path::absolute(&model).with_context(|| format!("--model {}", model.display()))?;
    if !model.join("genai_config.json").is_file() {
        anyhow::bail!(
            "--model {}: not a model folder (no genai_config.json)",
            model.display()
        );
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create --data-dir {}", args.data_dir.display()))?;
    let data_dir = std::path::absolute(&args.data_dir)?;
    let mut config = up_config(&model, &data_dir, &args.listen)?;
    config.engine.intra_op_threads = args.intra_op_threads;
    let config_path = data_dir.join("moebox.toml");
    std::fs::write(&config_path, config.to_toml_string())
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    // Check what was written the way `moebox serve` and `keys` will read it.
    let config = Config::load(&config_path)?;
    let (ledger, writer, writer_thread) = serve::open_gateway_ledger(&config)?;
    let now = UnixSeconds::now();
    let admin = ledger.create_key(&NewKey::new("up admin", Scope::Admin), now)?;
    let user = ledger.create_key(&NewKey::new("up user", Scope::User), now)?;
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let model_name = model
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let listener = serve::bind(&config).await?;
        let address = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let supervisor = tokio::spawn(supervise_engine(exe, config_path.clone(), stopped));
        let transport = moebox_gateway::transport(&config.gateway, address)?;
        let gateway = moebox_gateway::build(&config, ledger, writer);

        let scheme = if config.gateway.tls { "https" } else { "http" };
        let url = format!("{scheme}://{address}");
        // A self-signed certificate is trusted by naming it, never with --insecure.
        let trust = if config.gateway.tls {
            format!("--cacert {} ", config.gateway.tls_certificate.display())
        } else {
            String::new()
        };
        println!("url: {url}");
        println!("config: {}", config_path.display());
        println!("admin key: {}", admin.key.expose());
        println!("user key: {}", user.key.expose());
        println!(
            "curl: curl -sS {trust}{url}/v1/chat/completions -H 'Authorization: Bearer {key}' \
             -H 'Content-Type: application/json' -d '{{\"model\":\"{model_name}\",\
             \"messages\":[{{\"role\":\"user\",\"content\":\"Summarise the quarterly ledger \
             in one sentence.\"}}],\"max_tokens\":32}}'",
            key = user.key.expose()
        );
        let announce = {
            let gateway = Arc::clone(&gateway);
            tokio::spawn(async move {
                while !gateway.router().any_ready() {
                    tokio::time::sleep(READY_CHECK_INTERVAL).await;
                }
                println!("ready");
            })
        };
        moebox_gateway::serve(
            gateway,
            &config,
            listener,
            transport,
            serve::shutdown_signal(),
        )
        .await;
        announce.abort();
        let _ = stop.send(true);
        let _ = supervisor.await;
        anyhow::Ok(())
    });
    runtime.shutdown_timeout(serve::RUNTIME_SHUTDOWN_TIMEOUT);
    writer_thread.join();
    result
}

/// The configuration `up` runs with: production's defaults but for the CPU, one engine, and
/// everything under `data_dir`.
fn up_config(model: &Path, data_dir: &Path, listen: &str) -> anyhow::Result<Config> {
    let mut config = Config::default();
    config.engine.model = model.to_owned();
    config.engine.execution_provider = ExecutionProviderKind::Cpu;
    // Rows, not positions: a model whose context is the whole budget would otherwise serve
    // one request at a time.
    config.engine.max_sequence_tokens = UP_MAX_SEQUENCE_TOKENS;
    config.engine.kv_budget_tokens = UP_ROWS * UP_MAX_SEQUENCE_TOKENS;
    let socket = data_dir.join("engine-{gpu}.sock");
    let socket = socket
        .to_str()
        .context("--data-dir must be valid UTF-8")?
        .to_owned();
    config.engine.socket = socket;
    if config.engine.socket_for(0).as_os_str().len() > MAX_SOCKET_PATH_BYTES {
        anyhow::bail!(
            "--data-dir {} is too long for a Unix socket path (at most {MAX_SOCKET_PATH_BYTES} \
             bytes with the socket's name)",
            data_dir.display()
        );
    }
    config.provision.allow_cpu_only = true;
    config.ledger.database = data_dir.join("moebox.sqlite");
    config.gateway.listen = listen.to_owned();
    // Plaintext on loopback, where `up` usually runs; HTTPS with a pair generated in the data
    // folder when it listens beyond this machine.
    let listen_address: std::net::SocketAddr = listen
        .parse()
        .with_context(|| format!("--listen must be ADDRESS:PORT, got {listen:?}"))?;
    config.gateway.tls = !listen_address.ip().is_loopback();
    config.gateway.tls_certificate = data_dir.join("tls/cert.pem");
    config.gateway.tls_private_key = data_dir.join("tls/key.pem");
    config.gateway.engine_count = 1;
    config.gateway.engine_poll_interval_ms = UP_ENGINE_POLL_INTERVAL.as_millis() as u64;
    config.gateway.telemetry_poll_interval_seconds = UP_TELEMETRY_POLL_INTERVAL.as_secs();
    Ok(config)
}

/// `tests/fixtures/tiny-moe` under the working directory or one of the binary's ancestors
/// (`target/debug/moebox` sits two levels under the repository).
fn find_fixture_model() -> anyhow::Result<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_owned));
    }
    roots
        .iter()
        .map(|root| root.join(FIXTURE_MODEL))
        .find(|candidate| candidate.join("genai_config.json").is_file())
        .with_context(|| {
            format!(
                "no --model given and {FIXTURE_MODEL} is not under the working directory or \
                 the binary's folders"
            )
        })
}

/// Runs `moebox engine --gpu 0` until `stop`, restarting it whenever it exits.
async fn supervise_engine(exe: PathBuf, config: PathBuf, mut stop: watch::Receiver<bool>) {
    let mut backoff = ENGINE_RESTART_BACKOFF;
    loop {
        let started = Instant::now();
        match spawn_engine(&exe, &config) {
            Ok(mut child) => {
                tracing::info!(pid = child.id(), "engine started");
                tokio::select! {
                    status = child.wait() => {
                        let status = status
                            .map(|s| s.to_string())
                            .unwrap_or_else(|e| e.to_string());
                        tracing::warn!(%status, "engine exited; restarting it");
                    }
                    _ = stop.changed() => {
                        let _ = child.kill().await;
                        return;
                    }
                }
            }
            Err(error) => tracing::error!(%error, "cannot start the engine"),
        }
        backoff = if started.elapsed() >= ENGINE_HEALTHY_RUN {
            ENGINE_RESTART_BACKOFF
        } else {
            (backoff * 2).min(MAX_ENGINE_RESTART_BACKOFF)
        };
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
    }
}

fn spawn_engine(exe: &Path, config: &Path) -> std::io::Result<tokio::process::Child> {
    // The engine's stdout goes to our stderr: `up`'s stdout is the lines scripts read.
    let stdout = std::io::stderr().as_fd().try_clone_to_owned()?;
    Command::new(exe)
        .arg("engine")
        .arg("--config")
        .arg(config)
        .args(["--gpu", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .kill_on_drop(true)
        .spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_config_keeps_everything_in_the_data_dir_and_validates() {
        let config = up_config(
            Path::new("/m/tiny-moe"),
            Path::new("/tmp/up"),
            "127.0.0.1:0",
        )
        .expect("config");
        let text = config.to_toml_string();
        let parsed = Config::from_toml_str(&text, "<up>").expect("valid");
        assert_eq!(
            parsed.gateway.engine_sockets(&parsed.engine),
            vec![PathBuf::from("/tmp/up/engine-0.sock")]
        );
        assert_eq!(
            parsed.ledger.database,
            PathBuf::from("/tmp/up/moebox.sqlite")
        );
        assert_eq!(parsed.engine.execution_provider, ExecutionProviderKind::Cpu);
        assert!(!parsed.gateway.tls, "plaintext on loopback");
        let open =
            up_config(Path::new("/m"), Path::new("/tmp/up"), "0.0.0.0:8443").expect("config");
        assert!(open.gateway.tls, "HTTPS beyond loopback");
        assert_eq!(
            open.gateway.tls_certificate,
            PathBuf::from("/tmp/up/tls/cert.pem")
        );
    }

    #[test]
    fn a_data_dir_too_long_for_a_socket_is_refused() {
        let long = PathBuf::from(format!("/tmp/{}", "d".repeat(120)));
        assert!(up_config(Path::new("/m"), &long, "127.0.0.1:0").is_err());
    }
}

//! One engine process from start to exit: bind the socket, load the model (answering health
//! checks meanwhile), warm up, report ready, serve, and on SIGTERM or SIGINT drain and exit.
//!
//! Telemetry is sampled from the start (before the model loads, so the energy of loading is
//! counted too) on its own thread: NVML for the engine's GPU, RAPL for an engine on the CPU.
//!
//! systemd hears about each step through `sd_notify`: `STATUS=` lines and `EXTEND_TIMEOUT_USEC`
//! while loading, `READY=1` after the warm-up, `WATCHDOG=1` from the scheduler loop itself (a
//! wedged scheduler stops pinging and gets restarted), `STOPPING=1` when the drain begins.

use std::{path::PathBuf, sync::Arc, time::Duration};

use moebox_config::{Config, ExecutionProviderKind};
use moebox_engine::{
    model::{Model, ModelError, SessionOptions},
    runtime::RuntimeError,
    scheduler::{self, EngineHandle, SchedulerLimits, StartError},
};
use moebox_systemd::{Notifier, SystemdEnv, Watchdog};
use moebox_telemetry::{RING_CAPACITY, SamplerThread, Target, TelemetryLog, rapl::POWERCAP_DIR};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::oneshot,
};

use crate::{
    MAX_BLOCKING_THREADS, MODEL_LOAD_TIMEOUT_EXTENSION, RUNTIME_SHUTDOWN_TIMEOUT,
    SCHEDULER_STOP_TIMEOUT, SERVER_WORKER_THREADS,
    engine::EngineSlot,
    http::{Drained, ServerLimits, serve},
    socket::{SocketError, SocketFile},
};

/// What one engine process runs with; the environment is read by the caller, once.
#[derive(Debug, Clone)]
pub struct EngineProcess {
    pub config: Config,
    /// The GPU index (`--gpu N`): the CUDA device and the socket's `{gpu}`.
    pub gpu: u32,
    pub systemd: SystemdEnv,
    /// This process's id, for `WATCHDOG_PID`.
    pub pid: u32,
    pub limits: ServerLimits,
}

/// Why the engine could not start or serve. Each is one line naming the file or setting.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("--gpu {0}: not a CUDA device index")]
    Gpu(u32),
    #[error(transparent)]
    Socket(SocketError),
    #[error("cannot start the async runtime: {0}")]
    AsyncRuntime(std::io::Error),
    #[error("cannot listen for SIGTERM and SIGINT: {0}")]
    Signals(std::io::Error),
    #[error("cannot start the telemetry thread: {0}")]
    Telemetry(std::io::Error),
    #[error(transparent)]
    OnnxRuntime(RuntimeError),
    #[error("cannot load the model folder {dir}: {cause}{hint}")]
    Model {
        dir: PathBuf,
        cause: ModelError,
        /// What ONNX Runtime's message leaves out, e.g. which weights file it could not read.
        hint: String,
    },
    #[error("cannot start the scheduler: {0}")]
    Start(StartError),
    #[error("the model loader stopped unexpectedly: {0}")]
    Loader(String),
    #[error("the HTTP server stopped unexpectedly")]
    ServerStopped,
}

impl EngineError {
    /// The message on one line, as `STATUS=` and the journal want it (ONNX Runtime's own
    /// messages may span several).
    pub fn one_line(&self) -> String {
        self.to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Runs the engine until SIGTERM or SIGINT; `Ok` after a clean drain.
pub fn run(process: EngineProcess) -> Result<(), EngineError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(SERVER_WORKER_THREADS)
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_name("moebox-http")
        .enable_all()
        .build()
        .map_err(EngineError::AsyncRuntime)?;
    let result = runtime.block_on(run_async(process));
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    result
}

struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn new() -> Result<Self, EngineError> {
        Ok(Self {
            terminate: signal(SignalKind::terminate()).map_err(EngineError::Signals)?,
            interrupt: signal(SignalKind::interrupt()).map_err(EngineError::Signals)?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

/// `sd_notify`, when there is a notify socket.
#[derive(Clone)]
struct Notify(Option<Arc<Notifier>>);

impl Notify {
    fn status(&self, text: &str) {
        tracing::info!("{text}");
        if let Some(n) = &self.0 {
            n.status(text);
        }
    }

    fn with(&self, f: impl FnOnce(&Notifier)) {
        if let Some(n) = &self.0 {
            f(n);
        }
    }
}

async fn run_async(process: EngineProcess) -> Result<(), EngineError> {
    let EngineProcess {
        config,
        gpu,
        systemd,
        pid,
        limits,
    } = process;
    let device_id = i32::try_from(gpu).map_err(|_| EngineError::Gpu(gpu))?;
    let notify = Notify(systemd.notifier().map(Arc::new));
    let watchdog_interval = systemd.watchdog_interval(pid);
    let mut signals = Signals::new()?;

    // Bind first: a socket problem shows in a second rather than after a long model load, and
    // the gateway can tell "loading" from "dead" meanwhile.
    let socket_path = config.engine.socket_for(gpu);
    let (socket_file, listener) = SocketFile::bind(&socket_path).map_err(EngineError::Socket)?;
    let listener = listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixListener::from_std(listener))
        .map_err(|cause| {
            EngineError::Socket(SocketError::Io {
                path: socket_path.clone(),
                during: "listen on the socket",
                cause,
            })
        })?;
    let model_name = config
        .engine
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| config.engine.model.display().to_string());
    let planned_device = match config.engine.execution_provider {
        ExecutionProviderKind::Cpu => "cpu".to_owned(),
        ExecutionProviderKind::Cuda => format!("cuda:{gpu}"),
    };
    let telemetry = TelemetryLog::new(
        telemetry_instance(pid),
        config.engine.telemetry_interval(),
        RING_CAPACITY,
    );
    let target = match config.engine.execution_provider {
        ExecutionProviderKind::Cuda => Target::Gpu(gpu),
        ExecutionProviderKind::Cpu => Target::CpuPackages(POWERCAP_DIR.into()),
    };
    // Dropped on every way out of this function, which stops the thread.
    let _sampler = SamplerThread::start(moebox_telemetry::live_source(target), telemetry.clone())
        .map_err(EngineError::Telemetry)?;
    let slot = Arc::new(EngineSlot::new(
        model_name,
        planned_device.clone(),
        telemetry,
    ));
    let (stop_serving, stop_rx) = oneshot::channel::<()>();
    let mut server = tokio::spawn(serve(listener, Arc::clone(&slot), limits, async {
        let _ = stop_rx.await;
    }));
    tracing::info!(socket = %socket_path.display(), "listening");

    notify.with(|n| n.extend_timeout(MODEL_LOAD_TIMEOUT_EXTENSION));
    notify.status(&format!(
        "loading model {} on {planned_device}",
        config.engine.model.display()
    ));
    let loader = {
        let (config, notify, slot) = (config.clone(), notify.clone(), Arc::clone(&slot));
        tokio::task::spawn_blocking(move || {
            load_engine(&config, device_id, &notify, watchdog_interval, &slot)
        })
    };
    tokio::pin!(loader);
    let loaded = tokio::select! {
        loaded = &mut loader => loaded,
        signal = signals.recv() => {
            // ONNX Runtime cannot be interrupted mid-load, and leaving the process while one
            // of its threads loads risks a crash on exit: finish the load, then stop. A second
            // signal stops at once.
            notify.with(Notifier::stopping);
            notify.status(&format!("{signal} while loading: stopping once the model load ends"));
            tokio::select! {
                loaded = &mut loader => {
                    if let Ok(Ok(handle)) = loaded {
                        handle.drain();
                        stop_scheduler(handle).await;
                    }
                }
                signal = signals.recv() => tracing::warn!("{signal} again: stopping now"),
            }
            let _ = stop_serving.send(());
            let _ = server.await;
            drop(socket_file);
            return Ok(());
        }
    };
    let handle = match loaded {
        Ok(Ok(handle)) => handle,
        Ok(Err(err)) => return Err(failed(&notify, err, stop_serving, server).await),
        Err(join) => {
            let err = EngineError::Loader(join.to_string());
            return Err(failed(&notify, err, stop_serving, server).await);
        }
    };
    slot.running(handle.clone());
    let load = handle.load();
    notify.with(Notifier::ready);
    notify.status(&format!(
        "ready: {} rows × {} positions",
        load.max_running,
        load.kv_total_tokens / u64::from(load.max_running.max(1))
    ));

    let signal = tokio::select! {
        signal = signals.recv() => signal,
        _ = &mut server => {
            handle.drain();
            return Err(EngineError::ServerStopped);
        }
    };
    notify.with(Notifier::stopping);
    let load = handle.load();
    notify.status(&format!(
        "{signal}: draining {} running and {} waiting requests",
        load.running, load.waiting
    ));
    // Refuse new work first, so a request racing the shutdown gets 503 + Retry-After and the
    // gateway sends it to another engine; then stop accepting and let the streams finish.
    handle.drain();
    let _ = stop_serving.send(());
    let drained = tokio::select! {
        drained = &mut server => drained.ok(),
        signal = signals.recv() => {
            tracing::warn!("{signal} again: cutting the running streams");
            server.abort();
            None
        }
    };
    stop_scheduler(handle).await;
    notify.status(&match drained {
        Some(Drained::Completely) => "stopped: every stream finished".to_owned(),
        Some(Drained::CutOff(n)) => format!("stopped: {n} connections cut at the drain timeout"),
        None => "stopped: streams cut".to_owned(),
    });
    drop(socket_file);
    Ok(())
}

/// Names this engine process in telemetry batches: a restarted engine (new pid, later start)
/// gets a new name, which tells the poller that sequence numbers started over.
fn telemetry_instance(pid: u32) -> String {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{pid}-{started}")
}

/// Reports a start-up failure, closes the server, and hands the error back.
async fn failed(
    notify: &Notify,
    err: EngineError,
    stop_serving: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Drained>,
) -> EngineError {
    notify.status(&format!("failed: {}", err.one_line()));
    let _ = stop_serving.send(());
    let _ = server.await;
    err
}

/// Waits (bounded) for the scheduler thread to end after a drain; every stream has ended or
/// been dropped by now, so it has nothing left to run.
async fn stop_scheduler(handle: EngineHandle) {
    let join = tokio::task::spawn_blocking(move || handle.join());
    if tokio::time::timeout(SCHEDULER_STOP_TIMEOUT, join)
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_s = SCHEDULER_STOP_TIMEOUT.as_secs(),
            "the scheduler did not stop in time"
        );
    }
}

/// ONNX Runtime reports unreadable external weights by initializer name and offset, not by
/// file: name the weights files beside the model (`model.onnx.data` and the like) and their
/// sizes.
fn external_weights_hint(err: &ModelError) -> String {
    let ModelError::Session { path, message } = err else {
        return String::new();
    };
    if !message.to_ascii_lowercase().contains("external") {
        return String::new();
    }
    let (Some(dir), Some(model)) = (path.parent(), path.file_name()) else {
        return String::new();
    };
    let model = model.to_string_lossy();
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with(model.as_ref()) && name != model
        })
        .map(|entry| {
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            format!("{} ({size} bytes)", entry.path().display())
        })
        .collect();
    files.sort();
    if files.is_empty() {
        format!(" (no external weights file beside {model})")
    } else {
        format!(
            " (external weights {}: truncated, or not the ones {model} was exported with)",
            files.join(", ")
        )
    }
}

/// ONNX Runtime, the model, the warm-up and the scheduler. Runs on a blocking thread.
fn load_engine(
    config: &Config,
    device_id: i32,
    notify: &Notify,
    watchdog_interval: Option<Duration>,
    slot: &EngineSlot,
) -> Result<EngineHandle, EngineError> {
    let runtime = moebox_engine::runtime::load(config.onnxruntime.library.as_deref())
        .map_err(EngineError::OnnxRuntime)?;
    let engine = &config.engine;
    let options = SessionOptions {
        execution_provider: engine.execution_provider,
        device_id,
        allow_cpu_fallback: engine.allow_cpu_fallback,
        intra_op_threads: engine.intra_op_threads,
        cuda: engine.cuda.clone(),
    };
    let model =
        Model::load(&runtime, &engine.model, &options).map_err(|cause| EngineError::Model {
            dir: engine.model.clone(),
            hint: external_weights_hint(&cause),
            cause,
        })?;
    let device = model.device.to_string();
    slot.warming(device.clone());
    notify.with(|n| n.extend_timeout(MODEL_LOAD_TIMEOUT_EXTENSION));
    notify.status(&format!("warming up on {device}"));
    let limits = SchedulerLimits::from_config(engine, model.spec.context_length);
    let watchdog = notify
        .0
        .clone()
        .zip(watchdog_interval)
        .map(|(notifier, interval)| Watchdog::new(notifier, interval));
    if let Some(interval) = watchdog_interval {
        tracing::info!(
            interval_ms = interval.as_millis() as u64,
            "watchdog pings from the scheduler loop"
        );
    }
    let heartbeat = Box::new(move || {
        if let Some(watchdog) = &watchdog {
            watchdog.ping_if_due();
        }
    });
    scheduler::start(model, limits, heartbeat).map_err(EngineError::Start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_external_weights_are_named_with_their_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("model.onnx"), b"graph").expect("write");
        std::fs::write(dir.path().join("model.onnx.data"), [0u8; 1000]).expect("write");
        std::fs::write(dir.path().join("tokenizer.json"), b"{}").expect("write");
        let err = ModelError::Session {
            path: dir.path().join("model.onnx"),
            message: "GetExtDataFromTensorProto External initializer: w offset: 448544 size to read: 16 given file_length: 1000".into(),
        };
        let hint = external_weights_hint(&err);
        let data = dir.path().join("model.onnx.data");
        assert_eq!(
            hint,
            format!(
                " (external weights {} (1000 bytes): truncated, or not the ones model.onnx was exported with)",
                data.display()
            )
        );
        let other = ModelError::Session {
            path: dir.path().join("model.onnx"),
            message: "Protobuf parsing failed".into(),
        };
        assert_eq!(external_weights_hint(&other), "");
    }

    #[test]
    fn errors_are_one_line() {
        let err = EngineError::Loader("first\nsecond  third".into());
        assert_eq!(
            err.one_line(),
            "the model loader stopped unexpectedly: first second third"
        );
    }
}

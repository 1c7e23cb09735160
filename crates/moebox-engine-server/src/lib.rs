//! The engine process: the internal HTTP/1.1 API ([`moebox_protocol`]) over a Unix socket, in
//! front of one scheduler, with systemd's notify protocol and a bounded drain on SIGTERM.
//!
//! - [`http`]: routing, refusal → status, NDJSON event streams, connection limits, drain.
//! - [`socket`]: the socket file (stale replaced, mode 0660, removed on exit).
//! - [`engine`]: the backend the server serves, from "loading" to the running scheduler.
//! - [`lifecycle`]: one process from start to exit (`moebox engine --config FILE --gpu N`).
//!
//! A client that hangs up drops its response body, which drops the scheduler's `Submission`
//! and so cancels the sequence between two decode steps.

#![forbid(unsafe_code)]

use std::time::Duration;

pub mod engine;
pub mod http;
pub mod lifecycle;
pub mod socket;

pub use engine::EngineSlot;
pub use http::{Backend, Drained, EventStream, ServerLimits, serve};
pub use lifecycle::{EngineError, EngineProcess, run};
pub use socket::{SOCKET_MODE, SocketError, SocketFile};

/// Largest `POST /v1/generate` body: a long prompt as text or token ids, with room to spare
/// (a 128k-token context is about 0.5 MB of text).
pub const MAX_REQUEST_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Connections served at once. The gateway pools a few per engine; the bound is against a
/// leak or a runaway client, not a throughput setting. More wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// A request's head must arrive within this; an idle keep-alive connection is closed after it.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A request's body must arrive within this.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long running streams may take to finish after SIGTERM before they are cut (and their
/// sequences cancelled). The unit's `TimeoutStopSec` must be longer.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the scheduler thread may take to stop once every stream is gone.
pub const SCHEDULER_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the async runtime waits for its blocking threads at exit.
pub const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed `accept` (out of file descriptors), so the loop does not spin.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// `EXTEND_TIMEOUT_USEC` sent before loading the model and before the warm-up: each step may
/// take this long beyond the unit's `TimeoutStartSec` (a 20B model from disk onto a GPU).
pub const MODEL_LOAD_TIMEOUT_EXTENSION: Duration = Duration::from_secs(300);
/// `Retry-After` while the model loads or warms up.
pub const LOADING_RETRY_AFTER_SECONDS: u32 = 5;
/// `Retry-After` for a queue-full or unavailable refusal that names no delay.
pub const DEFAULT_RETRY_AFTER_SECONDS: u32 = 1;
/// Async worker threads: the HTTP side only parses, routes and copies events; the cores belong
/// to ONNX Runtime.
pub const SERVER_WORKER_THREADS: usize = 2;
/// Blocking threads: request tokenisation (a 4 MiB prompt takes a while) and the model load.
pub const MAX_BLOCKING_THREADS: usize = 8;

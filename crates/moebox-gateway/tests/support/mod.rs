//! A fake engine that speaks `moebox-protocol` on a Unix socket, a gateway on a loopback port,
//! and a small HTTP client: enough to drive the gateway as clients and engines do, without
//! a model.

#![allow(dead_code)]

use std::{
    convert::Infallible,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use moebox_config::Config;
use moebox_gateway::body::GatewayBody;
use moebox_ledger::{Ledger, NewKey, Scope, UnixSeconds};
use moebox_protocol::{
    EngineState, ErrorBody, ErrorCode, Event, FinishReason, GenerateRequest, Health, Load, Usage,
};
use tokio::{net::UnixListener, sync::oneshot};

pub const MODEL: &str = "tiny-moe";

/// What the fake engine does with a generation.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Streams these pieces, then `done` with `stop`.
    Tokens(Vec<&'static str>),
    /// Refuses with this status and body.
    Refuse(u16, ErrorBody),
    /// Accepts, sends `started`, then closes the stream (a crash before the first token).
    DieAfterStarted,
}

#[derive(Debug)]
pub struct FakeEngine {
    pub socket: PathBuf,
    pub behaviour: Mutex<Behaviour>,
    pub ready: AtomicBool,
    /// Pause before each token.
    pub token_delay: Mutex<Duration>,
    pub generations: AtomicU32,
    /// Streams whose client hung up before `done`.
    pub cancelled: AtomicU32,
    pub last_request: Mutex<Option<GenerateRequest>>,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
}

impl FakeEngine {
    pub async fn start(dir: &Path, name: &str, behaviour: Behaviour) -> Arc<Self> {
        let socket = dir.join(format!("{name}.sock"));
        let listener = UnixListener::bind(&socket).expect("bind fake engine socket");
        let (stop, mut stopped) = oneshot::channel();
        let engine = Arc::new(Self {
            socket,
            behaviour: Mutex::new(behaviour),
            ready: AtomicBool::new(true),
            token_delay: Mutex::new(Duration::ZERO),
            generations: AtomicU32::new(0),
            cancelled: AtomicU32::new(0),
            last_request: Mutex::new(None),
            shutdown: Mutex::new(Some(stop)),
        });
        let serving = Arc::clone(&engine);
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => break,
                    },
                    _ = &mut stopped => break,
                };
                let engine = Arc::clone(&serving);
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let engine = Arc::clone(&engine);
                        async move { Ok::<_, Infallible>(engine.handle(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        engine
    }

    /// Stops accepting and removes the socket (the engine "died").
    pub fn stop(&self) {
        if let Some(stop) = self.shutdown.lock().expect("lock").take() {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<GatewayBody> {
        let path = request.uri().path().to_owned();
        match path.as_str() {
            "/v1/ready" | "/v1/health" => {
                let ready = self.ready.load(Ordering::SeqCst);
                let health = Health {
                    state: if ready {
                        EngineState::Ready
                    } else {
                        EngineState::Loading
                    },
                    model: MODEL.into(),
                    device: "cpu".into(),
                };
                let status = if ready || path == "/v1/health" {
                    200
                } else {
                    503
                };
                json(status, &health)
            }
            "/v1/load" => json(
                200,
                &Load {
                    max_running: 4,
                    max_waiting: 8,
                    ..Load::default()
                },
            ),
            "/v1/generate" => {
                let body = request
                    .into_body()
                    .collect()
                    .await
                    .expect("request body")
                    .to_bytes();
                let generate: GenerateRequest =
                    serde_json::from_slice(&body).expect("a GenerateRequest");
                *self.last_request.lock().expect("lock") = Some(generate.clone());
                self.generations.fetch_add(1, Ordering::SeqCst);
                let behaviour = self.behaviour.lock().expect("lock").clone();
                match behaviour {
                    Behaviour::Refuse(status, body) => json(status, &body),
                    Behaviour::DieAfterStarted => {
                        let (sender, body) = GatewayBody::channel();
                        tokio::spawn(async move {
                            let _ = sender
                                .send(line(&Event::Started { prompt_tokens: 3 }))
                                .await;
                        });
                        Response::new(body)
                    }
                    Behaviour::Tokens(pieces) => {
                        let (sender, body) = GatewayBody::channel();
                        let delay = *self.token_delay.lock().expect("lock");
                        let engine = Arc::clone(&self);
                        tokio::spawn(async move {
                            let prompt_tokens = 3;
                            if sender
                                .send(line(&Event::Started { prompt_tokens }))
                                .await
                                .is_err()
                            {
                                engine.cancelled.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            let mut completion_tokens = 0;
                            for piece in &pieces {
                                tokio::time::sleep(delay).await;
                                completion_tokens += 1;
                                let event = Event::Token {
                                    text: (*piece).into(),
                                    token_ids: vec![completion_tokens],
                                };
                                if sender.send(line(&event)).await.is_err() {
                                    engine.cancelled.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                            }
                            let _ = sender
                                .send(line(&Event::Done {
                                    finish_reason: FinishReason::Stop,
                                    usage: Usage {
                                        prompt_tokens,
                                        completion_tokens,
                                    },
                                }))
                                .await;
                        });
                        Response::new(body)
                    }
                }
            }
            _ => json(404, &serde_json::json!({})),
        }
    }
}

fn line(event: &Event) -> Bytes {
    let mut text = serde_json::to_vec(event).expect("serialises");
    text.push(b'\n');
    Bytes::from(text)
}

fn json<T: serde::Serialize>(status: u16, value: &T) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(
        serde_json::to_vec(value).expect("serialises"),
    ));
    *response.status_mut() = StatusCode::from_u16(status).expect("status");
    response
}

pub fn refusal(code: ErrorCode, message: &str, param: Option<&str>) -> ErrorBody {
    ErrorBody {
        message: message.into(),
        code,
        param: param.map(str::to_owned),
        retry_after_seconds: None,
    }
}

/// A gateway on an ephemeral loopback port, with an admin and a user key.
#[derive(Debug)]
pub struct TestGateway {
    pub address: std::net::SocketAddr,
    pub ledger: Arc<Ledger>,
    pub gateway: Arc<moebox_gateway::Gateway>,
    pub admin_key: String,
    pub user_key: String,
    pub user_key_id: i64,
    stop: Option<oneshot::Sender<()>>,
    pub _dir: tempfile::TempDir,
}

impl TestGateway {
    pub async fn start(engines: &[&Arc<FakeEngine>], tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ledger, writer, _writer_thread) =
            moebox_ledger::open_with_writer(&dir.path().join("moebox.sqlite"), 64).expect("ledger");
        let admin = ledger
            .create_key(&NewKey::new("admin", Scope::Admin), UnixSeconds::now())
            .expect("admin key");
        let user = ledger
            .create_key(&NewKey::new("user", Scope::User), UnixSeconds::now())
            .expect("user key");
        let mut config = Config::default();
        config.gateway.engines = engines.iter().map(|e| e.socket.clone()).collect();
        config.gateway.engine_poll_interval_ms = 50;
        config.gateway.listen = "127.0.0.1:0".into();
        // Plaintext unless a test turns TLS on; the pair then goes in the test's folder.
        config.gateway.tls = false;
        config.gateway.tls_certificate = dir.path().join("tls/cert.pem");
        config.gateway.tls_private_key = dir.path().join("tls/key.pem");
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let transport = moebox_gateway::transport(&config.gateway, address).expect("transport");
        let gateway = moebox_gateway::build(&config, Arc::clone(&ledger), writer);
        gateway.router().poll_all().await;
        let (stop, stopped) = oneshot::channel::<()>();
        let (stop_polling, polling) = tokio::sync::watch::channel(false);
        gateway.router().spawn_pollers(polling);
        let serving = Arc::clone(&gateway);
        tokio::spawn(async move {
            moebox_gateway::server::serve(serving, listener, transport, &config.gateway, async {
                let _ = stopped.await;
            })
            .await;
            let _ = stop_polling.send(true);
        });
        Self {
            address,
            ledger,
            gateway,
            admin_key: admin.key.expose().to_owned(),
            user_key: user.key.expose().to_owned(),
            user_key_id: user.record.id,
            stop: Some(stop),
            _dir: dir,
        }
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Reply {
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.raw(method, path, key, body).await
    }

    /// `POST /v1/chat/completions` of [`chat_body`]`(content)`.
    pub async fn chat(&self, key: Option<&str>, content: &str) -> Reply {
        self.request(
            "POST",
            "/v1/chat/completions",
            key,
            Some(chat_body(content)),
        )
        .await
    }

    pub async fn raw(&self, method: &str, path: &str, key: Option<&str>, body: Vec<u8>) -> Reply {
        read(self.send(method, path, key, body).await).await
    }

    /// Sends a request with exactly `headers` (no key, no content type added) and reads it.
    pub async fn with_headers(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        read(self.exchange(method, path, headers, body).await).await
    }

    /// Sends a request with a JSON content type and `key` as its Bearer key, and returns the
    /// response with its body unread.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Vec<u8>,
    ) -> Response<Incoming> {
        let authorization = key.map(|key| format!("Bearer {key}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(authorization) = &authorization {
            headers.push(("authorization", authorization));
        }
        self.exchange(method, path, &headers, body).await
    }

    /// One request on a fresh HTTP/1.1 connection, with `headers` and a Host.
    async fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Response<Incoming> {
        let stream = tokio::net::TcpStream::connect(self.address)
            .await
            .expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        sender
            .send_request(request.body(Full::new(Bytes::from(body))).expect("request"))
            .await
            .expect("response")
    }
}

/// Reads a whole response.
async fn read(response: Response<Incoming>) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `data:` payloads of an SSE body, in order.
    pub fn sse_data(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|event| event.strip_prefix("data: "))
            .map(str::to_owned)
            .collect()
    }
}

pub fn chat_body(content: &str) -> serde_json::Value {
    serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
    })
}

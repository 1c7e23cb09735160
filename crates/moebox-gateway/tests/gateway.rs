//! The gateway driven over real sockets: an HTTP client on loopback, fake engines on Unix
//! sockets speaking `moebox-protocol`.

mod support;

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use moebox_ledger::UnixSeconds;
use moebox_protocol::{ErrorCode, Prompt};
use support::{Behaviour, FakeEngine, MODEL, TestGateway, chat_body, refusal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn hello() -> Behaviour {
    Behaviour::Tokens(vec!["Hel", "lo", " wörld"])
}

#[tokio::test]
async fn chat_completion_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(dir.path(), "e0", hello()).await;
    let gateway = TestGateway::start(&[&engine], |_| {}).await;
    let mut body = chat_body("hi");
    body["max_tokens"] = 5.into();
    body["temperature"] = 0.into();
    body["stop"] = serde_json::json!(["\n\n"]);
    body["seed"] = 7.into();
    let reply = gateway
        .request(
            "POST",
            "/v1/chat/completions",
            Some(&gateway.user_key),
            Some(body),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["object"], "chat.completion");
    assert!(json["id"].as_str().expect("id").starts_with("chatcmpl-"));
    assert_eq!(json["model"], MODEL);
    assert_eq!(json["choices"][0]["message"]["role"], "assistant");
    assert_eq!(json["choices"][0]["message"]["content"], "Hello wörld");
    assert_eq!(json["choices"][0]["finish_reason"], "stop");
    assert_eq!(json["usage"]["prompt_tokens"], 3);
    assert_eq!(json["usage"]["completion_tokens"], 3);
    assert_eq!(json["usage"]["total_tokens"], 6);
    let sent = engine
        .last_request
        .lock()
        .expect("lock")
        .clone()
        .expect("engine got the request");
    assert_eq!(sent.max_tokens, Some(5));
    assert_eq!(sent.temperature, Some(0.0));
    assert_eq!(sent.seed, Some(7));
    assert_eq!(sent.stop, vec!["\n\n".to_owned()]);
    assert!(!sent.request_id.is_empty());
    assert!(matches!(sent.prompt, Prompt::Chat(ref m) if m[0].content == "hi"));
}

#[tokio::test]
async fn chat_completion_streamed_with_usage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(dir.path(), "e0", hello()).await;
    let gateway = TestGateway::start(&[&engine], |_| {}).await;
    let mut body = chat_body("hi");
    body["stream"] = true.into();
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let reply = gateway
        .request(
            "POST",
            "/v1/chat/completions",
            Some(&gateway.user_key),
            Some(body),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.headers.get("content-type").expect("content type"),
        "text/event-stream"
    );
    let data = reply.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let chunks: Vec<serde_json::Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk JSON"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello wörld");
    let id = &chunks[0]["id"];
    assert!(
        chunks
            .iter()
            .all(|c| &c["id"] == id && c["object"] == "chat.completion.chunk")
    );
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert!(finish["usage"].is_null());
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], serde_json::json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 6);
}

#[tokio::test]
async fn completions_whole_and_streamed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(dir.path(), "e0", hello()).await;
    let gateway = TestGateway::start(&[&engine], |_| {}).await;
    let body = serde_json::json!({"model": MODEL, "prompt": "Once", "max_tokens": 3});
    let reply = gateway
        .request(
            "POST",
            "/v1/completions",
            Some(&gateway.user_key),
            Some(body.clone()),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["object"], "text_completion");
    assert_eq!(json["choices"][0]["text"], "Hello wörld");
    assert_eq!(json["usage"]["completion_tokens"], 3);
    let mut streamed = body;
    streamed["stream"] = true.into();
    let reply = gateway
        .request(
            "POST",
            "/v1/completions",
            Some(&gateway.user_key),
            Some(streamed),
        )
        .await;
    let data = reply.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let text: String = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<serde_json::Value>(d).expect("chunk"))
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "Hello wörld");
}

#[tokio::test]
async fn models_are_listed_from_the_engines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(dir.path(), "e0", hello()).await;
    let gateway = TestGateway::start(&[&engine], |_| {}).await;
    let reply = gateway
        .request("GET", "/v1/models", Some(&gateway.user_key), None)
        .await;
    assert_eq!(reply.status, 200);
    let json = reply.json();
    assert_eq!(json["object"], "list");
    assert_eq!(json["data"][0]["id"], MODEL);
    assert_eq!(json["data"][0]["object"], "model");
    let one = gateway
        .request(
            "GET",
            &format!("/v1/models/{MODEL}"),
            Some(&gateway.user_key),
            None,
        )
        .await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["id"], MODEL);
    let missing = gateway
        .request("GET", "/v1/models/gpt-9", Some(&gateway.user_key), None)
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "model_not_found");
    let mut body = chat_body("hi");
    body["model"] = "gpt-9".into();
    let wrong_model = gateway
        .request(
            "POST",
            "/v1/chat/completions",
            Some(&gateway.user_key),
            Some(body),
        )
        .await;
    assert_eq!(wrong_model.status, 404);
    assert_eq!(wrong_model.json()["error"]["param"], "model");
}

#[tokio::test]
async fn keys_and_scopes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(dir.path(), "e0", hello()).await;
    let gateway = TestGateway::start(&[&engine], |_| {}).await;
    let missing = gateway.request("GET", "/v1/models", None, None).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json()["error"]["type"], "authentication_error");
    assert_eq!(
        missing.headers.get("www-authenticate").expect("challenge"),
        "Bearer"
    );
    let forged = gateway
        .request("GET", "/v1/models", Some("mbx_notarealkey"), None)
        .await;
    assert_eq!(forged.status, 401);
    let mut typo = gateway.user_key.clone();
    typo.pop();
    typo.push(if gateway.user_key.ends_with('a') {
        'b'
    } else {
        'a'
    });
    let typo = gateway
        .request("GET", "/v1/models", Some(&typo), None)
        .await;
    assert_eq!(typo.status, 401);
    assert!(typo.text().contains("checksum"), "{}", typo.text());

    let user_metrics = gateway
        .request("GET", "/metrics", Some(&gateway.user_key), None)
        .await;
    assert_eq!(user_metrics.status, 403);
    assert_eq!(user_metrics.json()["error"]["type"], "permission_error");
    let user_admin = gateway
        .request("GET", "/admin/keys", Some(&gateway.user_key), None)
        .await;
    assert_eq!(user_admin.status, 403);
    let admin_metrics = gateway
        .request("GET", "/metrics", Some(&gateway.admin_key), None)
        .await;
    assert_eq!(admin_metrics.status, 200);
    assert!(
        admin_metrics
            .text()
            .contains("moebox_engine_ready{engine=\"0\"} 1")
    );

    gateway
        .ledger
        .revoke_key(gateway.user_key_id, UnixSeconds::now())
        .expect("revoke");
    let revoked = gateway
        .request("GET", "/v1/models", Some(&gateway.user_key), None)
        .await;
    assert_eq!(revoked.status, 401);
    assert_eq!(revoked.json()["error"]["code"], "revoked_api_key");

    let health = gateway.request("GET", "/healthz", None, None).await;
    assert_eq!(health.status, 200);
    let unknown = gateway
        .request("GET", "/v2/anything", Some(&gateway.admin_key), None)
        .await;
    assert_eq!(unknown.status, 404);
    let wrong_method = gateway
        .request(
            "GET",
            "/v1/chat/completions",
            Some(&gateway.admin_key),
            None,
        )
        .await;
    assert_eq!(wrong_method.status, 405);
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(dir.path(), "e0", hello()).await;
    let gateway = TestGateway::start(&[&engine], |_| {}).await;
    let key = Some(gateway.user_key.as_str());
    let malformed = gateway
        .raw(
            "POST",
            "/v1/chat/completions",
            key,
            b"{\"model\": ".to_vec(),
        )
        .await;
    assert_eq!(malformed.status, 400);
    assert_eq!(malformed.json()["error"]["code"], "invalid_json");
    let not_utf8 = gateway
        .raw(
            "POST",
            "/v1/chat/completions",
            key,
            vec![b'{', 0xff, 0xfe, b'}'],
        )
        .await;
    assert_eq!(not_utf8.status, 400);
    let mut wrong_type = chat_body("hi");
    wrong_type["max_tokens"] = "lots".into();
    let reply = gateway
        .request("POST", "/v1/chat/completions", key, Some(wrong_type))
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["param"], "max_tokens");
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .expect("message")
            .contains("max_tokens")
    );
    let mut two = chat_body("hi");
    two["n"] = 2.into();
    let reply = gateway
        .request("POST", "/v1/chat/completions", key, Some(two))
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["param"], "n");
    let mut json_mode = chat_body("hi");
    json_mode["response_format"] = serde_json::json!({"type": "json_object"});
    let reply = gateway
        .request("POST", "/v1/chat/completions", key, Some(json_mode))
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["param"], "response_format");
    assert_eq!(
        engine.generations.load(Ordering::SeqCst),
        0,
        "nothing reached the engine"
    );
}

#[tokio::test]
async fn engine_refusals_keep_their_meaning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(
        dir.path(),
        "e0",
        Behaviour::Refuse(
            400,
            refusal(
                ErrorCode::ContextLengthExceeded,
                "prompt (3 tokens) + max_tokens (9999) exceed the context length of 512",
                Some("max_tokens"),
            ),
        ),
    )
    .await;
    let gateway = TestGateway::start(&[&engine], |_| {}).await;
    let reply = gateway
        .request(
            "POST",
            "/v1/chat/completions",
            Some(&gateway.user_key),
            Some(chat_body("hi")),
        )
        .await;
    assert_eq!(reply.status, 400);
    let error = &reply.json()["error"];
    assert_eq!(error["code"], "context_length_exceeded");
    assert_eq!(error["param"], "max_tokens");
    assert!(error["message"].as_str().expect("message").contains("512"));

    *engine.behaviour.lock().expect("lock") =
        Behaviour::Refuse(503, refusal(ErrorCode::QueueFull, "queue full", None));
    let reply = gateway
        .request(
            "POST",
            "/v1/chat/completions",
            Some(&gateway.user_key),
            Some(chat_body("hi")),
        )
        .await;
    assert_eq!(reply.status, 503);
    assert!(reply.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn no_engine_is_503_with_retry_after_until_one_is_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(dir.path(), "e0", hello()).await;
    engine.ready.store(false, Ordering::SeqCst);
    let gateway = TestGateway::start(&[&engine], |_| {}).await;
    let ready = gateway.request("GET", "/readyz", None, None).await;
    assert_eq!(ready.status, 503);
    assert!(ready.headers.contains_key("retry-after"));
    let reply = gateway
        .request(
            "POST",
            "/v1/chat/completions",
            Some(&gateway.user_key),
            Some(chat_body("hi")),
        )
        .await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.headers.get("retry-after").expect("retry-after"), "2");
    engine.ready.store(true, Ordering::SeqCst);
    gateway.gateway.router().poll_all().await;
    assert_eq!(
        gateway.request("GET", "/readyz", None, None).await.status,
        200
    );
    let reply = gateway
        .request(
            "POST",
            "/v1/chat/completions",
            Some(&gateway.user_key),
            Some(chat_body("hi")),
        )
        .await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn a_dead_engine_fails_over_before_the_first_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dying = FakeEngine::start(dir.path(), "e0", Behaviour::DieAfterStarted).await;
    let healthy = FakeEngine::start(dir.path(), "e1", hello()).await;
    let gateway = TestGateway::start(&[&dying, &healthy], |_| {}).await;
    for stream in [false, true] {
        let mut body = chat_body("hi");
        body["stream"] = stream.into();
        let reply = gateway
            .request(
                "POST",
                "/v1/chat/completions",
                Some(&gateway.user_key),
                Some(body),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(reply.text().contains("wörld"), "{}", reply.text());
        gateway.gateway.router().poll_all().await;
    }
    // An engine whose socket is gone is skipped too.
    healthy.stop();
    dying.stop();
    gateway.gateway.router().poll_all().await;
    let reply = gateway
        .request(
            "POST",
            "/v1/chat/completions",
            Some(&gateway.user_key),
            Some(chat_body("hi")),
        )
        .await;
    assert_eq!(reply.status, 503);
}

#[tokio::test]
async fn requests_go_to_the_engine_with_less_outstanding_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let busy = FakeEngine::start(dir.path(), "e0", hello()).await;
    let idle = FakeEngine::start(dir.path(), "e1", hello()).await;
    *busy.token_delay.lock().expect("lock") = Duration::from_millis(500);
    *idle.token_delay.lock().expect("lock") = Duration::from_millis(500);
    let gateway = Arc::new(TestGateway::start(&[&busy, &idle], |_| {}).await);
    let mut handles = Vec::new();
    for _ in 0..4 {
        let gateway = Arc::clone(&gateway);
        handles.push(tokio::spawn(async move {
            gateway
                .request(
                    "POST",
                    "/v1/chat/completions",
                    Some(&gateway.user_key),
                    Some(chat_body("x")),
                )
                .await
                .status
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for handle in handles {
        assert_eq!(handle.await.expect("joined"), 200);
    }
    assert_eq!(busy.generations.load(Ordering::SeqCst), 2);
    assert_eq!(idle.generations.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_client_that_hangs_up_cancels_the_generation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(dir.path(), "e0", Behaviour::Tokens(vec!["a"; 200])).await;
    *engine.token_delay.lock().expect("lock") = Duration::from_millis(20);
    let gateway = TestGateway::start(&[&engine], |_| {}).await;
    let mut body = chat_body("hi");
    body["stream"] = true.into();
    let response = gateway
        .send(
            "POST",
            "/v1/chat/completions",
            Some(&gateway.user_key),
            body.to_string().into_bytes(),
        )
        .await;
    assert_eq!(response.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(response);
    for _ in 0..100 {
        if engine.cancelled.load(Ordering::SeqCst) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the engine never saw the stream close");
}

#[tokio::test]
async fn per_key_concurrency_is_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(dir.path(), "e0", hello()).await;
    *engine.token_delay.lock().expect("lock") = Duration::from_millis(300);
    let gateway = Arc::new(
        TestGateway::start(&[&engine], |config| {
            config.gateway.per_key_max_concurrent = 1
        })
        .await,
    );
    let first = {
        let gateway = Arc::clone(&gateway);
        tokio::spawn(async move {
            gateway
                .request(
                    "POST",
                    "/v1/chat/completions",
                    Some(&gateway.user_key),
                    Some(chat_body("x")),
                )
                .await
                .status
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = gateway
        .request(
            "POST",
            "/v1/chat/completions",
            Some(&gateway.user_key),
            Some(chat_body("x")),
        )
        .await;
    assert_eq!(second.status, 429);
    assert_eq!(second.json()["error"]["type"], "rate_limit_error");
    assert!(second.headers.contains_key("retry-after"));
    let other_key = gateway
        .request(
            "POST",
            "/v1/chat/completions",
            Some(&gateway.admin_key),
            Some(chat_body("x")),
        )
        .await;
    assert_eq!(other_key.status, 200, "another key is not slowed");
    assert_eq!(first.await.expect("joined"), 200);
}

#[tokio::test]
async fn oversized_bodies_and_heads_are_refused_and_the_server_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(dir.path(), "e0", hello()).await;
    let gateway = TestGateway::start(&[&engine], |config| {
        config.gateway.max_body_bytes = 1_000;
    })
    .await;
    let big = chat_body(&"x".repeat(2_000));
    let reply = gateway
        .request(
            "POST",
            "/v1/chat/completions",
            Some(&gateway.user_key),
            Some(big),
        )
        .await;
    assert_eq!(reply.status, 413);

    let mut stream = tokio::net::TcpStream::connect(gateway.address)
        .await
        .expect("connect");
    let huge_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = stream.write_all(huge_header.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    let health = gateway.request("GET", "/healthz", None, None).await;
    assert_eq!(health.status, 200);
}

#[tokio::test]
async fn a_slow_head_is_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(dir.path(), "e0", hello()).await;
    let gateway = TestGateway::start(&[&engine], |config| {
        config.gateway.header_read_timeout_seconds = 1;
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(gateway.address)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("partial head");
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was not closed");
    assert!(started.elapsed() < Duration::from_secs(3));
    let health = gateway.request("GET", "/healthz", None, None).await;
    assert_eq!(health.status, 200);
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_served() {
    use http_body_util::{BodyExt, Full};
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(dir.path(), "e0", hello()).await;
    let gateway = TestGateway::start(&[&engine], |_| {}).await;
    let stream = tokio::net::TcpStream::connect(gateway.address)
        .await
        .expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(connection);
    let body = chat_body("hi").to_string();
    let request = hyper::Request::post(format!("http://{}/v1/chat/completions", gateway.address))
        .header("authorization", format!("Bearer {}", gateway.user_key))
        .body(Full::new(bytes::Bytes::from(body)))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(json["choices"][0]["message"]["content"], "Hello wörld");
}

#[tokio::test]
async fn quiet_streams_get_keepalive_comments_and_deadlines_cut_generations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(dir.path(), "e0", Behaviour::Tokens(vec!["a", "b"])).await;
    *engine.token_delay.lock().expect("lock") = Duration::from_millis(1_300);
    let gateway = TestGateway::start(&[&engine], |config| {
        config.gateway.sse_keepalive_seconds = 1;
    })
    .await;
    let mut body = chat_body("hi");
    body["stream"] = true.into();
    let reply = gateway
        .request(
            "POST",
            "/v1/chat/completions",
            Some(&gateway.user_key),
            Some(body.clone()),
        )
        .await;
    assert!(
        reply.text().contains("\n\n: keep-alive\n\n"),
        "{}",
        reply.text()
    );
    assert_eq!(reply.sse_data().last().map(String::as_str), Some("[DONE]"));

    let gateway = TestGateway::start(&[&engine], |config| {
        config.gateway.request_deadline_seconds = 1;
    })
    .await;
    let reply = gateway
        .request(
            "POST",
            "/v1/chat/completions",
            Some(&gateway.user_key),
            Some(body),
        )
        .await;
    let data = reply.sse_data();
    let last: serde_json::Value =
        serde_json::from_str(data.last().expect("an event")).expect("JSON");
    assert_eq!(last["error"]["code"], "timeout", "{data:?}");
    let reply = gateway
        .request(
            "POST",
            "/v1/chat/completions",
            Some(&gateway.user_key),
            Some(chat_body("hi")),
        )
        .await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.json()["error"]["type"], "server_error");
    // The cut generations were cancelled in the engine.
    for _ in 0..100 {
        if engine.cancelled.load(Ordering::SeqCst) >= 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the engine never saw the cut streams close");
}

#[tokio::test]
async fn clients_outside_the_allowlist_are_closed_at_accept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(dir.path(), "e0", hello()).await;
    let gateway = TestGateway::start(&[&engine], |config| {
        config.gateway.allowed_clients =
            vec![moebox_config::ClientNetwork::try_from("10.0.0.0/8".to_owned()).expect("network")];
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(gateway.address)
        .await
        .expect("connect");
    let _ = stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was not closed");
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    let metrics = gateway.gateway.metrics().render(&[]);
    assert!(
        metrics.contains("moebox_gateway_connections_refused_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn idle_connections_are_closed_but_busy_ones_are_not() {
    use http_body_util::{BodyExt, Full};
    let dir = tempfile::tempdir().expect("tempdir");
    // Tokens 600 ms apart: a stream quieter than the idle timeout between chunks, and longer
    // than it in all.
    let engine = FakeEngine::start(dir.path(), "e0", Behaviour::Tokens(vec!["a", "b", "c"])).await;
    *engine.token_delay.lock().expect("lock") = Duration::from_millis(600);
    let gateway = TestGateway::start(&[&engine], |config| {
        config.gateway.idle_timeout_seconds = 1;
        config.gateway.sse_keepalive_seconds = 60;
    })
    .await;
    let stream = tokio::net::TcpStream::connect(gateway.address)
        .await
        .expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    let connection = tokio::spawn(connection);
    let mut body = chat_body("hi");
    body["stream"] = true.into();
    let request = hyper::Request::post("/v1/chat/completions")
        .header("host", "x")
        .header("authorization", format!("Bearer {}", gateway.user_key))
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let text = response
        .into_body()
        .collect()
        .await
        .expect("whole stream")
        .to_bytes();
    assert!(
        String::from_utf8_lossy(&text).ends_with("data: [DONE]\n\n"),
        "the busy connection was cut: {}",
        String::from_utf8_lossy(&text)
    );
    // Now idle: the server closes it after the timeout.
    let closed = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(closed.is_ok(), "the idle connection stayed open");
}

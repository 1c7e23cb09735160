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
    let metrics = gateway
        .request("GET", "/metrics", Some(&gateway.admin_key), None)
        .await
        .text();
    for line in [
        "moebox_gateway_time_to_first_token_seconds_count 1",
        // Three text chunks: two gaps between them.
        "moebox_gateway_inter_token_latency_seconds_count 2",
        "moebox_gateway_request_duration_seconds_count 1",
        "moebox_gateway_completion_tokens_total 3",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
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
    let reply = gateway.chat(Some(&gateway.user_key), "hi").await;
    assert_eq!(reply.status, 400);
    let error = &reply.json()["error"];
    assert_eq!(error["code"], "context_length_exceeded");
    assert_eq!(error["param"], "max_tokens");
    assert!(error["message"].as_str().expect("message").contains("512"));

    *engine.behaviour.lock().expect("lock") =
        Behaviour::Refuse(503, refusal(ErrorCode::QueueFull, "queue full", None));
    let reply = gateway.chat(Some(&gateway.user_key), "hi").await;
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
    let reply = gateway.chat(Some(&gateway.user_key), "hi").await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.headers.get("retry-after").expect("retry-after"), "2");
    engine.ready.store(true, Ordering::SeqCst);
    gateway.gateway.router().poll_all().await;
    assert_eq!(
        gateway.request("GET", "/readyz", None, None).await.status,
        200
    );
    let reply = gateway.chat(Some(&gateway.user_key), "hi").await;
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
    let reply = gateway.chat(Some(&gateway.user_key), "hi").await;
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
            gateway.chat(Some(&gateway.user_key), "x").await.status
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
        tokio::spawn(async move { gateway.chat(Some(&gateway.user_key), "x").await.status })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = gateway.chat(Some(&gateway.user_key), "x").await;
    assert_eq!(second.status, 429);
    assert_eq!(second.json()["error"]["type"], "rate_limit_error");
    assert!(second.headers.contains_key("retry-after"));
    let other_key = gateway.chat(Some(&gateway.admin_key), "x").await;
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
    let reply = gateway.chat(Some(&gateway.user_key), "hi").await;
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
    let metrics = gateway.gateway.metrics().render(&[], 0);
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

#[tokio::test]
async fn forging_keys_slows_that_client_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(dir.path(), "e0", hello()).await;
    let gateway = TestGateway::start(&[&engine], |config| {
        config.gateway.auth_failures_per_minute = 3;
    })
    .await;
    let forged = "mbx_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for _ in 0..3 {
        let reply = gateway
            .request("GET", "/v1/models", Some(forged), None)
            .await;
        assert_eq!(reply.status, 401);
    }
    let slowed = gateway
        .request("GET", "/v1/models", Some(forged), None)
        .await;
    assert_eq!(slowed.status, 429, "{}", slowed.text());
    assert_eq!(slowed.json()["error"]["code"], "too_many_auth_failures");
    assert_eq!(
        slowed.headers.get("retry-after").expect("Retry-After"),
        "20"
    );
    // The same address with a good key is slowed too (it could be guessing), ...
    let good = gateway
        .request("GET", "/v1/models", Some(&gateway.user_key), None)
        .await;
    assert_eq!(good.status, 429);
    // ... but unauthenticated routes are not, and neither is another address (127.0.0.2 is
    // loopback too on Linux).
    assert_eq!(
        gateway.request("GET", "/healthz", None, None).await.status,
        200
    );
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.2:0".parse().expect("address"))
        .expect("bind 127.0.0.2");
    let mut stream = socket.connect(gateway.address).await.expect("connect");
    stream
        .write_all(
            format!(
                "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
                 Connection: close\r\n\r\n",
                gateway.user_key
            )
            .as_bytes(),
        )
        .await
        .expect("request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("answer");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn per_key_rate_limits_answer_429_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(dir.path(), "e0", hello()).await;
    let gateway = TestGateway::start(&[&engine], |_| {}).await;
    let mut limited = moebox_ledger::NewKey::new("limited", moebox_ledger::Scope::User);
    limited.requests_per_minute = Some(2);
    let limited = gateway
        .ledger
        .create_key(&limited, UnixSeconds::now())
        .expect("key");
    let key = limited.key.expose().to_owned();
    for _ in 0..2 {
        let reply = gateway.chat(Some(&key), "hi").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let refused = gateway.chat(Some(&key), "hi").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"]["code"], "rate_limit_exceeded");
    assert!(
        refused.text().contains("2 requests per minute"),
        "{}",
        refused.text()
    );
    assert_eq!(
        refused.headers.get("retry-after").expect("Retry-After"),
        "30"
    );
    // Another key is unaffected, and the server goes on.
    let other = gateway.chat(Some(&gateway.user_key), "hi").await;
    assert_eq!(other.status, 200);

    let mut tokens = moebox_ledger::NewKey::new("tokens", moebox_ledger::Scope::User);
    tokens.tokens_per_minute = Some(1);
    let tokens = gateway
        .ledger
        .create_key(&tokens, UnixSeconds::now())
        .expect("key");
    let key = tokens.key.expose().to_owned();
    let first = gateway.chat(Some(&key), "hi").await;
    assert_eq!(first.status, 200, "the first request runs on a full bucket");
    let second = gateway.chat(Some(&key), "hi").await;
    assert_eq!(second.status, 429, "{}", second.text());
    assert!(
        second.text().contains("tokens per minute"),
        "{}",
        second.text()
    );
}

#[tokio::test]
async fn token_caps_name_their_config_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(dir.path(), "e0", hello()).await;
    let gateway = TestGateway::start(&[&engine], |config| {
        config.engine.max_tokens = 64;
        config.gateway.max_output_tokens = 64;
        config.gateway.max_prompt_tokens = 100;
    })
    .await;
    let mut body = chat_body("hi");
    body["max_completion_tokens"] = 65.into();
    let refused = gateway
        .request(
            "POST",
            "/v1/chat/completions",
            Some(&gateway.user_key),
            Some(body),
        )
        .await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["error"]["param"], "max_completion_tokens");
    assert!(
        refused.text().contains("gateway.max_output_tokens"),
        "{}",
        refused.text()
    );
    let mut body = chat_body("hi");
    body["max_tokens"] = 64.into();
    let served = gateway
        .request(
            "POST",
            "/v1/chat/completions",
            Some(&gateway.user_key),
            Some(body),
        )
        .await;
    assert_eq!(served.status, 200);
    let sent = engine
        .last_request
        .lock()
        .expect("lock")
        .clone()
        .expect("request");
    assert_eq!(
        sent.max_prompt_tokens,
        Some(100),
        "the engine enforces the prompt cap"
    );
    assert_eq!(sent.max_tokens, Some(64));
}

#[tokio::test]
async fn admin_api_creates_lists_and_revokes_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(dir.path(), "e0", hello()).await;
    let gateway = TestGateway::start(&[&engine], |_| {}).await;
    let admin = Some(gateway.admin_key.as_str());
    let created = gateway
        .request(
            "POST",
            "/admin/keys",
            admin,
            Some(serde_json::json!({
                "name": "tax-bot", "team": "tax", "requests_per_minute": 30,
                "monthly_token_budget": 1000000
            })),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let json = created.json();
    let key = json["key"].as_str().expect("secret shown once").to_owned();
    assert!(key.starts_with("mbx_"));
    assert_eq!(json["team"], "tax");
    assert_eq!(json["scope"], "user");
    assert_eq!(json["requests_per_minute"], 30);
    let id = json["id"].as_i64().expect("id");

    let served = gateway.chat(Some(&key), "hi").await;
    assert_eq!(served.status, 200);

    let listed = gateway.request("GET", "/admin/keys", admin, None).await;
    assert_eq!(listed.status, 200);
    let text = listed.text();
    assert!(!text.contains(&key), "a listing never holds a secret");
    assert!(
        listed.json()["data"]
            .as_array()
            .expect("list")
            .iter()
            .any(|k| k["id"] == id && k["name"] == "tax-bot")
    );

    let revoked = gateway
        .request("DELETE", &format!("/admin/keys/{id}"), admin, None)
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    let refused = gateway.chat(Some(&key), "hi").await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json()["error"]["code"], "revoked_api_key");

    // Mistakes name the field; the user key cannot touch any of it.
    for (body, param) in [
        (serde_json::json!({"name": ""}), "name"),
        (
            serde_json::json!({"name": "x", "requests_per_minute": "many"}),
            "requests_per_minute",
        ),
    ] {
        let reply = gateway
            .request("POST", "/admin/keys", admin, Some(body))
            .await;
        assert_eq!(reply.status, 400, "{}", reply.text());
        assert_eq!(reply.json()["error"]["param"], param, "{}", reply.text());
    }
    let typo = gateway
        .request(
            "POST",
            "/admin/keys",
            admin,
            Some(serde_json::json!({"name": "x", "rpm": 5})),
        )
        .await;
    assert_eq!(
        typo.status,
        400,
        "unknown fields are refused: {}",
        typo.text()
    );
    assert_eq!(
        gateway
            .request("DELETE", "/admin/keys/999", admin, None)
            .await
            .status,
        404
    );
    let user = Some(gateway.user_key.as_str());
    assert_eq!(
        gateway
            .request("GET", "/admin/keys", user, None)
            .await
            .status,
        403
    );
    assert_eq!(
        gateway
            .request(
                "POST",
                "/admin/keys",
                user,
                Some(serde_json::json!({"name": "me", "admin": true}))
            )
            .await
            .status,
        403
    );
}

/// Every admitted request leaves one usage record, whichever way it ends, durable before the
/// client has its last byte.
#[tokio::test]
async fn every_request_leaves_a_usage_record() {
    use moebox_ledger::{NewKey, Scope, UsageFilter};
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(dir.path(), "e0", hello()).await;
    let gateway = TestGateway::start(&[&engine], |_| {}).await;
    let key = |name: &str, team: &str| {
        let mut new = NewKey::new(name, Scope::User);
        new.team = team.to_owned();
        let created = gateway
            .ledger
            .create_key(&new, UnixSeconds::now())
            .expect("key");
        (created.record.id, created.key.expose().to_owned())
    };
    let (tax_id, tax) = key("tax-bot", "tax");
    let (_, audit) = key("audit-bot", "audit");
    let whole = gateway.chat(Some(&tax), "hi").await;
    assert_eq!(whole.status, 200);
    let mut streamed = chat_body("hi");
    streamed["stream"] = true.into();
    let streamed = gateway
        .request("POST", "/v1/chat/completions", Some(&audit), Some(streamed))
        .await;
    assert_eq!(streamed.status, 200);
    // The record is on disk before the response ends: no waiting here.
    let all = gateway
        .ledger
        .usage_records(
            UnixSeconds(0),
            UnixSeconds(4_000_000_000),
            &UsageFilter::All,
            None,
            100,
        )
        .expect("records")
        .records;
    assert_eq!(all.len(), 2, "{all:?}");
    let tax_record = &all
        .iter()
        .find(|r| r.record.key_id == tax_id)
        .expect("tax record")
        .record;
    assert_eq!(tax_record.team, "tax");
    assert_eq!(tax_record.model, MODEL);
    assert_eq!(tax_record.endpoint, "/v1/chat/completions");
    assert_eq!(
        (tax_record.prompt_tokens, tax_record.completion_tokens),
        (3, 3)
    );
    assert_eq!(tax_record.status, 200);
    assert_eq!(tax_record.finish_reason.as_deref(), Some("stop"));
    assert_eq!(tax_record.engine.as_deref(), Some("e0"));
    assert!(tax_record.time_to_first_token_ms.is_some());
    assert_eq!(
        whole.headers.get("x-request-id").expect("id"),
        tax_record.request_id.as_str()
    );
    let by_team = gateway
        .ledger
        .usage_by_team(UnixSeconds(0), UnixSeconds(4_000_000_000))
        .expect("by team");
    assert_eq!(by_team.len(), 2);

    // An engine refusal after admission is recorded with its status and no tokens.
    *engine.behaviour.lock().expect("lock") = Behaviour::Refuse(
        400,
        refusal(
            ErrorCode::InvalidRequest,
            "temperature out of range",
            Some("temperature"),
        ),
    );
    let refused = gateway.chat(Some(&tax), "hi").await;
    assert_eq!(refused.status, 400);
    let tax_records = gateway
        .ledger
        .usage_records(
            UnixSeconds(0),
            UnixSeconds(4_000_000_000),
            &UsageFilter::Key(tax_id),
            None,
            100,
        )
        .expect("records")
        .records;
    assert_eq!(tax_records.len(), 2);
    // The refusal carries the id of its usage record, so a user can quote it.
    let refused_record = &tax_records
        .iter()
        .find(|r| r.record.status == 400)
        .expect("the refusal's record")
        .record;
    assert_eq!(refused_record.completion_tokens, 0);
    assert_eq!(
        refused.headers.get("x-request-id").expect("refusal's id"),
        refused_record.request_id.as_str()
    );
    // A request refused before admission has no record, but still an id for the logs.
    let unauthenticated = gateway.chat(None, "hi").await;
    assert_eq!(unauthenticated.status, 401);
    let id = unauthenticated
        .headers
        .get("x-request-id")
        .expect("401's id");
    assert_ne!(id, refused_record.request_id.as_str());
}

#[tokio::test]
async fn a_spent_monthly_budget_answers_429_until_the_month_turns() {
    use moebox_ledger::{NewKey, Scope};
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(dir.path(), "e0", hello()).await;
    let gateway = TestGateway::start(&[&engine], |_| {}).await;
    let mut new = NewKey::new("small", Scope::User);
    new.monthly_token_budget = Some(10);
    let key = gateway
        .ledger
        .create_key(&new, UnixSeconds::now())
        .expect("key")
        .key
        .expose()
        .to_owned();
    // 6 tokens per request: the second passes at 6 used, the third finds 12 ≥ 10.
    for _ in 0..2 {
        let reply = gateway.chat(Some(&key), "hi").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let spent = gateway.chat(Some(&key), "hi").await;
    assert_eq!(spent.status, 429, "{}", spent.text());
    assert_eq!(spent.json()["error"]["code"], "insufficient_quota");
    assert!(
        spent.text().contains("monthly budget of 10 tokens"),
        "{}",
        spent.text()
    );
    let other = gateway.chat(Some(&gateway.user_key), "hi").await;
    assert_eq!(other.status, 200, "other keys are unaffected");
}

/// The cookie `name` set by a response, as `name=value` for a Cookie header.
fn set_cookie(reply: &support::Reply, name: &str) -> String {
    reply
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie in {:?}", reply.headers))
        .split(';')
        .next()
        .expect("pair")
        .to_owned()
}

#[tokio::test]
async fn admin_pages_sign_in_with_a_form_and_exports_agree_with_the_ledger() {
    use moebox_ledger::{NewKey, Scope};
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(dir.path(), "e0", hello()).await;
    let gateway = TestGateway::start(&[&engine], |_| {}).await;
    for (team, requests) in [("tax", 3), ("audit", 2)] {
        let mut new = NewKey::new(format!("{team}-bot"), Scope::User);
        new.team = team.to_owned();
        let key = gateway
            .ledger
            .create_key(&new, UnixSeconds::now())
            .expect("key")
            .key
            .expose()
            .to_owned();
        for _ in 0..requests {
            let reply = gateway.chat(Some(&key), "hi").await;
            assert_eq!(reply.status, 200);
        }
    }

    // A browser without a session is sent to the form; an API client gets 401.
    let browser = gateway
        .with_headers("GET", "/admin/", &[("accept", "text/html")], Vec::new())
        .await;
    assert_eq!(browser.status, 303);
    assert_eq!(
        browser.headers.get("location").expect("location"),
        "/admin/login"
    );
    assert_eq!(
        gateway.request("GET", "/admin/", None, None).await.status,
        401
    );

    // The form: its token is bound to a cookie; a post without it is refused.
    let form = gateway
        .with_headers("GET", "/admin/login", &[], Vec::new())
        .await;
    assert_eq!(form.status, 200);
    let login_cookie = set_cookie(&form, "moebox_login");
    let token = login_cookie.split_once('=').expect("pair").1.to_owned();
    assert!(form.text().contains(&token));
    let forged = gateway
        .with_headers(
            "POST",
            "/admin/login",
            &[("content-type", "application/x-www-form-urlencoded")],
            format!("csrf={token}&key={}", gateway.admin_key).into_bytes(),
        )
        .await;
    assert_eq!(
        forged.status,
        403,
        "no double-submit cookie: {}",
        forged.text()
    );
    let user = gateway
        .with_headers(
            "POST",
            "/admin/login",
            &[("cookie", &login_cookie)],
            format!("csrf={token}&key={}", gateway.user_key).into_bytes(),
        )
        .await;
    assert_eq!(user.status, 403);
    assert!(user.text().contains("not an admin key"));
    let signed_in = gateway
        .with_headers(
            "POST",
            "/admin/login",
            &[("cookie", &login_cookie)],
            format!("csrf={token}&key={}", gateway.admin_key).into_bytes(),
        )
        .await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.text());
    let session = set_cookie(&signed_in, "moebox_session");
    let raw_cookie = signed_in
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("moebox_session="))
        .expect("cookie")
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(raw_cookie.contains(attribute), "{raw_cookie}");
    }

    let overview = gateway
        .with_headers("GET", "/admin/", &[("cookie", &session)], Vec::new())
        .await;
    assert_eq!(overview.status, 200, "{}", overview.text());
    let html = overview.text();
    assert!(
        html.contains("$1,200.00"),
        "the worked example's monthly amortisation"
    );
    assert!(
        overview
            .headers
            .get("content-security-policy")
            .expect("CSP")
            .to_str()
            .expect("ascii")
            .contains("default-src 'none'")
    );
    for path in ["/admin/schedule", "/admin/usage", "/admin/gpus"] {
        let page = gateway
            .with_headers("GET", path, &[("cookie", &session)], Vec::new())
            .await;
        assert_eq!(page.status, 200, "{path}: {}", page.text());
    }
    let usage = gateway
        .with_headers("GET", "/admin/usage", &[("cookie", &session)], Vec::new())
        .await
        .text();
    assert!(usage.contains("tax") && usage.contains("audit"), "{usage}");

    // Exports: CSV and JSON from the same query agree with the ledger to the token.
    let admin = Some(gateway.admin_key.as_str());
    let json = gateway
        .request("GET", "/admin/usage.json?group=team", admin, None)
        .await;
    assert_eq!(json.status, 200, "{}", json.text());
    let json = json.json();
    let csv = gateway
        .request("GET", "/admin/usage.csv?group=team", admin, None)
        .await;
    assert_eq!(csv.status, 200);
    assert!(
        csv.headers
            .get("content-disposition")
            .expect("attachment")
            .to_str()
            .expect("ascii")
            .contains(".csv")
    );
    let csv = csv.text();
    let by_team = gateway
        .ledger
        .usage_by_team(UnixSeconds(0), UnixSeconds(4_000_000_000))
        .expect("ledger");
    for team in &by_team {
        let tokens = team.totals.prompt_tokens + team.totals.completion_tokens;
        assert!(tokens > 0);
        assert!(
            csv.lines().any(|line| line.contains(&team.team)
                && line.contains(&format!(",{},", team.totals.prompt_tokens))),
            "{} in\n{csv}",
            team.team
        );
        let row = json["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r.to_string().contains(&team.team))
            .unwrap_or_else(|| panic!("{} in {json}", team.team));
        assert!(
            row.to_string()
                .contains(&team.totals.prompt_tokens.to_string()),
            "{row}"
        );
    }
    let records = gateway
        .request("GET", "/admin/records.csv", admin, None)
        .await
        .text();
    assert_eq!(
        records.lines().count(),
        1 + 5,
        "a header and five requests:\n{records}"
    );
    let bad = gateway
        .request("GET", "/admin/usage.csv?from=yesterday", admin, None)
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["param"], "from");

    // The key API with a session needs the session's CSRF token.
    let no_token = gateway
        .with_headers(
            "POST",
            "/admin/keys",
            &[("cookie", &session), ("content-type", "application/json")],
            br#"{"name":"via-session"}"#.to_vec(),
        )
        .await;
    assert_eq!(no_token.status, 403);
    assert_eq!(no_token.json()["error"]["code"], "csrf_token_mismatch");

    // The cost gauges: this month's cost, and per million tokens now that tokens were used.
    let metrics = gateway.request("GET", "/metrics", admin, None).await.text();
    for gauge in [
        "moebox_cost_month_to_date{currency=\"USD\"}",
        "moebox_cost_per_million_tokens{currency=\"USD\"}",
        "moebox_energy_month_to_date_joules",
        "moebox_alternative_cost_month_to_date{alternative=",
    ] {
        assert!(metrics.contains(gauge), "{gauge} in\n{metrics}");
    }

    // Signing out ends the session.
    let out = gateway
        .with_headers("GET", "/admin/logout", &[("cookie", &session)], Vec::new())
        .await;
    assert_eq!(out.status, 303);
    let after = gateway
        .with_headers("GET", "/admin/", &[("cookie", &session)], Vec::new())
        .await;
    assert_eq!(after.status, 401);
}

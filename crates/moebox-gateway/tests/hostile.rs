//! The hostile HTTP inputs of `docs/security.md`, as raw bytes on a socket: request-smuggling
//! shapes, malformed framing, and an HTTP/2 reset flood. Each case asserts what the gateway
//! answers and that the next, honest request is still served. A reusable suite: every case is
//! one row of `HTTP1_CASES`.

mod support;

use std::time::Duration;

use support::{Behaviour, FakeEngine, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a case may take to be answered or closed.
const CASE_TIMEOUT: Duration = Duration::from_secs(5);

/// (name, bytes sent, the status line the gateway must answer with, or `None` when it must
/// close without answering). `{key}` is replaced by a valid user key: a smuggled request that
/// got through would be answered 200 and show up as a second response.
const HTTP1_CASES: &[(&str, &str, Option<&str>)] = &[
    // RFC 9112 §6.1: with both, Transfer-Encoding wins and the connection must close after
    // the response. hyper does exactly that (it drops Content-Length before the handler sees
    // the request), so the keyless POST is answered 401 and the smuggled, keyed GET never is.
    (
        "Content-Length and Transfer-Encoding together (CL.TE)",
        "POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n",
        Some("HTTP/1.1 401"),
    ),
    (
        "two different Content-Length headers",
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\n{}\r\n",
        Some("HTTP/1.1 400"),
    ),
    (
        "a Content-Length that is not a number",
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4x\r\n\r\n{}{}",
        Some("HTTP/1.1 400"),
    ),
    (
        "Transfer-Encoding other than chunked last (TE.TE obfuscation)",
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        Some("HTTP/1.1 400"),
    ),
    (
        "an obs-fold header continuation line",
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
        Some("HTTP/1.1 400"),
    ),
    (
        "a bad chunk size",
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        Some("HTTP/1.1 400"),
    ),
    (
        "a NUL byte in a header value",
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Null: a\0b\r\n\r\n",
        Some("HTTP/1.1 400"),
    ),
    (
        "a space before the header colon",
        "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n",
        Some("HTTP/1.1 400"),
    ),
    (
        "a request line that is not HTTP",
        "HELLO\r\n\r\n",
        Some("HTTP/1.1 400"),
    ),
    (
        "HTTP/0.9-style request line",
        "GET /healthz\r\n\r\n",
        Some("HTTP/1.1 400"),
    ),
    (
        "an unknown HTTP version",
        "GET /healthz HTTP/3.7\r\nHost: x\r\n\r\n",
        Some("HTTP/1.1 400"),
    ),
    (
        "invalid UTF-8 in the JSON body",
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Length: 13\r\nConnection: close\r\n\r\n{\"model\":\"\u{ff}\"}",
        Some("HTTP/1.1 400"),
    ),
    (
        "a body longer than Content-Length says (the rest is a second request)",
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n",
        Some("HTTP/1.1 401"),
    ),
];

async fn exchange(gateway: &TestGateway, bytes: &[u8]) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(gateway.address)
        .await
        .expect("connect");
    let _ = stream.write_all(bytes).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(CASE_TIMEOUT, stream.read_to_end(&mut answer)).await;
    answer
}

#[tokio::test]
async fn http1_smuggling_and_framing_attacks_are_refused_and_the_server_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(dir.path(), "e0", Behaviour::Tokens(vec!["ok"])).await;
    let gateway = TestGateway::start(&[&engine], |_| {}).await;
    for (name, request, expected) in HTTP1_CASES {
        let request = request.replace("{key}", &gateway.user_key);
        // The invalid-UTF-8 case holds a byte that `str` cannot: `\u{ff}` above is the char
        // U+00FF; send it as the single byte 0xff.
        let bytes: Vec<u8> = request
            .chars()
            .flat_map(|c| {
                if c == '\u{ff}' {
                    vec![0xff]
                } else {
                    c.to_string().into_bytes()
                }
            })
            .collect();
        let answer = exchange(&gateway, &bytes).await;
        let text = String::from_utf8_lossy(&answer);
        match expected {
            Some(status) => assert!(text.starts_with(status), "{name}: got {text:?}"),
            None => assert!(answer.is_empty(), "{name}: got {text:?}"),
        }
        // Whatever came back, no smuggled request was answered: exactly one status line.
        assert_eq!(
            text.matches("HTTP/1.1 ").count(),
            1,
            "{name}: more than one response: {text:?}"
        );
        let health = gateway.request("GET", "/healthz", None, None).await;
        assert_eq!(health.status, 200, "{name}: the server stopped serving");
    }
    assert_eq!(
        engine.generations.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// CVE-2023-44487: a client that opens and resets streams as fast as it can gets its
/// connection closed (GOAWAY), and the server serves the next client.
#[tokio::test]
async fn an_http2_rapid_reset_flood_is_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = FakeEngine::start(dir.path(), "e0", Behaviour::Tokens(vec!["ok"])).await;
    let gateway = TestGateway::start(&[&engine], |_| {}).await;
    let stream = tokio::net::TcpStream::connect(gateway.address)
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let connection_done = &connection;
    let mut sent = 0;
    for _ in 0..10_000 {
        let request = hyper::Request::get("http://x/v1/models")
            .header("authorization", format!("Bearer {}", gateway.user_key))
            .body(())
            .expect("request");
        match client.send_request(request, true) {
            Ok((response, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                drop(response);
                sent += 1;
            }
            Err(_) => break,
        }
        // HEADERS and RST_STREAM leave in the same write, many pairs at a time: the server
        // reads streams that were reset before it could accept them.
        if sent % 100 == 0 {
            tokio::task::yield_now().await;
            if connection_done.is_finished() {
                break;
            }
        }
    }
    let ended = tokio::time::timeout(CASE_TIMEOUT, connection).await;
    assert!(
        matches!(ended, Ok(Ok(_))),
        "the flooding connection stayed open after {sent} resets"
    );
    assert!(sent < 10_000, "all 10,000 resets were accepted");
    let health = gateway.request("GET", "/healthz", None, None).await;
    assert_eq!(health.status, 200);
}

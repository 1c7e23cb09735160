//! `moebox up` as its users see it: the real binary on the bundled model, in a temporary data
//! folder on a free port, driven over HTTP like curl and the OpenAI SDK drive it.

mod gateway_http;
mod harness;
#[path = "../../../tests/support/reference.rs"]
mod reference;

use std::process::Command;

use gateway_http::Reply;
use harness::Up;
use serde_json::{Value, json};

const MODEL: &str = "tiny-moe";
const CANARY_PROMPT: &str = "CANARY-PROMPT-5d1e0a7b";

/// `up` on the bundled model (found the way a user's `moebox up` finds it), logging every line
/// of every component at the most talkative level; the folder lives as long as the test.
fn start() -> (tempfile::TempDir, Up) {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = Up::start(dir.path(), &[], "trace");
    (dir, up)
}

fn chat(content: &str) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 8,
        "temperature": 0,
    })
}

fn assert_error(reply: &Reply, status: u16, kind: &str) -> Value {
    assert_eq!(
        reply.status,
        status,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let error = reply.json()["error"].clone();
    assert_eq!(error["type"], kind, "{error}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    error
}

#[test]
fn up_serves_the_openai_api_with_keys_and_errors() {
    let (_dir, up) = start();
    let user = up.user_key.as_str();

    let reply = up.post("/v1/chat/completions", user, &chat("Hello"));
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let whole = reply.json();
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["model"], MODEL);
    let text = whole["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_owned();
    assert!(whole["usage"]["prompt_tokens"].as_u64().expect("prompt") > 0);
    assert_eq!(
        whole["usage"]["total_tokens"],
        whole["usage"]["prompt_tokens"].as_u64().expect("p")
            + whole["usage"]["completion_tokens"].as_u64().expect("c")
    );

    // Streamed, greedy: the same text in pieces, then finish, usage and [DONE].
    let mut streamed = chat("Hello");
    streamed["stream"] = true.into();
    streamed["stream_options"] = json!({"include_usage": true});
    let reply = up.post("/v1/chat/completions", user, &streamed);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    let data = reply.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk JSON"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(joined, text, "streamed and whole greedy output differ");
    let usage = chunks.last().expect("usage chunk");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], whole["usage"]);

    let completion = up.post(
        "/v1/completions",
        user,
        &json!({"model": MODEL, "prompt": "The balance sheet", "max_tokens": 4}),
    );
    assert_eq!(completion.status, 200);
    assert_eq!(completion.json()["object"], "text_completion");
    assert_eq!(completion.json()["usage"]["completion_tokens"], 4);

    let models = up.request("GET", "/v1/models", Some(user), None);
    assert_eq!(models.status, 200);
    assert_eq!(models.json()["data"][0]["id"], MODEL);
    let model = up.request("GET", &format!("/v1/models/{MODEL}"), Some(user), None);
    assert_eq!(model.json()["id"], MODEL);

    // Errors.
    assert_error(
        &up.request("POST", "/v1/chat/completions", None, Some(b"{}")),
        401,
        "authentication_error",
    );
    assert_error(
        &up.request("GET", "/metrics", Some(user), None),
        403,
        "permission_error",
    );
    let metrics = up.request("GET", "/metrics", Some(&up.admin_key), None);
    assert_eq!(metrics.status, 200);
    let malformed = up.request(
        "POST",
        "/v1/chat/completions",
        Some(user),
        Some(b"{\"model\": \"tiny-moe\", \"messages\": ["),
    );
    assert_error(&malformed, 400, "invalid_request_error");
    let mut wrong_type = chat("Hello");
    wrong_type["temperature"] = "warm".into();
    let error = assert_error(
        &up.post("/v1/chat/completions", user, &wrong_type),
        400,
        "invalid_request_error",
    );
    assert_eq!(error["param"], "temperature");
    assert!(
        error["message"]
            .as_str()
            .expect("message")
            .contains("temperature")
    );
    let mut two = chat("Hello");
    two["n"] = 2.into();
    let error = assert_error(
        &up.post("/v1/chat/completions", user, &two),
        400,
        "invalid_request_error",
    );
    assert_eq!(error["param"], "n");
    let mut too_long = chat("Hello");
    too_long["max_tokens"] = 100_000.into();
    let error = assert_error(
        &up.post("/v1/chat/completions", user, &too_long),
        400,
        "invalid_request_error",
    );
    assert_eq!(error["code"], "context_length_exceeded");
    assert_eq!(error["param"], "max_tokens");
    // The fixture's context length, named in the message.
    assert!(
        error["message"].as_str().expect("message").contains("512"),
        "{error}"
    );

    // `moebox keys` against the running appliance: a new key works, and stops working the
    // moment it is revoked.
    let created = up.keys(&["create", "--name", "e2e", "--team", "audit"]);
    let key = String::from_utf8(created.stdout).expect("utf-8");
    let key = key.trim();
    assert!(key.starts_with("mbx_") && !key.contains('\n'), "{key:?}");
    assert_eq!(up.request("GET", "/v1/models", Some(key), None).status, 200);
    let listed = up.keys(&["list", "--json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("list JSON");
    let id = listed
        .as_array()
        .expect("array")
        .iter()
        .find(|k| k["name"] == "e2e")
        .and_then(|k| k["id"].as_i64())
        .expect("the new key is listed");
    assert!(!String::from_utf8_lossy(&up.keys(&["list"]).stdout).contains(&key[12..]));
    up.keys(&["revoke", &id.to_string()]);
    let revoked = assert_error(
        &up.request("GET", "/v1/models", Some(key), None),
        401,
        "authentication_error",
    );
    assert_eq!(revoked["code"], "revoked_api_key");
}

#[test]
fn logs_never_hold_prompts_or_keys() {
    let (_dir, up) = start();
    let created = up.keys(&["create", "--name", "canary"]);
    let canary_key = String::from_utf8(created.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    // Whole, streamed, completion, a stop sequence, a wrongly typed field, a refused prompt.
    let mut requests = vec![chat(CANARY_PROMPT)];
    let mut streamed = chat(CANARY_PROMPT);
    streamed["stream"] = true.into();
    requests.push(streamed);
    requests.push(
        json!({"model": MODEL, "prompt": CANARY_PROMPT, "max_tokens": 4,
                         "stop": [CANARY_PROMPT]}),
    );
    let mut wrong = chat(CANARY_PROMPT);
    wrong["max_tokens"] = CANARY_PROMPT.into();
    requests.push(wrong);
    let mut too_long = chat(CANARY_PROMPT);
    too_long["max_tokens"] = 100_000.into();
    requests.push(too_long);
    for body in &requests {
        let path = if body.get("prompt").is_some() {
            "/v1/completions"
        } else {
            "/v1/chat/completions"
        };
        let reply = up.post(path, &canary_key, body);
        assert!(matches!(reply.status, 200 | 400), "{}", reply.status);
    }
    // A forged key and a revoked one are refused without being logged either.
    let forged = format!("mbx_{CANARY_PROMPT}");
    assert_eq!(
        up.request("GET", "/v1/models", Some(&forged), None).status,
        401
    );
    let log = up.log();
    assert!(
        log.contains("moebox_gateway::audit"),
        "the audit lines are missing, so the log was not captured:\n{log}"
    );
    assert!(!log.contains(CANARY_PROMPT), "a prompt reached the logs");
    assert!(!log.contains(&canary_key), "a key reached the logs");
    assert!(
        !log.contains(&canary_key[12..]),
        "part of a key reached the logs"
    );
}

#[test]
fn the_openai_python_sdk_works_against_up() {
    let (_dir, up) = start();
    let script = reference::repo_root().join("tests/fixtures/openai_client.py");
    let output = Command::new(reference::reference_python())
        .arg(&script)
        .arg(format!("http://{}/v1", up.address))
        .arg(&up.user_key)
        .arg(MODEL)
        .output()
        .expect("run the OpenAI client");
    assert!(
        output.status.success(),
        "{} failed:\n{}\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("the script's JSON");
    assert_eq!(report["chat"]["finish_reason"], "length");
    assert!(
        report["chat"]["completion_tokens"]
            .as_u64()
            .expect("tokens")
            > 0
    );
    assert_eq!(report["stream"]["text"], report["chat"]["text"]);
    assert!(report["stream"]["chunks"].as_u64().expect("chunks") > 1);
    assert_eq!(
        report["stream"]["usage_total"],
        report["chat"]["total_tokens"]
    );
    assert_eq!(report["completion"]["object"], "text_completion");
    assert_eq!(report["models"], json!([MODEL]));
    assert_eq!(report["errors"]["bad_key"], "AuthenticationError 401");
    assert_eq!(report["errors"]["n"], "BadRequestError 400 n");
    assert_eq!(
        report["errors"]["context"],
        "BadRequestError 400 max_tokens"
    );
    assert_eq!(report["errors"]["model"], "NotFoundError 404 model");
}

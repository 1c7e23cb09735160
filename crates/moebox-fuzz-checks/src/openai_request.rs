//! Request JSON → [`ValidatedGeneration`], for both endpoints.
//!
//! Properties: an accepted request respects every limit `moebox_gateway::openai` documents
//! and reaches the engine unchanged (its engine request survives the JSON trip to the
//! engine); a refused one is a 400 with a message, and a `param` unless the body is not JSON
//! at all; parsing is deterministic.

use moebox_gateway::{
    error::ApiError,
    openai::{
        self, Endpoint, MAX_MESSAGES, MAX_PENALTY, MAX_STOP_BYTES, MAX_STOP_SEQUENCES,
        MAX_TEMPERATURE, ValidatedGeneration,
    },
};
use moebox_protocol::{GenerateRequest, Prompt};

pub fn check(data: &[u8]) {
    for (endpoint, parse) in [
        (
            Endpoint::ChatCompletions,
            openai::parse_chat as fn(&[u8]) -> Result<ValidatedGeneration, ApiError>,
        ),
        (Endpoint::Completions, openai::parse_completion),
    ] {
        let result = parse(data);
        assert_eq!(result, parse(data), "parsing is not deterministic");
        match result {
            Ok(request) => accepted(endpoint, &request),
            Err(error) => refused(&error),
        }
    }
}

fn accepted(endpoint: Endpoint, request: &ValidatedGeneration) {
    assert_eq!(request.endpoint, endpoint);
    assert!(!request.model.is_empty(), "accepted without a model");
    assert!(
        matches!(
            request.max_tokens_param,
            "max_tokens" | "max_completion_tokens"
        ),
        "max_tokens_param {:?}",
        request.max_tokens_param
    );
    let engine = &request.request;
    assert_ne!(engine.max_tokens, Some(0), "max_tokens 0 accepted");
    if let Some(temperature) = engine.temperature {
        assert!(
            (0.0..=MAX_TEMPERATURE).contains(&temperature),
            "temperature {temperature} accepted"
        );
    }
    if let Some(top_p) = engine.top_p {
        assert!(top_p > 0.0 && top_p <= 1.0, "top_p {top_p} accepted");
    }
    for penalty in [engine.presence_penalty, engine.frequency_penalty]
        .into_iter()
        .flatten()
    {
        assert!(
            (-MAX_PENALTY..=MAX_PENALTY).contains(&penalty),
            "penalty {penalty} accepted"
        );
    }
    assert!(
        engine.stop.len() <= MAX_STOP_SEQUENCES,
        "{} stop sequences accepted",
        engine.stop.len()
    );
    for stop in &engine.stop {
        assert!(
            (1..=MAX_STOP_BYTES).contains(&stop.len()),
            "stop sequence of {} bytes accepted",
            stop.len()
        );
    }
    // What only the gateway's later stages or the engine fill in stays unset here.
    assert!(engine.request_id.is_empty());
    assert_eq!(engine.top_k, None);
    assert_eq!(engine.repetition_penalty, None);
    assert_eq!(engine.max_prompt_tokens, None);
    match (&engine.prompt, endpoint) {
        (Prompt::Chat(messages), Endpoint::ChatCompletions) => {
            assert!(
                (1..=MAX_MESSAGES).contains(&messages.len()),
                "{} messages accepted",
                messages.len()
            );
            for message in messages {
                assert!(
                    matches!(message.role.as_str(), "system" | "user" | "assistant"),
                    "role {:?} reached the engine",
                    message.role
                );
            }
        }
        (Prompt::Tokens(ids), Endpoint::Completions) => {
            assert!(!ids.is_empty(), "an empty token prompt accepted");
        }
        (Prompt::Text(_), Endpoint::Completions) => {}
        (prompt, endpoint) => panic!("{endpoint:?} produced the prompt {prompt:?}"),
    }
    // The engine decodes exactly what the gateway validated.
    let wire = serde_json::to_vec(engine).expect("a validated request serialises");
    let decoded: GenerateRequest =
        serde_json::from_slice(&wire).expect("the engine decodes a validated request");
    assert_eq!(&decoded, engine, "the engine would see another request");
}

fn refused(error: &ApiError) {
    assert_eq!(
        error.shape().status.as_u16(),
        400,
        "a request body error that is not a 400: {error:?}"
    );
    assert!(!error.to_string().is_empty(), "an error without a message");
    match error {
        ApiError::InvalidJson(message) => assert!(!message.is_empty()),
        ApiError::WrongType { .. }
        | ApiError::InvalidValue { .. }
        | ApiError::Unsupported { .. } => {
            let param = error.param().expect("a field error names its field");
            assert!(!param.is_empty(), "an empty param: {error:?}");
        }
        other => panic!("a body parser returned {other:?}"),
    }
    let body = serde_json::to_value(error.body()).expect("the error body serialises");
    assert!(body["error"]["message"].is_string(), "{body}");
}

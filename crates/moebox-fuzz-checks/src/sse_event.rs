//! Generated text → the chunk JSON the gateway streams ([`ResponseMeta::chunk`]) → the SSE
//! frame ([`sse_event`]) → what a client's SSE parser (WHATWG rules) reads back.
//!
//! Properties: exactly one event with exactly one `data` line, whose JSON decodes to the very
//! text and model that went in. So no text a model generates (or a model name a client sends)
//! can end the event early or forge another: `\n\ndata: [DONE]` inside text stays text.

use moebox_gateway::{
    body::sse_event,
    openai::{ChunkPiece, Endpoint, ResponseMeta},
};

/// Separates the model name from the text in an input: a byte that never occurs in UTF-8.
const MODEL_SEPARATOR: u8 = 0xff;

pub fn check(data: &[u8]) {
    let (model, text) = match data.iter().position(|&b| b == MODEL_SEPARATOR) {
        Some(at) => (
            String::from_utf8_lossy(&data[..at]).into_owned(),
            String::from_utf8_lossy(&data[at + 1..]).into_owned(),
        ),
        None => ("m".to_owned(), String::from_utf8_lossy(data).into_owned()),
    };
    for endpoint in [Endpoint::ChatCompletions, Endpoint::Completions] {
        for with_usage_field in [false, true] {
            let meta = ResponseMeta::new(endpoint, "req-1", 1_700_000_000, model.clone());
            let frame = sse_event(&meta.chunk(ChunkPiece::Text(&text), with_usage_field));
            let events = parse_events(&frame);
            assert_eq!(events.len(), 1, "{} events from one frame", events.len());
            let data_lines = &events[0];
            assert_eq!(data_lines.len(), 1, "{} data lines", data_lines.len());
            let chunk: serde_json::Value =
                serde_json::from_str(&data_lines[0]).expect("the data line is the JSON");
            let content = match endpoint {
                Endpoint::ChatCompletions => &chunk["choices"][0]["delta"]["content"],
                Endpoint::Completions => &chunk["choices"][0]["text"],
            };
            assert_eq!(content.as_str(), Some(text.as_str()), "text changed");
            assert_eq!(
                chunk["model"].as_str(),
                Some(model.as_str()),
                "model changed"
            );
            assert_eq!(chunk.get("usage").is_some(), with_usage_field);
        }
    }
}

/// The `data` lines of each event dispatched from `stream`, as the HTML standard's
/// event-stream interpretation reads them: lines end at CRLF, LF or CR; a blank line
/// dispatches; `:` starts a comment; one space after `field:` is dropped. A stream that
/// ends without a blank line dispatches nothing more.
fn parse_events(stream: &[u8]) -> Vec<Vec<String>> {
    let text = std::str::from_utf8(stream).expect("an SSE frame is UTF-8");
    let mut events = Vec::new();
    let mut data = Vec::new();
    let mut rest = text;
    while let Some(end) = rest.find(['\r', '\n']) {
        let line = &rest[..end];
        let after = if rest[end..].starts_with("\r\n") {
            end + 2
        } else {
            end + 1
        };
        rest = &rest[after..];
        if line.is_empty() {
            if !data.is_empty() {
                events.push(std::mem::take(&mut data));
            }
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        if field == "data" {
            data.push(value.to_owned());
        }
    }
    events
}

//! The engine protocol as the gateway decodes it (`moebox_gateway::engine_client`): NDJSON
//! [`Event`] lines split at `\n` with blank lines skipped, and the whole-body answers
//! ([`ErrorBody`], [`Load`], [`Health`]); and the [`GenerateRequest`] the engine decodes.
//!
//! Properties: whatever decodes re-encodes as one line (NDJSON framing holds) and decodes
//! back to the same value.

use moebox_protocol::{ErrorBody, Event, GenerateRequest, Health, Load};
use serde::{Serialize, de::DeserializeOwned};

pub fn check(data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        round_trip::<Event>(line);
    }
    round_trip::<ErrorBody>(data);
    round_trip::<Load>(data);
    round_trip::<Health>(data);
    if let Some(request) = round_trip_value::<GenerateRequest>(data)
        && all_finite(&request)
    {
        round_trip_exact(&request);
    }
}

fn round_trip<T>(bytes: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Some(value) = round_trip_value::<T>(bytes) {
        round_trip_exact(&value);
    }
}

fn round_trip_value<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

fn round_trip_exact<T>(value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let line = serde_json::to_vec(value).expect("a decoded value re-encodes");
    assert!(
        !line.contains(&b'\n'),
        "an encoded value spans lines: {}",
        String::from_utf8_lossy(&line)
    );
    let again: T = serde_json::from_slice(&line).expect("a re-encoded value decodes");
    assert_eq!(&again, value, "the round trip changed the value");
}

/// JSON has no infinity: a number too large for `f32` decodes as infinite and re-encodes as
/// `null`. The engine refuses such values by range (and the gateway never sends them), so
/// the exact round trip is required of finite values only.
fn all_finite(request: &GenerateRequest) -> bool {
    [
        request.temperature,
        request.top_p,
        request.presence_penalty,
        request.frequency_penalty,
        request.repetition_penalty,
    ]
    .into_iter()
    .flatten()
    .all(f32::is_finite)
}

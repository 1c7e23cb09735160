//! The property checks behind moebox's fuzz targets, one function per target.
//!
//! Each function takes arbitrary bytes, drives one parser or writer that faces untrusted or
//! file-controlled input, and panics when a property fails: not only "no panic", but what the
//! parser promises (limits respected, round trips exact, errors that name their field). The
//! same function runs in two places, so the property code exists once:
//!
//! - `fuzz/fuzz_targets/<target>.rs` hands it libFuzzer's inputs (nightly, `cargo fuzz`);
//! - `tests/corpus.rs` runs every committed file of `fuzz/corpus/<target>/` through it on the
//!   stable toolchain, so the seeds and every minimised find are regression tests in CI.

#![forbid(unsafe_code)]

pub mod api_key;
pub mod config_toml;
pub mod engine_event;
pub mod genai_config;
pub mod openai_request;
pub mod sse_event;

/// One fuzz target: its name (the `fuzz/fuzz_targets/` file and `fuzz/corpus/` folder) and
/// its check.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub check: fn(&[u8]),
}

/// Every target; `tests/corpus.rs` requires a non-empty corpus folder for each.
pub const TARGETS: &[Target] = &[
    Target {
        name: "openai_request",
        check: openai_request::check,
    },
    Target {
        name: "api_key",
        check: api_key::check,
    },
    Target {
        name: "sse_event",
        check: sse_event::check,
    },
    Target {
        name: "engine_event",
        check: engine_event::check,
    },
    Target {
        name: "genai_config",
        check: genai_config::check,
    },
    Target {
        name: "config_toml",
        check: config_toml::check,
    },
];

//! libFuzzer entry for `sse_event`; the properties live in
//! `moebox_fuzz_checks::sse_event`, which the corpus regression test runs too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| moebox_fuzz_checks::sse_event::check(data));

//! libFuzzer entry for `openai_request`; the properties live in
//! `moebox_fuzz_checks::openai_request`, which the corpus regression test runs too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| moebox_fuzz_checks::openai_request::check(data));

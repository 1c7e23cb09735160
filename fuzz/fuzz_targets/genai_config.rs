//! libFuzzer entry for `genai_config`; the properties live in
//! `moebox_fuzz_checks::genai_config`, which the corpus regression test runs too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| moebox_fuzz_checks::genai_config::check(data));

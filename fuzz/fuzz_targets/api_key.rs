//! libFuzzer entry for `api_key`; the properties live in
//! `moebox_fuzz_checks::api_key`, which the corpus regression test runs too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| moebox_fuzz_checks::api_key::check(data));

//! libFuzzer entry for `config_toml`; the properties live in
//! `moebox_fuzz_checks::config_toml`, which the corpus regression test runs too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| moebox_fuzz_checks::config_toml::check(data));

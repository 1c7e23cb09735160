//! libFuzzer entry for `engine_event`; the properties live in
//! `moebox_fuzz_checks::engine_event`, which the corpus regression test runs too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| moebox_fuzz_checks::engine_event::check(data));

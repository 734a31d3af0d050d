//! Fuzz target `config_parse`: the checks in `checks/config_parse.rs`, which the corpus
//! replay tests run too.

#![no_main]

#[path = "../checks/config_parse.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));

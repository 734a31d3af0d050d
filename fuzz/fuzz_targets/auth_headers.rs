//! Fuzz target `auth_headers`: the checks in `checks/auth_headers.rs`, which the corpus
//! replay tests run too.

#![no_main]

#[path = "../checks/auth_headers.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));

//! Replays the fuzz corpora of `auth_headers` and `config_parse`
//! (fuzz/corpus/<target>) through the same checks the fuzz targets run, so
//! CI keeps every input the fuzzer found interesting without a fuzzing
//! toolchain.

#[path = "../../fuzz/checks/auth_headers.rs"]
mod auth_headers;
#[path = "../../fuzz/checks/config_parse.rs"]
mod config_parse;
#[path = "../../fuzz/checks/replay.rs"]
mod replay;

#[test]
fn auth_headers_corpus_keeps_its_promises() {
    replay::replay("auth_headers", auth_headers::run);
}

#[test]
fn config_parse_corpus_keeps_its_promises() {
    replay::replay("config_parse", config_parse::run);
}

//! Replays the fuzz corpus of `key_parse` (fuzz/corpus/key_parse) through
//! the same checks the fuzz target runs, so CI keeps every input the fuzzer
//! found interesting without a fuzzing toolchain.

#[path = "../../fuzz/checks/key_parse.rs"]
mod key_parse;
#[path = "../../fuzz/checks/replay.rs"]
mod replay;

#[test]
fn key_parse_corpus_keeps_its_promises() {
    replay::replay("key_parse", key_parse::run);
}

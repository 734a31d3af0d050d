//! Replays the fuzz corpus of `key_parse` (fuzz/corpus/key_parse) through
//! the same checks the fuzz target runs, so CI keeps every input the fuzzer
//! found interesting without a fuzzing toolchain.

#[path = "../../fuzz/checks/key_parse.rs"]
mod key_parse;

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", dir.display()));
    let files: Vec<(PathBuf, Vec<u8>)> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    assert!(!files.is_empty(), "the corpus {} is empty", dir.display());
    files
}

#[test]
fn key_parse_corpus_keeps_its_promises() {
    let files = corpus("key_parse");
    for (path, bytes) in &files {
        let outcome = std::panic::catch_unwind(|| key_parse::run(bytes));
        assert!(
            outcome.is_ok(),
            "{} fails the key_parse checks",
            path.display()
        );
    }
}

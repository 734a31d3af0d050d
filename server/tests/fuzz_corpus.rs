//! Replays the fuzz corpora of `auth_headers` and `config_parse`
//! (fuzz/corpus/<target>) through the same checks the fuzz targets run, so
//! CI keeps every input the fuzzer found interesting without a fuzzing
//! toolchain.

#[path = "../../fuzz/checks/auth_headers.rs"]
mod auth_headers;
#[path = "../../fuzz/checks/config_parse.rs"]
mod config_parse;

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

fn replay(target: &str, check: fn(&[u8])) {
    for (path, bytes) in corpus(target) {
        let outcome = std::panic::catch_unwind(|| check(&bytes));
        assert!(
            outcome.is_ok(),
            "{} fails the {target} checks",
            path.display()
        );
    }
}

#[test]
fn auth_headers_corpus_keeps_its_promises() {
    replay("auth_headers", auth_headers::run);
}

#[test]
fn config_parse_corpus_keeps_its_promises() {
    replay("config_parse", config_parse::run);
}

//! Replays a saved corpus (fuzz/corpus/<target>) through a target's checks
//! as an ordinary test: included with `#[path]` by the crates' corpus tests,
//! so CI keeps every input the fuzzer found without a fuzzing toolchain.

use std::path::PathBuf;

/// Runs `check` on every file of `fuzz/corpus/<target>`, naming the first
/// file it panics on. An empty or missing corpus fails: replaying nothing
/// would pass without checking anything.
pub fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", dir.display()));

    let mut replayed = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&bytes));
        assert!(
            outcome.is_ok(),
            "{} fails the {target} checks",
            path.display()
        );
        replayed += 1;
    }
    assert!(replayed > 0, "the corpus {} is empty", dir.display());
}

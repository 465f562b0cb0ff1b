//! Every input the fuzzers saved (tools/fuzz/corpus/<target>/), replayed on
//! stable through the same target bodies: a crash found once stays fixed.

#[path = "../tools/fuzz/src/targets.rs"]
mod targets;

use std::path::Path;

#[test]
fn every_saved_fuzz_input_is_handled() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/fuzz/corpus");
    for (name, run) in targets::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a corpus entry").path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{name}: the corpus is empty");
        for input in inputs {
            let data = std::fs::read(&input).expect("a corpus file");
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{name}: {} crashed", input.display());
        }
    }
}

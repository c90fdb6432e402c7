//! Replays the fuzz targets' saved inputs on stable, through the very properties the fuzz
//! targets check (`fuzz/src/properties.rs`): the seed corpus (`fuzz/seeds/<target>/`) and every crash input found so far
//! (`fuzz/regressions/<target>/`). `scripts/fuzz.sh` runs the fuzzers themselves.

#[path = "../../fuzz/src/properties.rs"]
mod properties;

use std::path::Path;

/// Runs `check` on every file under `fuzz/seeds/<target>` and `fuzz/regressions/<target>`;
/// returns how many.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for kind in ["seeds", "regressions"] {
        let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        for file in dir {
            let path = file.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{} fails", path.display());
            replayed += 1;
        }
    }
    replayed
}

#[test]
fn request_keys_inputs_replay() {
    assert!(
        replay("request_keys", properties::request_keys) > 0,
        "no seed corpus"
    );
}

#[test]
fn sse_parser_inputs_replay() {
    assert!(
        replay("sse_parser", properties::sse_parser) > 0,
        "no seed corpus"
    );
}

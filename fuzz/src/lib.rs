//! Properties checked by the fuzz targets, and on stable by `tests/it/fuzz_regressions.rs`
//! (which includes `properties.rs` by path), so a crash input replays through the same code.

pub mod properties;

//! Cross-service tests and the `loadgen` benchmark of clickcollect.
//!
//! # Layout
//! - [`bench`]: the benchmark behind `cargo run --release -p e2e --bin loadgen -- SCENARIO`
//!   (quality.md, "Speed"): our figure and its `pgbench` baseline measured in the same run.
//!
//! The cross-service tests in `tests/` run the three services in process with stand-in
//! push services (`tests/common`).

pub mod bench;

//! Cross-service tests and the `loadgen` benchmark of clickcollect.
//!
//! # Layout
//! - [`bench`]: the benchmark behind `cargo run --release -p e2e --bin loadgen -- SCENARIO`
//!   (quality.md, "Speed"): our figure and its `pgbench` baseline measured in the same run.
//! - [`stack`]: the three services in process with stand-in push services, for the
//!   cross-service tests in `tests/`.

pub mod bench;
pub mod stack;

//! # weir-core
//!
//! The parts of the Weir host that parse hostile input and keep the
//! file-system index, without the plugin engine (no wasmtime), so that they
//! build fast and can be fuzzed:
//! - [`index`]: the hash tree of file-system metadata and its arbitration rules.
//! - [`rows`]: agent pushes parsed row by row into index operations.
//! - [`text`]: bounded echoes of input in logs and answers.
//! - [`fuzz`]: the fuzz targets' bodies, with their invariants.
//!
//! `weir-host` re-exports these modules under the same names.

pub mod fuzz;
pub mod index;
pub mod rows;
pub mod text;

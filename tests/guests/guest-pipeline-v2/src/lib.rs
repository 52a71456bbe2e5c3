//! Version 2 of `test.flaky` (see `guest-pipeline`): the same key, with
//! `version: 2` in its output, and `sub=legacy` refused by normalize-params.

/// Which version of the key this is.
pub const VERSION: u32 = 2;

include!("../../guest-pipeline/src/key.rs");

//! Sentinel feedback, any bytes, against an index with a few suspects:
//! parsed update by update, applied, invariants checked after each.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| weir_core::fuzz::feedback(data));

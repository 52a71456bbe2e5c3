//! An agent push, any bytes: parsed row by row (both naming variants), each
//! operation applied to an index as the apply thread does, the index's
//! invariants checked after every operation, and views written.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| weir_core::fuzz::push(data));

//! An operation of a cluster's ingest log, any bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| weir_core::fuzz::ingest_op(data));

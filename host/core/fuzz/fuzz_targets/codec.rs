//! A stored event-log record, any bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| weir_core::fuzz::codec(data));

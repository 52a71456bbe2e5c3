//! A `POST /v1/events` body, any bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| weir_core::fuzz::events(data));

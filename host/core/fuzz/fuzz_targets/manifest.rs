//! A plugin manifest (`NAME.toml`), any bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| weir_core::fuzz::manifest(data));

//! Path normalization, glob matching and bounded echoes, any text: the
//! first line is a glob pattern, the rest a path.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| weir_core::fuzz::paths(data));

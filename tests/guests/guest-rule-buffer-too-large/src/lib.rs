//! A buffer size above 1000.
use weir_sdk::prelude::*;

#[derive(Default)]
pub struct K;
impl EventKey for K {
    fn definition(&self) -> KeyDefinition {
        KeyDefinition::new("rule.big_buffer", "x.y").buffer_size(1001)
    }
}

weir_sdk::export_keys!(K);

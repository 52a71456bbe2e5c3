//! A key with an empty event type.
use weir_sdk::prelude::*;

#[derive(Default)]
pub struct K;
impl EventKey for K {
    fn definition(&self) -> KeyDefinition {
        KeyDefinition::new("rule.no_type", "")
    }
}

weir_sdk::export_keys!(K);

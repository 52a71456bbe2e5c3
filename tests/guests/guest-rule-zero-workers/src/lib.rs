//! Zero workers.
use weir_sdk::prelude::*;

#[derive(Default)]
pub struct K;
impl EventKey for K {
    fn definition(&self) -> KeyDefinition {
        KeyDefinition::new("rule.no_workers", "x.y").workers(0)
    }
}

weir_sdk::export_keys!(K);

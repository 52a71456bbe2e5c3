//! A native schema together with a process function.
use weir_sdk::prelude::*;

#[derive(Default)]
pub struct K;
impl EventKey for K {
    fn definition(&self) -> KeyDefinition {
        KeyDefinition::new("rule.native_process", "x.y").implements(Functions::PROCESS)
    }
}

weir_sdk::export_keys!(K);

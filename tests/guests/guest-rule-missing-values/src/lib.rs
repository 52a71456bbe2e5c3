//! An enum and a multi parameter without values.
use weir_sdk::prelude::*;

#[derive(Default)]
pub struct K;
impl EventKey for K {
    fn definition(&self) -> KeyDefinition {
        KeyDefinition::new("rule.no_values", "x.y")
            .param(ParamDef::enumeration("mode", "A mode", &[]))
            .param(ParamDef::multi("tags", "Tags", &[]))
    }
}

weir_sdk::export_keys!(K);

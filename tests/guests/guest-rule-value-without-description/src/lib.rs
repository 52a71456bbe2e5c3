//! An enum value without a description.
use weir_sdk::prelude::*;

#[derive(Default)]
pub struct K;
impl EventKey for K {
    fn definition(&self) -> KeyDefinition {
        KeyDefinition::new("rule.undescribed", "x.y").param(ParamDef::enumeration(
            "mode",
            "A mode",
            &[("fast", "Fast"), ("slow", " ")],
        ))
    }
}

weir_sdk::export_keys!(K);

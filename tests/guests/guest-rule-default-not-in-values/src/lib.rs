//! A default that is not among the values.
use weir_sdk::prelude::*;

#[derive(Default)]
pub struct K;
impl EventKey for K {
    fn definition(&self) -> KeyDefinition {
        KeyDefinition::new("rule.bad_default", "x.y").param(
            ParamDef::enumeration("mode", "A mode", &[("fast", "Fast"), ("slow", "Slow")])
                .default_value("medium"),
        )
    }
}

weir_sdk::export_keys!(K);

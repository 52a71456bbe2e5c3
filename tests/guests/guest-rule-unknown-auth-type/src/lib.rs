//! An auth type other than user or bot.
use weir_sdk::prelude::*;

#[derive(Default)]
pub struct K;
impl EventKey for K {
    fn definition(&self) -> KeyDefinition {
        KeyDefinition::new("rule.auth", "x.y")
            .auth_type("user")
            .auth_type("robot")
    }
}

weir_sdk::export_keys!(K);

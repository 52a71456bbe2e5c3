//! Defines a key the example plugin `fs_large_files` already registers,
//! plus a fine one (which must not be registered either).
use weir_sdk::prelude::*;

#[derive(Default)]
pub struct Taken;
impl EventKey for Taken {
    fn definition(&self) -> KeyDefinition {
        KeyDefinition::new("fs.large_files", "fs.*")
    }
}

#[derive(Default)]
pub struct Fine;
impl EventKey for Fine {
    fn definition(&self) -> KeyDefinition {
        KeyDefinition::new("rule.innocent_bystander", "x.y")
    }
}

weir_sdk::export_keys!(Taken, Fine);

//! Two keys of one plugin share a name.
use weir_sdk::prelude::*;

#[derive(Default)]
pub struct A;
impl EventKey for A {
    fn definition(&self) -> KeyDefinition {
        KeyDefinition::new("rule.twice", "x.y")
    }
}

#[derive(Default)]
pub struct B;
impl EventKey for B {
    fn definition(&self) -> KeyDefinition {
        KeyDefinition::new("rule.twice", "x.z")
    }
}

weir_sdk::export_keys!(A, B);

//! Every `bindgen!` of the host lives here: the `weir:plugin/plugin` world,
//! generated from `wit/` at the repository root.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
});

pub use weir::plugin::host;
pub use weir::plugin::types;

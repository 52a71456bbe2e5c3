//! Every `bindgen!` of the host lives here: the `weir:plugin/plugin` world,
//! generated from `wit/` at the repository root.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
});

pub use weir::plugin::host;
pub use weir::plugin::types;

impl From<&weir_core::event::Event> for types::RawEvent {
    /// The event as plugins receive it.
    fn from(e: &weir_core::event::Event) -> Self {
        Self {
            event_id: e.new.id.clone(),
            event_type: e.new.event_type.clone(),
            source_time: e.new.source_time.clone(),
            timestamp_ms: e.timestamp_ms,
            payload: e.new.payload.clone(),
        }
    }
}

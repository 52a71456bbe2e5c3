//! What producers send: agent pushes parsed row by row into index
//! operations ([`rows`]), and raw events for the bus ([`events`]).

pub use weir_core::producer as events;
pub use weir_core::rows;

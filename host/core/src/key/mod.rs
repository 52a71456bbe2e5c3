//! The EventKey contract as the host sees it, whoever implements a key: its
//! definition (key, event type, typed params, functions), the params it is
//! called with, what `process` decides, how a call can fail, and the
//! [`Runner`] trait the registry and the pipeline call keys through. The
//! engine converts these from and to the WIT records inside `engine/`.

mod definition;
mod fault;
mod runner;

pub use definition::*;
pub use fault::{FaultKind, PluginFault};
pub use runner::{Outcome, Params, Runner};

//! # weir-sdk: write Weir EventKeys in Rust
//!
//! A plugin crate defines one type per EventKey, implements [`EventKey`] for
//! it and exports every key of the crate with [`export_keys!`]. Built with
//! `cargo build --target wasm32-wasip2 --release`, the crate becomes a
//! WebAssembly component that `weir serve` loads from its plugin directory.
//!
//! ```no_run
//! use weir_sdk::prelude::*;
//!
//! #[derive(Default)]
//! struct Big;
//!
//! impl EventKey for Big {
//!     fn definition(&self) -> KeyDefinition {
//!         KeyDefinition::new("demo.big", "fs.*")
//!             .description("Files above a size")
//!             .param(ParamDef::int("min_size", "Smallest size in bytes").required())
//!             .custom_schema(r#"{"type":"object"}"#)
//!             .implements(Functions::MATCHES | Functions::PROCESS)
//!     }
//!     fn matches(&self, event: &RawEvent, params: &Params) -> bool {
//!         let min = params.int("min_size").unwrap_or(i64::MAX);
//!         event.field_i64("size").is_some_and(|size| size >= min)
//!     }
//!     fn process(&self, _api: &dyn Api, event: &RawEvent, _params: &Params) -> Result<Outcome, Error> {
//!         Ok(Outcome::Emit(event.payload.clone()))
//!     }
//! }
//!
//! weir_sdk::export_keys!(Big);
//! ```
//!
//! Keys are plain Rust: unit-test them natively with `cargo test` and a
//! [`testing::MockApi`]; no WebAssembly is involved until the component build.

#![warn(missing_docs)]

extern crate self as weir_sdk;

mod api;
mod definition;
mod error;
mod event;
mod log;
mod params;
pub mod testing;

pub use api::{Api, ApiError, HostApi};
pub use definition::{Functions, KeyDefinition, ParamDef, ParamType, ParamValue, Schema};
pub use error::Error;
pub use event::{Outcome, RawEvent};
pub use log::{LogLevel, log};
pub use params::{ParamError, Params};

/// Re-exported so that plugin crates need no direct dependency.
pub use serde_json;
/// Re-exported so that plugin crates can use the raw bindings if they must.
pub use wit_bindgen;

/// Everything a plugin author usually needs, in one `use`.
pub mod prelude {
    pub use crate::{
        Api, ApiError, Error, EventKey, Functions, KeyDefinition, Outcome, ParamDef, ParamType,
        Params, RawEvent, Schema,
    };
}

/// Raw bindings generated from the `weir:plugin` WIT package.
///
/// Plugin authors rarely touch these; [`export_keys!`] wires them up.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_component",
        default_bindings_module: "weir_sdk::bindings",
        runtime_path: "weir_sdk::wit_bindgen::rt",
    });
}

/// One EventKey: its definition plus the optional pipeline functions.
///
/// The host only calls the functions the definition declares in
/// [`KeyDefinition::implements`]; the defaults here are what a key that does
/// not declare a function behaves like.
pub trait EventKey: Send + Sync + 'static {
    /// The key's definition. Called once when the host loads the plugin.
    fn definition(&self) -> KeyDefinition;

    /// Canonicalise parameters before the subscription identity is computed
    /// (trim, lowercase, resolve aliases). Mutates `params` in place.
    fn normalize_params(&self, _api: &dyn Api, _params: &mut Params) -> Result<(), Error> {
        Ok(())
    }

    /// Cheap synchronous filter run on every event before `process`.
    /// It gets no [`Api`]: the host refuses API calls while it runs.
    fn matches(&self, _event: &RawEvent, _params: &Params) -> bool {
        true
    }

    /// Transform one event into the consumer's output, or drop it.
    fn process(
        &self,
        _api: &dyn Api,
        event: &RawEvent,
        _params: &Params,
    ) -> Result<Outcome, Error> {
        Ok(Outcome::Emit(event.payload.clone()))
    }

    /// Runs once when the first consumer of `subscription_id` arrives.
    fn pre_consume(
        &self,
        _api: &dyn Api,
        _subscription_id: &str,
        _params: &Params,
    ) -> Result<(), Error> {
        Ok(())
    }

    /// Runs once when the last consumer of `subscription_id` leaves. Should be
    /// idempotent: the host may retry it after a fault.
    fn cleanup(
        &self,
        _api: &dyn Api,
        _subscription_id: &str,
        _params: &Params,
    ) -> Result<(), Error> {
        Ok(())
    }
}

/// Exports every listed key type (each `Default + EventKey`) as the crate's
/// component implementation. Use it once per plugin crate.
///
/// On non-wasm targets it expands to nothing, so the crate still builds and
/// tests natively.
#[macro_export]
macro_rules! export_keys {
    ($($key:ty),+ $(,)?) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __WeirComponent;

            fn __weir_keys() -> &'static $crate::__private::KeySet {
                static KEYS: ::std::sync::OnceLock<$crate::__private::KeySet> = ::std::sync::OnceLock::new();
                KEYS.get_or_init(|| {
                    $crate::__private::KeySet::new(vec![
                        $(::std::boxed::Box::new(<$key as ::core::default::Default>::default())
                            as ::std::boxed::Box<dyn $crate::EventKey>),+
                    ])
                })
            }

            impl $crate::__private::Guest for __WeirComponent {
                fn describe() -> ::std::vec::Vec<$crate::__private::wit::KeyDefinition> {
                    __weir_keys().describe()
                }
                fn normalize_params(key: ::std::string::String, params: $crate::__private::wit::Params)
                    -> ::core::result::Result<$crate::__private::wit::Params, ::std::string::String> {
                    __weir_keys().normalize_params(&key, params)
                }
                fn matches(key: ::std::string::String, params: $crate::__private::wit::Params, event: $crate::__private::wit::RawEvent) -> bool {
                    __weir_keys().matches(&key, params, event)
                }
                fn matches_batch(key: ::std::string::String, params: $crate::__private::wit::Params, events: ::std::vec::Vec<$crate::__private::wit::RawEvent>) -> ::std::vec::Vec<bool> {
                    __weir_keys().matches_batch(&key, params, events)
                }
                fn process(key: ::std::string::String, params: $crate::__private::wit::Params, event: $crate::__private::wit::RawEvent)
                    -> ::core::result::Result<$crate::__private::wit::Outcome, ::std::string::String> {
                    __weir_keys().process(&key, params, event)
                }
                fn process_batch(key: ::std::string::String, params: $crate::__private::wit::Params, events: ::std::vec::Vec<$crate::__private::wit::RawEvent>)
                    -> ::std::vec::Vec<::core::result::Result<$crate::__private::wit::Outcome, ::std::string::String>> {
                    __weir_keys().process_batch(&key, params, events)
                }
                fn pre_consume(key: ::std::string::String, subscription_id: ::std::string::String, params: $crate::__private::wit::Params)
                    -> ::core::result::Result<(), ::std::string::String> {
                    __weir_keys().pre_consume(&key, &subscription_id, params)
                }
                fn cleanup(key: ::std::string::String, subscription_id: ::std::string::String, params: $crate::__private::wit::Params)
                    -> ::core::result::Result<(), ::std::string::String> {
                    __weir_keys().cleanup(&key, &subscription_id, params)
                }
            }

            $crate::bindings::export_component!(__WeirComponent with_types_in $crate::bindings);
        };
    };
}

#[doc(hidden)]
pub mod __private;

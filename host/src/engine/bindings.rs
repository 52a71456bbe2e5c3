//! Every `bindgen!` of the host lives here: the `weir:plugin/plugin` world,
//! generated from `wit/` at the repository root, and the conversions
//! between the host's own types and the WIT records.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
});

pub use weir::plugin::host;
pub use weir::plugin::types;

use wasmtime::Store;
use wasmtime::component::{ComponentType, Lower};
use weir_core::event::Event;
use weir_core::key::{
    Function, KeyDefinition, OutputSchema, ParamDef, ParamType, ParamValue, Params,
};

use super::state::StoreState;

/// A `raw-event` lowered straight from the host's [`Event`]: its strings are
/// borrowed, so a call copies them once, into the guest's memory, and never
/// into an intermediate record on the host.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(super) struct EventRef<'a> {
    #[component(name = "event-id")]
    event_id: &'a str,
    #[component(name = "event-type")]
    event_type: &'a str,
    #[component(name = "source-time")]
    source_time: Option<&'a str>,
    #[component(name = "timestamp-ms")]
    timestamp_ms: u64,
    payload: &'a str,
}

impl<'a> From<&'a Event> for EventRef<'a> {
    fn from(e: &'a Event) -> Self {
        Self {
            event_id: &e.new.id,
            event_type: &e.new.event_type,
            source_time: e.new.source_time.as_deref(),
            timestamp_ms: e.timestamp_ms,
            payload: &e.new.payload,
        }
    }
}

/// The `process` answer as the guest gives it.
pub(super) type ProcessResult = Result<types::Outcome, String>;

// The signatures the borrowed calls below use, checked against a
// component's exports once when it is loaded (`check_borrowed_calls`), so
// that each call can skip the check: every instance of a plugin comes from
// the component that was checked.

/// Arguments of `matches-batch` and `process-batch`: key, params, events.
type BatchArgs<'a> = (&'a str, &'a [(String, String)], &'a [EventRef<'a>]);
/// Arguments of `matches` and `process`: key, params, one event.
type OneArgs<'a> = (&'a str, &'a [(String, String)], EventRef<'a>);

/// Checks that the event-key exports of `world` take [`EventRef`] where the
/// WIT says `raw-event` (bindgen checked them against the WIT itself). Runs
/// once per plugin, at load; the calls below rely on it.
pub(super) fn check_borrowed_calls(
    world: &Plugin,
    store: &mut Store<StoreState>,
) -> wasmtime::Result<()> {
    let keys = world.weir_plugin_event_key();
    keys.func_matches_batch()
        .func()
        .typed::<BatchArgs<'_>, (Vec<bool>,)>(&*store)?;
    keys.func_matches()
        .func()
        .typed::<OneArgs<'_>, (bool,)>(&*store)?;
    keys.func_process_batch()
        .func()
        .typed::<BatchArgs<'_>, (Vec<ProcessResult>,)>(&*store)?;
    keys.func_process()
        .func()
        .typed::<OneArgs<'_>, (ProcessResult,)>(&*store)?;
    Ok(())
}

/// `matches` of `world`'s event keys over `events`, borrowed.
pub(super) fn matches_batch(
    world: &Plugin,
    store: &mut Store<StoreState>,
    key: &str,
    params: &Params,
    events: &[EventRef<'_>],
) -> wasmtime::Result<Vec<bool>> {
    let func = *world.weir_plugin_event_key().func_matches_batch().func();
    // SAFETY: the signature was checked against this component's export at
    // load (`check_borrowed_calls`), and this instance is of that component.
    let typed = unsafe {
        wasmtime::component::TypedFunc::<BatchArgs<'_>, (Vec<bool>,)>::new_unchecked(func)
    };
    Ok(typed.call(store, (key, params, events))?.0)
}

/// `matches` of one event, borrowed.
pub(super) fn matches(
    world: &Plugin,
    store: &mut Store<StoreState>,
    key: &str,
    params: &Params,
    event: EventRef<'_>,
) -> wasmtime::Result<bool> {
    let func = *world.weir_plugin_event_key().func_matches().func();
    // SAFETY: the signature was checked against this component's export at
    // load (`check_borrowed_calls`), and this instance is of that component.
    let typed =
        unsafe { wasmtime::component::TypedFunc::<OneArgs<'_>, (bool,)>::new_unchecked(func) };
    Ok(typed.call(store, (key, params, event))?.0)
}

/// `process-batch` over `events`, borrowed.
pub(super) fn process_batch(
    world: &Plugin,
    store: &mut Store<StoreState>,
    key: &str,
    params: &Params,
    events: &[EventRef<'_>],
) -> wasmtime::Result<Vec<ProcessResult>> {
    let func = *world.weir_plugin_event_key().func_process_batch().func();
    // SAFETY: the signature was checked against this component's export at
    // load (`check_borrowed_calls`), and this instance is of that component.
    let typed = unsafe {
        wasmtime::component::TypedFunc::<BatchArgs<'_>, (Vec<ProcessResult>,)>::new_unchecked(func)
    };
    Ok(typed.call(store, (key, params, events))?.0)
}

/// `process` of one event, borrowed.
pub(super) fn process(
    world: &Plugin,
    store: &mut Store<StoreState>,
    key: &str,
    params: &Params,
    event: EventRef<'_>,
) -> wasmtime::Result<ProcessResult> {
    let func = *world.weir_plugin_event_key().func_process().func();
    // SAFETY: the signature was checked against this component's export at
    // load (`check_borrowed_calls`), and this instance is of that component.
    let typed = unsafe {
        wasmtime::component::TypedFunc::<OneArgs<'_>, (ProcessResult,)>::new_unchecked(func)
    };
    Ok(typed.call(store, (key, params, event))?.0)
}

/// A definition as `describe` returned it, in the host's terms.
pub(super) fn definition_from_wit(d: types::KeyDefinition) -> KeyDefinition {
    use types::{Functions, OutputSchema as W, ParamType as P};
    let flags = [
        (Functions::NORMALIZE_PARAMS, Function::NormalizeParams),
        (Functions::MATCHES, Function::Matches),
        (Functions::PROCESS, Function::Process),
        (Functions::PRE_CONSUME, Function::PreConsume),
        (Functions::CLEANUP, Function::Cleanup),
    ];
    KeyDefinition {
        key: d.key,
        display_name: d.display_name,
        description: d.description,
        event_type: d.event_type,
        params: d
            .params
            .into_iter()
            .map(|p| ParamDef {
                name: p.name,
                ty: match p.type_ {
                    P::String => ParamType::String,
                    P::Enum => ParamType::Enum,
                    P::Multi => ParamType::Multi,
                    P::Bool => ParamType::Bool,
                    P::Int => ParamType::Int,
                },
                required: p.required,
                default: p.default,
                description: p.description,
                values: p
                    .values
                    .into_iter()
                    .map(|v| ParamValue {
                        value: v.value,
                        description: v.description,
                    })
                    .collect(),
                subscription_key: p.subscription_key,
            })
            .collect(),
        schema: match d.schema {
            W::Native => OutputSchema::Native,
            W::Custom(json_schema) => OutputSchema::Custom { json_schema },
        },
        scopes: d.scopes,
        auth_types: d.auth_types,
        required_console_events: d.required_console_events,
        buffer_size: d.buffer_size,
        workers: d.workers,
        implements: flags
            .into_iter()
            .filter(|(flag, _)| d.implements.contains(*flag))
            .map(|(_, f)| f)
            .collect(),
    }
}

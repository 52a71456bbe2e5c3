// The key, shared by `guest-pipeline` (VERSION 1) and
// `guest-pipeline-v2` (VERSION 2), which include this file.

use weir_sdk::prelude::*;

/// The key.
#[derive(Default)]
pub struct Flaky;

impl EventKey for Flaky {
    fn definition(&self) -> KeyDefinition {
        KeyDefinition::new("test.flaky", "test.*")
            .description("Faults, drops or emits as the payload's `mode` says")
            .param(
                ParamDef::string("sub", "Subscription label (case-insensitive)")
                    .default_value("main")
                    .subscription_key(),
            )
            .param(ParamDef::int("min", "Smallest `n` delivered").default_value("0"))
            .custom_schema(
                r#"{"type":"object","required":["n"],"properties":{"n":{"type":"integer"}}}"#,
            )
            .buffer_size(16)
            .workers(2)
            .implements(
                Functions::NORMALIZE_PARAMS
                    | Functions::MATCHES
                    | Functions::PROCESS
                    | Functions::PRE_CONSUME
                    // The SDK's default cleanup (Ok) is enough: declared so
                    // that the host runs it.
                    | Functions::CLEANUP,
            )
    }

    fn normalize_params(&self, _api: &dyn Api, params: &mut Params) -> Result<(), Error> {
        let sub = params.str("sub")?.trim().to_lowercase();
        if VERSION >= 2 && sub == "legacy" {
            return Err(Error::msg("param `sub`: `legacy` is no longer supported"));
        }
        if sub.contains('/') {
            return Err(Error::msg(format!(
                "param `sub`: `{sub}` may not contain '/'"
            )));
        }
        params.set("sub", sub);
        Ok(())
    }

    fn matches(&self, event: &RawEvent, params: &Params) -> bool {
        let min = params.int("min").unwrap_or(0);
        event.field_i64("n").unwrap_or(0) >= min
    }

    fn process(&self, api: &dyn Api, event: &RawEvent, params: &Params) -> Result<Outcome, Error> {
        let n = event.field_i64("n").unwrap_or(0);
        match event.field_str("mode").unwrap_or_default().as_str() {
            "once" => {
                let path = format!("/v1/state/once-{}", event.event_id);
                match api.call("GET", &path, None) {
                    Ok(_) => Outcome::emit(&serde_json::json!({ "n": n, "retried": true })),
                    Err(e) if e.status == 404 => {
                        api.call("PUT", &path, Some("true"))?;
                        Err(Error::msg(format!("event {n} fails on its first attempt")))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            "error" => Err(Error::msg(format!("event {n} refused on purpose"))),
            "invalid" => Outcome::emit(&serde_json::json!({ "n": "not a number" })),
            "panic" => panic!("event {n} panicked on purpose"),
            "drop" => Ok(Outcome::Drop),
            _ => Outcome::emit(&serde_json::json!({
                "n": n,
                "sub": params.str("sub")?,
                "pad": event.field_str("pad"),
                "version": VERSION,
            })),
        }
    }

    fn pre_consume(
        &self,
        _api: &dyn Api,
        subscription_id: &str,
        params: &Params,
    ) -> Result<(), Error> {
        if params.str("sub")? == "refuse" {
            return Err(Error::msg(format!(
                "subscription {subscription_id} refused on purpose"
            )));
        }
        Ok(())
    }
}

weir_sdk::export_keys!(Flaky);

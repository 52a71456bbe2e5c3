//! `enrich.context`: every event, enriched through the host API. Its
//! pre-consume records the subscription in the plugin's key-value state, its
//! process reads that record and the host's key list and adds both to the
//! output, and its cleanup deletes the record.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use weir_sdk::prelude::*;

/// The key. Stateless itself: its state lives in the host.
#[derive(Default)]
pub struct Enrich;

/// What pre-consume stores for a tag.
#[derive(Serialize, Deserialize)]
struct Registration {
    subscription_id: String,
    tag: String,
}

/// One entry of `GET /v1/keys`.
#[derive(Deserialize)]
struct KeySummary {
    key: String,
}

fn state_path(tag: &str) -> String {
    format!("/v1/state/tag-{tag}")
}

impl EventKey for Enrich {
    fn definition(&self) -> KeyDefinition {
        KeyDefinition::new("enrich.context", "*")
            .display_name("Enriched events")
            .description("Every event with its subscription's registration and the host's key list")
            .param(
                ParamDef::string("tag", "Label of the subscription: letters, digits, '-' and '_'")
                    .required()
                    .subscription_key(),
            )
            .custom_schema(
                r#"{"type":"object","required":["event_id","event_type","payload","enrichment"],"properties":{"enrichment":{"type":"object","required":["tag","host_keys"]}}}"#,
            )
            .implements(
                Functions::NORMALIZE_PARAMS
                    | Functions::PROCESS
                    | Functions::PRE_CONSUME
                    | Functions::CLEANUP,
            )
    }

    fn normalize_params(&self, _api: &dyn Api, params: &mut Params) -> Result<(), Error> {
        let tag = params.str("tag")?.trim().to_lowercase();
        if tag.is_empty()
            || !tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Error::msg(format!(
                "param `tag`: `{tag}` must be letters, digits, '-' or '_'"
            )));
        }
        params.set("tag", tag);
        Ok(())
    }

    fn process(&self, api: &dyn Api, event: &RawEvent, params: &Params) -> Result<Outcome, Error> {
        let tag = params.str("tag")?;
        // No record (404) means no pre-consume ran for this tag: enrich
        // without it. Any other failure is the event's error.
        let registration: Option<Registration> = match api.call("GET", &state_path(tag), None) {
            Ok(text) => Some(serde_json::from_str(&text)?),
            Err(e) if e.status == 404 => None,
            Err(e) => return Err(e.into()),
        };
        let keys: Vec<KeySummary> = api.get_json("/v1/keys")?;
        let payload: Value = event.json()?;
        Outcome::emit(&serde_json::json!({
            "event_id": event.event_id,
            "event_type": event.event_type,
            "payload": payload,
            "enrichment": {
                "tag": tag,
                "subscription": registration,
                "host_keys": keys.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
            }
        }))
    }

    fn pre_consume(
        &self,
        api: &dyn Api,
        subscription_id: &str,
        params: &Params,
    ) -> Result<(), Error> {
        let tag = params.str("tag")?;
        let body = Registration {
            subscription_id: subscription_id.to_string(),
            tag: tag.to_string(),
        };
        let _: Value = api.send_json("PUT", &state_path(tag), &body)?;
        weir_sdk::info!("registered subscription {subscription_id} for tag {tag}");
        Ok(())
    }

    fn cleanup(&self, api: &dyn Api, subscription_id: &str, params: &Params) -> Result<(), Error> {
        let tag = params.str("tag")?;
        api.call("DELETE", &state_path(tag), None)?;
        weir_sdk::info!("cleaned up subscription {subscription_id} for tag {tag}");
        Ok(())
    }
}

weir_sdk::export_keys!(Enrich);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::ApiError;
    use weir_sdk::testing::MockApi;

    #[test]
    fn process_adds_registration_and_keys() {
        let api = MockApi::new()
            .on("GET", "/v1/state/tag-ops", |_| {
                Ok(r#"{"subscription_id":"s1","tag":"ops"}"#.into())
            })
            .on("GET", "/v1/keys", |_| {
                Ok(r#"[{"key":"a"},{"key":"b"}]"#.into())
            });
        let ev = RawEvent::new("x", r#"{"n":1}"#).with_id("e1");
        let out = Enrich
            .process(&api, &ev, &Params::of(&[("tag", "ops")]))
            .unwrap();
        let out = out.json().unwrap();
        assert_eq!(out["enrichment"]["subscription"]["subscription_id"], "s1");
        assert_eq!(
            out["enrichment"]["host_keys"],
            serde_json::json!(["a", "b"])
        );
        assert_eq!(out["payload"]["n"], 1);
    }

    #[test]
    fn pre_consume_and_cleanup_call_the_api() {
        let api = MockApi::new()
            .on("PUT", "/v1/state/tag-ops", |b| {
                Ok(b.unwrap_or("{}").to_string())
            })
            .on("DELETE", "/v1/state/tag-ops", |_| Ok("{}".into()));
        let p = Params::of(&[("tag", "ops")]);
        Enrich.pre_consume(&api, "sub-1", &p).unwrap();
        Enrich.cleanup(&api, "sub-1", &p).unwrap();
        let calls = api.calls();
        assert_eq!(calls[0].method, "PUT");
        assert!(calls[0].body.as_deref().unwrap().contains("sub-1"));
        assert_eq!(calls[1].method, "DELETE");
    }

    #[test]
    fn api_failure_is_an_error() {
        let api = MockApi::new().on("PUT", "/v1/state/tag-ops", |_| {
            Err(ApiError {
                status: 403,
                message: "denied".into(),
            })
        });
        let err = Enrich
            .pre_consume(&api, "s", &Params::of(&[("tag", "ops")]))
            .unwrap_err();
        assert!(err.message().contains("403"), "{err}");
    }

    #[test]
    fn normalize_checks_tag() {
        let mut p = Params::of(&[("tag", " Ops ")]);
        Enrich.normalize_params(&MockApi::new(), &mut p).unwrap();
        assert_eq!(p.get("tag"), Some("ops"));
        let mut bad = Params::of(&[("tag", "a/b")]);
        assert!(Enrich.normalize_params(&MockApi::new(), &mut bad).is_err());
    }
}

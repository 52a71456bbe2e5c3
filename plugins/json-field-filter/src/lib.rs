//! `json.field_equals`: generic events whose payload field equals a value,
//! delivered as they are (native schema). For example
//! `deal.status.changed` with `field=new_status&equals=ACTIVE`.

use serde_json::Value;
use weir_sdk::prelude::*;

/// The key. Stateless.
#[derive(Default)]
pub struct FieldEquals;

/// The value at a dotted path (`deal.status`) of a JSON value.
fn lookup<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(value, |v, segment| match v {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// Compares a JSON scalar with the parameter's text: strings by content,
/// numbers and booleans by their JSON spelling.
fn equals(value: &Value, expected: &str) -> bool {
    match value {
        Value::String(s) => s == expected,
        Value::Number(n) => {
            n.to_string() == expected
                || expected
                    .parse::<f64>()
                    .ok()
                    .zip(n.as_f64())
                    .is_some_and(|(a, b)| a == b)
        }
        Value::Bool(b) => expected == if *b { "true" } else { "false" },
        Value::Null => expected == "null",
        _ => false,
    }
}

impl EventKey for FieldEquals {
    fn definition(&self) -> KeyDefinition {
        KeyDefinition::new("json.field_equals", "*")
            .display_name("JSON field filter")
            .description(
                "Events whose payload field (dotted path) equals a value, delivered unchanged",
            )
            .param(
                ParamDef::string(
                    "field",
                    "Dotted path of the payload field, such as new_status",
                )
                .required(),
            )
            .param(ParamDef::string("equals", "The value the field must have").required())
            .param(
                ParamDef::string("event_type", "Only events of this exact type; empty: all")
                    .subscription_key(),
            )
            .implements(Functions::MATCHES)
    }

    fn matches(&self, event: &RawEvent, params: &Params) -> bool {
        if params
            .get("event_type")
            .is_some_and(|t| !t.is_empty() && t != event.event_type)
        {
            return false;
        }
        let (Ok(field), Ok(expected)) = (params.str("field"), params.str("equals")) else {
            return false;
        };
        let Ok(payload) = serde_json::from_str::<Value>(&event.payload) else {
            return false;
        };
        lookup(&payload, field).is_some_and(|v| equals(v, expected))
    }
}

weir_sdk::export_keys!(FieldEquals);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_deal_status() {
        let p = Params::of(&[("field", "new_status"), ("equals", "ACTIVE")]);
        let ev = |s: &str| {
            RawEvent::new(
                "deal.status.changed",
                &format!(r#"{{"deal_id":"deal-123","old_status":"PENDING","new_status":"{s}"}}"#),
            )
        };
        assert!(FieldEquals.matches(&ev("ACTIVE"), &p));
        assert!(!FieldEquals.matches(&ev("FAILED"), &p));
    }

    #[test]
    fn dotted_paths_numbers_and_type_filter() {
        let ev = RawEvent::new("x.y", r#"{"a":{"b":[1,{"c":2.0}]},"ok":true}"#);
        assert!(FieldEquals.matches(&ev, &Params::of(&[("field", "a.b.1.c"), ("equals", "2")])));
        assert!(FieldEquals.matches(&ev, &Params::of(&[("field", "ok"), ("equals", "true")])));
        assert!(!FieldEquals.matches(&ev, &Params::of(&[("field", "a.z"), ("equals", "2")])));
        let typed = Params::of(&[("field", "ok"), ("equals", "true"), ("event_type", "other")]);
        assert!(!FieldEquals.matches(&ev, &typed));
    }
}

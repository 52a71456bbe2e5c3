//! One test guest per registration rule: each is refused with an error
//! naming the plugin file, the key and the rule; none of its keys is
//! registered; the host keeps serving.

use serde_json::json;
use weir_host::engine::Outcome;
use weir_host::registry::{RegistrationError, Rule};
use weir_host::runtime::PluginLoadError;
use weir_tests::{event, guest, host_with_examples, params};

/// Loads `guest` into a host with the example plugins and returns the errors.
fn rejected(name: &str) -> Vec<RegistrationError> {
    let host = host_with_examples();
    let before: Vec<String> = host.registry().list().map(|k| k.def.key.clone()).collect();
    let errors = match host.load_file(&guest(name)) {
        Err(PluginLoadError::Rejected(errors)) => errors,
        other => panic!("{name}: expected a rejection, got {other:?}"),
    };
    let file = format!("{}.wasm", name.replace('-', "_"));
    for e in &errors {
        assert_eq!(e.file, file);
        assert!(
            e.to_string()
                .starts_with(&format!("{file}: key `{}`: ", e.key)),
            "{e}"
        );
    }
    // No partial registration, and the host still serves.
    let after: Vec<String> = host.registry().list().map(|k| k.def.key.clone()).collect();
    assert_eq!(after, before, "{name}");
    let k = host.registry().lookup("fs.large_files").cloned().unwrap();
    let ev = event("1", "fs.insert", json!({"path": "/a", "size": 10}));
    assert!(matches!(
        k.plugin
            .process(&k.def.key, &params(&[("min_size", "1")]), &ev),
        Ok(Outcome::Emit(_))
    ));
    errors
}

fn only(errors: Vec<RegistrationError>) -> (String, Rule) {
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = errors.into_iter().next().unwrap();
    (e.key, e.rule)
}

#[test]
fn duplicate_key_inside_a_plugin() {
    assert_eq!(
        only(rejected("guest-rule-dup-key-in-plugin")),
        ("rule.twice".into(), Rule::DuplicateKeyInPlugin)
    );
}

#[test]
fn duplicate_key_against_a_loaded_plugin() {
    assert_eq!(
        only(rejected("guest-rule-dup-key-across")),
        (
            "fs.large_files".into(),
            Rule::DuplicateKey {
                other: "fs_large_files.wasm".into()
            }
        )
    );
}

#[test]
fn empty_event_type() {
    assert_eq!(
        only(rejected("guest-rule-empty-event-type")),
        ("rule.no_type".into(), Rule::EmptyEventType)
    );
}

#[test]
fn enum_and_multi_without_values() {
    let errors = rejected("guest-rule-missing-values");
    let rules: Vec<Rule> = errors.into_iter().map(|e| e.rule).collect();
    assert_eq!(
        rules,
        [
            Rule::MissingValues {
                param: "mode".into(),
                ty: "enum"
            },
            Rule::MissingValues {
                param: "tags".into(),
                ty: "multi"
            },
        ]
    );
}

#[test]
fn value_without_description() {
    assert_eq!(
        only(rejected("guest-rule-value-without-description")),
        (
            "rule.undescribed".into(),
            Rule::ValueWithoutDescription {
                param: "mode".into(),
                value: "slow".into()
            }
        )
    );
}

#[test]
fn default_not_among_values() {
    let (key, rule) = only(rejected("guest-rule-default-not-in-values"));
    assert_eq!(key, "rule.bad_default");
    assert_eq!(
        rule,
        Rule::InvalidDefault {
            param: "mode".into(),
            default: "medium".into(),
            reason: "`medium` is not one of: fast, slow".into()
        }
    );
}

#[test]
fn native_schema_with_process() {
    assert_eq!(
        only(rejected("guest-rule-native-with-process")),
        ("rule.native_process".into(), Rule::NativeSchemaWithProcess)
    );
}

#[test]
fn unknown_auth_type() {
    assert_eq!(
        only(rejected("guest-rule-unknown-auth-type")),
        ("rule.auth".into(), Rule::UnknownAuthType("robot".into()))
    );
}

#[test]
fn buffer_size_above_1000() {
    assert_eq!(
        only(rejected("guest-rule-buffer-too-large")),
        ("rule.big_buffer".into(), Rule::BufferTooLarge(1001))
    );
}

#[test]
fn zero_workers() {
    assert_eq!(
        only(rejected("guest-rule-zero-workers")),
        ("rule.no_workers".into(), Rule::ZeroWorkers)
    );
}

#[test]
fn defaults_apply_when_not_declared() {
    let host = host_with_examples();
    let k = host.registry().lookup("fs.large_files").cloned().unwrap();
    assert_eq!(k.def.effective_buffer_size(), 100);
    assert_eq!(k.def.effective_workers(), 1);
}

//! Checking subscription parameters against a key's definition: names,
//! required values, types, allowed values, defaults.

use std::collections::BTreeMap;

use weir_core::key::{Function, KeyDefinition, ParamDef, ParamType};

/// A parameter a consumer gave that the definition does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("param `{name}`: {reason}")]
pub struct ParamError {
    /// The parameter.
    pub name: String,
    /// What is wrong and what is allowed.
    pub reason: String,
}

/// Checks one value against one parameter's type and values.
pub fn check_value(p: &ParamDef, value: &str) -> Result<(), String> {
    let allowed = || {
        p.values
            .iter()
            .map(|v| v.value.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match p.ty {
        ParamType::String => Ok(()),
        ParamType::Int => value
            .trim()
            .parse::<i64>()
            .map(|_| ())
            .map_err(|_| format!("`{value}` is not an integer")),
        ParamType::Bool => match value.trim() {
            "true" | "false" => Ok(()),
            _ => Err(format!("`{value}` is not true or false")),
        },
        ParamType::Enum => {
            if p.values.iter().any(|v| v.value == value) {
                Ok(())
            } else {
                Err(format!("`{value}` is not one of: {}", allowed()))
            }
        }
        ParamType::Multi => {
            for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if !p.values.iter().any(|v| v.value == item) {
                    return Err(format!("`{item}` is not one of: {}", allowed()));
                }
            }
            Ok(())
        }
    }
}

/// Resolves what a consumer gave into the parameters a key is called with:
/// unknown names are refused, defaults filled in, required ones enforced,
/// types checked. Allowed values are checked here only for keys without
/// `normalize-params` (which may map aliases onto values); for the others,
/// [`verify_normalized`] checks the normalized result.
pub fn resolve(
    def: &KeyDefinition,
    given: &[(String, String)],
) -> Result<Vec<(String, String)>, ParamError> {
    let mut values = BTreeMap::new();
    for (name, value) in given {
        if def.param(name).is_none() {
            let known: Vec<_> = def.params.iter().map(|p| p.name.as_str()).collect();
            return Err(ParamError {
                name: name.clone(),
                reason: format!(
                    "unknown parameter of key `{}` (known: {})",
                    def.key,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            });
        }
        if values.insert(name.clone(), value.clone()).is_some() {
            return Err(ParamError {
                name: name.clone(),
                reason: "given more than once".into(),
            });
        }
    }
    let normalizes = def.implements(Function::NormalizeParams);
    let mut out = Vec::with_capacity(def.params.len());
    for p in &def.params {
        let value = values.remove(&p.name).or_else(|| p.default.clone());
        match value {
            Some(v) => {
                let listed = matches!(p.ty, ParamType::Enum | ParamType::Multi);
                if !(listed && normalizes) {
                    check_value(p, &v).map_err(|reason| ParamError {
                        name: p.name.clone(),
                        reason,
                    })?;
                }
                out.push((p.name.clone(), v));
            }
            None if p.required => {
                return Err(ParamError {
                    name: p.name.clone(),
                    reason: format!(
                        "required {} parameter is missing: {}",
                        p.ty.as_str(),
                        p.description
                    ),
                });
            }
            None => {}
        }
    }
    Ok(out)
}

/// Checks the parameters `normalize-params` returned: no unknown names, no
/// required one dropped, every value of its type and among the allowed values.
pub fn verify_normalized(
    def: &KeyDefinition,
    params: &[(String, String)],
) -> Result<(), ParamError> {
    for (name, value) in params {
        let p = def.param(name).ok_or_else(|| ParamError {
            name: name.clone(),
            reason: "normalize-params returned a parameter the key does not declare".into(),
        })?;
        check_value(p, value).map_err(|reason| ParamError {
            name: name.clone(),
            reason,
        })?;
    }
    for p in def.params.iter().filter(|p| p.required) {
        if !params.iter().any(|(n, _)| n == &p.name) {
            return Err(ParamError {
                name: p.name.clone(),
                reason: "normalize-params dropped this required parameter".into(),
            });
        }
    }
    Ok(())
}

/// The subscription identity: the key alone when no subscription-key
/// parameter has a value; otherwise the key, `@`, and a hash of the sorted
/// `name=value` pairs of those parameters.
pub fn subscription_id(def: &KeyDefinition, params: &[(String, String)]) -> String {
    use sha2::{Digest, Sha256};
    let mut identity: Vec<(&str, &str)> = params
        .iter()
        .filter(|(name, _)| def.param(name).is_some_and(|p| p.subscription_key))
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    if identity.is_empty() {
        return def.key.clone();
    }
    identity.sort();
    let mut hasher = Sha256::new();
    for (name, value) in identity {
        // Length-prefixed so that no two different pair lists hash alike.
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((value.len() as u64).to_le_bytes());
        hasher.update(value.as_bytes());
    }
    format!("{}@{}", def.key, &hex::encode(hasher.finalize())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::ParamValue;

    fn p(name: &str, ty: ParamType) -> ParamDef {
        ParamDef {
            name: name.into(),
            ty,
            required: false,
            default: None,
            description: format!("the {name}"),
            values: vec![],
            subscription_key: false,
        }
    }

    fn values(list: &[&str]) -> Vec<ParamValue> {
        list.iter()
            .map(|v| ParamValue {
                value: v.to_string(),
                description: "x".into(),
            })
            .collect()
    }

    fn key(implements: Vec<Function>) -> KeyDefinition {
        let mut min = p("min", ParamType::Int);
        min.required = true;
        let mut kind = p("kind", ParamType::Enum);
        kind.values = values(&["a", "b"]);
        kind.default = Some("a".into());
        let mut tags = p("tags", ParamType::Multi);
        tags.values = values(&["x", "y"]);
        tags.subscription_key = true;
        let mut dir = p("dir", ParamType::String);
        dir.subscription_key = true;
        KeyDefinition {
            params: vec![min, kind, tags, dir, p("flag", ParamType::Bool)],
            implements,
            ..KeyDefinition::new("k", "*")
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_filled_in_definition_order() {
        let got = resolve(&key(vec![]), &pairs(&[("flag", "true"), ("min", "5")])).unwrap();
        assert_eq!(got, pairs(&[("min", "5"), ("kind", "a"), ("flag", "true")]));
    }

    #[test]
    fn errors_name_the_param_and_what_is_allowed() {
        let k = key(vec![]);
        let err = |given: &[(&str, &str)]| resolve(&k, &pairs(given)).unwrap_err().to_string();
        assert_eq!(
            err(&[]),
            "param `min`: required int parameter is missing: the min"
        );
        assert_eq!(err(&[("min", "x")]), "param `min`: `x` is not an integer");
        assert_eq!(
            err(&[("min", "1"), ("kind", "c")]),
            "param `kind`: `c` is not one of: a, b"
        );
        assert_eq!(
            err(&[("min", "1"), ("tags", "x,z")]),
            "param `tags`: `z` is not one of: x, y"
        );
        assert_eq!(
            err(&[("min", "1"), ("flag", "yes")]),
            "param `flag`: `yes` is not true or false"
        );
        assert_eq!(
            err(&[("min", "1"), ("min", "2")]),
            "param `min`: given more than once"
        );
        assert_eq!(
            err(&[("nope", "1")]),
            "param `nope`: unknown parameter of key `k` (known: min, kind, tags, dir, flag)"
        );
    }

    #[test]
    fn listed_values_are_checked_after_normalization_for_normalizing_keys() {
        let k = key(vec![Function::NormalizeParams]);
        let raw = resolve(&k, &pairs(&[("min", "1"), ("tags", ".X")])).unwrap();
        assert_eq!(
            verify_normalized(&k, &raw).unwrap_err().to_string(),
            "param `tags`: `.X` is not one of: x, y"
        );
        assert!(verify_normalized(&k, &pairs(&[("min", "1"), ("tags", "x")])).is_ok());
        assert_eq!(
            verify_normalized(&k, &pairs(&[("tags", "x")]))
                .unwrap_err()
                .to_string(),
            "param `min`: normalize-params dropped this required parameter"
        );
    }

    #[test]
    fn subscription_identity() {
        let k = key(vec![]);
        assert_eq!(subscription_id(&k, &pairs(&[("min", "1")])), "k");
        let a = subscription_id(&k, &pairs(&[("min", "1"), ("dir", "/a"), ("tags", "x")]));
        let b = subscription_id(&k, &pairs(&[("tags", "x"), ("min", "9"), ("dir", "/a")]));
        let c = subscription_id(&k, &pairs(&[("tags", "x"), ("dir", "/b")]));
        assert_eq!(a, b, "order and non-identity params do not matter");
        assert_ne!(a, c);
        assert!(a.starts_with("k@") && a.len() == 2 + 16, "{a}");
    }
}

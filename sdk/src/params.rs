//! Typed access to subscription parameters.

use std::fmt;

/// A parameter that is missing or does not parse as the asked type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    /// The parameter's name.
    pub name: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "param `{}`: {}", self.name, self.reason)
    }
}

impl std::error::Error for ParamError {}

/// Parameters of one subscription, defaults already filled in by the host.
/// Keeps the order the host gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Parameters from name/value pairs.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        Self { pairs }
    }

    /// Parameters from borrowed pairs, handy in tests.
    pub fn of(pairs: &[(&str, &str)]) -> Self {
        Self::from_pairs(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// The pairs, to hand back to the host.
    pub fn into_pairs(self) -> Vec<(String, String)> {
        self.pairs
    }

    /// The raw value, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets (or replaces) a value.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.pairs.iter_mut().find(|(k, _)| k == name) {
            Some(pair) => pair.1 = value,
            None => self.pairs.push((name.to_string(), value)),
        }
    }

    /// Removes a value.
    pub fn remove(&mut self, name: &str) {
        self.pairs.retain(|(k, _)| k != name);
    }

    fn required(&self, name: &str) -> Result<&str, ParamError> {
        self.get(name).ok_or_else(|| ParamError {
            name: name.to_string(),
            reason: "missing".to_string(),
        })
    }

    /// A string value; an error when missing.
    pub fn str(&self, name: &str) -> Result<&str, ParamError> {
        self.required(name)
    }

    /// An integer value.
    pub fn int(&self, name: &str) -> Result<i64, ParamError> {
        let raw = self.required(name)?;
        raw.trim().parse().map_err(|_| ParamError {
            name: name.to_string(),
            reason: format!("`{raw}` is not an integer"),
        })
    }

    /// A boolean value (`true` or `false`).
    pub fn bool(&self, name: &str) -> Result<bool, ParamError> {
        match self.required(name)?.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(ParamError {
                name: name.to_string(),
                reason: format!("`{other}` is not true or false"),
            }),
        }
    }

    /// A multi value split on commas, items trimmed, empty items skipped.
    /// Missing means empty.
    pub fn multi(&self, name: &str) -> Vec<&str> {
        self.get(name)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Iterates over the pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_access() {
        let p = Params::of(&[("n", " 42 "), ("b", "true"), ("m", "a, b,,c"), ("bad", "x")]);
        assert_eq!(p.int("n"), Ok(42));
        assert_eq!(p.bool("b"), Ok(true));
        assert_eq!(p.multi("m"), vec!["a", "b", "c"]);
        assert!(p.multi("absent").is_empty());
        assert_eq!(
            p.int("bad").unwrap_err().to_string(),
            "param `bad`: `x` is not an integer"
        );
        assert_eq!(p.str("absent").unwrap_err().reason, "missing");
    }

    #[test]
    fn set_replaces_in_place() {
        let mut p = Params::of(&[("a", "1"), ("b", "2")]);
        p.set("a", "3");
        p.set("c", "4");
        p.remove("b");
        assert_eq!(
            p.into_pairs(),
            vec![("a".into(), "3".into()), ("c".into(), "4".into())]
        );
    }
}

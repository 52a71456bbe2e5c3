//! API keys, roles and scopes. Every HTTP route but `/healthz`, `/readyz`
//! and `/openapi.json` names the role it needs; `admin` satisfies every
//! role. A key is either a datastore's (it reaches that datastore's data
//! and the events published in its scope) or host-level (every datastore,
//! every event, and the host-wide routes: plugins, quarantine). The README's
//! permission table is the reference.

use std::collections::HashMap;
use std::fmt;

use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Agents pushing events.
    Ingest,
    /// Consumers and views.
    Query,
    /// Operators: everything.
    Admin,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Ingest, Role::Query, Role::Admin];

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Query => "query",
            Self::Admin => "admin",
        }
    }

    /// The environment variable giving the default datastore's key of this role.
    pub fn env_var(self) -> &'static str {
        match self {
            Self::Ingest => "WEIR_INGEST_KEY",
            Self::Query => "WEIR_QUERY_KEY",
            Self::Admin => "WEIR_ADMIN_KEY",
        }
    }

    fn satisfies(self, needed: Role) -> bool {
        self == Role::Admin || self == needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One configured key (the secret itself is not kept, only its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The role.
    pub role: Role,
    /// The datastore it belongs to; `None`: a host-level key.
    pub datastore: Option<String>,
}

impl ApiKey {
    /// The scope of what the key publishes and sees: its datastore, or
    /// `None` (everything) for a host-level key.
    pub fn scope(&self) -> Option<&str> {
        self.datastore.as_deref()
    }

    /// Where the key belongs, for messages.
    pub fn place(&self) -> String {
        match &self.datastore {
            Some(d) => format!("datastore `{d}`"),
            None => "the host".into(),
        }
    }

    fn forbidden(&self, needed: Role, what: String) -> AuthError {
        AuthError::Forbidden {
            has: self.role,
            needed,
            place: self.place(),
            what,
        }
    }

    /// Whether the key may act with role `needed` and (when the route is
    /// scoped to one) on `datastore`: a datastore's key fits only its own,
    /// a host-level key fits every datastore.
    pub fn permits(&self, needed: Role, datastore: Option<&str>) -> Result<(), AuthError> {
        let datastore_fits = match (datastore, &self.datastore) {
            (None, _) | (Some(_), None) => true,
            (Some(want), Some(has)) => want == has,
        };
        if self.role.satisfies(needed) && datastore_fits {
            Ok(())
        } else {
            Err(self.forbidden(
                needed,
                datastore
                    .map(|d| format!(" on datastore `{}`", crate::text::echo(d)))
                    .unwrap_or_default(),
            ))
        }
    }

    /// Whether the key is a host-level key of `needed`: the host-wide
    /// routes (plugins, quarantine) are not any one datastore's.
    pub fn permits_host(&self, needed: Role) -> Result<(), AuthError> {
        self.permits(needed, None)?;
        if self.datastore.is_some() {
            return Err(self.forbidden(needed, " with a host-level key".into()));
        }
        Ok(())
    }

    /// The key's own datastore, for a datastore's key of `needed`: the
    /// agent routes and Fusion's views act on the key's own datastore,
    /// which a host-level key does not have.
    pub fn own_datastore(&self, needed: Role) -> Result<&str, AuthError> {
        self.permits(needed, None)?;
        self.datastore.as_deref().ok_or_else(|| {
            self.forbidden(
                needed,
                " with a datastore's key (the route acts on the key's own datastore)".into(),
            )
        })
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `X-API-Key` header.
    #[error("missing X-API-Key header")]
    Missing,
    /// A key nobody configured.
    #[error("unknown API key")]
    Unknown,
    /// A key whose role or datastore does not fit.
    #[error("this API key has role `{has}` for {place}; the route needs `{needed}`{what}")]
    Forbidden {
        /// The key's role.
        has: Role,
        /// The role needed.
        needed: Role,
        /// Where the key belongs (`datastore `lab``, `the host`).
        place: String,
        /// What else the route needs (` on datastore `x``), or empty.
        what: String,
    },
}

/// A key printed at start because it was generated, not given.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// Its role.
    pub role: Role,
    /// The secret, to show the operator once.
    pub secret: String,
}

/// The configured keys, by secret hash.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    by_hash: HashMap<[u8; 32], ApiKey>,
    /// Where each key was given (`datastores[1] (`lab`).keys[0]`,
    /// `WEIR_QUERY_KEY`), to name both places when a secret is given twice.
    origins: HashMap<[u8; 32], String>,
}

/// The same secret given for two keys: one of them would silently win.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the same secret is given to {first} and to {second}; every key needs its own secret")]
pub struct SecretReused {
    /// Where it was given first.
    pub first: String,
    /// Where it was given again.
    pub second: String,
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl Keys {
    /// No keys: every protected route answers 401.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key (a secret given again replaces the earlier key: use
    /// [`Self::try_insert`] for keys an operator gives).
    pub fn insert(&mut self, secret: &str, role: Role, datastore: &str) {
        self.by_hash.insert(
            digest(secret),
            ApiKey {
                role,
                datastore: Some(datastore.to_string()),
            },
        );
    }

    /// Adds a host-level key (see [`Self::insert`]).
    pub fn insert_host(&mut self, secret: &str, role: Role) {
        self.by_hash.insert(
            digest(secret),
            ApiKey {
                role,
                datastore: None,
            },
        );
    }

    /// Adds a key given at `origin`, refusing a secret given already.
    pub fn try_insert(
        &mut self,
        secret: &str,
        role: Role,
        datastore: Option<&str>,
        origin: &str,
    ) -> Result<(), SecretReused> {
        let hash = digest(secret);
        if self.by_hash.contains_key(&hash) {
            return Err(self.reused(&hash, Some(origin)));
        }
        match datastore {
            Some(d) => self.insert(secret, role, d),
            None => self.insert_host(secret, role),
        }
        self.origins.insert(hash, origin.to_string());
        Ok(())
    }

    /// The secret of `hash`, given at its origin here and again at `second`.
    fn reused(&self, hash: &[u8; 32], second: Option<&str>) -> SecretReused {
        let place = |o: Option<&String>| o.cloned().unwrap_or_else(|| "another key".into());
        SecretReused {
            first: place(self.origins.get(hash)),
            second: place(second.map(str::to_string).as_ref()),
        }
    }

    /// Keys of datastore `name`.
    pub fn count_for(&self, name: &str) -> usize {
        self.by_hash
            .values()
            .filter(|k| k.datastore.as_deref() == Some(name))
            .count()
    }

    /// Adds every key of `other`, refusing a secret that is given in both.
    pub fn try_extend(&mut self, other: Keys) -> Result<(), SecretReused> {
        for (hash, key) in other.by_hash {
            if self.by_hash.contains_key(&hash) {
                return Err(self.reused(&hash, other.origins.get(&hash).map(String::as_str)));
            }
            if let Some(origin) = other.origins.get(&hash) {
                self.origins.insert(hash, origin.clone());
            }
            self.by_hash.insert(hash, key);
        }
        Ok(())
    }

    /// Keys of the `default` datastore, one per role, from `lookup(env var)`
    /// (normally the environment) or generated. Returns the generated ones so
    /// that the caller can print them.
    pub fn for_default_datastore(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(Self, Vec<GeneratedKey>), SecretReused> {
        let mut keys = Self::new();
        let mut generated = Vec::new();
        for role in Role::ALL {
            let (secret, origin) = match lookup(role.env_var()).filter(|s| !s.trim().is_empty()) {
                Some(s) => (s, role.env_var().to_string()),
                None => {
                    let s = generate_secret(role);
                    generated.push(GeneratedKey {
                        role,
                        secret: s.clone(),
                    });
                    (s, format!("the generated {role} key"))
                }
            };
            // The same value in two variables is refused here; against the
            // file's keys, by `try_extend`.
            // Without a config file the admin key runs the whole host; the
            // ingest and query keys are `default`'s.
            let datastore = (role != Role::Admin).then_some("default");
            keys.try_insert(&secret, role, datastore, &origin)?;
        }
        Ok((keys, generated))
    }

    /// The key `presented` is, if any.
    pub fn lookup(&self, presented: Option<&str>) -> Result<&ApiKey, AuthError> {
        let presented = presented
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::Missing)?;
        self.by_hash
            .get(&digest(presented))
            .ok_or(AuthError::Unknown)
    }

    /// Checks a presented key against the role a route needs, and (when the
    /// route is scoped to one) the datastore: see [`ApiKey::permits`].
    pub fn authorize(
        &self,
        presented: Option<&str>,
        needed: Role,
        datastore: Option<&str>,
    ) -> Result<&ApiKey, AuthError> {
        let key = self.lookup(presented)?;
        key.permits(needed, datastore)?;
        Ok(key)
    }
}

fn generate_secret(role: Role) -> String {
    let bytes: [u8; 24] = rand::rng().random();
    format!("weir_{}_{}", role.as_str(), hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_datastores() {
        let mut keys = Keys::new();
        keys.insert("q", Role::Query, "default");
        keys.insert("a", Role::Admin, "default");
        keys.insert("other", Role::Query, "lab");
        assert_eq!(
            keys.authorize(None, Role::Query, None),
            Err(AuthError::Missing)
        );
        assert_eq!(
            keys.authorize(Some("nope"), Role::Query, None),
            Err(AuthError::Unknown)
        );
        assert!(
            keys.authorize(Some("q"), Role::Query, Some("default"))
                .is_ok()
        );
        assert!(matches!(
            keys.authorize(Some("q"), Role::Admin, None),
            Err(AuthError::Forbidden { .. })
        ));
        assert!(keys.authorize(Some("a"), Role::Ingest, None).is_ok());
        assert!(matches!(
            keys.authorize(Some("other"), Role::Query, Some("default")),
            Err(AuthError::Forbidden { .. })
        ));
    }

    #[test]
    fn a_secret_given_twice_is_refused_naming_both_places() {
        let e = Keys::for_default_datastore(|_| Some("same".to_string())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the same secret is given to WEIR_INGEST_KEY and to WEIR_QUERY_KEY; every key needs its own secret"
        );
        let mut file = Keys::new();
        file.try_insert(
            "s",
            Role::Query,
            Some("lab"),
            "datastores[0] (`lab`).keys[0]",
        )
        .unwrap();
        let (env, _) =
            Keys::for_default_datastore(|v| (v == "WEIR_ADMIN_KEY").then(|| "s".to_string()))
                .unwrap();
        let e = file.try_extend(env).unwrap_err();
        assert_eq!(
            (e.first.as_str(), e.second.as_str()),
            ("datastores[0] (`lab`).keys[0]", "WEIR_ADMIN_KEY")
        );
    }

    #[test]
    fn default_keys_from_env_or_generated() {
        let (keys, generated) =
            Keys::for_default_datastore(|v| (v == "WEIR_QUERY_KEY").then(|| "given".to_string()))
                .unwrap();
        assert_eq!(generated.len(), 2);
        assert!(
            keys.authorize(Some("given"), Role::Query, Some("default"))
                .is_ok()
        );
        for g in generated {
            assert!(g.secret.starts_with(&format!("weir_{}_", g.role)));
            assert_eq!(
                keys.authorize(Some(&g.secret), g.role, None).unwrap().role,
                g.role
            );
        }
    }
}

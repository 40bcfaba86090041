//! Who is asking: `Authorization: Bearer <key>` → the key's tenant. Keys are compared by
//! SHA-256 digest in constant time, against every configured key (no early exit), and never
//! logged.

pub mod key;

use std::sync::Arc;

use key::KeyDigest;

use crate::tenant::Tenant;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant: Arc<Tenant>,
    /// The name of the key used, if the config gave it one.
    pub key_name: Option<Arc<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header, and unauthenticated use is off.
    Missing,
    /// A header that is not `Bearer <key>`.
    Malformed,
    /// A key no tenant has.
    Unknown,
}

impl AuthError {
    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => {
                "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            }
            AuthError::Malformed => {
                "The Authorization header is malformed; expected `Authorization: Bearer YOUR_KEY`."
            }
            AuthError::Unknown => "Incorrect API key provided.",
        }
    }
}

#[derive(Debug)]
struct StoredKey {
    digest: KeyDigest,
    name: Option<Arc<str>>,
    tenant: Arc<Tenant>,
}

#[derive(Debug, Default)]
pub struct Authenticator {
    keys: Vec<StoredKey>,
    /// The tenant of requests without a known key, when unauthenticated use is allowed.
    anonymous: Option<Arc<Tenant>>,
}

impl Authenticator {
    pub fn new(anonymous: Option<Arc<Tenant>>) -> Self {
        Self {
            keys: Vec::new(),
            anonymous,
        }
    }

    /// Adds a key from its stored `sha256:` form; false if the form is wrong.
    pub fn add_key(&mut self, stored: &str, name: Option<&str>, tenant: Arc<Tenant>) -> bool {
        let Some(digest) = KeyDigest::parse(stored) else {
            return false;
        };
        self.keys.push(StoredKey {
            digest,
            name: name.map(Arc::from),
            tenant,
        });
        true
    }

    pub fn allows_unauthenticated(&self) -> bool {
        self.anonymous.is_some()
    }

    fn find(&self, key: &str) -> Option<&StoredKey> {
        let digest = KeyDigest::of(key);
        // Compare with every key, keeping the match, so timing says nothing about which
        // (or whether a) key matched.
        let mut found = None;
        for stored in &self.keys {
            if stored.digest.ct_eq(&digest) {
                found = Some(stored);
            }
        }
        found
    }

    /// The caller of a request with this `Authorization` header value.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Principal, AuthError> {
        let anonymous = || {
            self.anonymous.clone().map(|tenant| Principal {
                tenant,
                key_name: None,
            })
        };
        let Some(header) = authorization else {
            return anonymous().ok_or(AuthError::Missing);
        };
        let key = std::str::from_utf8(header)
            .ok()
            .and_then(|h| {
                let (scheme, rest) = h.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|k| !k.is_empty() && !k.contains(char::is_whitespace));
        let Some(key) = key else {
            return anonymous().ok_or(AuthError::Malformed);
        };
        match self.find(key) {
            Some(k) => Ok(Principal {
                tenant: k.tenant.clone(),
                key_name: k.name.clone(),
            }),
            // SDKs insist on some key; with unauthenticated use on, placeholders are fine.
            None => anonymous().ok_or(AuthError::Unknown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::LimitClock;

    fn tenant(id: &str) -> Arc<Tenant> {
        let config: rosetta_config::TenantConfig =
            serde_yaml::from_str(&format!("id: {id}")).unwrap();
        Arc::new(Tenant::new(&config, &LimitClock::manual()))
    }

    #[test]
    fn keys_map_to_tenants_and_everything_else_is_refused() {
        let key = key::generate();
        let mut auth = Authenticator::new(None);
        assert!(auth.add_key(&KeyDigest::of(&key).to_config(), Some("ci"), tenant("acme")));
        assert!(!auth.add_key(&key, None, tenant("plain")));
        let p = auth
            .authenticate(Some(format!("Bearer {key}").as_bytes()))
            .unwrap();
        assert_eq!(p.tenant.id, "acme");
        assert_eq!(p.key_name.as_deref(), Some("ci"));
        assert!(auth
            .authenticate(Some(format!("bearer  {key} ").as_bytes()))
            .is_ok());
        assert_eq!(auth.authenticate(None).unwrap_err(), AuthError::Missing);
        for bad in [
            &b"Basic abc"[..],
            b"Bearer",
            b"Bearer ",
            b"\xff\xfe",
            b"Bearer a b",
        ] {
            assert_eq!(
                auth.authenticate(Some(bad)).unwrap_err(),
                AuthError::Malformed
            );
        }
        let other = key::generate();
        assert_eq!(
            auth.authenticate(Some(format!("Bearer {other}").as_bytes()))
                .unwrap_err(),
            AuthError::Unknown
        );
    }

    #[test]
    fn unauthenticated_use_falls_back_to_the_anonymous_tenant() {
        let key = key::generate();
        let mut auth = Authenticator::new(Some(tenant("local")));
        auth.add_key(&KeyDigest::of(&key).to_config(), None, tenant("acme"));
        assert_eq!(auth.authenticate(None).unwrap().tenant.id, "local");
        assert_eq!(
            auth.authenticate(Some(b"Bearer EMPTY")).unwrap().tenant.id,
            "local"
        );
        let p = auth.authenticate(Some(format!("Bearer {key}").as_bytes()));
        assert_eq!(p.unwrap().tenant.id, "acme");
    }
}

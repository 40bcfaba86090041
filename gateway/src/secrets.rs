//! The server's secrets: the key of per-tenant cache salts, and the engine-only bearer token.
//! Environment variables win over the config file (Kubernetes passes them from a Secret).

use rosetta_config::ServerConfig;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Keys tenant salts: a tenant's salt can be computed only with it.
#[derive(Clone)]
pub struct SaltKey([u8; 32]);

impl std::fmt::Debug for SaltKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SaltKey(..)")
    }
}

impl SaltKey {
    /// `ROSETTA_SECRET`, else `server.secret`, else random (logged: caches then stay per
    /// process).
    pub fn from_config(server: &ServerConfig) -> Self {
        let secret = std::env::var("ROSETTA_SECRET")
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| server.secret.clone());
        match secret {
            Some(s) => Self(Sha256::digest(s.as_bytes()).into()),
            None => {
                tracing::info!("no server secret (ROSETTA_SECRET or server.secret): tenant cache salts are random for this process");
                Self(rand::random())
            }
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// A tenant's salt for an upstream's prefix cache (vLLM's `cache_salt`), as hex.
    pub fn tenant_salt(&self, tenant: &str) -> String {
        let mut h = Sha256::new();
        h.update(b"rosetta-cache-salt\0");
        h.update(self.0);
        h.update(tenant.as_bytes());
        hex::encode(&h.finalize()[..16])
    }
}

/// The bearer token an engine-only server requires: `ROSETTA_ENGINE_TOKEN`, else
/// `server.engine_token`.
pub fn engine_token(server: &ServerConfig) -> Option<String> {
    std::env::var("ROSETTA_ENGINE_TOKEN")
        .ok()
        .or_else(|| server.engine_token.clone())
        .filter(|t| !t.is_empty())
}

/// Whether `authorization` is `Bearer <token>`, compared in constant time.
pub fn bearer_matches(authorization: Option<&[u8]>, token: &str) -> bool {
    let Some(given) = authorization.and_then(|a| a.strip_prefix(b"Bearer ")) else {
        return false;
    };
    given.ct_eq(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salts_differ_by_tenant_and_key() {
        let a = SaltKey([1; 32]);
        let b = SaltKey([2; 32]);
        assert_eq!(a.tenant_salt("t"), a.tenant_salt("t"));
        assert_ne!(a.tenant_salt("t"), a.tenant_salt("u"));
        assert_ne!(a.tenant_salt("t"), b.tenant_salt("t"));
    }

    #[test]
    fn bearer_must_match_exactly() {
        assert!(bearer_matches(Some(b"Bearer s3cret"), "s3cret"));
        assert!(!bearer_matches(Some(b"Bearer s3cre"), "s3cret"));
        assert!(!bearer_matches(Some(b"s3cret"), "s3cret"));
        assert!(!bearer_matches(None, "s3cret"));
    }
}

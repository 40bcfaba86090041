//! API keys: random secrets handed to clients; the config keeps only their SHA-256.
//!
//! A key has 256 bits of randomness, so a plain SHA-256 (as GitHub and Stripe store tokens)
//! cannot be reversed or guessed; a slow password hash would only slow every request.

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every Rosetta key starts with, so leaked keys are easy to recognise and scan for.
pub const KEY_PREFIX: &str = "rsk-";

/// The SHA-256 of a key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyDigest([u8; 32]);

// Never print digests in full: they identify keys.
impl std::fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyDigest({}…)", hex::encode(&self.0[..3]))
    }
}

impl KeyDigest {
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Parses `sha256:<64 hex digits>`, as the config stores it.
    pub fn parse(stored: &str) -> Option<Self> {
        let hex_part = stored.strip_prefix("sha256:")?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).ok()?;
        Some(Self(out))
    }

    /// The config form, `sha256:<hex>`.
    pub fn to_config(&self) -> String {
        format!("sha256:{}", hex::encode(self.0))
    }

    /// Equality that takes the same time wherever the digests differ.
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

/// A fresh random key: `rsk-` and 43 base62 characters (256 bits).
pub fn generate() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    // ThreadRng is a CSPRNG (ChaCha12) seeded from the operating system.
    let mut rng = rand::rng();
    let body: String = (0..43)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{KEY_PREFIX}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_hash_round_trips() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == 47);
        let stored = KeyDigest::of(&a).to_config();
        assert!(rosetta_config::is_key_hash(&stored));
        let parsed = KeyDigest::parse(&stored).unwrap();
        assert!(parsed.ct_eq(&KeyDigest::of(&a)));
        assert!(!parsed.ct_eq(&KeyDigest::of(&b)));
        assert!(!format!("{parsed:?}").contains(&stored[7..20]));
    }

    #[test]
    fn known_vector() {
        // sha256("abc")
        assert_eq!(
            KeyDigest::of("abc").to_config(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

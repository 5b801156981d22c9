//! Signing tree heads with Ed25519 (`ring`; API.md v1.2 "Verifiable log").
//!
//! Keys come from `LEDGER_SIGNING_KEY`: base64 of 32-byte Ed25519 seeds, comma-separated;
//! the first signs, every one is listed (`GET /v1/audit/keys`) so heads signed before a
//! rotation still verify. Unset: dev mode generates one at first start, keeps it in the
//! database of `default` (`key_material`, `dev-signing-key`, sealed under the master
//! key) and warns at every start.
//! A key's id is the first 16 hex characters of SHA-256 of its public key.

use crate::keys::KeyError;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use sha2::Digest;
use sqlx::PgPool;
use zeroize::Zeroizing;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// One signing key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pub id: String,
    /// Base64 of the 32-byte public key.
    pub public: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.id)
    }
}

impl SigningKey {
    fn from_seed(seed: &[u8]) -> Result<SigningKey, KeyError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| KeyError::Malformed)?;
        let public_bytes = pair.public_key().as_ref().to_vec();
        let id = key_id(&public_bytes);
        Ok(SigningKey { pair, id, public: B64.encode(&public_bytes) })
    }
}

/// The keys tree heads are signed with.
#[derive(Debug)]
pub struct Signer {
    keys: Vec<SigningKey>,
}

/// A key's id: the first 16 hex characters of SHA-256 of its public key (API.md v1.2).
pub fn key_id(public: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(public))[..16].to_owned()
}

/// The id of a public key given in base64, if it is 32 bytes.
pub fn key_id_of(public_b64: &str) -> Option<String> {
    B64.decode(public_b64).ok().filter(|k| k.len() == 32).map(|k| key_id(&k))
}

/// What a tree head's signature covers (API.md v1.2).
pub fn tree_head_message(ledger: &str, size: i64, root_hex: &str, timestamp: &str) -> String {
    format!("ledger-tree-head:v1\n{ledger}\n{size}\n{root_hex}\n{timestamp}")
}

impl Signer {
    /// Keys from their base64 seeds, comma-separated (the first signs).
    pub fn from_config(text: &str) -> Result<Signer, KeyError> {
        let mut keys = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let seed = Zeroizing::new(B64.decode(part).map_err(|_| KeyError::Malformed)?);
            if seed.len() != 32 {
                return Err(KeyError::Malformed);
            }
            keys.push(SigningKey::from_seed(&seed)?);
        }
        if keys.is_empty() {
            return Err(KeyError::Malformed);
        }
        Ok(Signer { keys })
    }

    /// The configured keys, or dev mode's: generated at first start and kept in the
    /// database of `default`, sealed under the master key (so a dump of the database
    /// alone cannot sign heads).
    pub async fn load(
        pool: &PgPool,
        configured: Option<&str>,
        master: &crate::keys::MasterKey,
    ) -> Result<Signer, KeyError> {
        if let Some(text) = configured {
            return Signer::from_config(text);
        }
        const NAME: &str = "dev-signing-key";
        let mut seed = Zeroizing::new([0u8; 32]);
        SystemRandom::new().fill(seed.as_mut()).expect("the system's random source works");
        sqlx::query("insert into key_material (name, value) values ($1, $2) on conflict do nothing")
            .bind(NAME)
            .bind(master.seal(seed.as_ref(), NAME.as_bytes()))
            .execute(pool)
            .await?;
        let kept: Vec<u8> =
            sqlx::query_scalar("select value from key_material where name = $1").bind(NAME).fetch_one(pool).await?;
        let seed = master.open(&kept, NAME.as_bytes())?;
        let signer = Signer { keys: vec![SigningKey::from_seed(&seed)?] };
        tracing::warn!(
            key_id = %signer.keys[0].id,
            "no LEDGER_SIGNING_KEY: dev mode signs tree heads with a generated key kept in the database (sealed under \
             the master key); set LEDGER_SIGNING_KEY in production (docs/AUDIT.md)"
        );
        Ok(signer)
    }

    /// The keys the service signs with, for a tool beside it (`ledger audit prove`):
    /// the configured ones, or dev mode's key as the service keeps it. Never makes one:
    /// a head signed with a key the service does not publish would verify with nothing.
    pub async fn existing(
        pool: &PgPool,
        configured: Option<&str>,
        master: &crate::keys::MasterKey,
    ) -> Result<Option<Signer>, KeyError> {
        if let Some(text) = configured {
            return Signer::from_config(text).map(Some);
        }
        const NAME: &str = "dev-signing-key";
        let kept: Option<Vec<u8>> = sqlx::query_scalar("select value from key_material where name = $1")
            .bind(NAME)
            .fetch_optional(pool)
            .await?;
        let Some(kept) = kept else { return Ok(None) };
        let seed = master.open(&kept, NAME.as_bytes())?;
        Ok(Some(Signer { keys: vec![SigningKey::from_seed(&seed)?] }))
    }

    /// A fresh signer with one random key (tests, and cores built without start-up).
    pub fn generate() -> Signer {
        let mut seed = Zeroizing::new([0u8; 32]);
        SystemRandom::new().fill(seed.as_mut()).expect("the system's random source works");
        Signer { keys: vec![SigningKey::from_seed(seed.as_ref()).expect("32 bytes are a seed")] }
    }

    /// Signs a tree head with the first key: `(key_id, base64 signature)`.
    pub fn sign_head(&self, ledger: &str, size: i64, root_hex: &str, timestamp: &str) -> (String, String) {
        let key = &self.keys[0];
        let message = tree_head_message(ledger, size, root_hex, timestamp);
        (key.id.clone(), B64.encode(key.pair.sign(message.as_bytes()).as_ref()))
    }

    /// Every key: `(key_id, base64 public key)`.
    pub fn keys(&self) -> Vec<(String, String)> {
        self.keys.iter().map(|k| (k.id.clone(), k.public.clone())).collect()
    }
}

/// Verifies a tree head's signature with a public key (base64) alone.
pub fn verify_head(
    public_b64: &str,
    ledger: &str,
    size: i64,
    root_hex: &str,
    timestamp: &str,
    signature_b64: &str,
) -> bool {
    let (Ok(public), Ok(signature)) = (B64.decode(public_b64), B64.decode(signature_b64)) else { return false };
    let message = tree_head_message(ledger, size, root_hex, timestamp);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
        .verify(message.as_bytes(), &signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_verify_with_the_public_key_only_and_name_their_key() {
        let seed = B64.encode([9u8; 32]);
        let other = B64.encode([7u8; 32]);
        let signer = Signer::from_config(&format!("{seed}, {other}")).expect("keys");
        let (id, sig) = signer.sign_head("default", 5, &"ab".repeat(32), "2026-12-05T00:00:00.000000Z");
        let keys = signer.keys();
        assert_eq!((keys.len(), id.len(), &keys[0].0), (2, 16, &id));
        assert!(verify_head(&keys[0].1, "default", 5, &"ab".repeat(32), "2026-12-05T00:00:00.000000Z", &sig));
        assert!(!verify_head(&keys[0].1, "default", 6, &"ab".repeat(32), "2026-12-05T00:00:00.000000Z", &sig));
        assert!(!verify_head(&keys[1].1, "default", 5, &"ab".repeat(32), "2026-12-05T00:00:00.000000Z", &sig));
        for bad in ["", "AAAA", "not base64!"] {
            assert!(Signer::from_config(bad).is_err(), "{bad:?}");
        }
    }
}

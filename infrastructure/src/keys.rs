//! The master key (`LEDGER_MASTER_KEY`) and what it seals: secrets the service must keep
//! to use but must not keep in clear (a webhook's signing secret; the subject keys of
//! personal data). AES-256-GCM (ring), a random 96-bit nonce per sealed value (never a
//! counter: several processes seal at once), the key's id in every sealed value, and a
//! context (the row it belongs to) authenticated with it, so a value moved to another
//! row or opened under another key fails loudly instead of giving garbage.
//!
//! Start-up ([`MasterKey::load`]) refuses a key that is not the one the database was
//! sealed with: the database keeps one value sealed under it (`key_material`,
//! `master-key-check`). With no key configured, dev mode generates one at first start,
//! keeps it in the database beside what it seals (so it protects nothing against a
//! database dump) and says so in a warning at every start.

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::Digest;
use sqlx::PgPool;
use zeroize::Zeroizing;

/// The format tag of a sealed value (bumped if the format ever changes).
const FORMAT: u8 = 1;
/// The length of the key id in a sealed value.
const KEY_ID_LEN: usize = 8;
/// What the check value seals (its context names it too).
const CHECK: &[u8] = b"ledger master key check";

/// Why the master key cannot be used, or a value cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("LEDGER_MASTER_KEY must be 32 bytes in base64 (standard alphabet); it is not")]
    Malformed,
    #[error(
        "LEDGER_MASTER_KEY is not the key this database's secrets were sealed with (key id {configured}, the \
         database's is {stored}); start with the right key (see docs/PRIVACY.md on rotation)"
    )]
    WrongKey { configured: String, stored: String },
    #[error("no master key is configured (LEDGER_MASTER_KEY) and this database keeps none: it was set up with one")]
    Missing,
    #[error("a sealed value does not open: it was sealed under another key, for another context, or changed")]
    Unopenable,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Postgres answered slower than a key's lease (`privacy::KEY_LEASE`): the values
    /// are withheld rather than revealed under a key an erasure may have destroyed since.
    #[error("the keys' lease ended before they could be used (Postgres answered too slowly)")]
    LeaseEnded,
}

/// The master key, in memory only as ring's key (its raw bytes are zeroized after use).
pub struct MasterKey {
    key: LessSafeKey,
    id: [u8; KEY_ID_LEN],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", hex::encode(self.id))
    }
}

impl MasterKey {
    /// A key from its 32 raw bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> MasterKey {
        let digest = sha2::Sha256::digest(bytes);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).expect("AES-256-GCM takes a 32-byte key");
        MasterKey { key: LessSafeKey::new(unbound), id }
    }

    /// A key from its base64 form (`LEDGER_MASTER_KEY`).
    pub fn from_base64(text: &str) -> Result<MasterKey, KeyError> {
        let raw = Zeroizing::new(
            base64::engine::general_purpose::STANDARD.decode(text.trim()).map_err(|_| KeyError::Malformed)?,
        );
        let bytes: Zeroizing<[u8; 32]> = Zeroizing::new(raw.as_slice().try_into().map_err(|_| KeyError::Malformed)?);
        Ok(MasterKey::from_bytes(&bytes))
    }

    /// A fresh random key and its base64 form.
    pub fn generate() -> (MasterKey, Zeroizing<String>) {
        let mut bytes = Zeroizing::new([0u8; 32]);
        SystemRandom::new().fill(bytes.as_mut()).expect("the system's random source works");
        let text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(bytes.as_ref()));
        (MasterKey::from_bytes(&bytes), text)
    }

    /// The key's id: the first 8 bytes of SHA-256 of the key, in hex.
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }

    /// Seals `plaintext` for `context` (the row it belongs to): format tag, key id,
    /// nonce, then the ciphertext with its tag.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).expect("the system's random source works");
        let mut sealed = Vec::with_capacity(1 + KEY_ID_LEN + NONCE_LEN + plaintext.len() + 16);
        sealed.push(FORMAT);
        sealed.extend_from_slice(&self.id);
        sealed.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context), &mut body)
            .expect("a value of any length seals");
        sealed.extend_from_slice(&body);
        body.iter_mut().for_each(|b| *b = 0);
        sealed
    }

    /// Opens a value sealed by [`MasterKey::seal`] for the same `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let header = 1 + KEY_ID_LEN + NONCE_LEN;
        if sealed.len() < header || sealed[0] != FORMAT || sealed[1..1 + KEY_ID_LEN] != self.id {
            return Err(KeyError::Unopenable);
        }
        let nonce: [u8; NONCE_LEN] = sealed[1 + KEY_ID_LEN..header].try_into().map_err(|_| KeyError::Unopenable)?;
        let mut body = Zeroizing::new(sealed[header..].to_vec());
        let opened = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(context), body.as_mut_slice())
            .map_err(|_| KeyError::Unopenable)?;
        Ok(Zeroizing::new(opened.to_vec()))
    }

    /// The id of the key a sealed value names.
    fn sealed_id(sealed: &[u8]) -> String {
        hex::encode(sealed.get(1..1 + KEY_ID_LEN).unwrap_or_default())
    }

    /// The master key this process uses: `configured` (`LEDGER_MASTER_KEY`), checked
    /// against the database; or, in dev mode (none configured), the one the database
    /// keeps, generated at first start.
    pub async fn load(pool: &PgPool, configured: Option<&str>) -> Result<MasterKey, KeyError> {
        let check: Option<Vec<u8>> = stored(pool, "master-key-check").await?;
        let key = match configured {
            Some(text) => MasterKey::from_base64(text)?,
            None => match stored(pool, "dev-master-key").await? {
                Some(raw) => {
                    let bytes: Zeroizing<[u8; 32]> =
                        Zeroizing::new(raw.as_slice().try_into().map_err(|_| KeyError::Malformed)?);
                    MasterKey::from_bytes(&bytes)
                }
                None if check.is_some() => return Err(KeyError::Missing),
                None => dev_key(pool).await?,
            },
        };
        if configured.is_none() {
            tracing::warn!(
                key_id = %key.id(),
                "no LEDGER_MASTER_KEY: dev mode keeps a generated master key in the database, beside what it seals; \
                 set LEDGER_MASTER_KEY in production (docs/PRIVACY.md)"
            );
        }
        match check {
            Some(sealed) => {
                key.open(&sealed, CHECK)
                    .map_err(|_| KeyError::WrongKey { configured: key.id(), stored: MasterKey::sealed_id(&sealed) })?;
            }
            None => {
                sqlx::query(
                    "insert into key_material (name, value) values ('master-key-check', $1) on conflict do nothing",
                )
                .bind(key.seal(CHECK, CHECK))
                .execute(pool)
                .await?;
                // Another process may have written its own check first: it must be ours.
                if let Some(sealed) = stored(pool, "master-key-check").await? {
                    key.open(&sealed, CHECK).map_err(|_| KeyError::WrongKey {
                        configured: key.id(),
                        stored: MasterKey::sealed_id(&sealed),
                    })?;
                }
            }
        }
        Ok(key)
    }
}

/// What [`rotate`] re-sealed in one schema.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rotated {
    pub subject_keys: u64,
    pub webhook_secrets: u64,
    pub lookup_keys: u64,
}

/// Re-seals everything the master key seals in the schema `pool` addresses, from `old`
/// to `new`, in one transaction (docs/PRIVACY.md, "Rotating the master key"): the
/// subjects' keys, the owner look-up key, the webhooks' secrets, and the check value
/// start-up compares the key with. No event changes: events hold values sealed under
/// the subjects' keys, which stay. A dev-mode key kept in the database goes (the new
/// key is configured). Refuses (changing nothing) if `old` is not the schema's key.
pub async fn rotate(pool: &PgPool, old: &MasterKey, new: &MasterKey) -> Result<Rotated, KeyError> {
    let mut tx = pool.begin().await?;
    let check: Option<Vec<u8>> =
        sqlx::query_scalar("select value from key_material where name = 'master-key-check' for update")
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(sealed) = &check {
        old.open(sealed, CHECK)
            .map_err(|_| KeyError::WrongKey { configured: old.id(), stored: MasterKey::sealed_id(sealed) })?;
    }
    let mut rotated = Rotated::default();
    let keys: Vec<(uuid::Uuid, Vec<u8>)> =
        sqlx::query_as("select id, wrapped from subject_keys where wrapped is not null for update")
            .fetch_all(&mut *tx)
            .await?;
    for (id, wrapped) in keys {
        let context = crate::privacy::wrap_context(id);
        let bytes = old.open(&wrapped, &context)?;
        sqlx::query("update subject_keys set wrapped = $2 where id = $1 and wrapped is not null")
            .bind(id)
            .bind(new.seal(&bytes, &context))
            .execute(&mut *tx)
            .await?;
        rotated.subject_keys += 1;
    }
    let secrets: Vec<(uuid::Uuid, Vec<u8>)> =
        sqlx::query_as("select id, secret_sealed from webhooks where secret_sealed is not null for update")
            .fetch_all(&mut *tx)
            .await?;
    for (id, sealed) in secrets {
        let context = crate::webhooks::secret_context(id);
        let secret = old.open(&sealed, &context)?;
        sqlx::query("update webhooks set secret_sealed = $2 where id = $1")
            .bind(id)
            .bind(new.seal(&secret, &context))
            .execute(&mut *tx)
            .await?;
        rotated.webhook_secrets += 1;
    }
    // Keys kept in `key_material` sealed for their own name: the owner look-up key, and
    // dev mode's tree-head signing key.
    for name in ["owner-lookup-key", "dev-signing-key"] {
        let sealed: Option<Vec<u8>> = sqlx::query_scalar("select value from key_material where name = $1 for update")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(sealed) = sealed {
            let bytes = old.open(&sealed, name.as_bytes())?;
            sqlx::query("update key_material set value = $2 where name = $1")
                .bind(name)
                .bind(new.seal(&bytes, name.as_bytes()))
                .execute(&mut *tx)
                .await?;
            if name == "owner-lookup-key" {
                rotated.lookup_keys += 1;
            }
        }
    }
    if check.is_some() {
        sqlx::query("update key_material set value = $1 where name = 'master-key-check'")
            .bind(new.seal(CHECK, CHECK))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("delete from key_material where name = 'dev-master-key'").execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(rotated)
}

async fn stored(pool: &PgPool, name: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("select value from key_material where name = $1").bind(name).fetch_optional(pool).await
}

/// Dev mode's key: generated once, kept in the database (the first process to start
/// writes it; the others read what it wrote).
async fn dev_key(pool: &PgPool) -> Result<MasterKey, KeyError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    SystemRandom::new().fill(bytes.as_mut()).expect("the system's random source works");
    sqlx::query("insert into key_material (name, value) values ('dev-master-key', $1) on conflict do nothing")
        .bind(bytes.as_slice())
        .execute(pool)
        .await?;
    let raw = stored(pool, "dev-master-key").await?.ok_or(KeyError::Missing)?;
    let kept: Zeroizing<[u8; 32]> = Zeroizing::new(raw.as_slice().try_into().map_err(|_| KeyError::Malformed)?);
    Ok(MasterKey::from_bytes(&kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() {
        let (key, text) = MasterKey::generate();
        let same = MasterKey::from_base64(&text).expect("its own base64");
        let (other, _) = MasterKey::generate();
        let sealed = key.seal(b"whsec_abc", b"webhook:1");
        assert!(!sealed.windows(9).any(|w| w == b"whsec_abc"), "no plaintext in the sealed form");
        assert_eq!(same.open(&sealed, b"webhook:1").expect("opens").as_slice(), b"whsec_abc");
        assert!(matches!(key.open(&sealed, b"webhook:2"), Err(KeyError::Unopenable)), "another row");
        assert!(matches!(other.open(&sealed, b"webhook:1"), Err(KeyError::Unopenable)), "another key");
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(key.open(&tampered, b"webhook:1"), Err(KeyError::Unopenable)), "a changed byte");
        assert_ne!(key.seal(b"x", b"c"), key.seal(b"x", b"c"), "a fresh nonce each time");
        for bad in ["", "AAAA", "not base64!", &base64::engine::general_purpose::STANDARD.encode([0u8; 31])] {
            assert!(matches!(MasterKey::from_base64(bad), Err(KeyError::Malformed)), "{bad:?}");
        }
    }
}

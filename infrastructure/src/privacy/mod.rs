//! Personal data (API.md v1.2 "Personal data"; docs/PRIVACY.md): an account's `owner`
//! and its `pii.` metadata, sealed under a key of their subject before they are stored
//! anywhere, revealed on the way out while that key exists.
//!
//! - A subject's data key is 32 random bytes, kept in `subject_keys` sealed under the
//!   master key ([`MasterKey`]); it is destroyed (the sealed form cleared) in the
//!   transaction that appends the subject's `SubjectErased` event (`store::append`).
//! - A sealed value is the text `pii:v1:` and base64url (no padding) of: the key's id
//!   (16 bytes), a random 96-bit nonce, and the AES-256-GCM ciphertext and tag of the
//!   value's JSON text (so `pii.` values keep their type), with `pii:v1` and the key's
//!   id authenticated with it. It carries no subject and no hint of the value but its
//!   length.
//! - Revealing ([`Privacy::reveal`]) looks only at accounts (objects with `currency`
//!   and a boolean `system`: views, states, openings' data), at their `owner` and the
//!   `pii.` keys of their `metadata`: a value whose key exists is given back; one whose
//!   key was destroyed becomes `null` (`owner`) or goes (`pii.` keys). The keys' state
//!   is read from the primary (never a replica), and a live key read is used for at
//!   most [`KEY_LEASE`] after the read began; an erasure answers only
//!   [`ERASURE_SETTLE`] after its key was destroyed. So once an erasure has answered,
//!   no process reveals the subject again, yet a hot account's reads do not ask the
//!   primary each time. A destroyed key never comes back and is remembered as such. A
//!   value that names a live key but does not open was changed: an error, never garbage.
//! - The owner look-up compares HMAC-SHA-256 of the owner under a key of the ledger's
//!   (`owner-lookup-key` in `key_material`, sealed under the master key), kept in
//!   `owner_index` beside the sealed form it was made for, never in the log; the rows
//!   of a subject go when its key is destroyed.

mod legacy;

pub use legacy::{Reanchored, purge_legacy_messages};

use crate::keys::{KeyError, MasterKey};
use base64::Engine;
use hmac::{KeyInit, Mac};
use ledger_domain::decide::OpenAccount;
use moka::ops::compute::Op;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;
use zeroize::Zeroizing;

/// How long a live key read from the primary may be used to reveal, counted from
/// before the read was sent (so from before the primary's snapshot that found it live).
pub const KEY_LEASE: Duration = Duration::from_millis(1_000);

/// How long an erasure waits after its key was destroyed before it answers: every
/// lease on that key taken before the destruction has ended by then (a fifth more for
/// clocks that run at slightly different rates on different machines).
pub const ERASURE_SETTLE: Duration = Duration::from_millis(1_200);

/// The most keys a process remembers (live ones are used within their lease only,
/// destroyed ones for as long as they stay).
const KEY_CACHE_MAX: u64 = 100_000;

/// A live key used in the second half of its lease is read again before the lease
/// ends, with the others that came due meanwhile ([`Privacy::renew`]): a hot account's
/// reads then never wait for its key. Renewals gather for this long, so a process
/// renews at most about 20 times a second, in one statement each.
const RENEW_GATHER: Duration = Duration::from_millis(50);
/// The most keys one renewal statement reads.
const RENEW_CHUNK: usize = 1_000;

/// The revealed answers a process keeps ([`Privacy::reveal_body`]), in bytes of the
/// sealed and the revealed forms together; an answer over [`REVEALED_ENTRY_MAX`] is
/// revealed each time. Each is kept at most one lease: plaintext does not outlive by
/// much the keys that opened it.
const REVEALED_MAX_BYTES: u64 = 32 << 20;
const REVEALED_ENTRY_MAX: usize = 64 << 10;
/// What an entry is counted for besides its two bodies (the cache's own bookkeeping
/// and the list of keys).
const REVEALED_ENTRY_OVERHEAD: usize = 256;

/// What a process remembers of a key: live (with when the read that found it began,
/// and whether it came due for renewal), or destroyed (for good).
#[derive(Clone)]
enum Remembered {
    Live(Arc<SubjectKey>, Instant, Arc<AtomicBool>),
    Destroyed,
}

impl Remembered {
    fn live(key: Arc<SubjectKey>, read_at: Instant) -> Remembered {
        Remembered::Live(key, read_at, Arc::default())
    }
}

/// What every sealed personal value begins with.
pub const SEALED_PREFIX: &str = "pii:v1:";
/// What is authenticated with every sealed value, before its key's id.
const AAD_TAG: &[u8] = b"pii:v1";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Whether `key` (a JSON member's name) holds a personal value.
pub fn is_personal_member(key: &str) -> bool {
    key == "owner" || ledger_domain::is_personal_key(key)
}

/// The id of the key a sealed value names (`None`: not a sealed value).
pub fn sealed_key_id(text: &str) -> Option<Uuid> {
    let body = B64.decode(text.strip_prefix(SEALED_PREFIX)?).ok()?;
    (body.len() >= 16 + NONCE_LEN + 16).then(|| Uuid::from_slice(&body[..16]).ok()).flatten()
}

/// Whether `value` has a personal member (`owner`, or a `pii.` key) anywhere.
pub fn has_personal_members(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(k, v)| is_personal_member(k) || has_personal_members(v)),
        Value::Array(items) => items.iter().any(has_personal_members),
        _ => false,
    }
}

/// The ids of the keys an account's opening is sealed under (its `owner` and `pii.`
/// metadata), and whether every personal value in it is sealed.
pub fn opening_keys(owner: Option<&str>, metadata: Option<&Value>) -> (Vec<Uuid>, bool) {
    let personal = owner.into_iter().chain(
        metadata
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(k, _)| ledger_domain::is_personal_key(k))
            .map(|(_, v)| v.as_str().unwrap_or_default()),
    );
    let mut ids = Vec::new();
    let mut sealed = true;
    for text in personal {
        match sealed_key_id(text) {
            Some(id) => ids.push(id),
            None => sealed = false,
        }
    }
    ids.sort_unstable();
    ids.dedup();
    (ids, sealed)
}

/// The owner look-up's row for a sealed owner (table `owner_index`): written by the
/// append that records the opening, in its transaction, under the head lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerIndexRow {
    pub owner_hash: Vec<u8>,
    pub owner_sealed: String,
    pub key_id: Uuid,
}

/// One subject's data key, usable.
struct SubjectKey {
    id: Uuid,
    key: LessSafeKey,
}

impl SubjectKey {
    fn from_bytes(id: Uuid, bytes: &[u8]) -> Result<SubjectKey, KeyError> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| KeyError::Unopenable)?;
        Ok(SubjectKey { id, key: LessSafeKey::new(unbound) })
    }

    fn aad(id: Uuid) -> [u8; AAD_TAG.len() + 16] {
        let mut aad = [0u8; AAD_TAG.len() + 16];
        aad[..AAD_TAG.len()].copy_from_slice(AAD_TAG);
        aad[AAD_TAG.len()..].copy_from_slice(id.as_bytes());
        aad
    }

    fn seal(&self, value: &Value) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).expect("the system's random source works");
        let mut body = Zeroizing::new(value.to_string().into_bytes());
        let mut out = Vec::with_capacity(16 + NONCE_LEN + body.len() + 16);
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(&nonce);
        let body: &mut Vec<u8> = &mut body;
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(Self::aad(self.id)), body)
            .expect("a value of any length seals");
        out.extend_from_slice(body);
        format!("{SEALED_PREFIX}{}", B64.encode(out))
    }

    fn open(&self, text: &str) -> Result<Value, KeyError> {
        let body = text.strip_prefix(SEALED_PREFIX).and_then(|b| B64.decode(b).ok()).ok_or(KeyError::Unopenable)?;
        if body.len() < 16 + NONCE_LEN + 16 || body[..16] != *self.id.as_bytes() {
            return Err(KeyError::Unopenable);
        }
        let nonce: [u8; NONCE_LEN] = body[16..16 + NONCE_LEN].try_into().map_err(|_| KeyError::Unopenable)?;
        let mut sealed = Zeroizing::new(body[16 + NONCE_LEN..].to_vec());
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(Self::aad(self.id)), sealed.as_mut_slice())
            .map_err(|_| KeyError::Unopenable)?;
        serde_json::from_slice(plain).map_err(|_| KeyError::Unopenable)
    }
}

/// The context a data key is sealed for under the master key: its own id.
pub(crate) fn wrap_context(id: Uuid) -> Vec<u8> {
    [b"subject-key:".as_slice(), id.as_bytes()].concat()
}

/// Seals and reveals the personal values of one ledger (its schema's `subject_keys`).
#[derive(Clone)]
pub struct Privacy {
    inner: Arc<Inner>,
}

struct Inner {
    /// The primary of the ledger's shard: keys are never read from a replica.
    pool: PgPool,
    master: Arc<MasterKey>,
    lookup: tokio::sync::OnceCell<Zeroizing<[u8; 32]>>,
    /// Keys as last read, within their lease (see the module's notes).
    known: moka::sync::Cache<Uuid, Remembered>,
    /// Answers revealed before, by their sealed bytes ([`Privacy::reveal_body`]).
    revealed: moka::sync::Cache<bytes::Bytes, Arc<RevealedBody>>,
    /// Live keys used in the second half of their lease, to be read again
    /// ([`Privacy::renew`]), and whether a renewal is under way.
    due: std::sync::Mutex<HashSet<Uuid>>,
    renewing: AtomicBool,
    /// Keys read for a reveal that found none within its lease, and keys renewed.
    read_for_reveal: AtomicU64,
    renewed: AtomicU64,
}

/// Clears a flag when dropped, unless disarmed.
struct ResetOnDrop<'a>(Option<&'a AtomicBool>);

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(flag) = self.0 {
            flag.store(false, Ordering::Release);
        }
    }
}

/// A revealed answer: its bytes, and each key it used with whether that key was live
/// (else destroyed). It is served again only while every key is still so.
struct RevealedBody {
    body: bytes::Bytes,
    keys: Vec<(Uuid, bool)>,
}

impl std::fmt::Debug for Privacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Privacy")
    }
}

impl Privacy {
    pub fn new(pool: PgPool, master: Arc<MasterKey>) -> Privacy {
        // No time-to-live: a live key's lease is checked on every use, and a destroyed
        // key stays destroyed.
        let known = moka::sync::Cache::new(KEY_CACHE_MAX);
        let revealed = moka::sync::Cache::builder()
            .max_capacity(REVEALED_MAX_BYTES)
            .weigher(|sealed: &bytes::Bytes, r: &Arc<RevealedBody>| {
                let keys = r.keys.len() * std::mem::size_of::<(Uuid, bool)>();
                u32::try_from(sealed.len() + r.body.len() + keys + REVEALED_ENTRY_OVERHEAD).unwrap_or(u32::MAX)
            })
            .time_to_live(KEY_LEASE)
            .build();
        Privacy {
            inner: Arc::new(Inner {
                pool,
                master,
                lookup: tokio::sync::OnceCell::new(),
                known,
                revealed,
                due: std::sync::Mutex::new(HashSet::new()),
                renewing: AtomicBool::new(false),
                read_for_reveal: AtomicU64::new(0),
                renewed: AtomicU64::new(0),
            }),
        }
    }

    /// Seals an account's personal values (its `owner` and `pii.` metadata) under its
    /// subject's key, created if the subject has no live key.
    pub async fn seal_opening(&self, c: &mut OpenAccount) -> Result<Option<OwnerIndexRow>, KeyError> {
        let Some(subject) = c.subject.clone() else { return Ok(None) };
        let personal_metadata = c
            .metadata
            .as_ref()
            .and_then(Value::as_object)
            .is_some_and(|m| m.keys().any(|k| ledger_domain::is_personal_key(k)));
        if c.owner.is_none() && !personal_metadata {
            return Ok(None);
        }
        let mut row = None;
        let key = self.key_for(&subject).await?;
        // Whatever a client sent is sealed, a text that looks sealed included: only
        // this code makes sealed values.
        if let Some(owner) = c.owner.as_mut() {
            let hash = self.owner_hash(owner).await?;
            *owner = key.seal(&Value::String(std::mem::take(owner)));
            row = Some(OwnerIndexRow { owner_hash: hash, owner_sealed: owner.clone(), key_id: key.id });
        }
        if let Some(map) = c.metadata.as_mut().and_then(Value::as_object_mut) {
            for (k, v) in map.iter_mut() {
                if ledger_domain::is_personal_key(k) {
                    *v = Value::String(key.seal(v));
                }
            }
        }
        Ok(row)
    }

    /// A new data key: its id, its bytes, and its bytes sealed under the master key.
    fn fresh_key(&self) -> (Uuid, Zeroizing<[u8; 32]>, Vec<u8>) {
        let id = Uuid::now_v7();
        let mut bytes = Zeroizing::new([0u8; 32]);
        SystemRandom::new().fill(bytes.as_mut()).expect("the system's random source works");
        let wrapped = self.inner.master.seal(bytes.as_ref(), &wrap_context(id));
        (id, bytes, wrapped)
    }

    /// The subject's live key: a new one, or the one another command made before. Read
    /// from the primary every time (never cached): a key another process destroyed
    /// must not seal anything more. One destroyed between this and the append is
    /// caught there, under the head lock (`store::append`).
    async fn key_for(&self, subject: &str) -> Result<SubjectKey, KeyError> {
        for _ in 0..3 {
            let (id, bytes, wrapped) = self.fresh_key();
            // Two commands may make one at once: the live index keeps one, and the
            // other reads it.
            // Committed without waiting for its flush: an opening sealed under it commits
            // later, and its own flush carries this row's WAL with it; a key lost in a
            // crash sealed nothing that was recorded.
            let inserted = sqlx::query(
                "with quick as (select set_config('synchronous_commit', 'off', true))
                 insert into subject_keys (id, subject, wrapped) select $1, $2, $3 from quick
                 on conflict (subject) where wrapped is not null do nothing",
            )
            .bind(id)
            .bind(subject)
            .bind(&wrapped)
            .execute(&self.inner.pool)
            .await?
            .rows_affected();
            if inserted == 1 {
                return SubjectKey::from_bytes(id, bytes.as_ref());
            }
            let found: Option<(Uuid, Vec<u8>)> =
                sqlx::query_as("select id, wrapped from subject_keys where subject = $1 and wrapped is not null")
                    .bind(subject)
                    .fetch_optional(&self.inner.pool)
                    .await?;
            if let Some((id, wrapped)) = found {
                let bytes = self.inner.master.open(&wrapped, &wrap_context(id))?;
                return SubjectKey::from_bytes(id, &bytes);
            }
        }
        Err(KeyError::Unopenable)
    }

    /// Reveals the personal values in `value` (see the module's notes): the value
    /// where its key exists, the erased form where it was destroyed.
    pub async fn reveal(&self, value: &mut Value) -> Result<(), KeyError> {
        self.reveal_until(value).await.map(|_| ())
    }

    /// [`Privacy::reveal`], and when the earliest lease of the live keys it used ends:
    /// what carries the values must be sent by then (a webhook's request). Every lease
    /// is checked after the last wait, just before the values are opened: a key whose
    /// lease ended meanwhile (a slow pool, a slow primary) is read again once, and the
    /// values are withheld ([`KeyError::LeaseEnded`]) if it ended again.
    pub async fn reveal_until(&self, value: &mut Value) -> Result<Option<Instant>, KeyError> {
        self.reveal_in(value).await.map(|(lease_end, _)| lease_end)
    }

    /// [`Privacy::reveal_until`], and the keys it used with whether each was live (else
    /// destroyed); `None` when a value names a key the database does not hold.
    async fn reveal_in(&self, value: &mut Value) -> Result<(Option<Instant>, Option<Vec<(Uuid, bool)>>), KeyError> {
        let mut ids = Vec::new();
        collect(value, &mut ids);
        if ids.is_empty() {
            return Ok((None, Some(Vec::new())));
        }
        ids.sort_unstable();
        ids.dedup();
        for _ in 0..2 {
            let (keys, lease_end) = self.keys(&ids).await?;
            if lease_end.is_none_or(|end| Instant::now() < end) {
                replace(value, &keys)?;
                let used = ids.iter().map(|id| keys.get(id).map(|k| (*id, k.is_some()))).collect();
                return Ok((lease_end, used));
            }
        }
        Err(KeyError::LeaseEnded)
    }

    /// Reveals a JSON answer given as bytes ([`Privacy::reveal`]); `None` if it is not
    /// JSON. An answer revealed before is served again from memory, without parsing,
    /// while every key it used is as it was then: each live one still within its lease
    /// (checked here, right before the bytes are handed back, as a reveal checks its
    /// keys right before it opens), each destroyed one destroyed. Its bytes are the
    /// same as a reveal of the same answer would give now: the same sealed values and
    /// the same keys.
    pub async fn reveal_body(&self, sealed: &bytes::Bytes) -> Result<Option<bytes::Bytes>, KeyError> {
        let keepable = sealed.len() <= REVEALED_ENTRY_MAX;
        if keepable
            && let Some(hit) = self.inner.revealed.get(sealed)
            && self.unchanged(&hit.keys)
        {
            return Ok(Some(hit.body.clone()));
        }
        let Ok(mut value) = serde_json::from_slice::<Value>(sealed) else { return Ok(None) };
        let (_, used) = self.reveal_in(&mut value).await?;
        let body = serde_json::to_vec(&value).map_err(|_| KeyError::Unopenable)?;
        let body = bytes::Bytes::from(body.into_boxed_slice());
        // Only answers that opened or erased something: one that merely holds the
        // prefix (a client's text) is not worth a place.
        if let Some(keys) = used
            && keepable
            && !keys.is_empty()
        {
            // Copied: the answer's bytes may share a larger buffer.
            let sealed = bytes::Bytes::copy_from_slice(sealed);
            self.inner.revealed.insert(sealed, Arc::new(RevealedBody { body: body.clone(), keys }));
        }
        Ok(Some(body))
    }

    /// How many keys this process read because a reveal found them unknown or out of
    /// their lease, and how many it renewed before their lease ended.
    pub fn key_reads(&self) -> (u64, u64) {
        (self.inner.read_for_reveal.load(Ordering::Relaxed), self.inner.renewed.load(Ordering::Relaxed))
    }

    /// Whether each key is as it was: live within its lease, or destroyed.
    fn unchanged(&self, keys: &[(Uuid, bool)]) -> bool {
        keys.iter().all(|(id, live)| match (self.inner.known.get(id), live) {
            (Some(Remembered::Live(_, read_at, due)), true) => self.in_lease(*id, read_at, &due),
            (Some(Remembered::Destroyed), false) => true,
            _ => false,
        })
    }

    /// Whether a live key read at `read_at` is within its lease; one in the second
    /// half of it comes due for renewal.
    fn in_lease(&self, id: Uuid, read_at: Instant, due: &AtomicBool) -> bool {
        let age = read_at.elapsed();
        if age >= KEY_LEASE / 2 && age < KEY_LEASE && !due.swap(true, Ordering::AcqRel) {
            self.due(id);
        }
        age < KEY_LEASE
    }

    /// Marks a live key for renewal (once per lease), and starts a renewal unless one
    /// is under way.
    fn due(&self, id: Uuid) {
        self.inner.due.lock().expect("the due set is never poisoned").insert(id);
        if !self.inner.renewing.swap(true, Ordering::AcqRel) {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                self.inner.renewing.store(false, Ordering::Release);
                return;
            };
            let this = self.clone();
            runtime.spawn(async move { this.renew().await });
        }
    }

    /// Reads again the keys that came due, gathered for [`RENEW_GATHER`], until none
    /// are left. A live one's lease starts again from before that read was sent (the
    /// same rule as any read); a destroyed one is remembered as destroyed. Nothing here
    /// is needed for correctness: every use checks its key's lease, and a key whose
    /// renewal failed or came late is read by the reveal that needs it.
    async fn renew(&self) {
        // Should this task end other than below (a panic, a runtime shutting down),
        // the next key that comes due starts another.
        let mut reset = ResetOnDrop(Some(&self.inner.renewing));
        loop {
            tokio::time::sleep(RENEW_GATHER).await;
            let ids: Vec<Uuid> =
                std::mem::take(&mut *self.inner.due.lock().expect("never poisoned")).into_iter().collect();
            if ids.is_empty() {
                self.inner.renewing.store(false, Ordering::Release);
                // A key that came due between the take and the store started nothing.
                if self.inner.due.lock().expect("never poisoned").is_empty()
                    || self.inner.renewing.swap(true, Ordering::AcqRel)
                {
                    reset.0 = None;
                    return;
                }
                continue;
            }
            for chunk in ids.chunks(RENEW_CHUNK) {
                match tokio::time::timeout(KEY_LEASE, self.renew_chunk(chunk)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "keys not renewed"),
                    Err(_) => tracing::debug!("keys not renewed in time"),
                }
            }
        }
    }

    async fn renew_chunk(&self, ids: &[Uuid]) -> Result<(), sqlx::Error> {
        let read_at = Instant::now();
        let rows: Vec<(Uuid, bool)> =
            sqlx::query_as("select id, wrapped is not null from subject_keys where id = any($1)")
                .bind(ids)
                .fetch_all(&self.inner.pool)
                .await?;
        self.inner.renewed.fetch_add(rows.len() as u64, Ordering::Relaxed);
        for (id, live) in rows {
            if live {
                self.renewed(id, read_at);
            } else {
                self.remember(id, None, read_at);
            }
        }
        Ok(())
    }

    /// A live key's lease starts again at `read_at` (a key's bytes never change while
    /// it lives: only its lease moves on), unless it is remembered as destroyed or
    /// from a later read, or forgotten.
    fn renewed(&self, id: Uuid, read_at: Instant) {
        self.inner.known.entry(id).and_compute_with(|current| match current.map(moka::Entry::into_value) {
            Some(Remembered::Live(key, at, _)) if at < read_at => Op::Put(Remembered::live(key, read_at)),
            _ => Op::Nop,
        });
    }

    /// Remembers what a read begun at `read_at` found of a key: live (`Some`), or
    /// destroyed. One step per key, so a key once remembered as destroyed never comes
    /// back, and a lease never moves back to an earlier read. A key seen destroyed
    /// drops every revealed answer (none would be served, yet none lingers either).
    fn remember(&self, id: Uuid, key: Option<Arc<SubjectKey>>, read_at: Instant) {
        let mut destroyed_now = false;
        self.inner.known.entry(id).and_compute_with(|current| match (current.map(moka::Entry::into_value), key) {
            (Some(Remembered::Destroyed), _) => Op::Nop,
            (Some(Remembered::Live(_, at, _)), Some(_)) if at >= read_at => Op::Nop,
            (_, Some(key)) => Op::Put(Remembered::live(key, read_at)),
            (current, None) => {
                destroyed_now = current.is_some();
                Op::Put(Remembered::Destroyed)
            }
        });
        if destroyed_now {
            self.inner.revealed.invalidate_all();
        }
    }

    /// Withholds the personal values in `value`: each sealed one as if erased, without
    /// asking the database (for answers given while it cannot be asked: a value must
    /// never be shown under a key whose destruction cannot be ruled out).
    pub fn withhold(value: &mut Value) {
        let mut ids = Vec::new();
        collect(value, &mut ids);
        let keys: HashMap<Uuid, Option<Arc<SubjectKey>>> = ids.into_iter().map(|id| (id, None)).collect();
        replace(value, &keys).expect("nothing is opened");
    }

    /// The keys named, as they are now: `Some` if live, `None` if destroyed. A key
    /// the database has never held is left out (the value is not one of ours). Keys
    /// remembered within their lease (or as destroyed) are not read again.
    /// Also returns when the earliest lease of the live keys ends.
    async fn keys(&self, ids: &[Uuid]) -> Result<(HashMap<Uuid, Option<Arc<SubjectKey>>>, Option<Instant>), KeyError> {
        let mut keys = HashMap::with_capacity(ids.len());
        let mut lease_end: Option<Instant> = None;
        let mut leased = |read_at: Instant| {
            let end = read_at + KEY_LEASE;
            lease_end = Some(lease_end.map_or(end, |e| e.min(end)));
        };
        let mut unknown = Vec::new();
        for id in ids {
            match self.inner.known.get(id) {
                Some(Remembered::Live(key, read_at, due)) if self.in_lease(*id, read_at, &due) => {
                    leased(read_at);
                    keys.insert(*id, Some(key));
                }
                Some(Remembered::Destroyed) => {
                    keys.insert(*id, None);
                }
                _ => unknown.push(*id),
            }
        }
        if unknown.is_empty() {
            return Ok((keys, lease_end));
        }
        // Taken before the read is sent: the lease ends no later than KEY_LEASE after
        // a snapshot that could still find the key live.
        let read_at = Instant::now();
        self.inner.read_for_reveal.fetch_add(unknown.len() as u64, Ordering::Relaxed);
        // One key (an account's answer, the usual case) by `id = $1`: Postgres plans that
        // once per session, where `id = any($1)` was planned again on every read (its
        // custom plan over a short array always looks cheaper than the generic one).
        let rows: Vec<(Uuid, Option<Vec<u8>>)> = match unknown.as_slice() {
            [one] => {
                sqlx::query_as("select id, wrapped from subject_keys where id = $1")
                    .bind(one)
                    .fetch_all(&self.inner.pool)
                    .await?
            }
            _ => {
                sqlx::query_as("select id, wrapped from subject_keys where id = any($1)")
                    .bind(&unknown)
                    .fetch_all(&self.inner.pool)
                    .await?
            }
        };
        for (id, wrapped) in rows {
            let key = match wrapped {
                Some(w) => {
                    let bytes = self.inner.master.open(&w, &wrap_context(id))?;
                    let key = Arc::new(SubjectKey::from_bytes(id, &bytes)?);
                    self.remember(id, Some(key.clone()), read_at);
                    leased(read_at);
                    Some(key)
                }
                None => {
                    self.remember(id, None, read_at);
                    None
                }
            };
            keys.insert(id, key);
        }
        Ok((keys, lease_end))
    }

    /// The owner look-up's hash of `owner` (HMAC-SHA-256 under the ledger's look-up key).
    pub async fn owner_hash(&self, owner: &str) -> Result<Vec<u8>, KeyError> {
        self.mac(&[owner.as_bytes()]).await
    }

    /// HMAC-SHA-256 of `parts` under the ledger's look-up key.
    async fn mac(&self, parts: &[&[u8]]) -> Result<Vec<u8>, KeyError> {
        let key = self.inner.lookup.get_or_try_init(|| self.lookup_key()).await?;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_ref()).expect("HMAC takes any key length");
        parts.iter().for_each(|p| mac.update(p));
        Ok(mac.finalize().into_bytes().to_vec())
    }

    /// The sealed forms of `owner` that accounts were opened with (the owner look-up's
    /// first half), at most `limit`. Read on the primary: an erased subject's rows are
    /// gone from it as soon as the erasure answered, whatever a replica still holds.
    /// While the primary does not answer, read on `fallback` (the replica eventual reads
    /// use, whose answers are then marked stale and whose values are withheld): it may
    /// still find an account erased just before the outage, never its values.
    pub async fn sealed_owners(
        &self,
        owner: &str,
        limit: i64,
        fallback: Option<&PgPool>,
    ) -> Result<Vec<String>, KeyError> {
        let hash = self.owner_hash(owner).await?;
        let query = |pool| {
            sqlx::query_scalar("select owner_sealed from owner_index where owner_hash = $1 limit $2")
                .bind(hash.clone())
                .bind(limit)
                .fetch_all(pool)
        };
        match query(&self.inner.pool).await {
            Ok(rows) => Ok(rows),
            Err(e) => match fallback {
                Some(pool) if crate::store::db_fault(&e) == crate::store::DbFault::Unavailable => {
                    Ok(query(pool).await?)
                }
                _ => Err(e.into()),
            },
        }
    }

    /// A request's fingerprint keyed under the ledger's look-up key (for requests that
    /// hold personal values: see `CommandBody::keyed` in the API).
    pub async fn keyed_fingerprint(&self, plain: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.mac(&[b"request-fingerprint\0", plain]).await
    }

    /// The ledger's look-up key: kept sealed in `key_material`, made at first use.
    async fn lookup_key(&self) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        const NAME: &str = "owner-lookup-key";
        let stored = || async {
            sqlx::query_scalar::<_, Vec<u8>>("select value from key_material where name = $1")
                .bind(NAME)
                .fetch_optional(&self.inner.pool)
                .await
        };
        if stored().await?.is_none() {
            let mut fresh = Zeroizing::new([0u8; 32]);
            SystemRandom::new().fill(fresh.as_mut()).expect("the system's random source works");
            sqlx::query("insert into key_material (name, value) values ($1, $2) on conflict do nothing")
                .bind(NAME)
                .bind(self.inner.master.seal(fresh.as_ref(), NAME.as_bytes()))
                .execute(&self.inner.pool)
                .await?;
        }
        let sealed = stored().await?.ok_or(KeyError::Missing)?;
        let opened = self.inner.master.open(&sealed, NAME.as_bytes())?;
        let key: [u8; 32] = opened.as_slice().try_into().map_err(|_| KeyError::Unopenable)?;
        Ok(Zeroizing::new(key))
    }
}

/// Whether an object is an account (a view, a state, an opening's data): the only
/// objects whose `owner` and `metadata.pii.…` are personal values. A field named
/// `owner` elsewhere (a deposit's metadata) is a client's value like any other, never
/// opened: no client can have the service open a sealed value it copied there.
fn is_account(map: &serde_json::Map<String, Value>) -> bool {
    map.get("system").is_some_and(Value::is_boolean) && map.contains_key("currency")
}

/// The key ids of the sealed personal values of the accounts in `value`.
fn collect(value: &Value, ids: &mut Vec<Uuid>) {
    match value {
        Value::Object(map) => {
            if is_account(map) {
                ids.extend(map.get("owner").and_then(Value::as_str).and_then(sealed_key_id));
                if let Some(meta) = map.get("metadata").and_then(Value::as_object) {
                    let personal = meta.iter().filter(|(k, _)| ledger_domain::is_personal_key(k));
                    ids.extend(personal.filter_map(|(_, v)| v.as_str().and_then(sealed_key_id)));
                }
            }
            map.values().for_each(|v| collect(v, ids));
        }
        Value::Array(items) => items.iter().for_each(|v| collect(v, ids)),
        _ => {}
    }
}

/// What a personal member's sealed value becomes.
enum Revealed {
    Value(Value),
    Erased,
    Unchanged,
}

fn open_member(text: &str, keys: &HashMap<Uuid, Option<Arc<SubjectKey>>>) -> Result<Revealed, KeyError> {
    let Some(id) = sealed_key_id(text) else { return Ok(Revealed::Unchanged) };
    match keys.get(&id) {
        None => Ok(Revealed::Unchanged),
        Some(None) => Ok(Revealed::Erased),
        Some(Some(key)) => key.open(text).map(Revealed::Value),
    }
}

fn replace(value: &mut Value, keys: &HashMap<Uuid, Option<Arc<SubjectKey>>>) -> Result<(), KeyError> {
    match value {
        Value::Object(map) => {
            if is_account(map) {
                if let Some(owner) = map.get_mut("owner")
                    && let Some(text) = owner.as_str()
                {
                    match open_member(text, keys)? {
                        Revealed::Value(clear) => *owner = clear,
                        Revealed::Erased => *owner = Value::Null,
                        Revealed::Unchanged => {}
                    }
                }
                if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
                    let mut erased = Vec::new();
                    for (k, v) in meta.iter_mut().filter(|(k, _)| ledger_domain::is_personal_key(k)) {
                        let Some(text) = v.as_str() else { continue };
                        match open_member(text, keys)? {
                            Revealed::Value(clear) => *v = clear,
                            Revealed::Erased => erased.push(k.clone()),
                            Revealed::Unchanged => {}
                        }
                    }
                    for k in erased {
                        meta.remove(&k);
                    }
                }
            }
            map.values_mut().try_for_each(|v| replace(v, keys))
        }
        Value::Array(items) => items.iter_mut().try_for_each(|v| replace(v, keys)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SubjectKey {
        SubjectKey::from_bytes(Uuid::now_v7(), &[7u8; 32]).expect("a key")
    }

    #[test]
    fn sealed_values_open_with_their_key_only_and_keep_their_type() {
        let k = key();
        for v in [Value::String("alice@example.com".into()), serde_json::json!(42), serde_json::json!(true)] {
            let sealed = k.seal(&v);
            assert!(sealed.starts_with(SEALED_PREFIX));
            assert!(!sealed.contains("alice"), "no plaintext in the sealed form");
            assert_eq!(sealed_key_id(&sealed), Some(k.id));
            assert_eq!(k.open(&sealed).expect("opens"), v);
            let other = SubjectKey::from_bytes(k.id, &[8u8; 32]).expect("a key");
            assert!(other.open(&sealed).is_err(), "another key");
            let mut bytes = B64.decode(sealed.strip_prefix(SEALED_PREFIX).expect("prefix")).expect("b64");
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            assert!(k.open(&format!("{SEALED_PREFIX}{}", B64.encode(bytes))).is_err(), "a changed byte");
        }
        assert_ne!(k.seal(&serde_json::json!("x")), k.seal(&serde_json::json!("x")), "a fresh nonce each time");
        for junk in ["", "pii:v1:", "pii:v1:!!!", "pii:v1:AAAA", "owner@example.com"] {
            assert_eq!(sealed_key_id(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn reveal_replaces_personal_members_of_accounts_only_and_erases_by_kind() {
        let (live, gone) = (key(), key());
        let (gone_id, live_id) = (gone.id, live.id);
        let mut value = serde_json::json!({
            "account": { "currency": "EUR", "system": false, "owner": live.seal(&serde_json::json!("alice")),
                         "metadata": { "pii.age": live.seal(&serde_json::json!(40)) } },
            "deposit": { "currency": "EUR", "metadata": { "owner": live.seal(&serde_json::json!("copied")) } },
            "events": [{ "data": { "currency": "EUR", "system": false, "owner": gone.seal(&serde_json::json!("bob")),
                                   "metadata": { "pii.email": gone.seal(&serde_json::json!("b@x")), "tier": 1 } } }],
        });
        let mut ids = Vec::new();
        collect(&value, &mut ids);
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 2);
        let keys = HashMap::from([(live_id, Some(Arc::new(live))), (gone_id, None)]);
        replace(&mut value, &keys).expect("reveals");
        assert_eq!(value["account"]["owner"], "alice");
        assert_eq!(value["account"]["metadata"]["pii.age"], 40);
        assert!(
            value["deposit"]["metadata"]["owner"].as_str().is_some_and(|s| s.starts_with(SEALED_PREFIX)),
            "a field named owner outside an account is never opened"
        );
        assert_eq!(value["events"][0]["data"]["owner"], Value::Null);
        assert_eq!(value["events"][0]["data"]["metadata"], serde_json::json!({ "tier": 1 }));
    }

    /// What a process remembers of a key only moves forward: a key seen destroyed
    /// never comes back (neither by a read begun earlier nor by a renewal), a lease
    /// never moves back to an earlier read, and seeing a live key destroyed drops the
    /// revealed answers.
    #[tokio::test]
    async fn a_destroyed_key_never_comes_back_and_a_lease_never_moves_back() {
        let pool =
            sqlx::postgres::PgPoolOptions::new().connect_lazy("postgres://nobody@127.0.0.1:1/none").expect("lazy");
        let privacy = Privacy::new(pool, Arc::new(MasterKey::from_bytes(&[1u8; 32])));
        let k = Arc::new(key());
        let t0 = Instant::now();
        let (t1, t2) = (t0 + Duration::from_millis(10), t0 + Duration::from_millis(20));
        let lease = |p: &Privacy| match p.inner.known.get(&k.id) {
            Some(Remembered::Live(_, at, _)) => Some(at),
            Some(Remembered::Destroyed) => None,
            None => panic!("remembered"),
        };
        privacy.remember(k.id, Some(k.clone()), t1);
        privacy.remember(k.id, Some(k.clone()), t0);
        assert_eq!(lease(&privacy), Some(t1), "an earlier read does not move the lease back");
        privacy.renewed(k.id, t0);
        assert_eq!(lease(&privacy), Some(t1), "nor does an earlier renewal");
        privacy.renewed(k.id, t2);
        assert_eq!(lease(&privacy), Some(t2), "a later renewal moves it on");
        privacy.inner.revealed.insert(
            bytes::Bytes::from_static(b"sealed"),
            Arc::new(RevealedBody { body: bytes::Bytes::from_static(b"open"), keys: vec![(k.id, true)] }),
        );
        privacy.remember(k.id, None, t0);
        assert_eq!(lease(&privacy), None, "destroyed, whenever the read that found it began");
        privacy.inner.revealed.run_pending_tasks();
        assert_eq!(privacy.inner.revealed.entry_count(), 0, "revealed answers dropped");
        privacy.remember(k.id, Some(k.clone()), t2 + Duration::from_millis(10));
        privacy.renewed(k.id, t2 + Duration::from_millis(20));
        assert_eq!(lease(&privacy), None, "a destroyed key never comes back");
        let fresh = Uuid::now_v7();
        privacy.renewed(fresh, t2);
        assert!(privacy.inner.known.get(&fresh).is_none(), "a renewal remembers nothing new");
    }

    #[test]
    fn openings_name_their_keys_and_say_whether_all_is_sealed() {
        let k = key();
        let meta = serde_json::json!({ "pii.a": k.seal(&serde_json::json!("x")), "tier": "gold" });
        assert_eq!(opening_keys(Some(&k.seal(&serde_json::json!("o"))), Some(&meta)), (vec![k.id], true));
        assert_eq!(opening_keys(Some("clear@example.com"), None), (vec![], false));
        assert_eq!(opening_keys(None, Some(&serde_json::json!({ "pii.a": 5 }))), (vec![], false));
        assert_eq!(opening_keys(None, None), (vec![], true));
    }
}

//! Data written before personal data was sealed (docs/PRIVACY.md, "Data written before
//! personal data was sealed"): sealed in place, once, with the chain re-anchored.
//!
//! Versions before 1.2 wrote an account's `owner` and metadata in clear into the log,
//! and from there into the read model and into idempotency records. They cannot stay
//! (a dump would show them, and an erasure could not remove them), and they cannot be
//! sealed without changing the events the chain covers. So the first start of this
//! version, under the head lock (no append runs meanwhile, in any process):
//!
//! 1. gives every customer account opened without a subject its own id as subject (its
//!    subject stream gets the opening as its first entry), and seals its `owner` and
//!    `pii.` metadata under a new key of that subject, in the event and in the read model;
//! 2. seals the same values in idempotency records of the forms that kept a copy of
//!    what was recorded (records written before issue 27; they expire within a day);
//! 3. recomputes the chain from the first changed event to the head, and appends one
//!    `ChainReanchored` event naming the head before (position and hash) and the hash at
//!    that position after, so whoever kept the old head sees where and why it changed.
//!
//! All of it in one transaction: a crash leaves the log as it was, and the next start
//! does it again. Old JetStream messages of `AccountOpened` are purged by the caller
//! ([`purge_legacy_messages`]) once this has committed.

use super::{Privacy, SubjectKey};
use crate::hash::GENESIS_HASH;
use crate::keys::KeyError;
use crate::store::{EventMetadata, EventStore, RecordedEvent, append::recompute_hash};
use chrono::{DateTime, SubsecRound, Utc};
use ledger_domain::events::ChainReanchored;
use ledger_domain::{Event, chain_stream_id, is_personal_key, subject_stream_id};
use serde_json::Value;
use sqlx::Row;
use std::collections::HashMap;
use uuid::Uuid;

/// How many events the chain is recomputed over per read.
const CHUNK: i64 = 5_000;

/// What [`Privacy::seal_legacy`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reanchored {
    /// Account openings given a subject (and their personal values sealed).
    pub rewritten: u64,
    pub first_position: i64,
    /// The position of the `ChainReanchored` event.
    pub position: i64,
}

impl Privacy {
    /// Seals what an earlier version kept in clear (see the module's notes); `None`
    /// when there is nothing to seal (every start after the first).
    pub async fn seal_legacy(&self) -> Result<Option<Reanchored>, KeyError> {
        // Cheap when there is nothing: a partial index holds exactly these rows.
        let any: bool = sqlx::query_scalar(
            "select exists (select 1 from events where type = 'AccountOpened' and data ->> 'subject' is null
                                                    and not coalesce((data ->> 'system')::boolean, false))",
        )
        .fetch_one(&self.inner.pool)
        .await?;
        if !any {
            return Ok(None);
        }
        let mut tx = self.inner.pool.begin().await?;
        let head = sqlx::query("select position, hash, recorded_at, clock_timestamp() as now from log_head for update")
            .fetch_one(&mut *tx)
            .await?;
        let (head_position, head_hash): (i64, Vec<u8>) = (head.try_get("position")?, head.try_get("hash")?);
        let head_time: DateTime<Utc> = head.try_get("recorded_at")?;
        let now: DateTime<Utc> = head.try_get("now")?;
        let legacy: Vec<(i64, Value)> = sqlx::query_as(
            "select position, data from events where type = 'AccountOpened' and data ->> 'subject' is null
                                              and not coalesce((data ->> 'system')::boolean, false)
             order by position",
        )
        .fetch_all(&mut *tx)
        .await?;
        let Some(first_position) = legacy.first().map(|(p, _)| *p) else { return Ok(None) };
        // The one sanctioned change of recorded events (recorded itself, below): the
        // log's guard is lifted inside this transaction only, by the schema's owner
        // (who runs migrations); a rollback restores it with everything else.
        sqlx::query("alter table events disable trigger events_append_only").execute(&mut *tx).await?;

        // 1. The openings, and the read model's copy of what they sealed.
        let mut keys: HashMap<String, SubjectKey> = HashMap::new();
        for (position, mut data) in legacy.iter().cloned() {
            let account = data["account_id"].as_str().unwrap_or_default().to_owned();
            let subject = account.clone();
            if has_personal(&data) {
                let key = self.new_key(&mut tx, &subject).await?;
                if let Some(owner) = data["owner"].as_str().map(str::to_owned) {
                    let hash = self.owner_hash(&owner).await?;
                    seal_object(&mut data, &key);
                    sqlx::query("insert into owner_index (owner_hash, owner_sealed, key_id) values ($1, $2, $3)")
                        .bind(hash)
                        .bind(data["owner"].as_str())
                        .bind(key.id)
                        .execute(&mut *tx)
                        .await?;
                } else {
                    seal_object(&mut data, &key);
                }
                keys.insert(subject.clone(), key);
            }
            data["subject"] = Value::String(subject.clone());
            sqlx::query("update events set data = $2 where position = $1")
                .bind(position)
                .bind(&data)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "insert into stream_entries (stream_id, version, position)
                 select $1, coalesce(max(version), 0) + 1, $2 from stream_entries where stream_id = $1",
            )
            .bind(subject_stream_id(&subject))
            .bind(position)
            .execute(&mut *tx)
            .await?;
            sqlx::query("update accounts_view set owner = $2, metadata = $3, subject = $4 where id = $1")
                .bind(Uuid::parse_str(&account).map_err(|_| KeyError::Unopenable)?)
                .bind(data["owner"].as_str())
                .bind(data.get("metadata").filter(|m| !m.is_null()))
                .bind(&subject)
                .execute(&mut *tx)
                .await?;
        }

        // Snapshots of an earlier `evolve` (with owners in clear), written by a process of
        // an earlier version after the migration deleted the others.
        sqlx::query("delete from snapshots where evolve_version < $1")
            .bind(ledger_domain::EVOLVE_VERSION)
            .execute(&mut *tx)
            .await?;

        // 2. Idempotency records that kept a copy of what was recorded.
        let records: Vec<(String, String, Option<Value>, Option<Value>)> = sqlx::query_as(
            "select principal, key, outcome, body from idempotency_keys where outcome is not null or body is not null",
        )
        .fetch_all(&mut *tx)
        .await?;
        for (principal, key, mut outcome, mut body) in records {
            let mut changed = false;
            for v in [outcome.as_mut(), body.as_mut()].into_iter().flatten() {
                // Every copy, not only up to the first that changed.
                changed |= seal_copies(v, &keys);
            }
            if changed {
                sqlx::query("update idempotency_keys set outcome = $3, body = $4 where principal = $1 and key = $2")
                    .bind(principal)
                    .bind(key)
                    .bind(outcome)
                    .bind(body)
                    .execute(&mut *tx)
                    .await?;
            }
        }

        // 3. The chain, from the first changed event, and its re-anchoring.
        let mut previous: Vec<u8> = if first_position == 1 {
            GENESIS_HASH.to_vec()
        } else {
            sqlx::query_scalar("select hash from events where position = $1")
                .bind(first_position - 1)
                .fetch_one(&mut *tx)
                .await?
        };
        let mut after = first_position - 1;
        while after < head_position {
            let page = EventStore::read_range(&mut *tx, after, (after + CHUNK).min(head_position)).await?;
            let (mut positions, mut hashes) = (Vec::with_capacity(page.len()), Vec::with_capacity(page.len()));
            for e in &page {
                previous = recompute_hash(&previous, e).to_vec();
                positions.push(e.position);
                hashes.push(previous.clone());
            }
            sqlx::query(
                "update events e set hash = u.hash from unnest($1::int8[], $2::bytea[]) as u(position, hash)
                 where e.position = u.position",
            )
            .bind(&positions)
            .bind(&hashes)
            .execute(&mut *tx)
            .await?;
            after = page.last().map_or(head_position, |e| e.position);
        }
        // The Merkle tree (issue 30) over the rewritten positions no longer matches them:
        // it is cut back to the last position before them, and grows again over the
        // new hashes (heads signed over the old ones stay as evidence of the old chain,
        // which `ChainReanchored` names).
        let keep = first_position - 1;
        let (tree_size,): (i64,) =
            sqlx::query_as("select size from merkle_state for update").fetch_one(&mut *tx).await?;
        if tree_size > keep {
            sqlx::query("delete from merkle_nodes where (index + 1) * (1::int8 << level) > $1")
                .bind(keep)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "update merkle_state set size = $1, last_hash = (select hash from events where position = $1),
                        stopped_at = null,
                        tail = coalesce((select array_agg(sha256('\\x00'::bytea || hash) order by position) from events
                                         where position > $1 - $1 % 16 and position <= $1), '{}')",
            )
            .bind(keep)
            .execute(&mut *tx)
            .await?;
        }
        let chain_version: i64 =
            sqlx::query_scalar("select coalesce(max(version), 0) + 1 from stream_entries where stream_id = $1")
                .bind(chain_stream_id())
                .fetch_one(&mut *tx)
                .await?;
        let event = Event::ChainReanchored(ChainReanchored {
            reason: "personal values written in clear by an earlier version were sealed in place".into(),
            first_position,
            before_position: head_position,
            before_hash: hex::encode(&head_hash),
            after_hash: hex::encode(&previous),
            rewritten: legacy.len() as u64,
        });
        let (event_type, data) = event.to_parts();
        let metadata = EventMetadata { actor: "ledger".into(), ..EventMetadata::default() };
        let recorded = RecordedEvent {
            position: head_position + 1,
            event_id: Uuid::now_v7(),
            stream_id: chain_stream_id(),
            version: chain_version,
            event_type: event_type.to_owned(),
            data,
            metadata: serde_json::to_value(&metadata).expect("metadata serializes"),
            recorded_at: now.trunc_subsecs(6).max(head_time),
            decoded: Default::default(),
            hash: None,
        };
        let hash = recompute_hash(&previous, &recorded).to_vec();
        sqlx::query(
            "with ev as (
                insert into events (position, event_id, stream_id, version, type, data, metadata, recorded_at, hash)
                values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ), se as (
                insert into stream_entries (stream_id, version, position) values ($3, $4, $1)
             )
             update log_head set position = $1, hash = $9, recorded_at = $8
             returning pg_notify(ledger_scoped('ledger_events'), $1::text)",
        )
        .bind(recorded.position)
        .bind(recorded.event_id)
        .bind(recorded.stream_id)
        .bind(recorded.version)
        .bind(&recorded.event_type)
        .bind(&recorded.data)
        .bind(&recorded.metadata)
        .bind(recorded.recorded_at)
        .bind(&hash)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("alter table events enable trigger events_append_only").execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Some(Reanchored { rewritten: legacy.len() as u64, first_position, position: recorded.position }))
    }

    /// A new key for a subject that has none, made inside `tx`.
    async fn new_key(&self, tx: &mut sqlx::PgConnection, subject: &str) -> Result<SubjectKey, KeyError> {
        let (id, bytes, wrapped) = self.fresh_key();
        sqlx::query("insert into subject_keys (id, subject, wrapped) values ($1, $2, $3)")
            .bind(id)
            .bind(subject)
            .bind(wrapped)
            .execute(&mut *tx)
            .await?;
        SubjectKey::from_bytes(id, bytes.as_ref())
    }
}

/// Whether a personal value is in clear (not null, not sealed).
fn clear(v: &Value) -> bool {
    !v.is_null() && !v.as_str().is_some_and(|s| s.starts_with(super::SEALED_PREFIX))
}

/// Whether an opening's data holds a personal value in clear.
fn has_personal(data: &Value) -> bool {
    data.get("owner").is_some_and(clear)
        || data
            .get("metadata")
            .and_then(Value::as_object)
            .is_some_and(|m| m.iter().any(|(k, v)| is_personal_key(k) && clear(v)))
}

/// Seals the clear `owner` and `pii.` metadata of an object (an opening's data, an
/// account's state or view) under `key`; returns whether anything changed.
fn seal_object(object: &mut Value, key: &SubjectKey) -> bool {
    let mut changed = false;
    if let Some(owner) = object.get_mut("owner").filter(|v| clear(v)) {
        *owner = Value::String(key.seal(owner));
        changed = true;
    }
    if let Some(map) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for (k, v) in map.iter_mut() {
            if is_personal_key(k) && clear(v) {
                *v = Value::String(key.seal(v));
                changed = true;
            }
        }
    }
    changed
}

/// Seals, anywhere in `value`, the personal values of the objects that name one of
/// `keys`' accounts (by `account_id`, as an opening does, or `id`, as a state or view
/// does); returns whether anything changed.
fn seal_copies(value: &mut Value, keys: &HashMap<String, SubjectKey>) -> bool {
    match value {
        Value::Object(map) => {
            let named = map.get("account_id").or_else(|| map.get("id")).and_then(Value::as_str).map(str::to_owned);
            let mut changed = false;
            for v in map.values_mut() {
                changed |= seal_copies(v, keys);
            }
            if let Some(key) = named.as_ref().and_then(|id| keys.get(id)) {
                changed |= seal_object(value, key);
            }
            changed
        }
        Value::Array(items) => {
            let mut changed = false;
            for v in items {
                changed |= seal_copies(v, keys);
            }
            changed
        }
        _ => false,
    }
}

/// Purges the ledger's `AccountOpened` messages from JetStream once after each
/// re-anchoring (they were published in clear by an earlier version; the projector
/// reads from the log what it had not consumed yet), and records it
/// (`jetstream_purges`), so a purge that failed (NATS down) is done at a later start.
/// Returns how many messages went.
pub async fn purge_legacy_messages(
    pool: &sqlx::PgPool,
    js: &async_nats::jetstream::Context,
    names: &crate::nats::Names,
) -> Result<u64, String> {
    let pending: Vec<i64> = sqlx::query_scalar(
        "select s.position from stream_entries s where s.stream_id = $1
           and not exists (select 1 from jetstream_purges p where p.reanchored_position = s.position)",
    )
    .bind(chain_stream_id())
    .fetch_all(pool)
    .await
    .map_err(|e| e.to_string())?;
    if pending.is_empty() {
        return Ok(0);
    }
    let stream = js.get_stream(names.events_stream()).await.map_err(|e| e.to_string())?;
    let purged = stream.purge().filter(names.event_subject("AccountOpened")).await.map_err(|e| e.to_string())?;
    sqlx::query("insert into jetstream_purges (reanchored_position) select unnest($1::int8[]) on conflict do nothing")
        .bind(&pending)
        .execute(pool)
        .await
        .map_err(|e| e.to_string())?;
    Ok(purged.purged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_of_an_account_are_sealed_wherever_they_are_named() {
        let key = SubjectKey::from_bytes(Uuid::now_v7(), &[3u8; 32]).expect("a key");
        let id = Uuid::now_v7().to_string();
        let mut keys = HashMap::new();
        keys.insert(id.clone(), key);
        let mut outcome = serde_json::json!({ "Recorded": {
            "events": [{ "type": "AccountOpened", "data": { "account_id": id, "owner": "a@x", "metadata": { "pii.n": "A", "t": 1 } } }],
            "streams": [[id, { "version": 1, "aggregate": { "Account": { "id": id, "owner": "a@x", "metadata": null } } }]],
            "other": { "id": "elsewhere", "owner": "not ours" },
        }});
        assert!(seal_copies(&mut outcome, &keys));
        let text = outcome.to_string();
        assert!(!text.contains("a@x") && !text.contains("\"A\""), "{text}");
        assert!(text.contains("not ours"), "another account's object is left alone");
        assert!(!seal_copies(&mut outcome, &keys), "sealed values are not sealed again");
    }
}

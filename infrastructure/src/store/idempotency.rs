//! Idempotency records: looked up per batch by the writer (one primary-key probe per
//! key), claimed by operations before they run, and swept once expired. The records
//! of commands are written by `append_batch`, in the same transaction as their events.
//!
//! An operation (a request that is not one command) follows one protocol
//! (zero-to-production's `try_processing` → `save_response`): [`EventStore::claim_key`]
//! takes the key in a row every process sees before anything runs, or says what the key
//! already holds; [`EventStore::finish_claim`] turns the claim into the final answer
//! (in the operation's own transaction when it has one); a holder that fails releases
//! its lease ([`EventStore::release_claim`]) or lets it lapse. Only final answers are
//! ever stored, and a key stays bound to the fingerprint it was first claimed with.

use super::{EventStore, IdempotencyClaim, IdempotencyRecord, RecordedEvent, StoreError, StoredResponse};
use crate::outcome::{Outcome, OutcomeRef, Recorded, Stored};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// What claiming an operation's key found.
#[derive(Clone, Debug)]
pub enum KeyClaim {
    /// The key is this request's (its holder token) until the lease ends.
    Taken(Uuid),
    /// A request with this key finished: its answer, for a replay.
    Done(Stored),
    /// A request with this key and this fingerprint holds it now.
    InFlight,
    /// The key was claimed or used for a request with another fingerprint.
    Reused,
}

#[derive(sqlx::FromRow)]
struct RecordRow {
    principal: String,
    key: String,
    fingerprint: Vec<u8>,
    status_code: Option<i16>,
    body: Option<Value>,
    outcome: Option<Value>,
    outcome_position: Option<i64>,
    outcome_events: Option<i32>,
    claim: Option<Uuid>,
}

fn record(row: RecordRow) -> Result<((String, String), IdempotencyRecord), sqlx::Error> {
    let RecordRow { principal: p, key: k, fingerprint, status_code: status, body, outcome, claim, .. } = row;
    let stored = match (outcome, claim, row.outcome_position, row.outcome_events) {
        (_, Some(_), _, _) => None,
        (_, None, Some(position), Some(events)) => Some(Stored::Reference(OutcomeRef { position, events })),
        (Some(outcome), None, _, _) => {
            Some(Stored::Outcome(serde_json::from_value(outcome).map_err(sqlx::Error::decode)?))
        }
        (None, None, _, _) => Some(Stored::Response(StoredResponse {
            status: status.and_then(|s| u16::try_from(s).ok()).unwrap_or(500),
            body: body.unwrap_or_default(),
        })),
    };
    Ok(((p, k), IdempotencyRecord { fingerprint, stored }))
}

impl EventStore {
    /// Stored idempotency records (final or claimed) for the given (principal, key) pairs.
    pub async fn idempotency_records(
        &self,
        keys: &[(String, String)],
    ) -> Result<HashMap<(String, String), IdempotencyRecord>, sqlx::Error> {
        Self::records_on(&self.pool, keys).await
    }

    /// [`EventStore::idempotency_records`] for the writer, on its own session that plans
    /// the look-up generically, if it has one ([`EventStore::with_key_lookups`]): no
    /// other caller waits for it, nor it for them.
    pub async fn writer_key_records(
        &self,
        keys: &[(String, String)],
    ) -> Result<HashMap<(String, String), IdempotencyRecord>, sqlx::Error> {
        Self::records_on(self.key_lookups.as_ref().unwrap_or(&self.pool), keys).await
    }

    async fn records_on(
        pool: &sqlx::PgPool,
        keys: &[(String, String)],
    ) -> Result<HashMap<(String, String), IdempotencyRecord>, sqlx::Error> {
        let (principals, names): (Vec<String>, Vec<String>) = keys.iter().cloned().unzip();
        let rows: Vec<RecordRow> = sqlx::query_as(
            // LATERAL: one primary-key probe per key, never a scan of the whole table.
            "select i.principal, i.key, i.fingerprint, i.status_code, i.body, i.outcome, i.outcome_position,
                    i.outcome_events, i.claim
             from unnest($1::text[], $2::text[]) as k(principal, key)
             join lateral (select * from idempotency_keys x where x.principal = k.principal and x.key = k.key offset 0) i on true",
        )
        .bind(&principals)
        .bind(&names)
        .fetch_all(pool)
        .await?;
        rows.into_iter().map(record).collect()
    }

    /// The outcome a reference stands for, read back from the log: the command's events,
    /// and the state right after them of every stream it appended to as a decision
    /// (`Concurrency::Exact`; never a system account's), as the outcome was when the
    /// command was answered.
    pub async fn resolve(&self, r: OutcomeRef) -> Result<Outcome, StoreError> {
        let recorded = EventStore::read_range(&self.pool, r.position - i64::from(r.events), r.position).await?;
        let events = recorded.iter().map(RecordedEvent::event).collect::<Result<Vec<_>, _>>()?;
        let mut streams: Vec<(Uuid, ledger_domain::StreamState)> = Vec::new();
        for event in &events {
            for (id, concurrency) in event.streams() {
                if concurrency == ledger_domain::Concurrency::Exact && !streams.iter().any(|(s, _)| *s == id) {
                    let (state, _) = crate::snapshots::state_at(&self.pool, id, r.position, true).await?;
                    streams.push((id, state));
                }
            }
        }
        let recorded_at = recorded.first().map(|e| e.recorded_at);
        Ok(Outcome::Recorded(Recorded { position: r.position, events, streams, recorded_at }))
    }

    /// Claims `claim`'s key for an operation, for `lease`, in one statement: a new key
    /// is taken; so is one whose holder's lease lapsed without an answer, if this
    /// request has the same fingerprint. Otherwise says what the key holds.
    pub async fn claim_key(&self, claim: &IdempotencyClaim, lease: Duration) -> Result<KeyClaim, sqlx::Error> {
        let token = Uuid::new_v4();
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        // Twice at most: a record that expired and was swept between the two
        // statements leaves the key free for the second try.
        for _ in 0..2 {
            let taken: Option<Uuid> = sqlx::query_scalar(
                "insert into idempotency_keys (principal, key, fingerprint, claim, claimed_until, expires_at)
                 values ($1, $2, $3, $4, now() + $5 * interval '1 millisecond', $6)
                 on conflict (principal, key) do update
                   set claim = excluded.claim, claimed_until = excluded.claimed_until
                   where idempotency_keys.claim is not null and idempotency_keys.claimed_until < now()
                     and idempotency_keys.fingerprint = excluded.fingerprint
                 returning claim",
            )
            .bind(&claim.principal)
            .bind(&claim.key)
            .bind(&claim.fingerprint)
            .bind(token)
            .bind(lease_ms)
            .bind(claim.expires_at)
            .fetch_optional(&self.pool)
            .await?;
            if taken == Some(token) {
                return Ok(KeyClaim::Taken(token));
            }
            let key = (claim.principal.clone(), claim.key.clone());
            if let Some(found) = self.idempotency_records(std::slice::from_ref(&key)).await?.remove(&key) {
                return Ok(match found {
                    r if r.fingerprint != claim.fingerprint => KeyClaim::Reused,
                    IdempotencyRecord { stored: Some(stored), .. } => KeyClaim::Done(stored),
                    IdempotencyRecord { stored: None, .. } => KeyClaim::InFlight,
                });
            }
        }
        Err(sqlx::Error::Protocol("an idempotency key could be neither claimed nor read".into()))
    }

    /// Turns the claim held by `token` into the operation's final answer, on any
    /// executor (an operation writes it in the transaction of its effects). Returns
    /// `false` if the claim is no longer this holder's (its lease lapsed and another
    /// request took the key over): the caller must then not commit its effects.
    pub async fn finish_claim<'e, E: sqlx::PgExecutor<'e>>(
        executor: E,
        claim: &IdempotencyClaim,
        token: Uuid,
        response: &StoredResponse,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "update idempotency_keys set claim = null, claimed_until = null, status_code = $4, body = $5
             where principal = $1 and key = $2 and claim = $3",
        )
        .bind(&claim.principal)
        .bind(&claim.key)
        .bind(token)
        .bind(i16::try_from(response.status).expect("HTTP statuses fit in i16"))
        .bind(&response.body)
        .execute(executor)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends the lease of the claim held by `token` now, keeping the key bound to its
    /// fingerprint: a retry of the same request may take it over at once, another
    /// request with this key is still refused. For an operation that may have done
    /// part of its work (a bulk whose items ran) and has no final answer.
    pub async fn release_claim(&self, claim: &IdempotencyClaim, token: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query(
            "update idempotency_keys set claimed_until = now() - interval '1 millisecond'
             where principal = $1 and key = $2 and claim = $3",
        )
        .bind(&claim.principal)
        .bind(&claim.key)
        .bind(token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives the key up entirely (the claim row goes): for an operation refused
    /// before anything of it ran (its body did not parse), so the client may use the
    /// key again for a corrected request.
    pub async fn drop_claim(&self, claim: &IdempotencyClaim, token: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query("delete from idempotency_keys where principal = $1 and key = $2 and claim = $3")
            .bind(&claim.principal)
            .bind(&claim.key)
            .bind(token)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes up to `batch_max` idempotency records past their expiry.
    pub async fn sweep_expired_keys(&self, batch_max: i64) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "delete from idempotency_keys where (principal, key) in
               (select principal, key from idempotency_keys where expires_at < now() limit $1)",
        )
        .bind(batch_max)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

//! Idempotency records: looked up per batch by the writer (one primary-key probe per
//! key), written for operations that record no event, and swept once expired. The
//! records of commands are written by `append_batch`, in the same transaction as
//! their events.

use super::{EventStore, IdempotencyClaim, IdempotencyRecord, StoredResponse};
use crate::outcome::Stored;
use serde_json::Value;
use std::collections::HashMap;

impl EventStore {
    /// Stored idempotency records for the given (principal, key) pairs.
    pub async fn idempotency_records(
        &self,
        keys: &[(String, String)],
    ) -> Result<HashMap<(String, String), IdempotencyRecord>, sqlx::Error> {
        let (principals, names): (Vec<String>, Vec<String>) = keys.iter().cloned().unzip();
        type Row = (String, String, Vec<u8>, Option<i16>, Option<Value>, Option<Value>);
        let rows: Vec<Row> = sqlx::query_as(
            // LATERAL: one primary-key probe per key, never a scan of the whole table.
            "select i.principal, i.key, i.fingerprint, i.status_code, i.body, i.outcome
             from unnest($1::text[], $2::text[]) as k(principal, key)
             join lateral (select * from idempotency_keys x where x.principal = k.principal and x.key = k.key offset 0) i on true",
        )
        .bind(&principals)
        .bind(&names)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(p, k, fingerprint, status, body, outcome)| {
                let stored = match outcome {
                    Some(outcome) => Stored::Outcome(serde_json::from_value(outcome).map_err(sqlx::Error::decode)?),
                    None => Stored::Response(StoredResponse {
                        status: status.and_then(|s| u16::try_from(s).ok()).unwrap_or(500),
                        body: body.unwrap_or_default(),
                    }),
                };
                Ok(((p, k), IdempotencyRecord { fingerprint, stored }))
            })
            .collect()
    }

    /// Remembers the response of a request that records no event (an operation such
    /// as starting a rebuild), for idempotent replay. A record already there wins.
    pub async fn remember_response(
        &self,
        claim: &IdempotencyClaim,
        response: &StoredResponse,
    ) -> Result<(), sqlx::Error> {
        EventStore::insert_response(&self.pool, claim, response).await.map(|_| ())
    }

    /// Writes the record of a request that records no event, on any executor (an
    /// operation writes it in its own transaction); returns whether it was written
    /// (`false`: a record with that key is already there, and wins).
    pub async fn insert_response<'e, E: sqlx::PgExecutor<'e>>(
        executor: E,
        claim: &IdempotencyClaim,
        response: &StoredResponse,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "insert into idempotency_keys (principal, key, fingerprint, status_code, body, expires_at)
             values ($1, $2, $3, $4, $5, $6) on conflict do nothing",
        )
        .bind(&claim.principal)
        .bind(&claim.key)
        .bind(&claim.fingerprint)
        .bind(i16::try_from(response.status).expect("HTTP statuses fit in i16"))
        .bind(&response.body)
        .bind(claim.expires_at)
        .execute(executor)
        .await?;
        Ok(done.rows_affected() == 1)
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

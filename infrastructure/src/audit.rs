//! Audit: walking the tamper-evident hash chain, and filtered reads of the log with
//! the metadata that says who did what, when and why.

use crate::hash::GENESIS_HASH;
use crate::store::{ChainRow, EventStore, RecordedEvent};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// The outcome of a chain walk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    pub ok: bool,
    pub checked: i64,
    /// Hex hash of the last event (when ok).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// The first position whose stored hash does not match its content and
    /// predecessor, or that is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_position: Option<i64>,
}

/// Walks the whole chain in batches of `batch_max`; `progress` is called after each.
pub async fn verify_chain(
    store: &EventStore,
    batch_max: i64,
    mut progress: impl FnMut(i64, i64),
) -> Result<ChainReport, sqlx::Error> {
    let pool = store.pool();
    let (head, head_hash): (i64, Vec<u8>) =
        sqlx::query_as("select position, hash from log_head").fetch_one(pool).await?;
    let mut previous = GENESIS_HASH.to_vec();
    let mut position = 0i64;
    while position < head {
        let rows = ChainRow::read(pool, position, (position + batch_max).min(head)).await?;
        let empty = rows.is_empty();
        for row in rows {
            if !row.verifies(position + 1, &previous) {
                return Ok(bad(position, position + 1));
            }
            previous = row.hash;
            position = row.position;
        }
        if empty {
            return Ok(bad(position, position + 1));
        }
        progress(position, head);
    }
    if previous != head_hash {
        return Ok(bad(position, head));
    }
    // Positions 1..=head are all there (walked above), and so are those appended since:
    // a stream entry beyond the head of the same snapshot names an event that does not
    // exist (entries, events and the head are written by one statement).
    let stray: Option<i64> = sqlx::query_scalar(
        "select position from stream_entries where position < 1 or position > (select position from log_head) limit 1",
    )
    .fetch_optional(pool)
    .await?;
    if let Some(at) = stray {
        return Ok(bad(head, at));
    }
    Ok(ChainReport { ok: true, checked: head, head: Some(hex::encode(previous)), first_bad_position: None })
}

fn bad(checked: i64, at: i64) -> ChainReport {
    ChainReport { ok: false, checked, head: None, first_bad_position: Some(at) }
}

/// Filters of `GET /v1/audit`.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub correlation_id: Option<String>,
    pub stream_id: Option<Uuid>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Only events after this position (the cursor).
    pub after: i64,
    pub limit: i64,
}

/// Events matching the filter, in position order.
pub async fn audit_events(store: &EventStore, f: &AuditFilter) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    // An event belongs to several streams: filtered by one, each row names that stream
    // and the event's version in it (not the event's primary stream).
    let mut q = sqlx::QueryBuilder::new(match f.stream_id {
        Some(_) => {
            "select e.position, e.event_id, s.stream_id, s.version, e.type, e.data, e.metadata, e.recorded_at, \
             e.hash from events e"
        }
        None => {
            "select e.position, e.event_id, e.stream_id, e.version, e.type, e.data, e.metadata, e.recorded_at, \
                 e.hash from events e"
        }
    });
    if let Some(stream) = f.stream_id {
        q.push(" join stream_entries s on s.position = e.position and s.stream_id = ").push_bind(stream);
    }
    q.push(" where e.position > ").push_bind(f.after);
    if let Some(actor) = &f.actor {
        q.push(" and e.metadata ->> 'actor' = ").push_bind(actor.clone());
    }
    if let Some(correlation) = &f.correlation_id {
        q.push(" and e.metadata ->> 'correlation_id' = ").push_bind(correlation.clone());
    }
    if let Some(from) = f.from {
        q.push(" and e.recorded_at >= ").push_bind(from);
    }
    if let Some(to) = f.to {
        q.push(" and e.recorded_at < ").push_bind(to);
    }
    q.push(" order by e.position limit ").push_bind(f.limit);
    let rows: Vec<crate::store::RecordedRow> = q.build_query_as().fetch_all(store.pool()).await?;
    Ok(rows.into_iter().map(RecordedEvent::from).collect())
}

/// The name, role and ledger list (if any) of the token whose sha256 (hex) is given.
pub async fn token_by_hash(
    store: &EventStore,
    sha256_hex: &str,
) -> Result<Option<(String, String, Option<serde_json::Value>)>, sqlx::Error> {
    sqlx::query_as(
        "select data ->> 'name', data ->> 'role', data -> 'ledgers' from events
         where type = 'TokenIssued' and data ->> 'token_sha256' = $1",
    )
    .bind(sha256_hex)
    .fetch_optional(store.pool())
    .await
}

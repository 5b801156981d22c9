//! The Postgres event store: the single source of truth. Appends take a batch of
//! commits and write them in one transaction under the log-head lock, so positions are
//! gapless and in commit order, every stream's version is checked (optimistic
//! concurrency) and every command's idempotency record commits with its events.

use crate::hash::{HashedContent, chain_hash};
use crate::outcome::{Outcome, Stored};
use chrono::{DateTime, SubsecRound, Utc};
use ledger_domain::{Concurrency, Event};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgPool, Row};
use std::collections::{HashMap, HashSet};

use uuid::Uuid;

/// Who asked for an event and why: stored as the event's `metadata`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    pub actor: String,
    pub request_id: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub idempotency_key: Option<String>,
}

/// A response as stored for idempotent replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: Value,
}

/// The idempotency record a command writes with its events.
#[derive(Clone, Debug)]
pub struct IdempotencyClaim {
    pub principal: String,
    pub key: String,
    pub fingerprint: Vec<u8>,
    pub expires_at: DateTime<Utc>,
}

/// One command's share of an append: its events (possibly none, for a rejection that
/// must still be remembered for replay), the stream versions its decision saw, its
/// idempotency record, and what its outcome is made of.
pub struct Commit {
    pub events: Vec<Event>,
    /// `(stream, version)` for every stream appended with [`Concurrency::Exact`].
    pub expected: Vec<(Uuid, i64)>,
    pub metadata: EventMetadata,
    pub idempotency: Option<IdempotencyClaim>,
    /// The state of the streams the events touch, right after them.
    pub streams: Vec<(Uuid, ledger_domain::StreamState)>,
    /// The rule the command broke (then `events` is empty).
    pub rejection: Option<ledger_domain::DomainError>,
}

impl Commit {
    /// The command's outcome, once the position of its last event is known.
    pub fn outcome(&self, last_position: Option<i64>) -> Outcome {
        match &self.rejection {
            Some(e) => Outcome::Rejected(e.clone()),
            None => Outcome::Recorded(crate::outcome::Recorded {
                position: last_position.unwrap_or(0),
                events: self.events.clone(),
                streams: self.streams.clone(),
            }),
        }
    }
}

/// An event as it is in the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub position: i64,
    pub event_id: Uuid,
    pub stream_id: Uuid,
    pub version: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    pub fn event(&self) -> Result<Event, serde_json::Error> {
        Event::from_parts(&self.event_type, self.data.clone())
    }
}

/// What an append made of one commit.
#[derive(Clone, Debug)]
pub struct CommitResult {
    pub recorded: Vec<RecordedEvent>,
    pub outcome: Outcome,
}

/// What an append wrote: one result per commit, and the version every stream the
/// batch touched is at after it (as the log has it, which for streams appended with
/// [`Concurrency::Any`] may be past what the writer computed: another process appended).
#[derive(Clone, Debug)]
pub struct Appended {
    pub results: Vec<CommitResult>,
    pub versions: HashMap<Uuid, i64>,
}

/// Why an append did not happen. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("version conflict on streams {streams:?}, idempotency keys already used: {keys:?}")]
    Conflict { streams: Vec<Uuid>, keys: Vec<(String, String)> },
    /// Commit `commit` holds content that would not read back as it is hashed; the
    /// others are sound.
    #[error("commit {commit} cannot be stored: {reason}")]
    Unstorable { commit: usize, reason: crate::hash::Unstorable },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// A stored idempotency record.
#[derive(Clone, Debug)]
pub struct IdempotencyRecord {
    pub fingerprint: Vec<u8>,
    pub stored: Stored,
}

/// The event store over one Postgres pool.
#[derive(Clone)]
pub struct EventStore {
    pool: PgPool,
}

/// Column arrays for the batch insert (one statement for all rows).
#[derive(Default)]
struct Rows {
    positions: Vec<i64>,
    event_ids: Vec<Uuid>,
    stream_ids: Vec<Uuid>,
    versions: Vec<i64>,
    types: Vec<String>,
    data: Vec<Value>,
    metadata: Vec<Value>,
    recorded_at: Vec<DateTime<Utc>>,
    hashes: Vec<Vec<u8>>,
    entry_streams: Vec<Uuid>,
    entry_versions: Vec<i64>,
    entry_positions: Vec<i64>,
    key_principals: Vec<String>,
    key_keys: Vec<String>,
    key_fingerprints: Vec<Vec<u8>>,
    key_statuses: Vec<Option<i16>>,
    key_bodies: Vec<Option<Value>>,
    key_outcomes: Vec<Option<Value>>,
    key_expiry: Vec<DateTime<Utc>>,
}

impl EventStore {
    pub fn new(pool: PgPool) -> EventStore {
        EventStore { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends a batch of commits atomically: all of them or none. A version conflict or
    /// an idempotency key that was used meanwhile (by another process; the primary key
    /// of `idempotency_keys` catches it) rejects the whole batch with
    /// [`AppendError::Conflict`] so the caller can decide again.
    pub async fn append_batch(&self, commits: &[Commit]) -> Result<Appended, AppendError> {
        let staged = stage(commits)?;
        let mut tx = self.pool.begin().await?;
        // The lock on the head row is what serializes appends; see migration 0001.
        let head =
            sqlx::query("select position, hash, recorded_at from log_head for update").fetch_one(&mut *tx).await?;
        let mut position: i64 = head.try_get("position")?;
        let mut hash: Vec<u8> = head.try_get("hash")?;
        let head_recorded_at: DateTime<Utc> = head.try_get("recorded_at")?;
        let recorded_at = Utc::now().trunc_subsecs(6).max(head_recorded_at);

        let mut versions = self.current_versions(&mut tx, commits).await?;
        let conflicts = check_expectations(commits, &mut versions.clone());
        if !conflicts.is_empty() {
            return Err(AppendError::Conflict { streams: conflicts, keys: Vec::new() });
        }

        let mut rows = Rows::default();
        let mut results = Vec::with_capacity(commits.len());
        for (commit, (metadata, parts)) in commits.iter().zip(staged) {
            let mut recorded = Vec::with_capacity(commit.events.len());
            for (event, (event_type, data)) in commit.events.iter().zip(parts) {
                position += 1;
                let mut primary = None;
                for (stream_id, _) in event.streams() {
                    let version = versions.entry(stream_id).or_insert(0);
                    *version += 1;
                    primary.get_or_insert((stream_id, *version));
                    rows.entry_streams.push(stream_id);
                    rows.entry_versions.push(*version);
                    rows.entry_positions.push(position);
                }
                let (stream_id, version) = primary.expect("every event belongs to at least one stream");
                let event = RecordedEvent {
                    position,
                    event_id: Uuid::now_v7(),
                    stream_id,
                    version,
                    event_type: event_type.to_owned(),
                    data,
                    metadata: metadata.clone(),
                    recorded_at,
                };
                hash = chain_hash(&hash, &hashed_content(&event)).to_vec();
                rows.push_event(&event, hash.clone());
                recorded.push(event);
            }
            let outcome = commit.outcome(recorded.last().map(|e| e.position));
            if let Some(claim) = &commit.idempotency {
                rows.push_key(claim, &outcome);
            }
            results.push(CommitResult { recorded, outcome });
        }
        let keys: Vec<(String, String)> = commits
            .iter()
            .filter_map(|c| c.idempotency.as_ref().map(|k| (k.principal.clone(), k.key.clone())))
            .collect();
        if let Err(e) = self.insert_rows(&mut tx, rows, position, hash, recorded_at).await {
            // The writer checked keys and versions before deciding; another process that
            // took a key or a stream version since trips a unique constraint, and the
            // batch is decided again.
            let violated =
                e.as_database_error().filter(|d| d.code().as_deref() == Some("23505")).and_then(|d| d.constraint());
            return Err(match violated {
                Some("idempotency_keys_pkey") => AppendError::Conflict { streams: Vec::new(), keys },
                Some("stream_entries_pkey" | "events_stream_id_version_key") => {
                    AppendError::Conflict { streams: Vec::new(), keys: Vec::new() }
                }
                _ => e.into(),
            });
        }
        tx.commit().await?;
        Ok(Appended { results, versions })
    }

    /// The version each stream of the batch is at before it. For streams a decision
    /// depended on (`Concurrency::Exact`) that is the version the writer decided
    /// against, taken on trust: if another process appended meanwhile, the unique
    /// `(stream_id, version)` constraints reject the batch. Only streams appended
    /// with `Concurrency::Any` (system accounts) are looked up, under the head lock.
    async fn current_versions(
        &self,
        tx: &mut sqlx::PgConnection,
        commits: &[Commit],
    ) -> Result<HashMap<Uuid, i64>, sqlx::Error> {
        let mut versions: HashMap<Uuid, i64> = HashMap::new();
        let mut any: HashSet<Uuid> = HashSet::new();
        for c in commits {
            for (id, expected) in &c.expected {
                versions.entry(*id).or_insert(*expected);
            }
            for e in &c.events {
                any.extend(e.streams().into_iter().filter(|(id, _)| !versions.contains_key(id)).map(|(id, _)| id));
            }
        }
        if any.is_empty() {
            return Ok(versions);
        }
        let ids: Vec<Uuid> = any.into_iter().collect();
        // One backward probe of the primary key per stream (not a scan of its history).
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(
            "select k.id, coalesce(v.version, 0) from unnest($1::uuid[]) as k(id)
             left join lateral (select version from stream_entries s where s.stream_id = k.id
                                order by version desc limit 1) v on true",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        versions.extend(rows);
        Ok(versions)
    }

    async fn insert_rows(
        &self,
        tx: &mut sqlx::PgConnection,
        rows: Rows,
        head: i64,
        hash: Vec<u8>,
        recorded_at: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        // One statement: the events, their stream entries, the idempotency records and
        // the new head (with a notification for listeners, delivered at commit).
        sqlx::query(
            "with ev as (
                insert into events (position, event_id, stream_id, version, type, data, metadata, recorded_at, hash)
                select * from unnest($1::bigint[], $2::uuid[], $3::uuid[], $4::bigint[], $5::text[],
                                     $6::jsonb[], $7::jsonb[], $8::timestamptz[], $9::bytea[])
             ), se as (
                insert into stream_entries (stream_id, version, position)
                select * from unnest($10::uuid[], $11::bigint[], $12::bigint[])
             ), ik as (
                insert into idempotency_keys (principal, key, fingerprint, status_code, body, outcome, expires_at)
                select * from unnest($13::text[], $14::text[], $15::bytea[], $16::int2[], $17::jsonb[], $18::jsonb[],
                                     $19::timestamptz[])
             )
             update log_head set position = $20, hash = $21, recorded_at = $22
             returning pg_notify('ledger_events', $20::text)",
        )
        .bind(rows.positions)
        .bind(rows.event_ids)
        .bind(rows.stream_ids)
        .bind(rows.versions)
        .bind(rows.types)
        .bind(rows.data)
        .bind(rows.metadata)
        .bind(rows.recorded_at)
        .bind(rows.hashes)
        .bind(rows.entry_streams)
        .bind(rows.entry_versions)
        .bind(rows.entry_positions)
        .bind(rows.key_principals)
        .bind(rows.key_keys)
        .bind(rows.key_fingerprints)
        .bind(rows.key_statuses)
        .bind(rows.key_bodies)
        .bind(rows.key_outcomes)
        .bind(rows.key_expiry)
        .bind(head)
        .bind(hash)
        .bind(recorded_at)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// The events of the given streams after the given versions, in version order per
    /// stream: how a cached state catches up with the log.
    pub async fn events_after(&self, known: &[(Uuid, i64)]) -> Result<Vec<(Uuid, i64, Event)>, StoreError> {
        let (ids, versions): (Vec<Uuid>, Vec<i64>) = known.iter().copied().unzip();
        let rows: Vec<(Uuid, i64, String, Value)> = sqlx::query_as(
            // LATERAL: a primary-key range probe per stream, never a scan of the table.
            "select s.stream_id, s.version, e.type, e.data
             from unnest($1::uuid[], $2::bigint[]) as k(stream_id, known)
             join lateral (select * from stream_entries x where x.stream_id = k.stream_id and x.version > k.known offset 0) s on true
             join events e on e.position = s.position
             order by s.stream_id, s.version",
        )
        .bind(&ids)
        .bind(&versions)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|(stream, version, t, data)| Ok((stream, version, Event::from_parts(&t, data)?))).collect()
    }

    /// The last position recorded at or before `at` (0 before the first event).
    /// `recorded_at` never decreases along the log, so this is a cut of history.
    pub async fn position_at(&self, at: DateTime<Utc>) -> Result<i64, sqlx::Error> {
        let p: Option<i64> = sqlx::query_scalar(
            "select position from events where recorded_at <= $1 order by recorded_at desc, position desc limit 1",
        )
        .bind(at)
        .fetch_optional(&self.pool)
        .await?;
        Ok(p.unwrap_or(0))
    }

    /// The position of the last committed event.
    pub async fn head(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("select position from log_head").fetch_one(&self.pool).await
    }

    /// One stream's events in its own version order; `version` is the stream's version.
    pub async fn read_stream(
        &self,
        stream_id: Uuid,
        from_version: i64,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        sqlx::query_as::<_, RecordedRow>(
            "select e.position, e.event_id, s.stream_id, s.version, e.type, e.data, e.metadata, e.recorded_at
             from stream_entries s join events e on e.position = s.position
             where s.stream_id = $1 and s.version >= $2
             order by s.version limit $3",
        )
        .bind(stream_id)
        .bind(from_version)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map(|rows| rows.into_iter().map(RecordedEvent::from).collect())
    }

    /// The log in (`after`, `up_to`], in position order, on any executor (a projection
    /// reads it inside its own transaction).
    pub async fn read_range<'e, E: sqlx::PgExecutor<'e>>(
        executor: E,
        after: i64,
        up_to: i64,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        sqlx::query_as::<_, RecordedRow>(
            "select position, event_id, stream_id, version, type, data, metadata, recorded_at
             from events where position > $1 and position <= $2 order by position",
        )
        .bind(after)
        .bind(up_to)
        .fetch_all(executor)
        .await
        .map(|rows| rows.into_iter().map(RecordedEvent::from).collect())
    }

    /// The global log after `after`, in position order.
    pub async fn read_all(&self, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        sqlx::query_as::<_, RecordedRow>(
            "select position, event_id, stream_id, version, type, data, metadata, recorded_at
             from events where position > $1 order by position limit $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map(|rows| rows.into_iter().map(RecordedEvent::from).collect())
    }

    /// The system account of every currency that has one.
    pub async fn system_accounts(&self) -> Result<Vec<(String, Uuid)>, sqlx::Error> {
        sqlx::query_as(
            "select data ->> 'currency', stream_id from events
             where type = 'AccountOpened' and (data ->> 'system') = 'true' order by 1",
        )
        .fetch_all(&self.pool)
        .await
    }

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
        sqlx::query(
            "insert into idempotency_keys (principal, key, fingerprint, status_code, body, expires_at)
             values ($1, $2, $3, $4, $5, $6) on conflict do nothing",
        )
        .bind(&claim.principal)
        .bind(&claim.key)
        .bind(&claim.fingerprint)
        .bind(i16::try_from(response.status).expect("HTTP statuses fit in i16"))
        .bind(&response.body)
        .bind(claim.expires_at)
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

/// Who is to blame for a database error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbFault {
    /// The data sent caused it (a value out of range or malformed, a check or not-null
    /// rule, a value too large): the request's fault, never a dependency failure.
    Input,
    /// A bug of ours (a statement or schema mismatch, a row that does not decode, an
    /// unexpected constraint): an internal error, never a dependency failure either.
    Bug,
    /// The database is unreachable, overloaded, shutting down, or timed a statement
    /// or lock out: a dependency failure, which breakers count.
    Unavailable,
}

/// Classifies a database error by SQLSTATE (PostgreSQL appendix A) and by kind.
pub fn db_fault(e: &sqlx::Error) -> DbFault {
    match e {
        sqlx::Error::Database(d) => {
            let code = d.code().map(|c| c.into_owned()).unwrap_or_default();
            match (code.get(..2).unwrap_or(""), code.as_str()) {
                ("22" | "54", _) | (_, "23502" | "23514") => DbFault::Input,
                ("08" | "25" | "40" | "53" | "57" | "58", _) | (_, "55P03") => DbFault::Unavailable,
                _ => DbFault::Bug,
            }
        }
        sqlx::Error::Encode(_) => DbFault::Input,
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => DbFault::Unavailable,
        _ => DbFault::Bug,
    }
}

/// Reading or decoding the log failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("an event in the log does not decode: {0}")]
    Decode(#[from] serde_json::Error),
}

/// One commit's metadata and events as stored: `(metadata, [(type, data)])`.
type Staged = (Value, Vec<(&'static str, Value)>);

/// Serializes every commit's metadata and events once, before the head lock is taken,
/// and checks that each reads back from `jsonb` as written: what is hashed must be
/// exactly what `jsonb` gives back, or the chain would report a sound event as tampered
/// with forever. The first commit that fails is named; nothing is written.
fn stage(commits: &[Commit]) -> Result<Vec<Staged>, AppendError> {
    commits
        .iter()
        .enumerate()
        .map(|(index, commit)| {
            let metadata = serde_json::to_value(&commit.metadata).expect("metadata serializes");
            let parts: Vec<(&'static str, Value)> = commit.events.iter().map(Event::to_parts).collect();
            crate::hash::check_storable(&metadata)
                .and_then(|()| parts.iter().try_for_each(|(_, data)| crate::hash::check_storable(data)))
                .map_err(|reason| AppendError::Unstorable { commit: index, reason })?;
            Ok((metadata, parts))
        })
        .collect()
}

/// Checks every commit's expected versions against the versions in the log as the
/// batch advances them; returns the streams that conflict.
fn check_expectations(commits: &[Commit], versions: &mut HashMap<Uuid, i64>) -> Vec<Uuid> {
    let mut conflicts = Vec::new();
    for commit in commits {
        for (stream, expected) in &commit.expected {
            if versions.get(stream).copied().unwrap_or(0) != *expected {
                conflicts.push(*stream);
            }
        }
        for event in &commit.events {
            for (stream, concurrency) in event.streams() {
                debug_assert!(concurrency == Concurrency::Any || commit.expected.iter().any(|(s, _)| *s == stream));
                *versions.entry(stream).or_insert(0) += 1;
            }
        }
    }
    conflicts
}

fn hashed_content(e: &RecordedEvent) -> HashedContent<'_> {
    HashedContent {
        position: e.position,
        event_id: e.event_id,
        stream_id: e.stream_id,
        version: e.version,
        event_type: &e.event_type,
        data: &e.data,
        metadata: &e.metadata,
        recorded_at_us: e.recorded_at.timestamp_micros(),
    }
}

impl Rows {
    fn push_event(&mut self, e: &RecordedEvent, hash: Vec<u8>) {
        self.positions.push(e.position);
        self.event_ids.push(e.event_id);
        self.stream_ids.push(e.stream_id);
        self.versions.push(e.version);
        self.types.push(e.event_type.clone());
        self.data.push(e.data.clone());
        self.metadata.push(e.metadata.clone());
        self.recorded_at.push(e.recorded_at);
        self.hashes.push(hash);
    }

    fn push_key(&mut self, claim: &IdempotencyClaim, outcome: &Outcome) {
        self.key_principals.push(claim.principal.clone());
        self.key_keys.push(claim.key.clone());
        self.key_fingerprints.push(claim.fingerprint.clone());
        self.key_statuses.push(None);
        self.key_bodies.push(None);
        self.key_outcomes.push(Some(serde_json::to_value(outcome).expect("outcomes serialize")));
        self.key_expiry.push(claim.expires_at);
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct RecordedRow {
    position: i64,
    event_id: Uuid,
    stream_id: Uuid,
    version: i64,
    #[sqlx(rename = "type")]
    event_type: String,
    data: Value,
    metadata: Value,
    recorded_at: DateTime<Utc>,
}

impl From<RecordedRow> for RecordedEvent {
    fn from(r: RecordedRow) -> RecordedEvent {
        RecordedEvent {
            position: r.position,
            event_id: r.event_id,
            stream_id: r.stream_id,
            version: r.version,
            event_type: r.event_type,
            data: r.data,
            metadata: r.metadata,
            recorded_at: r.recorded_at,
        }
    }
}

/// Recomputes the hash of a stored event (for verification).
pub fn recompute_hash(previous: &[u8], e: &RecordedEvent) -> [u8; 32] {
    chain_hash(previous, &hashed_content(e))
}

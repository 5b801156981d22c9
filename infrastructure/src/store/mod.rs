//! The Postgres event store: the single source of truth. Appends take a batch of
//! commits and write them in one transaction under the log-head lock, so positions are
//! gapless and in commit order, every stream's version is checked (optimistic
//! concurrency) and every command's idempotency record commits with its events.
//!
//! - this module: the store's types, and reading the log;
//! - `append`: `append_batch`, as pure staging and planning around its I/O;
//! - `idempotency`: idempotency records (look-up, operations' responses, expiry);
//! - `faults`: who is to blame for a database error.

use crate::outcome::{Outcome, Stored};
use chrono::{DateTime, Utc};
use ledger_domain::Event;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

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
    /// `(stream, version)` for every stream the decision read without appending to it
    /// (a transaction's condition on another account, a hold's payee): the append
    /// checks each under the head lock, so no decision commits over a change it did
    /// not see, whichever process made it.
    pub read: Vec<(Uuid, i64)>,
    pub metadata: EventMetadata,
    pub idempotency: Option<IdempotencyClaim>,
    /// The state of the streams the events touch, right after them.
    pub streams: Vec<(Uuid, ledger_domain::StreamState)>,
    /// The rule the command broke (then `events` is empty).
    pub rejection: Option<ledger_domain::DomainError>,
    /// The owner look-up's row of the account it opens (written with its events).
    pub owner_index: Option<crate::privacy::OwnerIndexRow>,
}

impl Commit {
    /// The command's outcome, once the position of its last event is known.
    pub fn outcome(&self, last_position: Option<i64>, recorded_at: DateTime<Utc>) -> Outcome {
        match &self.rejection {
            Some(e) => Outcome::Rejected(e.clone()),
            None => Outcome::Recorded(crate::outcome::Recorded {
                position: last_position.unwrap_or(0),
                events: self.events.clone(),
                streams: self.streams.clone(),
                recorded_at: Some(recorded_at),
            }),
        }
    }
}

/// An event as it is in the log.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// The typed event, decoded once (by [`RecordedEvent::event_ref`]) however many
    /// projections read it. Not part of its identity (see `PartialEq`).
    #[serde(skip)]
    pub(crate) decoded: std::sync::OnceLock<Event>,
    /// Its chain hash, where it was read with it (the API's reads of the log show it,
    /// API.md v1.2 "Verifiable log"). Not part of what is published or hashed.
    #[serde(skip)]
    pub hash: Option<Vec<u8>>,
}

impl PartialEq for RecordedEvent {
    fn eq(&self, other: &RecordedEvent) -> bool {
        (self.position, self.event_id, self.stream_id, self.version, &self.event_type, &self.data, &self.metadata)
            == (
                other.position,
                other.event_id,
                other.stream_id,
                other.version,
                &other.event_type,
                &other.data,
                &other.metadata,
            )
            && self.recorded_at == other.recorded_at
    }
}

impl RecordedEvent {
    pub fn event(&self) -> Result<Event, serde_json::Error> {
        self.event_ref().cloned()
    }

    /// The typed event, decoded from `data` at the first call only.
    pub fn event_ref(&self) -> Result<&Event, serde_json::Error> {
        if let Some(e) = self.decoded.get() {
            return Ok(e);
        }
        let event = Event::from_data(&self.event_type, &self.data)?;
        Ok(self.decoded.get_or_init(|| event))
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
    /// These commits sealed personal values under a subject key that was destroyed
    /// before they could be appended (the subject was erased meanwhile); the others
    /// are sound.
    #[error("commits {commits:?} sealed personal values under a destroyed subject key")]
    SubjectKeyDestroyed { commits: Vec<usize>, subjects: Vec<String> },
    /// Commit `commit` states a time ahead of the log's time `now`: a period that has
    /// not ended, or an `effective_at` more than a minute ahead (a process whose clock
    /// runs ahead, or a shard's that runs behind, let it through); the others are sound.
    #[error("commit {commit} states a time ahead of the log's time {now}")]
    AheadOfLog { commit: usize, now: DateTime<Utc> },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// A stored idempotency record.
#[derive(Clone, Debug)]
pub struct IdempotencyRecord {
    pub fingerprint: Vec<u8>,
    /// The final answer; `None` while an operation holds the key (a claim).
    pub stored: Option<Stored>,
}

/// The event store over one Postgres pool.
#[derive(Clone)]
pub struct EventStore {
    pool: PgPool,
    /// Where committed batches are handed in memory (this process's relay), if anywhere.
    handoff: Arc<OnceLock<handoff::Handoff>>,
    /// `idle_in_transaction_session_timeout` of an append's transaction, as Postgres
    /// reads it (`LEDGER_APPEND_IDLE_TIMEOUT_MS`).
    append_idle_timeout: String,
    /// How long a whole append, or a read the writer decides on, may take before it is
    /// given up as unavailable (an append's outcome then unknown, as after a lost
    /// connection): a session cut off by a silent network would otherwise stall this
    /// process's writer for ever. Zero: no limit.
    writer_time_limit: std::time::Duration,
    /// Where the writer looks idempotency records up, if not on `pool`.
    key_lookups: Option<PgPool>,
}

/// The default of `LEDGER_APPEND_IDLE_TIMEOUT_MS`.
pub const APPEND_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(5_000);

pub(crate) mod append;
mod faults;
pub mod handoff;
mod idempotency;

pub use append::{Predecessor, Successor, chain, recompute_hash};
pub use faults::{DbFault, db_fault};
pub use idempotency::KeyClaim;

impl EventStore {
    pub fn new(pool: PgPool) -> EventStore {
        EventStore {
            pool,
            handoff: Arc::default(),
            append_idle_timeout: format!("{}ms", APPEND_IDLE_TIMEOUT.as_millis()),
            writer_time_limit: std::time::Duration::ZERO,
            key_lookups: None,
        }
    }

    /// Has the writer look idempotency records up on `pool`, whose sessions plan
    /// generically (`db::generic_plans`; the look-up is a probe per key).
    pub fn with_key_lookups(mut self, pool: PgPool) -> EventStore {
        self.key_lookups = Some(pool);
        self
    }

    /// How long a whole append, or a read the writer decides on, may take
    /// (`LEDGER_DB_WAIT_MS`: its callers are answered 503 by then) before the writer gives
    /// it up as unavailable and goes on.
    pub fn with_writer_time_limit(mut self, limit: std::time::Duration) -> EventStore {
        self.writer_time_limit = limit;
        self
    }

    /// How long an append's transaction may sit idle (its writer paused, or gone without
    /// closing the connection) before Postgres ends it and frees the head lock.
    pub fn with_append_idle_timeout(mut self, timeout: std::time::Duration) -> EventStore {
        // 0 disables the limit, as Postgres reads it.
        self.append_idle_timeout = format!("{}ms", timeout.as_millis());
        self
    }

    /// Has every batch this store (and its clones) commits from now on handed to
    /// `handoff`; false if one was set already (it stays).
    pub fn hand_committed_to(&self, handoff: handoff::Handoff) -> bool {
        self.handoff.set(handoff).is_ok()
    }

    /// [`EventStore::with_writer_time_limit`]'s limit (0: none).
    pub fn writer_time_limit(&self) -> std::time::Duration {
        self.writer_time_limit
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether a second append can run beside one under way (the pipelined writer's
    /// batch behind it) without taking the pool's last connection from its other users
    /// (a ledger's pollers and reads share a pool of two by default).
    pub fn has_room_for_a_second_append(&self) -> bool {
        let max = self.pool.options().get_max_connections();
        max >= 3 && (self.pool.num_idle() > 0 || self.pool.size() < max)
    }

    /// The events of the given streams after the given versions, in version order per
    /// stream: how a cached state catches up with the log.
    pub async fn events_after(&self, known: &[(Uuid, i64)]) -> Result<Vec<(Uuid, i64, Event)>, StoreError> {
        let (ids, versions): (Vec<Uuid>, Vec<i64>) = known.iter().copied().unzip();
        let rows: Vec<(Uuid, i64, String, Value)> = sqlx::query_as(
            // LATERAL: a primary-key range probe per stream and one per event, never a
            // scan of either table (a hash join would read all of `events`).
            "select s.stream_id, s.version, e.type, e.data
             from unnest($1::uuid[], $2::bigint[]) as k(stream_id, known)
             join lateral (select * from stream_entries x where x.stream_id = k.stream_id and x.version > k.known offset 0) s on true
             join lateral (select type, data from events x where x.position = s.position offset 0) e on true
             order by s.stream_id, s.version",
        )
        .bind(&ids)
        .bind(&versions)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|(stream, version, t, data)| Ok((stream, version, Event::from_parts(&t, data)?))).collect()
    }

    /// The events after position `after` through `up_to`, decoded (for the streams they
    /// touch); `None` for one this build cannot decode.
    pub async fn events_between(&self, after: i64, up_to: i64) -> Result<Vec<Option<Event>>, StoreError> {
        let rows: Vec<(String, Value)> =
            sqlx::query_as("select type, data from events where position > $1 and position <= $2 order by position")
                .bind(after)
                .bind(up_to)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(t, data)| Event::from_parts(&t, data).ok()).collect())
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

    /// When the event at `position` was recorded.
    pub async fn recorded_at(&self, position: i64) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        sqlx::query_scalar("select recorded_at from events where position = $1")
            .bind(position)
            .fetch_optional(&self.pool)
            .await
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
            "select e.position, e.event_id, s.stream_id, s.version, e.type, e.data, e.metadata, e.recorded_at, e.hash
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
            "select position, event_id, stream_id, version, type, data, metadata, recorded_at, hash
             from events where position > $1 and position <= $2 order by position",
        )
        .bind(after)
        .bind(up_to)
        .fetch_all(executor)
        .await
        .map(|rows| rows.into_iter().map(RecordedEvent::from).collect())
    }

    /// The first event in (`after`, `up_to`] whose type is one of `types` (any type
    /// when `None`).
    pub async fn next_matching<'e, E: sqlx::PgExecutor<'e>>(
        executor: E,
        after: i64,
        up_to: i64,
        types: Option<&[String]>,
    ) -> Result<Option<RecordedEvent>, sqlx::Error> {
        sqlx::query_as::<_, RecordedRow>(
            "select position, event_id, stream_id, version, type, data, metadata, recorded_at, hash
             from events where position > $1 and position <= $2 and ($3::text[] is null or type = any($3))
             order by position limit 1",
        )
        .bind(after)
        .bind(up_to)
        .bind(types)
        .fetch_optional(executor)
        .await
        .map(|row| row.map(RecordedEvent::from))
    }

    /// The global log after `after`, in position order.
    pub async fn read_all(&self, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        sqlx::query_as::<_, RecordedRow>(
            "select position, event_id, stream_id, version, type, data, metadata, recorded_at, hash
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
}

/// An event as the chain covers it, with its stored hash, its data and metadata as the
/// log's JSON text: what the tree worker, tree heads and the chain walk recompute
/// hashes from, without building a `Value` of either.
#[derive(sqlx::FromRow)]
pub struct ChainRow {
    pub position: i64,
    event_id: Uuid,
    stream_id: Uuid,
    version: i64,
    #[sqlx(rename = "type")]
    event_type: String,
    data: String,
    metadata: String,
    pub recorded_at: DateTime<Utc>,
    pub hash: Vec<u8>,
}

impl ChainRow {
    /// The events in (`after`, `up_to`], in position order.
    pub async fn read<'e, E: sqlx::PgExecutor<'e>>(
        executor: E,
        after: i64,
        up_to: i64,
    ) -> Result<Vec<ChainRow>, sqlx::Error> {
        sqlx::query_as(
            "select position, event_id, stream_id, version, type, data::text, metadata::text, recorded_at, hash
             from events where position > $1 and position <= $2 order by position",
        )
        .bind(after)
        .bind(up_to)
        .fetch_all(executor)
        .await
    }

    /// The event's hash after `previous`, as the writer computed it; `None` for a text
    /// that does not parse as the writer's JSON could have (see
    /// `hash::canonical_json_text`), which no honest row holds.
    pub fn recompute(&self, previous: &[u8]) -> Option<[u8; 32]> {
        let header = crate::hash::HashedHeader {
            position: self.position,
            event_id: self.event_id,
            stream_id: self.stream_id,
            version: self.version,
            event_type: &self.event_type,
            recorded_at_us: self.recorded_at.timestamp_micros(),
        };
        crate::hash::chain_hash_text(previous, header, &self.data, &self.metadata).ok()
    }

    /// Whether this is the event at `position` and its stored hash is what its content
    /// hashes to after `previous`.
    pub fn verifies(&self, position: i64, previous: &[u8]) -> bool {
        self.position == position && self.recompute(previous).is_some_and(|h| h.as_slice() == self.hash.as_slice())
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
    #[sqlx(default)]
    hash: Option<Vec<u8>>,
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
            decoded: Default::default(),
            hash: r.hash,
        }
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

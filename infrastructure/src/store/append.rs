//! Appending a batch: pure staging (serialize and check every event) and planning
//! (positions, versions, hashes, outcomes) around the I/O of one transaction (the head
//! lock, the versions of unchecked streams, one insert of everything).

use super::{AppendError, Appended, Commit, CommitResult, EventStore, IdempotencyClaim, RecordedEvent};
use crate::hash::{HashedContent, chain_hash};
use crate::outcome::Outcome;
use chrono::{DateTime, SubsecRound, Utc};
use ledger_domain::{Concurrency, Event};
use serde_json::Value;
use sqlx::Row;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// Column arrays for the batch insert (one statement for all rows), but for the events'
/// types, contents and hashes, which are bound from the planned events themselves (no
/// copy of them is made: [`EventStore::insert_rows`]).
#[derive(Default)]
struct Rows {
    positions: Vec<i64>,
    event_ids: Vec<Uuid>,
    stream_ids: Vec<Uuid>,
    versions: Vec<i64>,
    recorded_at: Vec<DateTime<Utc>>,
    entry_streams: Vec<Uuid>,
    entry_versions: Vec<i64>,
    entry_positions: Vec<i64>,
    key_principals: Vec<String>,
    key_keys: Vec<String>,
    key_fingerprints: Vec<Vec<u8>>,
    key_statuses: Vec<Option<i16>>,
    key_bodies: Vec<Option<Value>>,
    key_outcomes: Vec<Option<Value>>,
    key_positions: Vec<Option<i64>>,
    key_event_counts: Vec<Option<i32>>,
    key_expiry: Vec<DateTime<Utc>>,
}

impl EventStore {
    /// Appends a batch of commits atomically: all of them or none. A version conflict or
    /// an idempotency key that was used meanwhile (by another process; the primary key
    /// of `idempotency_keys` catches it) rejects the whole batch with
    /// [`AppendError::Conflict`] so the caller can decide again.
    pub async fn append_batch(&self, commits: &[Commit]) -> Result<Appended, AppendError> {
        // A time-out is an unknown outcome, as a lost connection is: callers answer 503
        // and a retry with the key finds what committed. Postgres ends the transaction
        // (and frees the head lock) by `LEDGER_APPEND_IDLE_TIMEOUT_MS` if it never heard
        // the rest.
        crate::db::within(self.writer_time_limit, "an append", self.append_batch_unbounded(commits)).await
    }

    async fn append_batch_unbounded(&self, commits: &[Commit]) -> Result<Appended, AppendError> {
        let phase = crate::phases::Phases::start("append", commits.len());
        metrics::histogram!("ledger_append_batch_size").record(commits.len() as f64);
        // Marked from before the head lock until the batch is handed (or fails), so that
        // the relay, woken by the commit, waits for it instead of reading it back.
        let _appending = self.handoff.get().map(|h| h.begin());
        let staged = stage(commits)?;
        let personal = personal_changes(commits)?;
        let phase = phase.next("stage");
        let mut tx = self.pool.begin().await?;
        // The lock on the head row is what serializes appends; see migration 0001.
        // `recorded_at` is this shard's clock, read under the lock: no process's clock,
        // however wrong, stamps the log (and it never goes back: the head's time).
        // A writer paused while it holds the lock (SIGSTOP, a VM migration) loses it after
        // `LEDGER_APPEND_IDLE_TIMEOUT_MS` idle in this transaction, not the pool's minute:
        // Postgres ends the session and every other writer goes on.
        let head = sqlx::query(
            "select position, hash, recorded_at, closed_through, clock_timestamp() as now,
                    set_config('idle_in_transaction_session_timeout', $1, true)
             from log_head for update",
        )
        .bind(&self.append_idle_timeout)
        .fetch_one(&mut *tx)
        .await?;
        let now: chrono::DateTime<Utc> = head.try_get("now")?;
        let closed_through: Option<DateTime<Utc>> = head.try_get("closed_through")?;
        let head = Head {
            position: head.try_get("position")?,
            hash: head.try_get("hash")?,
            recorded_at: now.trunc_subsecs(6).max(head.try_get("recorded_at")?),
        };
        let closed_through = business_times(commits, closed_through, head.recorded_at)?;
        let phase = phase.next("lock");
        if !personal.is_empty() {
            self.personal_keys(&mut tx, &personal).await?;
        }
        let versions = self.current_versions(&mut tx, commits).await?;
        let phase = phase.next("versions");
        let conflicts = check_expectations(commits, &mut versions.clone());
        if !conflicts.is_empty() {
            return Err(AppendError::Conflict { streams: conflicts, keys: Vec::new() });
        }
        let plan = plan(commits, staged, head, versions);
        let phase = phase.next("plan");
        let keys: Vec<(String, String)> = commits
            .iter()
            .filter_map(|c| c.idempotency.as_ref().map(|k| (k.principal.clone(), k.key.clone())))
            .collect();
        if let Err(e) = self.insert_rows(&mut tx, plan.rows, &plan.results, &plan.head, closed_through).await {
            // The writer checked keys and versions before deciding; another process that
            // took a key or a stream version since trips a unique constraint, and the
            // batch is decided again.
            let violated =
                e.as_database_error().filter(|d| d.code().as_deref() == Some("23505")).and_then(|d| d.constraint());
            return Err(match violated {
                Some("idempotency_keys_pkey") => AppendError::Conflict { streams: Vec::new(), keys },
                Some("stream_entries_pkey") => AppendError::Conflict { streams: Vec::new(), keys: Vec::new() },
                _ => e.into(),
            });
        }
        let phase = phase.next("insert");
        tx.commit().await?;
        phase.next("commit");
        if let Some(handoff) = self.handoff.get() {
            handoff.hand(&plan.results);
        }
        Ok(Appended { results: plan.results, versions: plan.versions })
    }

    /// Under the head lock, so in log order with every other append: refuses the batch
    /// if a commit sealed personal values under a key destroyed since (an erasure
    /// appended meanwhile, here or by another process), writes the owner look-up's rows
    /// of the accounts it opens, then destroys the keys of the subjects it erases (and
    /// their look-up rows), in the transaction that records the events.
    async fn personal_keys(&self, tx: &mut sqlx::PgConnection, personal: &Personal) -> Result<(), AppendError> {
        if !personal.sealed.is_empty() || !personal.owner_rows.is_empty() {
            // One statement: the keys sealed under that are gone, and (written only if
            // none is, else the batch is refused and rolled back) the look-up rows.
            let ids: Vec<Uuid> = personal.sealed.iter().flat_map(|(_, _, ids)| ids.iter().copied()).collect();
            let rows = &personal.owner_rows;
            let gone: Vec<Uuid> = sqlx::query_scalar(
                "with gone as (select k from unnest($1::uuid[]) as k
                               where not exists (select 1 from subject_keys s where s.id = k and s.wrapped is not null)),
                      indexed as (insert into owner_index (owner_hash, owner_sealed, key_id)
                                  select * from unnest($2::bytea[], $3::text[], $4::uuid[])
                                  where not exists (select 1 from gone))
                 select k from gone",
            )
            .bind(&ids)
            .bind(rows.iter().map(|r| r.owner_hash.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.owner_sealed.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.key_id).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?;
            let mut failed: Vec<(usize, String)> = personal
                .sealed
                .iter()
                .filter(|(_, _, ids)| ids.iter().any(|id| gone.contains(id)))
                .map(|(commit, subject, _)| (*commit, subject.clone()))
                .collect();
            // A commit sealed under a key this same batch destroys before it.
            failed.extend(
                personal
                    .sealed
                    .iter()
                    .filter(|(commit, subject, _)| {
                        personal.erased.iter().any(|(eraser, erased)| eraser < commit && erased == subject)
                    })
                    .map(|(commit, subject, _)| (*commit, subject.clone())),
            );
            if !failed.is_empty() {
                failed.sort();
                failed.dedup();
                let (commits, subjects) = failed.into_iter().unzip();
                return Err(AppendError::SubjectKeyDestroyed { commits, subjects });
            }
        }
        if !personal.erased.is_empty() {
            let subjects: Vec<&str> = personal.erased.iter().map(|(_, s)| s.as_str()).collect();
            sqlx::query(
                "with doomed as (select id from subject_keys where subject = any($1) and wrapped is not null),
                      unindexed as (delete from owner_index where key_id in (select id from doomed))
                 update subject_keys set wrapped = null, erased_at = clock_timestamp()
                 where id in (select id from doomed)",
            )
            .bind(&subjects)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }

    /// The version each stream of the batch is at before it. For streams a decision
    /// appends to (`Concurrency::Exact`) that is the version the writer decided
    /// against, taken on trust: if another process appended meanwhile, the primary key
    /// of `stream_entries (stream_id, version)` rejects the batch. The others are looked up
    /// under the head lock: streams appended with `Concurrency::Any` (system accounts)
    /// and streams a decision only read, whose version nothing else would check.
    async fn current_versions(
        &self,
        tx: &mut sqlx::PgConnection,
        commits: &[Commit],
    ) -> Result<HashMap<Uuid, i64>, sqlx::Error> {
        let mut versions: HashMap<Uuid, i64> = HashMap::new();
        for c in commits {
            for (id, expected) in &c.expected {
                versions.entry(*id).or_insert(*expected);
            }
        }
        let mut look_up: HashSet<Uuid> = HashSet::new();
        for c in commits {
            look_up.extend(c.read.iter().map(|(id, _)| *id).filter(|id| !versions.contains_key(id)));
            for e in &c.events {
                look_up.extend(e.streams().into_iter().map(|(id, _)| id).filter(|id| !versions.contains_key(id)));
            }
        }
        if look_up.is_empty() {
            return Ok(versions);
        }
        let ids: Vec<Uuid> = look_up.into_iter().collect();
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
        results: &[CommitResult],
        head: &Head,
        closed_through: Option<DateTime<Utc>>,
    ) -> Result<(), sqlx::Error> {
        let events = || results.iter().flat_map(|r| &r.recorded);
        let types: Vec<&str> = events().map(|e| e.event_type.as_str()).collect();
        let data: Vec<&Value> = events().map(|e| &e.data).collect();
        let metadata: Vec<&Value> = events().map(|e| &e.metadata).collect();
        let hashes: Vec<&[u8]> = events().map(|e| e.hash.as_deref().expect("a planned event has its hash")).collect();
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
                insert into idempotency_keys (principal, key, fingerprint, status_code, body, outcome,
                                              outcome_position, outcome_events, expires_at)
                select * from unnest($13::text[], $14::text[], $15::bytea[], $16::int2[], $17::jsonb[], $18::jsonb[],
                                     $19::int8[], $20::int4[], $21::timestamptz[])
             )
             update log_head set position = $22, hash = $23, recorded_at = $24, closed_through = $25
             returning pg_notify(ledger_scoped('ledger_events'), $22::text)",
        )
        .bind(rows.positions)
        .bind(rows.event_ids)
        .bind(rows.stream_ids)
        .bind(rows.versions)
        .bind(types)
        .bind(data)
        .bind(metadata)
        .bind(rows.recorded_at)
        .bind(hashes)
        .bind(rows.entry_streams)
        .bind(rows.entry_versions)
        .bind(rows.entry_positions)
        .bind(rows.key_principals)
        .bind(rows.key_keys)
        .bind(rows.key_fingerprints)
        .bind(rows.key_statuses)
        .bind(rows.key_bodies)
        .bind(rows.key_outcomes)
        .bind(rows.key_positions)
        .bind(rows.key_event_counts)
        .bind(rows.key_expiry)
        .bind(head.position)
        .bind(&head.hash)
        .bind(head.recorded_at)
        .bind(closed_through)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// The log's head: its position, the hash of its last event, and the time the next
/// events are recorded at (never before the head's, so `recorded_at` never decreases).
struct Head {
    position: i64,
    hash: Vec<u8>,
    recorded_at: DateTime<Utc>,
}

/// What a batch writes, decided before any of it is written.
struct Plan {
    rows: Rows,
    results: Vec<CommitResult>,
    /// The new head.
    head: Head,
    /// Each stream's version after the batch.
    versions: HashMap<Uuid, i64>,
}

/// Lays the batch out after `head` (pure): each event at the next position, in each of
/// its streams at that stream's next version, chained to its predecessor's hash; each
/// command's outcome and idempotency record.
fn plan(commits: &[Commit], staged: Vec<Staged>, head: Head, mut versions: HashMap<Uuid, i64>) -> Plan {
    let Head { mut position, mut hash, recorded_at } = head;
    let first = position + 1;
    let mut rows = Rows::default();
    let mut results = Vec::with_capacity(commits.len());
    for (commit, (mut metadata, parts)) in commits.iter().zip(staged) {
        let mut recorded = Vec::with_capacity(commit.events.len());
        let count = parts.len();
        for (index, (event, (event_type, data))) in commit.events.iter().zip(parts).enumerate() {
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
                // The commit's metadata, shared by its events: the last one takes it.
                metadata: if index + 1 == count { std::mem::take(&mut metadata) } else { metadata.clone() },
                recorded_at,
                decoded: Default::default(),
                hash: None,
            };
            hash = chain_hash(&hash, &hashed_content(&event)).to_vec();
            rows.push_event(&event);
            recorded.push(RecordedEvent { hash: Some(hash.clone()), ..event });
        }
        let outcome = commit.outcome(recorded.last().map(|e| e.position), recorded_at);
        if let Some(claim) = &commit.idempotency {
            rows.push_key(claim, &outcome);
        }
        results.push(CommitResult { recorded, outcome });
    }
    // Every stream entry names an event of this batch (no foreign key checks it; 0013).
    assert!(rows.entry_positions.iter().all(|p| (first..=position).contains(p)), "a stream entry outside its batch");
    Plan { rows, results, head: Head { position, hash, recorded_at }, versions }
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

/// What a batch does to personal data: the keys each commit sealed values under (with
/// its subject), and the subjects it erases (with the commit that does).
#[derive(Default)]
struct Personal {
    sealed: Vec<(usize, String, Vec<Uuid>)>,
    erased: Vec<(usize, String)>,
    /// The owner look-up's rows of the accounts the batch opens.
    owner_rows: Vec<crate::privacy::OwnerIndexRow>,
}

impl Personal {
    fn is_empty(&self) -> bool {
        self.sealed.is_empty() && self.erased.is_empty() && self.owner_rows.is_empty()
    }
}

/// Checks that every customer account opened has a subject and its personal values
/// sealed (the first commit that breaks this is named; nothing is written), and
/// gathers what [`EventStore::personal_keys`] checks and destroys.
fn personal_changes(commits: &[Commit]) -> Result<Personal, AppendError> {
    let mut personal = Personal::default();
    for (index, commit) in commits.iter().enumerate() {
        for event in &commit.events {
            match event {
                Event::AccountOpened(e) if !e.system => {
                    let (ids, sealed) = crate::privacy::opening_keys(e.owner.as_deref(), e.metadata.as_ref());
                    let Some(subject) = e.subject.as_ref().filter(|_| sealed) else {
                        return Err(AppendError::Unstorable {
                            commit: index,
                            reason: crate::hash::Unstorable::PersonalInClear,
                        });
                    };
                    if !ids.is_empty() {
                        personal.sealed.push((index, subject.clone(), ids));
                    }
                }
                Event::SubjectErased(e) => personal.erased.push((index, e.subject.clone())),
                _ => {}
            }
        }
        personal.owner_rows.extend(commit.owner_index.clone());
    }
    Ok(personal)
}

/// The closed periods, checked under the head lock in log order with every other
/// append (API.md v1.2 "Verifiable log"), so no writer, whatever it cached, records an
/// event into a period closed before it: an event whose business time is at or before
/// the books' close is a conflict on the periods stream (the batch is decided again on
/// the log, and the command refused with `period_closed`); a period that closes at or
/// after the log's time now is refused ([`AppendError::AheadOfLog`]), so every
/// event recorded after it, effective when recorded, falls after it, and so is an
/// `effective_at` more than a minute ahead of it. Returns the close after the batch.
fn business_times(
    commits: &[Commit],
    mut closed_through: Option<DateTime<Utc>>,
    recorded_at: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, AppendError> {
    let conflict = || AppendError::Conflict { streams: vec![ledger_domain::periods_stream_id()], keys: Vec::new() };
    for (index, commit) in commits.iter().enumerate() {
        for event in &commit.events {
            if let Event::PeriodClosed(e) = event {
                if e.closes_at >= recorded_at {
                    return Err(AppendError::AheadOfLog { commit: index, now: recorded_at });
                }
                if closed_through.is_some_and(|c| e.closes_at <= c) {
                    return Err(conflict());
                }
                closed_through = Some(e.closes_at);
                continue;
            }
            // An event without a stated business time is effective when recorded, which
            // is after every close (each closes before its own batch's time, and the
            // log's time never goes back): only stated ones are checked.
            let Some(effective) = event.effective_at() else { continue };
            // What effective-dated reads rely on (`snapshots::EFFECTIVE_AHEAD`): nothing is
            // effective more than a minute after it is recorded.
            if effective > recorded_at + crate::snapshots::EFFECTIVE_AHEAD {
                return Err(AppendError::AheadOfLog { commit: index, now: recorded_at });
            }
            // To the microsecond, as the log keeps times (the API truncates them so).
            if closed_through.is_some_and(|c| effective.trunc_subsecs(6) <= c) {
                return Err(conflict());
            }
        }
    }
    Ok(closed_through)
}

/// Checks every commit's expected versions (of the streams it appends to and of those
/// it only read) against the versions in the log as the batch advances them; returns
/// the streams that conflict.
fn check_expectations(commits: &[Commit], versions: &mut HashMap<Uuid, i64>) -> Vec<Uuid> {
    let mut conflicts = Vec::new();
    for commit in commits {
        for (stream, expected) in commit.expected.iter().chain(&commit.read) {
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
    fn push_event(&mut self, e: &RecordedEvent) {
        self.positions.push(e.position);
        self.event_ids.push(e.event_id);
        self.stream_ids.push(e.stream_id);
        self.versions.push(e.version);
        self.recorded_at.push(e.recorded_at);
    }

    /// A command's record: a reference to the events it recorded (a replay reads them
    /// back), or the rule it broke.
    fn push_key(&mut self, claim: &IdempotencyClaim, outcome: &Outcome) {
        self.key_principals.push(claim.principal.clone());
        self.key_keys.push(claim.key.clone());
        self.key_fingerprints.push(claim.fingerprint.clone());
        self.key_statuses.push(None);
        self.key_bodies.push(None);
        match outcome {
            Outcome::Recorded(r) if !r.events.is_empty() => {
                self.key_outcomes.push(None);
                self.key_positions.push(Some(r.position));
                self.key_event_counts.push(Some(i32::try_from(r.events.len()).expect("a command records few events")));
            }
            _ => {
                self.key_outcomes.push(Some(serde_json::to_value(outcome).expect("outcomes serialize")));
                self.key_positions.push(None);
                self.key_event_counts.push(None);
            }
        }
        self.key_expiry.push(claim.expires_at);
    }
}

/// Recomputes the hash of a stored event (for verification).
pub fn recompute_hash(previous: &[u8], e: &RecordedEvent) -> [u8; 32] {
    chain_hash(previous, &hashed_content(e))
}

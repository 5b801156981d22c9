//! Appending a batch: pure staging (serialize and check every event) and planning
//! (positions, versions, hashes, outcomes) around the I/O of one transaction. Under the
//! head lock: the lock, the versions of unchecked streams, one insert of everything and
//! the head. Behind another append of this process (the pipelined writer's): the batch
//! is planned on that append's tail before it commits, its rows are inserted meanwhile,
//! and only the update of the head waits for it (`EventStore::append_behind`).

use super::{AppendError, Appended, Commit, CommitResult, EventStore, IdempotencyClaim, RecordedEvent};
use crate::hash::{HashedContent, HashedHeader, chain_hash};
use crate::outcome::Outcome;
use chrono::{DateTime, SubsecRound, Utc};
use ledger_domain::{Concurrency, Event};
use serde_json::Value;
use sqlx::Row;
use std::collections::{HashMap, HashSet};
use tokio::sync::oneshot;
use uuid::Uuid;

/// The statement that inserts a batch's events, stream entries and idempotency records
/// (bound as arrays, `$1`–`$21`), ending in `$tail`: under the head lock the head's
/// update, behind another append nothing more.
macro_rules! insert_rows_sql {
    ($tail:literal) => {
        concat!(
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
             ) ",
            $tail
        )
    };
}

/// A failed insert as the append's error: a unique constraint another process's
/// append tripped (a key or a stream version taken, positions written) is a conflict
/// (the batch is decided again).
fn conflict_or(e: sqlx::Error, keys: Vec<(String, String)>) -> AppendError {
    let Some(d) = e.as_database_error() else { return e.into() };
    match (d.code().as_deref(), d.constraint()) {
        (Some("23505"), Some("idempotency_keys_pkey")) => AppendError::Conflict { streams: Vec::new(), keys },
        (Some("23505"), Some("stream_entries_pkey" | "events_pkey")) => {
            tracing::debug!(error = %e, "an append met another's rows");
            moved()
        }
        _ => e.into(),
    }
}

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

/// Where a batch leaves the log, known once it is planned (before it commits): what the
/// batch appended right behind it plans on.
#[derive(Clone)]
pub struct Tail {
    head: Head,
    closed_through: Option<DateTime<Utc>>,
    /// Every stream the batch touched or looked up, at its version after the batch.
    versions: HashMap<Uuid, i64>,
}

/// What an append waits for from the append of this process before it, still under
/// way: where that one leaves the log (told once its rows are written); that it holds
/// the head row (so this one's update
/// of the head queues behind it, and cannot overtake it); and that it has landed
/// (committed and handed its batch to the relay). Each is dropped unsent if that
/// append fails before it.
pub struct Predecessor {
    tail: oneshot::Receiver<Tail>,
    holds_head: oneshot::Receiver<()>,
    landed: oneshot::Receiver<()>,
}

/// What an append tells the append behind it ([`Predecessor`]'s other end).
pub struct Successor {
    tail: oneshot::Sender<Tail>,
    holds_head: oneshot::Sender<()>,
    landed: oneshot::Sender<()>,
}

/// What an append's transaction waits for from the append before it and tells the
/// one behind it (the rest of [`Predecessor`] and [`Successor`] is waited for and told
/// outside it).
struct Links {
    held: Option<oneshot::Receiver<()>>,
    next_tail: Option<oneshot::Sender<Tail>>,
    next_holds_head: Option<oneshot::Sender<()>>,
}

/// A link between an append and the one behind it.
pub fn chain() -> (Successor, Predecessor) {
    let (tail, tail_rx) = oneshot::channel();
    let (holds_head, holds_head_rx) = oneshot::channel();
    let (landed, landed_rx) = oneshot::channel();
    (
        Successor { tail, holds_head, landed },
        Predecessor { tail: tail_rx, holds_head: holds_head_rx, landed: landed_rx },
    )
}

/// The batch was decided on a state that has not committed, or on a head that moved:
/// it is decided again.
fn moved() -> AppendError {
    AppendError::Conflict { streams: Vec::new(), keys: Vec::new() }
}

impl EventStore {
    /// Appends a batch of commits atomically: all of them or none. A version conflict or
    /// an idempotency key that was used meanwhile (by another process; the primary key
    /// of `idempotency_keys` catches it) rejects the whole batch with
    /// [`AppendError::Conflict`] so the caller can decide again.
    pub async fn append_batch(&self, commits: &[Commit]) -> Result<Appended, AppendError> {
        self.append_behind(commits, None, None).await
    }

    /// [`EventStore::append_batch`] of a batch decided on the state `after` (an append
    /// of this process still under way) leaves, telling `next` where this one leaves
    /// the log. Behind an append, the batch is planned on that append's tail and its
    /// rows are written while that one commits; only the head's update waits for it
    /// (the update of the head row blocks on that append's lock, and then finds the
    /// head where this batch was planned, or the batch is a conflict: that append
    /// failed, or another process appended). So the log stays gapless and in commit
    /// order, and only the head's update and the commit are serialized.
    ///
    /// A batch that seals or erases personal data is appended under the head lock once
    /// the append before it landed: its check of the subject keys must see the log as
    /// it is.
    pub async fn append_behind(
        &self,
        commits: &[Commit],
        after: Option<Predecessor>,
        next: Option<Successor>,
    ) -> Result<Appended, AppendError> {
        let phase = crate::phases::Phases::start("append", commits.len());
        metrics::histogram!("ledger_append_batch_size").record(commits.len() as f64);
        // Marked from before the head lock until the batch is handed (or fails), so that
        // the relay, woken by the commit, waits for it instead of reading it back.
        let _appending = self.handoff.get().map(|h| h.begin());
        let staged = stage(commits)?;
        let personal = personal_changes(commits)?;
        let (tail, held, mut landed) = match after {
            Some(a) => (Some(a.tail), Some(a.holds_head), Some(a.landed)),
            None => (None, None, None),
        };
        let (links, next_landed) = match next {
            Some(n) => (Links { held, next_tail: Some(n.tail), next_holds_head: Some(n.holds_head) }, Some(n.landed)),
            None => (Links { held, next_tail: None, next_holds_head: None }, None),
        };
        let phase = phase.next("stage");
        // What this append waits for from the one before counts toward that one's time
        // limit, not this one's: that one ends (dropping what it did not send) when its
        // own limit does.
        let tail = match tail {
            Some(tail) if personal.is_empty() => Some(tail.await.map_err(|_| {
                tracing::debug!("the append before failed before it wrote its rows");
                moved()
            })?),
            _ => {
                if let Some(landed) = landed.take() {
                    landed.await.map_err(|_| {
                        tracing::debug!("the append before did not commit");
                        moved()
                    })?;
                }
                None
            }
        };
        let phase = phase.next("wait");
        // A time-out is an unknown outcome, as a lost connection is: callers answer 503
        // and a retry with the key finds what committed. Postgres ends the transaction
        // (and frees the head lock) by `LEDGER_APPEND_IDLE_TIMEOUT_MS` if it never heard
        // the rest.
        let committed = crate::db::within(
            self.writer_time_limit,
            "an append",
            self.append_on(commits, staged, &personal, tail, links, phase),
        )
        .await;
        let (appended, phase) = match committed {
            Ok(committed) => committed,
            // Whichever statement met it: the batch is decided again.
            Err(AppendError::Database(e))
                if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("40P01") =>
            {
                tracing::debug!(error = %e, "an append met another in a deadlock");
                return Err(moved());
            }
            Err(e) => return Err(e),
        };
        // Handed in commit order: after the append before (which committed first).
        if let Some(landed) = landed {
            let _ = landed.await;
        }
        if let Some(handoff) = self.handoff.get() {
            handoff.hand(&appended.results);
        }
        if let Some(next) = next_landed {
            let _ = next.send(());
        }
        phase.next("hand");
        Ok(appended)
    }

    /// The transaction of an append: planned under the head lock (`tail` none) or on
    /// the tail of the append before it, its rows inserted, the head moved, committed.
    async fn append_on(
        &self,
        commits: &[Commit],
        staged: Vec<Staged>,
        personal: &Personal,
        tail: Option<Tail>,
        mut links: Links,
        phase: crate::phases::Phases,
    ) -> Result<(Appended, crate::phases::Phases), AppendError> {
        let mut tx = self.pool.begin().await?;
        let expected = tail.as_ref().map(|t| (t.head.position, t.head.hash.clone()));
        let (Plan { rows, results, head, versions }, closed_through) = match tail {
            Some(tail) => self.plan_behind(&mut tx, commits, staged, tail).await?,
            None => self.plan_locked(&mut tx, commits, staged, personal).await?,
        };
        let phase = phase.next("plan");
        let keys: Vec<(String, String)> = commits
            .iter()
            .filter_map(|c| c.idempotency.as_ref().map(|k| (k.principal.clone(), k.key.clone())))
            .collect();
        let inserted =
            self.insert_rows(&mut tx, rows, &results, expected.is_none().then_some((&head, closed_through))).await;
        if let Err(e) = inserted {
            // The writer checked keys and versions before deciding; another process that
            // took a key or a stream version since trips a unique constraint (or, behind
            // an append, wrote the positions this batch was planned at), and the batch is
            // decided again.
            return Err(conflict_or(e, keys));
        }
        // Only once its rows are written does the batch behind learn where this one
        // leaves the log: so its rows never wait for another process's append while
        // that one waits for this one's (a cycle Postgres would not see, the batch
        // behind waiting in this process, not in Postgres).
        if let Some(next) = links.next_tail.take() {
            let _ = next.send(Tail { head: head.clone(), closed_through, versions: versions.clone() });
        }
        if expected.is_none() {
            // Under the head lock already.
            links.next_holds_head.take().map(|next| next.send(()));
        }
        let phase = phase.next("insert");
        let phase = match &expected {
            Some((position, hash)) => {
                // Once the append before holds the head row: this update then waits for
                // its commit, and finds the head where it leaves it.
                if let Some(held) = links.held.take() {
                    held.await.map_err(|_| {
                        tracing::debug!("the append before did not reach the head");
                        moved()
                    })?;
                }
                let phase = phase.next("held");
                // Every row matches (`where id`), so the update waits for the append
                // before and then works on the head it left: a condition on the head in
                // `where` would be read from this statement's snapshot, before that
                // append, and skip the row without waiting. The head moves only if it is
                // where this batch was planned; else it is left as it is, and the batch is
                // refused (and rolled back).
                let moved_on: bool = sqlx::query(
                    "update log_head
                     set position = case when (position, hash) = ($5, $6) then $1 else position end,
                         hash = case when (position, hash) = ($5, $6) then $2 else hash end,
                         recorded_at = $3, closed_through = $4
                     where id
                     returning (position, hash) = ($1, $2), pg_notify(ledger_scoped('ledger_events'), $1::text)",
                )
                .bind(head.position)
                .bind(&head.hash)
                .bind(head.recorded_at)
                .bind(closed_through)
                .bind(position)
                .bind(hash)
                .fetch_one(&mut *tx)
                .await
                .and_then(|row| row.try_get(0))
                .map_err(|e| conflict_or(e, Vec::new()))?;
                if !moved_on {
                    tracing::debug!(position, "the head moved from where the batch was planned");
                    return Err(moved());
                }
                links.next_holds_head.take().map(|next| next.send(()));
                phase.next("head")
            }
            None => phase,
        };
        tx.commit().await?;
        Ok((Appended { results, versions }, phase.next("commit")))
    }

    /// Plans a batch on the head of the log, read under its lock (held to the commit).
    async fn plan_locked(
        &self,
        tx: &mut sqlx::PgConnection,
        commits: &[Commit],
        staged: Vec<Staged>,
        personal: &Personal,
    ) -> Result<(Plan, Option<DateTime<Utc>>), AppendError> {
        // The lock on the head row is what serializes appends; see migration 0001.
        // `recorded_at` is this shard's clock, read under the lock: no process's clock,
        // however wrong, stamps the log (and it never goes back: the head's time).
        // A writer paused while it holds the lock (SIGSTOP, a VM migration) loses it after
        // `LEDGER_APPEND_IDLE_TIMEOUT_MS` idle in this transaction, not the pool's minute:
        // Postgres ends the session and every other writer goes on.
        //
        // First, before the head row (Postgres computes the select list before it locks
        // the row), the append lock exclusively: appends written behind another (which
        // hold it shared from before their insert to their commit) are then done, so
        // this batch's rows never wait for theirs while they wait for this head: no
        // deadlock between two processes' appends.
        let head = sqlx::query(
            "select pg_advisory_xact_lock(hashtext('ledger-append'), ledger_lock_key())::text as appending,
                    position, hash, recorded_at, closed_through, clock_timestamp() as now,
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
        if !personal.is_empty() {
            self.personal_keys(&mut *tx, personal).await?;
        }
        Ok((self.plan_after(&mut *tx, commits, staged, head, &HashMap::new()).await?, closed_through))
    }

    /// Plans a batch on the tail of the append before it, without the head lock: what
    /// it checks there (versions, closed periods) holds if the head is still that
    /// append's tail when this batch updates it, which the update checks.
    async fn plan_behind(
        &self,
        tx: &mut sqlx::PgConnection,
        commits: &[Commit],
        staged: Vec<Staged>,
        tail: Tail,
    ) -> Result<(Plan, Option<DateTime<Utc>>), AppendError> {
        // The append lock shared, before any row is written (see `plan_locked`); and this
        // shard's clock, as under the head lock, never before the tail's time.
        let (_, now, _): (String, DateTime<Utc>, String) = sqlx::query_as(
            "select pg_advisory_xact_lock_shared(hashtext('ledger-append'), ledger_lock_key())::text,
                    clock_timestamp(), set_config('idle_in_transaction_session_timeout', $1, true)",
        )
        .bind(&self.append_idle_timeout)
        .fetch_one(&mut *tx)
        .await?;
        let Tail { head, closed_through, versions: known } = tail;
        let head = Head { recorded_at: now.trunc_subsecs(6).max(head.recorded_at), ..head };
        let closed_through = business_times(commits, closed_through, head.recorded_at)?;
        Ok((self.plan_after(&mut *tx, commits, staged, head, &known).await?, closed_through))
    }

    /// The batch's expectations checked against the versions before it (`known`, else
    /// the log's), and the batch laid out after `head`.
    async fn plan_after(
        &self,
        tx: &mut sqlx::PgConnection,
        commits: &[Commit],
        staged: Vec<Staged>,
        head: Head,
        known: &HashMap<Uuid, i64>,
    ) -> Result<Plan, AppendError> {
        let versions = self.current_versions(&mut *tx, commits, known).await?;
        let conflicts = check_expectations(commits, &mut versions.clone());
        if !conflicts.is_empty() {
            return Err(AppendError::Conflict { streams: conflicts, keys: Vec::new() });
        }
        Ok(plan(commits, staged, head, versions))
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
    /// of `stream_entries (stream_id, version)` rejects the batch (and, behind another
    /// append, so does the head's check). The others are streams appended with
    /// `Concurrency::Any` (system accounts) and streams a decision only read, whose
    /// version nothing else would check: as `known` has them (the tail of the append
    /// before, not committed yet), or else looked up in the log.
    async fn current_versions(
        &self,
        tx: &mut sqlx::PgConnection,
        commits: &[Commit],
        known: &HashMap<Uuid, i64>,
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
        look_up.retain(|id| match known.get(id) {
            Some(version) => {
                versions.insert(*id, *version);
                false
            }
            None => true,
        });
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
        head: Option<(&Head, Option<DateTime<Utc>>)>,
    ) -> Result<(), sqlx::Error> {
        let events = || results.iter().flat_map(|r| &r.recorded);
        let types: Vec<&str> = events().map(|e| e.event_type.as_str()).collect();
        let data: Vec<&Value> = events().map(|e| &e.data).collect();
        let metadata: Vec<&Value> = events().map(|e| &e.metadata).collect();
        let hashes: Vec<&[u8]> = events().map(|e| e.hash.as_deref().expect("a planned event has its hash")).collect();
        // One statement: the events, their stream entries, the idempotency records and,
        // under the head lock, the new head (with a notification for listeners, delivered
        // at commit). Behind another append the head is updated by a statement of its own.
        let statement = match head {
            Some(_) => insert_rows_sql!(
                "update log_head set position = $22, hash = $23, recorded_at = $24, closed_through = $25
                 returning pg_notify(ledger_scoped('ledger_events'), $22::text)"
            ),
            None => insert_rows_sql!("select"),
        };
        let query = sqlx::query(statement)
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
            .bind(rows.key_expiry);
        let query = match head {
            Some((head, closed_through)) => {
                query.bind(head.position).bind(&head.hash).bind(head.recorded_at).bind(closed_through)
            }
            None => query,
        };
        query.execute(&mut *tx).await?;
        Ok(())
    }
}

/// The log's head: its position, the hash of its last event, and the time the next
/// events are recorded at (never before the head's, so `recorded_at` never decreases).
#[derive(Clone)]
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
        header: HashedHeader {
            position: e.position,
            event_id: e.event_id,
            stream_id: e.stream_id,
            version: e.version,
            event_type: &e.event_type,
            recorded_at_us: e.recorded_at.timestamp_micros(),
        },
        data: &e.data,
        metadata: &e.metadata,
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

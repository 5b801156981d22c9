//! Batches: gathered from whole submissions, prepared (records looked up and streams
//! loaded at once, replays answered, every other command decided in order), appended
//! in one transaction, and answered; or, when the append fails, settled: decided again
//! from the log after a conflict, split group by group after a fault that may be one
//! command's, failed after a dependency's.

use super::decide::{decide_one, fresh_streams};
use super::{CommandError, CommandReply, GroupError, GroupResult, Pending, StateLoader, WriterLimits};
use crate::outcome::{Outcome, Stored};
use crate::store::{
    AppendError, Appended, Commit, DbFault, EventStore, IdempotencyRecord, Predecessor, StoreError, chain,
};
use ledger_domain::{Command, Ledger};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub(super) struct Writer {
    pub(super) store: EventStore,
    pub(super) loader: StateLoader,
    pub(super) limits: WriterLimits,
    pub(super) key_lookups: KeyLookups,
}

/// Whether the writer looks its commands' idempotency keys up before deciding them.
///
/// Not for a command alone (a group of one), as a rule: the primary key of
/// `idempotency_keys`, which every batch's append inserts its keys into, is the final
/// word on a key used before, in any process. A batch one of whose keys was recorded
/// fails its append whole; it is then decided again with look-ups, and so is any batch
/// decided without them that fails for any other reason, before a single group of it is
/// answered with a failure (a command done before may now be refused, or its subject
/// erased: its retry must still get the first answer). A key met in the log turns
/// look-ups on for every batch for a while, so clients retrying cost one failed append
/// a while, not one a batch. All-or-nothing groups are always looked up: a command done
/// before counts as done there, and a refused group records nothing a key could trip.
/// The look-up saved is a statement and a pool use per batch (11 µs of Postgres per
/// transfer at the peak, docs/PERFORMANCE.md).
#[derive(Default)]
pub(super) struct KeyLookups {
    until: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How long a key met in the log keeps look-ups on.
const KEY_LOOKUPS_AFTER_A_KEY_MET: std::time::Duration = std::time::Duration::from_secs(10);

impl KeyLookups {
    fn on(&self) -> bool {
        self.until.lock().expect("not poisoned").is_some_and(|until| std::time::Instant::now() < until)
    }

    fn turn_on(&self) {
        *self.until.lock().expect("not poisoned") = Some(std::time::Instant::now() + KEY_LOOKUPS_AFTER_A_KEY_MET);
    }
}

/// What the writer decided for one group.
enum Plan {
    /// Answered without appending anything: replays, keys in use, a refused
    /// all-or-nothing group, a bug.
    Answered(GroupResult),
    /// For each command: a commit of the batch, or an answer of its own (a replay, an
    /// internal command's rejection, which is not stored).
    Append(Vec<Item>),
}

enum Item {
    Commit(usize),
    Reply(CommandReply),
}

/// A batch decided and ready to append.
struct Prepared {
    pending: Vec<Pending>,
    plans: Vec<Plan>,
    commits: Vec<Commit>,
    /// For each commit, its group and the command's index in it.
    owners: Vec<(usize, usize)>,
    /// The state the batch leaves, if it commits (the next batch is decided on it).
    working: Ledger,
    /// Whether every key of the batch was looked up before deciding (`KeyLookups`).
    looked_up: bool,
}

impl Prepared {
    /// The states of the streams this batch appends to, as they will be once it
    /// commits: what the next batch, decided meanwhile, must see instead of the cache's
    /// (every other stream it loads is as the cache and the log have it).
    fn changed(&self) -> Ledger {
        let mut changed = Ledger::new();
        for commit in &self.commits {
            for (id, _) in commit.events.iter().flat_map(|e| e.streams()) {
                if let (false, Some(state)) = (changed.is_loaded(id), self.working.stream(id)) {
                    changed.insert(id, state.clone());
                }
            }
        }
        changed
    }
}

/// A batch being appended.
struct Flight {
    prepared: Prepared,
    task: JoinHandle<(Vec<Commit>, Result<Appended, AppendError>)>,
    /// How many commands it holds: the size the next batch gathers to before it is
    /// prepared early.
    commands: usize,
    /// What the batch changes (`Prepared::changed`) and the keys it records: the
    /// base of the batch decided meanwhile.
    base: Base,
    /// Where it leaves the log, and when it has landed: what the batch appended
    /// right behind it waits for.
    behind: Option<Predecessor>,
}

/// What a batch decided while another is in flight starts from: the states the one in
/// flight leaves, and the idempotency keys it records (in flight until it lands, since
/// no look-up can see their records before it commits).
#[derive(Default)]
struct Base {
    changed: Ledger,
    keys: HashSet<(String, String)>,
}

/// Why a batch could not be prepared as a whole.
enum Unprepared {
    /// A dependency failed: every group fails as unavailable.
    Unavailable(StoreError),
    /// A fault that may be one command's: each group is run alone.
    Split,
}

impl Writer {
    /// The writer's loop. While a batch is appended and committed, the commands that
    /// arrive gather into the next one; as soon as it holds as many as the batch in
    /// flight (so batches stay as large as the load makes them), it is prepared on top
    /// of the one in flight, and appended once that one has committed (prepared again
    /// if it did not). If the batch in flight lands first, the next is prepared then.
    pub(super) async fn run(self, mut rx: mpsc::Receiver<Vec<Pending>>) {
        let mut flight: Option<Flight> = None;
        let mut open = true;
        loop {
            let Some(mut current) = flight.take() else {
                let Some(first) = rx.recv().await else { return };
                flight = self.launch(self.fill(first, &mut rx)).await;
                continue;
            };
            let (mut next, mut commands) = (Vec::new(), 0usize);
            let target = current.commands.clamp(1, self.limits.batch_max);
            let landed = loop {
                tokio::select! {
                    biased;
                    done = &mut current.task => break Some(done),
                    more = rx.recv(), if open && commands < target => match more {
                        Some(more) => {
                            commands += more.iter().map(|p| p.group.requests.len()).sum::<usize>();
                            next.extend(more);
                        }
                        None => open = false,
                    },
                }
                if commands >= target {
                    break None;
                }
            };
            flight = match landed {
                // The batch in flight landed first: the next one is prepared now.
                Some(done) => {
                    self.settle_landed(current.prepared, done).await;
                    if next.is_empty() { None } else { self.launch(self.fill_more(next, &mut rx)).await }
                }
                // Enough gathered (and whatever else is waiting, up to `batch_max`):
                // decided while the batch in flight commits, and appended right behind it.
                None => {
                    let base = std::mem::take(&mut current.base);
                    let next = self.fill_more(next, &mut rx);
                    match self.catch_prepare(next, Some(base), false).await {
                        Some(Ok(p))
                            if self.limits.append_behind
                                && !p.commits.is_empty()
                                && self.store.has_room_for_a_second_append() =>
                        {
                            self.follow(current, p).await
                        }
                        prepared => {
                            let committed = self.land(current).await;
                            match prepared {
                                Some(Ok(p)) if committed => self.fly(p, None),
                                // Decided on a state that did not commit: decided again.
                                Some(Ok(p)) => self.launch(p.pending).await,
                                // Answered only now: a batch run group by group appends,
                                // and nothing of this one may be appended before the one
                                // in flight.
                                Some(Err((pending, why))) => {
                                    self.unprepared(pending, why).await;
                                    None
                                }
                                None => None,
                            }
                        }
                    }
                }
            };
            if !open && flight.is_none() {
                return;
            }
        }
    }

    /// Whole submissions only: a bulk's commands share one batch (and one commit),
    /// however many there are; others join until the batch holds `batch_max` commands.
    fn fill(&self, batch: Vec<Pending>, rx: &mut mpsc::Receiver<Vec<Pending>>) -> Vec<Pending> {
        self.fill_more(batch, rx)
    }

    /// [`Writer::fill`] on what is gathered already.
    fn fill_more(&self, mut batch: Vec<Pending>, rx: &mut mpsc::Receiver<Vec<Pending>>) -> Vec<Pending> {
        let mut commands: usize = batch.iter().map(|p| p.group.requests.len()).sum();
        while commands < self.limits.batch_max {
            match rx.try_recv() {
                Ok(more) => {
                    commands += more.iter().map(|p| p.group.requests.len()).sum::<usize>();
                    batch.extend(more);
                }
                Err(_) => break,
            }
        }
        batch
    }

    async fn launch(&self, batch: Vec<Pending>) -> Option<Flight> {
        let prepared = self.guarded_prepare(batch, None, false).await?;
        self.fly(prepared, None)
    }

    /// Appends `prepared`, decided on the state the batch in flight leaves, right
    /// behind it: its rows are written while that one commits. Once the batch in
    /// flight has landed, the one behind it flies on. If it did not commit, the one
    /// behind cannot commit on it either (its update of the head finds the head
    /// elsewhere); it is awaited, so that nothing decided again is written while its
    /// rows are, and decided again itself.
    async fn follow(&self, mut current: Flight, prepared: Prepared) -> Option<Flight> {
        let mut behind = self.fly(prepared, current.behind.take()).expect("a batch with commits flies");
        let started = std::time::Instant::now();
        let done = (&mut current.task).await;
        metrics::histogram!("ledger_writer_land_seconds").record(started.elapsed().as_secs_f64());
        let committed = matches!(done, Ok((_, Ok(_))));
        if committed {
            self.settle_landed(current.prepared, done).await;
            return Some(behind);
        }
        let behind_done = (&mut behind.task).await;
        match behind_done {
            Ok((commits, Ok(appended))) => {
                // The batch behind moved the head only from where the one in flight left
                // it: that one committed too, though its append answered an error (its
                // commit's reply lost, a panic after it), unless it recorded no events
                // (then it left the head as it found it). Committed or not, its outcome is
                // unknown to its callers (503; a retry with its key replays it): running
                // it again could record a command without a key twice.
                match done {
                    Ok((c, failed)) if c.iter().all(|c| c.events.is_empty()) => {
                        self.settle_landed(current.prepared, Ok((c, failed))).await;
                    }
                    _ => {
                        let unknown = sqlx::Error::Protocol("the append's outcome is unknown".into());
                        fail_all(current.prepared.pending, CommandError::Unavailable(Arc::new(unknown.into())));
                    }
                }
                behind.prepared.commits = commits;
                self.reply(behind.prepared, appended);
                None
            }
            _ => {
                self.settle_landed(current.prepared, done).await;
                self.launch(behind.prepared.pending).await
            }
        }
    }

    /// Starts appending a prepared batch (right behind the append `after` is the end
    /// of, if any); a batch with nothing to append is answered at once.
    fn fly(&self, mut prepared: Prepared, after: Option<Predecessor>) -> Option<Flight> {
        if prepared.commits.is_empty() {
            self.reply(prepared, Appended { results: Vec::new(), versions: Default::default() });
            return None;
        }
        let keys = prepared
            .commits
            .iter()
            .filter_map(|c| c.idempotency.as_ref())
            .map(|k| (k.principal.clone(), k.key.clone()));
        let base = Base { changed: prepared.changed(), keys: keys.collect() };
        let commands = prepared.pending.iter().map(|p| p.group.requests.len()).sum();
        let (store, commits) = (self.store.clone(), std::mem::take(&mut prepared.commits));
        // A link for a batch behind this one, only if one may be appended so.
        let (next, behind) = self.limits.append_behind.then(chain).unzip();
        let task = tokio::spawn(async move {
            let result = store.append_behind(&commits, after, next).await;
            (commits, result)
        });
        Some(Flight { prepared, task, commands, base, behind })
    }

    /// Waits for a batch's commit and answers it, or settles its failure. Returns
    /// whether it committed as decided.
    async fn land(&self, flight: Flight) -> bool {
        let Flight { prepared, task, .. } = flight;
        let started = std::time::Instant::now();
        let done = task.await;
        metrics::histogram!("ledger_writer_land_seconds").record(started.elapsed().as_secs_f64());
        self.settle_landed(prepared, done).await
    }

    /// Answers a batch whose append ended, or settles its failure; whether it committed.
    async fn settle_landed(
        &self,
        mut prepared: Prepared,
        done: Result<(Vec<Commit>, Result<Appended, AppendError>), tokio::task::JoinError>,
    ) -> bool {
        let Ok((commits, result)) = done else {
            tracing::error!("appending a batch panicked; its groups run one by one");
            let pending = if prepared.looked_up { prepared.pending } else { self.replayed(prepared.pending).await };
            self.split(pending).await;
            return false;
        };
        prepared.commits = commits;
        match result {
            Ok(appended) => {
                self.reply(prepared, appended);
                true
            }
            Err(e) => {
                Box::pin(self.settle(prepared, e, 0)).await;
                false
            }
        }
    }

    /// Prepares, appends and answers a batch without the pipeline (after a failure).
    async fn process(&self, batch: Vec<Pending>) {
        let Some(mut prepared) = self.guarded_prepare(batch, None, true).await else { return };
        let commits = std::mem::take(&mut prepared.commits);
        if commits.is_empty() {
            return self.reply(prepared, Appended { results: Vec::new(), versions: Default::default() });
        }
        let result = self.store.append_batch(&commits).await;
        prepared.commits = commits;
        match result {
            Ok(appended) => self.reply(prepared, appended),
            Err(e) => Box::pin(self.settle(prepared, e, 0)).await,
        }
    }

    /// A failed append: decided again from the log after a conflict (up to
    /// `conflict_retries_max`), the group of an unstorable command answered alone,
    /// split group by group after a fault that is not a dependency's, or failed.
    async fn settle(&self, prepared: Prepared, error: AppendError, conflicts: u32) {
        let Prepared { mut pending, owners, working, looked_up, .. } = prepared;
        if let AppendError::Conflict { keys, .. } = &error
            && !keys.is_empty()
        {
            // A key of the batch was recorded meanwhile, or before.
            self.key_lookups.turn_on();
        }
        // Decided without look-ups: no group is answered with a failure before the batch
        // is decided again with them (a command done before gets its first answer), and
        // that is not counted as a conflict.
        let unavailable =
            matches!(&error, AppendError::Database(e) if crate::store::db_fault(e) == DbFault::Unavailable);
        let without_lookups = !looked_up && !unavailable;
        if without_lookups || matches!(error, AppendError::Conflict { .. }) {
            // The catch-up should have made every cached state the log's; should one
            // not have been, the streams this batch decided on are folded again.
            working.streams().for_each(|(id, _)| self.loader.forget(*id));
        }
        if without_lookups {
            tracing::debug!(%error, "a batch decided without key look-ups failed; deciding it again with them");
        } else {
            match error {
                AppendError::Conflict { .. } if conflicts < self.limits.conflict_retries_max => {
                    metrics::counter!("ledger_append_conflicts_total").increment(1);
                    tracing::debug!(conflicts = conflicts + 1, %error, "append conflicted; deciding the batch again");
                }
                AppendError::Conflict { .. } => return fail_all(pending, CommandError::VersionConflict(conflicts + 1)),
                AppendError::Unstorable { commit, reason } => {
                    tracing::error!(%reason, "a command's events cannot be stored; its group fails, the others go on");
                    metrics::counter!("ledger_commands_isolated_total").increment(1);
                    let (group, index) = owners[commit];
                    let bad = pending.remove(group);
                    let _ = bad.reply.send(Err(GroupError::Command { index, error: CommandError::Internal }));
                }
                AppendError::AheadOfLog { commit, now } => {
                    tracing::info!(%now, "a command stating a time ahead of the log's clock was not recorded");
                    let (group, index) = owners[commit];
                    let bad = pending.remove(group);
                    let _ = bad.reply.send(Err(GroupError::Command { index, error: CommandError::AheadOfLog(now) }));
                }
                AppendError::SubjectKeyDestroyed { commits, .. } => {
                    tracing::info!(
                        commands = commits.len(),
                        "a subject was erased under commands that sealed its values"
                    );
                    let mut groups: Vec<(usize, usize)> = commits.iter().map(|c| owners[*c]).collect();
                    groups.sort_unstable();
                    groups.dedup_by_key(|(group, _)| *group);
                    for (group, index) in groups.into_iter().rev() {
                        let bad = pending.remove(group);
                        let _ = bad
                            .reply
                            .send(Err(GroupError::Command { index, error: CommandError::SubjectKeyDestroyed }));
                    }
                }
                AppendError::Database(e) if crate::store::db_fault(&e) == DbFault::Unavailable => {
                    tracing::error!(error = %e, "append failed");
                    return fail_all(pending, CommandError::Unavailable(Arc::new(StoreError::Database(e))));
                }
                AppendError::Database(e) => {
                    tracing::error!(error = %e, groups = pending.len(), "a batch failed; its groups run one by one");
                    return self.split(pending).await;
                }
            }
        }
        let conflicts = if without_lookups { conflicts } else { conflicts + 1 };
        let Some(mut again) = self.guarded_prepare(pending, None, true).await else { return };
        let commits = std::mem::take(&mut again.commits);
        if commits.is_empty() {
            return self.reply(again, Appended { results: Vec::new(), versions: Default::default() });
        }
        let result = self.store.append_batch(&commits).await;
        again.commits = commits;
        match result {
            Ok(appended) => self.reply(again, appended),
            Err(e) => Box::pin(self.settle(again, e, conflicts)).await,
        }
    }

    /// The groups of a batch decided without look-ups that its keys' records do not
    /// answer: a replay (or a key reused, or in flight) is answered now, never run again.
    /// On a failed look-up, all of them.
    async fn replayed(&self, pending: Vec<Pending>) -> Vec<Pending> {
        self.key_lookups.turn_on();
        let mut before = repeated_keys(&pending, &HashSet::new());
        let Ok(records) = self.records(&pending, &before, true).await else { return pending };
        replay_all(&pending, &mut before, &records);
        let mut rest = Vec::with_capacity(pending.len());
        for (p, b) in pending.into_iter().zip(before) {
            match b {
                Before::Answered(result) => {
                    let _ = p.reply.send(result);
                }
                Before::Decide(_) => rest.push(p),
            }
        }
        rest
    }

    /// A batch that failed for a reason that may be one command's: each group alone, so
    /// only the one at fault fails.
    async fn split(&self, pending: Vec<Pending>) {
        if pending.len() == 1 {
            return fail_all(pending, CommandError::Internal);
        }
        for p in pending {
            Box::pin(self.process(vec![p])).await;
        }
    }

    /// [`Writer::prepare`], with its failures answered: `None` when nothing is left to append.
    async fn guarded_prepare(&self, batch: Vec<Pending>, base: Option<Base>, lookups: bool) -> Option<Prepared> {
        match self.catch_prepare(batch, base, lookups).await? {
            Ok(prepared) => Some(prepared),
            Err((pending, why)) => {
                self.unprepared(pending, why).await;
                None
            }
        }
    }

    /// [`Writer::prepare`] with a panic caught: `None` then (a bug, an invariant
    /// assertion, must not take the writer down; the batch's callers see their reply
    /// dropped: 503).
    async fn catch_prepare(
        &self,
        batch: Vec<Pending>,
        base: Option<Base>,
        lookups: bool,
    ) -> Option<Result<Prepared, (Vec<Pending>, Unprepared)>> {
        let started = std::time::Instant::now();
        let prepared = std::panic::AssertUnwindSafe(self.prepare(batch, base, lookups));
        let prepared = match futures::FutureExt::catch_unwind(prepared).await {
            Ok(prepared) => prepared,
            Err(_) => {
                tracing::error!("the command writer caught a panic; the batch was not recorded");
                return None;
            }
        };
        metrics::histogram!("ledger_writer_prepare_seconds").record(started.elapsed().as_secs_f64());
        Some(prepared)
    }

    /// Answers a batch that could not be prepared: failed as unavailable, or run group
    /// by group.
    async fn unprepared(&self, pending: Vec<Pending>, why: Unprepared) {
        match why {
            Unprepared::Unavailable(e) => {
                tracing::error!(error = %e, "preparing a batch failed");
                fail_all(pending, CommandError::Unavailable(Arc::new(e)));
            }
            Unprepared::Split => Box::pin(self.split(pending)).await,
        }
    }

    /// Prepares a batch on `base` (the state the batch in flight leaves) or on the log:
    /// keys used twice in the batch refused, records looked up and streams loaded at
    /// once, replays answered, every other command decided in order. A panic while
    /// deciding (a bug an input reached) fails only its group; the rest is decided again.
    async fn prepare(
        &self,
        batch: Vec<Pending>,
        base: Option<Base>,
        lookups: bool,
    ) -> Result<Prepared, (Vec<Pending>, Unprepared)> {
        let phase = crate::phases::Phases::start("writer", batch.iter().map(|p| p.group.requests.len()).sum());
        let Base { changed, keys: in_flight } = base.unwrap_or_default();
        let mut before = repeated_keys(&batch, &in_flight);
        let retry_base = changed.clone();
        let mut working = changed;
        let keyed_alone = batch.iter().zip(&before).any(|(p, b)| {
            matches!(b, Before::Decide(_))
                && !p.group.all_or_nothing
                && p.group.requests.iter().any(|r| r.idempotency.is_some())
        });
        let mut looked_up = lookups || !keyed_alone || self.key_lookups.on();
        let (records, loaded) =
            tokio::join!(self.records(&batch, &before, looked_up), self.start(&batch, &before, &mut working));
        let records = match records {
            Ok(records) => records,
            Err(e) if crate::store::db_fault(&e) == DbFault::Unavailable => {
                return Err((batch, Unprepared::Unavailable(StoreError::Database(e))));
            }
            Err(e) => {
                tracing::error!(error = %e, "reading idempotency records failed");
                return Err((batch, Unprepared::Split));
            }
        };
        if let Err(e) = loaded {
            return Err((batch, Unprepared::Unavailable(e)));
        }
        let phase = phase.next("keys_and_streams");
        replay_all(&batch, &mut before, &records);
        loop {
            match self.decide(&batch, &before, working).await {
                Ok(Decided::All { plans, commits, owners, working }) => {
                    phase.next("decide");
                    return Ok(Prepared { pending: batch, plans, commits, owners, working, looked_up });
                }
                Ok(Decided::Panicked { .. }) if !looked_up => {
                    // A command done before is answered, never decided: look its key up first.
                    looked_up = true;
                    self.key_lookups.turn_on();
                    let records = match self.records(&batch, &before, true).await {
                        Ok(records) => records,
                        Err(e) => return Err((batch, Unprepared::Unavailable(StoreError::Database(e)))),
                    };
                    replay_all(&batch, &mut before, &records);
                    working = retry_base.clone();
                    if let Err(e) = self.start(&batch, &before, &mut working).await {
                        return Err((batch, Unprepared::Unavailable(e)));
                    }
                }
                Ok(Decided::Panicked { group, index }) => {
                    tracing::error!("deciding a command panicked; its group fails, the batch is decided again");
                    metrics::counter!("ledger_commands_isolated_total").increment(1);
                    before[group] = Before::Answered(Err(GroupError::Command { index, error: CommandError::Internal }));
                    working = retry_base.clone();
                    if let Err(e) = self.start(&batch, &before, &mut working).await {
                        return Err((batch, Unprepared::Unavailable(e)));
                    }
                }
                Err(e) => return Err((batch, Unprepared::Unavailable(e))),
            }
        }
    }

    /// Readies `working` for the groups still to decide: the streams their callers
    /// minted (empty), and every stream their commands need, loaded.
    async fn start(&self, batch: &[Pending], before: &[Before], working: &mut Ledger) -> Result<(), StoreError> {
        let requests = || {
            batch
                .iter()
                .zip(before)
                .filter(|(_, b)| matches!(b, Before::Decide(_)))
                .flat_map(|(p, _)| &p.group.requests)
        };
        for (id, state) in fresh_streams(requests()).streams() {
            if !working.is_loaded(*id) {
                working.insert(*id, state.clone());
            }
        }
        self.loader.catch_up().await?;
        self.load_missing(working, requests().map(|r| &r.command).collect()).await
    }

    /// The records of every key the batch's undecided groups name (one look-up); with
    /// `all` false, only those of all-or-nothing groups (`KeyLookups`).
    async fn records(
        &self,
        batch: &[Pending],
        before: &[Before],
        all: bool,
    ) -> Result<HashMap<(String, String), IdempotencyRecord>, sqlx::Error> {
        let keys: Vec<(String, String)> = batch
            .iter()
            .zip(before)
            .filter(|(p, b)| matches!(b, Before::Decide(_)) && (all || p.group.all_or_nothing))
            .flat_map(|(p, _)| p.group.requests.iter())
            .filter_map(|r| r.idempotency.as_ref().map(|k| (k.principal.clone(), k.key.clone())))
            .collect();
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let limit = self.store.writer_time_limit();
        crate::db::within(limit, "reading idempotency records", self.store.writer_key_records(&keys)).await
    }

    /// Decides every group that is not answered yet, in order, on `working`.
    async fn decide(&self, batch: &[Pending], before: &[Before], mut working: Ledger) -> Result<Decided, StoreError> {
        let (mut plans, mut commits, mut owners) = (Vec::with_capacity(batch.len()), Vec::new(), Vec::new());
        for (g, (p, b)) in batch.iter().zip(before).enumerate() {
            let replayed = match b {
                Before::Answered(result) => {
                    plans.push(Plan::Answered(result.clone()));
                    continue;
                }
                Before::Decide(replayed) => replayed,
            };
            let first = commits.len();
            match self.decide_group(&p.group, replayed, &mut working, &mut commits).await? {
                Ok(items) => {
                    owners.extend((first..commits.len()).map(|c| (g, index_of(&items, c))));
                    plans.push(Plan::Append(items));
                }
                Err(GroupFailure::Refused(result)) => plans.push(Plan::Answered(result)),
                Err(GroupFailure::Panicked(index)) => return Ok(Decided::Panicked { group: g, index }),
            }
        }
        Ok(Decided::All { plans, commits, owners, working })
    }
}

/// What a group comes to before deciding: answered already, or to decide (with, for
/// each command, its stored answer if it was done before: an all-or-nothing group's
/// commands that ran under their keys earlier count as done).
#[derive(Clone)]
enum Before {
    Answered(GroupResult),
    Decide(Vec<Option<CommandReply>>),
}

/// A batch decided, or the group whose deciding panicked.
enum Decided {
    All { plans: Vec<Plan>, commits: Vec<Commit>, owners: Vec<(usize, usize)>, working: Ledger },
    Panicked { group: usize, index: usize },
}

/// The index, in its group, of the command whose commit is `commit`.
fn index_of(items: &[Item], commit: usize) -> usize {
    items.iter().position(|i| matches!(i, Item::Commit(c) if *c == commit)).unwrap_or(0)
}

/// Why a group will not be appended.
enum GroupFailure {
    /// Answered as refused (an all-or-nothing group with a rejected command).
    Refused(GroupResult),
    /// Deciding the command at this index panicked.
    Panicked(usize),
}

impl Writer {
    /// Decides one group's commands in order on `working`, adding their commits. An
    /// all-or-nothing group that is refused leaves `working` and `commits` as they were.
    async fn decide_group(
        &self,
        group: &super::Group,
        replayed: &[Option<CommandReply>],
        working: &mut Ledger,
        commits: &mut Vec<Commit>,
    ) -> Result<Result<Vec<Item>, GroupFailure>, StoreError> {
        let before = group.all_or_nothing.then(|| (working.clone(), commits.len()));
        let mut items = Vec::with_capacity(group.requests.len());
        for (index, request) in group.requests.iter().enumerate() {
            if let Some(reply) = replayed.get(index).cloned().flatten() {
                items.push(Item::Reply(reply));
                continue;
            }
            // Rare: a command whose needs depend on an earlier command of this batch.
            self.load_missing(working, vec![&request.command]).await?;
            let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decide_one(request, working)));
            let Ok((commit, has_events)) = decided else {
                if let Some((state, len)) = before {
                    *working = state;
                    commits.truncate(len);
                }
                return Ok(Err(GroupFailure::Panicked(index)));
            };
            if let (Some((state, len)), Some(error)) = (&before, &commit.rejection) {
                let error = GroupError::Rejected { index, error: error.clone() };
                *working = state.clone();
                commits.truncate(*len);
                return Ok(Err(GroupFailure::Refused(Err(error))));
            }
            if request.idempotency.is_none() && !has_events {
                // A rejection of an internal command has nothing to record.
                let answer = Stored::Outcome(commit.outcome(None, chrono::Utc::now()));
                items.push(Item::Reply(CommandReply { answer, replayed: false, recorded: Vec::new() }));
            } else {
                items.push(Item::Commit(commits.len()));
                commits.push(commit);
            }
        }
        Ok(Ok(items))
    }

    /// Loads into `working` the streams `commands` need that it does not hold yet (a
    /// reversal or settlement needs a second round: the accounts of the loaded transfer).
    async fn load_missing(&self, working: &mut Ledger, commands: Vec<&Command>) -> Result<(), StoreError> {
        for _round in 0..3 {
            let mut missing: Vec<Uuid> = commands.iter().flat_map(|c| c.missing_streams(working)).collect();
            missing.sort_unstable();
            missing.dedup();
            if missing.is_empty() {
                break;
            }
            self.loader.load_caught_up(working, &missing).await?;
        }
        Ok(())
    }

    /// Answers every group of a committed batch, and caches the states that are
    /// exactly what the log now holds. A panic here (a broken invariant) must not end
    /// the writer, which would leave every later command unanswered: the batch is
    /// committed, so a caller whose answer was lost with it (503) replays it on retry,
    /// and the cache, which may hold part of the batch, is dropped whole.
    fn reply(&self, prepared: Prepared, appended: Appended) {
        let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.answer(prepared, appended)));
        if answered.is_err() {
            tracing::error!("answering a committed batch panicked; its callers retry and replay");
            metrics::counter!("ledger_commands_isolated_total").increment(1);
            self.loader.forget_all();
        }
    }

    fn answer(&self, prepared: Prepared, appended: Appended) {
        let Prepared { pending, plans, working, .. } = prepared;
        self.remember_appended(working, &appended.versions);
        let positions = appended.results.iter().flat_map(|r| r.recorded.iter().map(|e| e.position));
        if let (Some(first), Some(last)) = (positions.clone().min(), positions.max()) {
            self.loader.committed(first - 1, last);
        }
        let mut results: Vec<Option<crate::store::CommitResult>> = appended.results.into_iter().map(Some).collect();
        for (p, plan) in pending.into_iter().zip(plans) {
            let result = match plan {
                Plan::Answered(result) => result,
                Plan::Append(items) => Ok(items
                    .into_iter()
                    .map(|item| match item {
                        Item::Reply(reply) => reply,
                        Item::Commit(c) => {
                            let r = results[c].take().expect("one result per commit");
                            CommandReply { answer: Stored::Outcome(r.outcome), replayed: false, recorded: r.recorded }
                        }
                    })
                    .collect()),
            };
            let _ = p.reply.send(result);
        }
    }

    /// Caches the working states that are exactly what the log now holds. A stream
    /// appended at a version other than the one the writer computed (a system account
    /// another process appended to meanwhile) is dropped from the cache instead, so its
    /// next load folds it from the log: the cache never holds a state the log does not.
    fn remember_appended(&self, working: Ledger, versions: &HashMap<Uuid, i64>) {
        let mut due = Vec::new();
        for (stream, state) in working.into_streams() {
            match versions.get(&stream) {
                Some(logged) if *logged != state.version => self.loader.forget(stream),
                Some(_) => due.extend(self.loader.remember_committed(stream, state).map(|s| (stream, s))),
                // Not appended by this batch: loaded from the log or the cache (and cached
                // by the load), or inherited from the batch before it, whose own answer
                // cached or dropped it. Caching it here could put back a state the log
                // never had: a system account the batch before computed at its own
                // figure while another process appended to it.
                None => {}
            }
        }
        self.loader.snapshot_in_background(due);
    }
}

/// Groups that use a key an earlier group of the batch, or the batch in flight, records
/// (still in flight), or that use one key twice (an all-or-nothing group: reused):
/// answered now.
fn repeated_keys(batch: &[Pending], in_flight: &HashSet<(String, String)>) -> Vec<Before> {
    let mut seen: HashSet<(&str, &str)> = in_flight.iter().map(|(p, k)| (p.as_str(), k.as_str())).collect();
    batch
        .iter()
        .map(|p| {
            let mut mine: HashSet<(&str, &str)> = HashSet::new();
            for (index, r) in p.group.requests.iter().enumerate() {
                let Some(k) = &r.idempotency else { continue };
                let key = (k.principal.as_str(), k.key.as_str());
                if !mine.insert(key) {
                    return Before::Answered(Err(GroupError::Command {
                        index,
                        error: CommandError::IdempotencyKeyReused,
                    }));
                }
                if seen.contains(&key) {
                    return Before::Answered(Err(GroupError::Command {
                        index,
                        error: CommandError::IdempotencyKeyInFlight,
                    }));
                }
            }
            seen.extend(mine);
            Before::Decide(vec![None; p.group.requests.len()])
        })
        .collect()
}

/// A group's commands whose keys were used before: a group of one replays its record
/// (or is refused: another request's key, or one still running); an all-or-nothing
/// group counts a command's stored answer as done, and is refused if that answer is a
/// rejection or a key is another request's or in flight.
fn replays(group: &super::Group, records: &HashMap<(String, String), IdempotencyRecord>) -> Before {
    let mut done = Vec::with_capacity(group.requests.len());
    for (index, r) in group.requests.iter().enumerate() {
        let found =
            r.idempotency.as_ref().and_then(|k| records.get(&(k.principal.clone(), k.key.clone())).map(|rec| (k, rec)));
        let refused = |error| Before::Answered(Err(GroupError::Command { index, error }));
        match found {
            None => done.push(None),
            Some((claim, record)) if record.fingerprint != claim.fingerprint => {
                return refused(CommandError::IdempotencyKeyReused);
            }
            Some((_, IdempotencyRecord { stored: None, .. })) => return refused(CommandError::IdempotencyKeyInFlight),
            Some((_, IdempotencyRecord { stored: Some(stored), .. })) => {
                if let (true, Stored::Outcome(Outcome::Rejected(error))) = (group.all_or_nothing, stored) {
                    return Before::Answered(Err(GroupError::Rejected { index, error: error.clone() }));
                }
                done.push(Some(CommandReply { answer: stored.clone(), replayed: true, recorded: Vec::new() }));
            }
        }
    }
    if done.iter().all(Option::is_some) {
        return Before::Answered(Ok(done.into_iter().flatten().collect()));
    }
    Before::Decide(done)
}

/// Every group still to decide, with the records looked up: replayed, refused, or
/// decided with its commands done before counted as done.
fn replay_all(batch: &[Pending], before: &mut [Before], records: &HashMap<(String, String), IdempotencyRecord>) {
    for (b, p) in before.iter_mut().zip(batch) {
        if matches!(b, Before::Decide(_)) {
            *b = replays(&p.group, records);
        }
    }
}

fn fail_all(pending: Vec<Pending>, error: CommandError) {
    for p in pending {
        let _ = p.reply.send(Err(GroupError::Failed(error.clone())));
    }
}

//! The command writer: one task per process that takes commands from a bounded queue,
//! gathers those waiting into a batch, loads the streams they need (from a cache of
//! folded states, caught up from the log), decides each command in order against the
//! state its predecessors left, and appends the whole batch in one transaction: one
//! commit (one fsync) for many commands, each still decided, answered and remembered
//! for idempotent replay on its own. A rejected command never fails its neighbours.

use crate::outcome::{Outcome, Stored};
use crate::store::{
    AppendError, Appended, Commit, DbFault, EventMetadata, EventStore, IdempotencyClaim, IdempotencyRecord,
    RecordedEvent, StoreError,
};
use ledger_domain::{Command, Concurrency, DomainError, Ledger, StreamState, decide};
use moka::sync::Cache;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// A command with everything needed to record it.
pub struct CommandRequest {
    pub command: Command,
    pub metadata: EventMetadata,
    pub idempotency: Option<IdempotencyClaim>,
    /// A stream id the caller has just minted (a v7 UUID for a new transfer,
    /// transaction, hold, …): it cannot be in the log yet, so the writer starts it empty
    /// without asking Postgres (two round trips per batch fewer). Were it there after
    /// all, the unique `(stream_id, version)` of the append would refuse the batch.
    pub fresh_stream: Option<Uuid>,
}

/// The answer to a command: its outcome (or, for a replay of a record written before
/// outcomes were kept, the response stored then). Only the API renders it.
#[derive(Clone, Debug)]
pub struct CommandReply {
    pub answer: Stored,
    /// True when this is the stored answer of an earlier request with the same key.
    pub replayed: bool,
    pub recorded: Vec<RecordedEvent>,
}

impl CommandReply {
    /// The outcome, unless this replays a response stored by an older version.
    pub fn outcome(&self) -> Option<&Outcome> {
        match &self.answer {
            Stored::Outcome(o) => Some(o),
            Stored::Reference(_) | Stored::Response(_) => None,
        }
    }
}

/// Why a command got no answer of its own.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CommandError {
    #[error("the idempotency key was used with a different request")]
    IdempotencyKeyReused,
    #[error("a request with this idempotency key is still executing")]
    IdempotencyKeyInFlight,
    #[error("version conflicts persisted after {0} attempts")]
    VersionConflict(u32),
    /// Postgres failed as a dependency (unreachable, overloaded, timed out); the
    /// command may or may not have been recorded only if the failure came at commit.
    #[error("the event store is unavailable: {0}")]
    Unavailable(std::sync::Arc<StoreError>),
    #[error("the writer has shut down")]
    ShuttingDown,
    /// The command met a bug and was not recorded; nothing of it was stored.
    #[error("the command could not be recorded (an internal error; nothing was stored)")]
    Internal,
}

struct Job {
    request: CommandRequest,
    reply: oneshot::Sender<Result<CommandReply, CommandError>>,
}

/// Commands that commit together or not at all (an atomic bulk): decided in order,
/// each against the state the ones before it left, appended in one transaction.
struct AtomicJob {
    requests: Vec<CommandRequest>,
    reply: oneshot::Sender<Result<Vec<CommandReply>, AtomicError>>,
}

/// Why an atomic group recorded nothing.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AtomicError {
    /// The command at `index` broke a rule (or replayed an earlier answer that did).
    #[error("command {index} was refused: {error}")]
    Rejected { index: usize, error: DomainError },
    /// The command at `index` cannot run as sent (its key was used for another request).
    #[error("command {index}: {error}")]
    Command { index: usize, error: CommandError },
    /// The group as a whole could not be recorded.
    #[error(transparent)]
    Failed(#[from] CommandError),
}

/// Handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct CommandBus {
    /// Submissions: one command, or many sent together (a non-atomic bulk), which the
    /// writer never splits across batches.
    tx: mpsc::Sender<Vec<Job>>,
    atomic_tx: mpsc::Sender<AtomicJob>,
    loader: StateLoader,
}

/// Folded stream states, cached, always caught up with the log before use. A stream
/// not in the cache starts from its latest snapshot; one that needed `snapshot_every`
/// or more events folded from the log gets a new snapshot.
#[derive(Clone)]
pub struct StateLoader {
    store: EventStore,
    cache: Cache<Uuid, StreamState>,
    /// 0 disables snapshots.
    snapshot_every: usize,
}

impl StateLoader {
    pub fn new(store: EventStore, cache_max: u64, snapshot_every: usize) -> StateLoader {
        StateLoader { store, cache: Cache::new(cache_max), snapshot_every }
    }

    /// Loads the given streams into `ledger`, exactly as the log has them now.
    pub async fn load(&self, ledger: &mut Ledger, ids: &[Uuid]) -> Result<(), StoreError> {
        let mut missing = Vec::new();
        for id in ids {
            match self.cache.get(id) {
                Some(state) => ledger.insert(*id, state),
                None => {
                    missing.push(*id);
                    ledger.insert(*id, StreamState::default());
                }
            }
        }
        if self.snapshot_every > 0 && !missing.is_empty() {
            for (id, state) in crate::snapshots::latest(self.store.pool(), &missing).await? {
                ledger.insert(id, state);
            }
        }
        let known: Vec<(Uuid, i64)> = ids.iter().map(|id| (*id, ledger.version(*id))).collect();
        let mut folded: std::collections::HashMap<Uuid, usize> = std::collections::HashMap::new();
        for (stream, version, event) in self.store.events_after(&known).await? {
            ledger.apply_to_stream(stream, version, &event);
            *folded.entry(stream).or_default() += 1;
        }
        for id in ids {
            self.remember(*id, ledger.stream(*id));
        }
        if self.snapshot_every > 0 {
            for (id, count) in folded.into_iter().filter(|(_, n)| *n >= self.snapshot_every) {
                if let Some(state) = ledger.stream(id)
                    && let Err(e) = crate::snapshots::save(self.store.pool(), id, state).await
                {
                    tracing::warn!(error = %e, stream = %id, count, "saving a snapshot failed");
                }
            }
        }
        Ok(())
    }

    /// Whether a stream appended up to `version` crossed a multiple of `snapshot_every`
    /// since its cached (pre-batch) state: a stream that stays in the cache is never
    /// loaded from the log again, so this is where busy streams get their snapshots
    /// (and historical reads of them a near starting point).
    fn snapshot_due(&self, id: Uuid, version: i64) -> bool {
        let every = i64::try_from(self.snapshot_every).unwrap_or(i64::MAX);
        let before = self.cache.get(&id).map_or(0, |s| s.version);
        every > 0 && before / every < version / every
    }

    /// Saves states that are exactly what the log holds, off the writer's path.
    fn snapshot_in_background(&self, states: Vec<(Uuid, StreamState)>) {
        if states.is_empty() {
            return;
        }
        let pool = self.store.pool().clone();
        tokio::spawn(async move {
            for (id, state) in states {
                if let Err(e) = crate::snapshots::save(&pool, id, &state).await {
                    tracing::warn!(error = %e, stream = %id, "saving a snapshot failed");
                }
            }
        });
    }

    /// Drops a stream's cached state; its next load folds it from the log.
    fn forget(&self, id: Uuid) {
        self.cache.invalidate(&id);
    }

    fn remember(&self, id: Uuid, state: Option<&StreamState>) {
        if let Some(state) = state.filter(|s| s.version > 0) {
            let newer = self.cache.get(&id).is_none_or(|cached| cached.version < state.version);
            if newer {
                self.cache.insert(id, state.clone());
            }
        }
    }
}

/// Limits of the writer.
#[derive(Clone, Copy, Debug)]
pub struct WriterLimits {
    pub batch_max: usize,
    pub queue_max: usize,
    pub conflict_retries_max: u32,
    pub cache_max: u64,
    /// Snapshot a stream whenever this many events had to be folded (0: never).
    pub snapshot_every: usize,
}

impl CommandBus {
    /// Starts the writer task. It stops when every handle has been dropped.
    pub fn start(store: EventStore, limits: WriterLimits) -> CommandBus {
        let (tx, rx) = mpsc::channel(limits.queue_max);
        let (atomic_tx, atomic_rx) = mpsc::channel(limits.queue_max.div_ceil(64).max(1));
        let loader = StateLoader::new(store.clone(), limits.cache_max, limits.snapshot_every);
        let writer = Writer { store, loader: loader.clone(), limits };
        tokio::spawn(writer.run(rx, atomic_rx));
        CommandBus { tx, atomic_tx, loader }
    }

    /// Executes commands as one: all recorded in one transaction, in order, or none
    /// (nothing stored, not even an idempotency record). A command whose key was used
    /// for the same request counts with its stored answer.
    pub async fn execute_atomic(&self, requests: Vec<CommandRequest>) -> Result<Vec<CommandReply>, AtomicError> {
        let (reply, answer) = oneshot::channel();
        self.atomic_tx.send(AtomicJob { requests, reply }).await.map_err(|_| CommandError::ShuttingDown)?;
        answer.await.map_err(|_| CommandError::ShuttingDown)?
    }

    /// Executes a command (queued behind others, batched with them).
    pub async fn execute(&self, request: CommandRequest) -> Result<CommandReply, CommandError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(vec![Job { request, reply }]).await.map_err(|_| CommandError::ShuttingDown)?;
        answer.await.map_err(|_| CommandError::ShuttingDown)?
    }

    /// Executes commands each as if sent alone (each decided against the state the ones
    /// before it left, each answered, refused or replayed on its own), handed to the
    /// writer together so that they are appended in one batch, not one per command.
    pub async fn execute_many(&self, requests: Vec<CommandRequest>) -> Vec<Result<CommandReply, CommandError>> {
        if requests.is_empty() {
            return Vec::new();
        }
        let (jobs, answers): (Vec<Job>, Vec<_>) = requests
            .into_iter()
            .map(|request| {
                let (reply, answer) = oneshot::channel();
                (Job { request, reply }, answer)
            })
            .unzip();
        if self.tx.send(jobs).await.is_err() {
            return answers.iter().map(|_| Err(CommandError::ShuttingDown)).collect();
        }
        let mut out = Vec::with_capacity(answers.len());
        for answer in answers {
            out.push(answer.await.unwrap_or(Err(CommandError::ShuttingDown)));
        }
        out
    }

    /// The loader, for strong reads of the write-side state.
    pub fn loader(&self) -> &StateLoader {
        &self.loader
    }
}

struct Writer {
    store: EventStore,
    loader: StateLoader,
    limits: WriterLimits,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Vec<Job>>, mut atomic_rx: mpsc::Receiver<AtomicJob>) {
        loop {
            let first = tokio::select! {
                jobs = rx.recv() => match jobs {
                    Some(jobs) => jobs,
                    None => return,
                },
                Some(group) = atomic_rx.recv() => {
                    let outcome = std::panic::AssertUnwindSafe(self.process_atomic(group.requests));
                    let outcome = futures::FutureExt::catch_unwind(outcome).await;
                    let _ = group.reply.send(outcome.unwrap_or(Err(AtomicError::Failed(CommandError::Internal))));
                    continue;
                }
            };
            // Whole submissions only: a bulk's commands share one batch (and one commit),
            // however many there are; others join until the batch holds `batch_max`.
            let mut jobs = first;
            while jobs.len() < self.limits.batch_max {
                match rx.try_recv() {
                    Ok(more) => jobs.extend(more),
                    Err(_) => break,
                }
            }
            if jobs.is_empty() {
                continue;
            }
            // A panic here is a bug (an invariant assertion); it must not take the
            // writer down with it: the batch's callers see their reply dropped (503).
            let started = std::time::Instant::now();
            let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(self.process(jobs))).await;
            metrics::histogram!("ledger_writer_batch_seconds").record(started.elapsed().as_secs_f64());
            if outcome.is_err() {
                tracing::error!("the command writer caught a panic; the batch was not recorded");
            }
        }
    }

    async fn process(&self, mut jobs: Vec<Job>) {
        jobs = reject_duplicate_keys(jobs);
        // Replays are answered from the stored responses, one look-up for the batch,
        // while the streams the batch needs are loaded (two round trips at once).
        let phase = crate::phases::Phases::start("writer", jobs.len());
        let commands: Vec<Command> = jobs.iter().map(|j| j.request.command.clone()).collect();
        let mut preloaded = fresh_streams(jobs.iter().map(|j| &j.request));
        let size = jobs.len();
        let (checked, loaded) = tokio::join!(
            async {
                let phase = crate::phases::Phases::start("writer", size);
                let checked = if jobs.iter().any(|j| j.request.idempotency.is_some()) {
                    self.answer_used_keys(jobs).await
                } else {
                    Ok(jobs)
                };
                phase.next("keys");
                checked
            },
            async {
                let phase = crate::phases::Phases::start("writer", size);
                let loaded = self.load_missing(&mut preloaded, commands.iter()).await;
                phase.next("streams");
                loaded
            }
        );
        jobs = match checked {
            Ok(rest) => rest,
            Err((jobs, e)) => return self.fail_or_split(jobs, e).await,
        };
        if let Err(e) = loaded {
            tracing::error!(error = %e, "loading streams failed");
            return fail_all(jobs, CommandError::Unavailable(std::sync::Arc::new(e)));
        }
        phase.next("keys_and_streams");
        let mut preloaded = Some(preloaded);
        // Only version conflicts use up retries; isolating a failed command does not.
        let mut conflicts = 0;
        while !jobs.is_empty() {
            match self.attempt(&jobs, preloaded.take().unwrap_or_default()).await {
                Ok(replies) => {
                    for (job, reply) in jobs.into_iter().zip(replies) {
                        let _ = job.reply.send(Ok(reply));
                    }
                    return;
                }
                Err(AttemptError::Conflict { keys_used }) if conflicts < self.limits.conflict_retries_max => {
                    conflicts += 1;
                    metrics::counter!("ledger_append_conflicts_total").increment(1);
                    tracing::debug!(conflicts, "append conflicted; deciding the batch again");
                    if keys_used {
                        jobs = match self.answer_used_keys(jobs).await {
                            Ok(rest) => rest,
                            Err((jobs, e)) => return self.fail_or_split(jobs, e).await,
                        };
                    }
                }
                Err(AttemptError::Conflict { .. }) => {
                    return fail_all(jobs, CommandError::VersionConflict(conflicts + 1));
                }
                Err(AttemptError::Command { index, cause }) => {
                    // One command is at fault: it alone fails, the others are decided again.
                    tracing::error!(%cause, "a command could not be recorded; its batch neighbours go on");
                    metrics::counter!("ledger_commands_isolated_total").increment(1);
                    let job = jobs.remove(index);
                    let _ = job.reply.send(Err(CommandError::Internal));
                }
                Err(AttemptError::Batch { cause }) if jobs.len() > 1 => {
                    tracing::error!(%cause, commands = jobs.len(), "a batch failed; running its commands one by one");
                    return self.one_by_one(jobs).await;
                }
                Err(AttemptError::Batch { cause }) => {
                    tracing::error!(%cause, "a command could not be recorded");
                    return fail_all(jobs, CommandError::Internal);
                }
                Err(AttemptError::Store(e)) => {
                    tracing::error!(error = %e, "append failed");
                    return fail_all(jobs, CommandError::Unavailable(std::sync::Arc::new(e)));
                }
            }
        }
    }

    /// An atomic group: its used keys answered from their records, the others decided
    /// in order and appended in one transaction, decided again after a conflict.
    async fn process_atomic(&self, requests: Vec<CommandRequest>) -> Result<Vec<CommandReply>, AtomicError> {
        let mut seen = HashSet::new();
        for (index, r) in requests.iter().enumerate() {
            if let Some(k) = &r.idempotency
                && !seen.insert((k.principal.clone(), k.key.clone()))
            {
                return Err(AtomicError::Command { index, error: CommandError::IdempotencyKeyReused });
            }
        }
        let mut conflicts = 0;
        loop {
            let replayed = self.atomic_replays(&requests).await?;
            // After a conflict everything is loaded from the log, minted ids included.
            let mut working = if conflicts == 0 { fresh_streams(requests.iter()) } else { Ledger::new() };
            let fresh = requests.iter().zip(&replayed).filter(|(_, r)| r.is_none()).map(|(q, _)| &q.command);
            self.load_missing(&mut working, fresh).await.map_err(|e| CommandError::Unavailable(Arc::new(e)))?;
            let mut commits = Vec::new();
            for (index, (request, replay)) in requests.iter().zip(&replayed).enumerate() {
                if replay.is_some() {
                    continue;
                }
                let command = std::iter::once(&request.command);
                self.load_missing(&mut working, command).await.map_err(|e| CommandError::Unavailable(Arc::new(e)))?;
                let (commit, _) = decide_one(request, &mut working);
                if let Some(error) = &commit.rejection {
                    return Err(AtomicError::Rejected { index, error: error.clone() });
                }
                commits.push(commit);
            }
            let appended = if commits.is_empty() {
                Appended { results: Vec::new(), versions: Default::default() }
            } else {
                match self.store.append_batch(&commits).await {
                    Ok(appended) => appended,
                    Err(AppendError::Conflict { .. }) if conflicts < self.limits.conflict_retries_max => {
                        conflicts += 1;
                        metrics::counter!("ledger_append_conflicts_total").increment(1);
                        continue;
                    }
                    Err(AppendError::Conflict { .. }) => {
                        return Err(CommandError::VersionConflict(conflicts + 1).into());
                    }
                    Err(AppendError::Unstorable { commit, reason }) => {
                        tracing::error!(%reason, "an atomic group holds a command that cannot be stored");
                        let index =
                            requests.iter().zip(&replayed).enumerate().filter(|(_, (_, r))| r.is_none()).nth(commit);
                        let index = index.map_or(0, |(i, _)| i);
                        return Err(AtomicError::Command { index, error: CommandError::Internal });
                    }
                    Err(AppendError::Database(e)) => {
                        return Err(CommandError::Unavailable(Arc::new(StoreError::Database(e))).into());
                    }
                }
            };
            self.remember_appended(&working, &appended.versions);
            let mut results = appended.results.into_iter();
            return Ok(replayed
                .into_iter()
                .map(|replay| match replay {
                    Some(reply) => reply,
                    None => {
                        let r = results.next().expect("one result per commit");
                        CommandReply { answer: Stored::Outcome(r.outcome), replayed: false, recorded: r.recorded }
                    }
                })
                .collect());
        }
    }

    /// For each command of an atomic group, its stored answer if its key was used for
    /// the same request; a key used for another request, or a stored refusal, fails
    /// the group.
    async fn atomic_replays(&self, requests: &[CommandRequest]) -> Result<Vec<Option<CommandReply>>, AtomicError> {
        let keys: Vec<(String, String)> = requests
            .iter()
            .filter_map(|r| r.idempotency.as_ref().map(|k| (k.principal.clone(), k.key.clone())))
            .collect();
        let records = if keys.is_empty() {
            Default::default()
        } else {
            self.store.idempotency_records(&keys).await.map_err(|e| {
                let fault = crate::store::db_fault(&e);
                let e = Arc::new(StoreError::Database(e));
                if fault == DbFault::Unavailable { CommandError::Unavailable(e) } else { CommandError::Internal }
            })?
        };
        let mut out = Vec::with_capacity(requests.len());
        for (index, r) in requests.iter().enumerate() {
            let found = r
                .idempotency
                .as_ref()
                .and_then(|k| records.get(&(k.principal.clone(), k.key.clone())).map(|rec| (k, rec)));
            match found {
                None => out.push(None),
                Some((claim, record)) if record.fingerprint != claim.fingerprint => {
                    return Err(AtomicError::Command { index, error: CommandError::IdempotencyKeyReused });
                }
                Some((_, IdempotencyRecord { stored: None, .. })) => {
                    return Err(AtomicError::Command { index, error: CommandError::IdempotencyKeyInFlight });
                }
                Some((_, IdempotencyRecord { stored: Some(stored), .. })) => {
                    if let Stored::Outcome(Outcome::Rejected(error)) = stored {
                        return Err(AtomicError::Rejected { index, error: error.clone() });
                    }
                    out.push(Some(CommandReply { answer: stored.clone(), replayed: true, recorded: Vec::new() }));
                }
            }
        }
        Ok(out)
    }

    /// A batch failed for a reason that is not a dependency failure, so perhaps one
    /// command's: each runs alone, and only the one at fault fails.
    async fn one_by_one(&self, jobs: Vec<Job>) {
        for job in jobs {
            Box::pin(self.process(vec![job])).await;
        }
    }

    /// Reading idempotency records failed: a dependency failure fails the batch as
    /// unavailable; anything else may be one command's fault (a key Postgres refuses),
    /// so a batch runs one by one and a single command fails as an internal error.
    async fn fail_or_split(&self, jobs: Vec<Job>, e: sqlx::Error) {
        tracing::error!(error = %e, "reading idempotency records failed");
        match crate::store::db_fault(&e) {
            DbFault::Unavailable => {
                fail_all(jobs, CommandError::Unavailable(std::sync::Arc::new(StoreError::Database(e))))
            }
            DbFault::Input | DbFault::Bug if jobs.len() > 1 => self.one_by_one(jobs).await,
            DbFault::Input | DbFault::Bug => fail_all(jobs, CommandError::Internal),
        }
    }

    /// Loads (on top of what `working` already holds), decides and appends the batch once.
    async fn attempt(&self, jobs: &[Job], mut working: Ledger) -> Result<Vec<CommandReply>, AttemptError> {
        let mut outcomes: Vec<Option<Commit>> = Vec::with_capacity(jobs.len());
        let mut direct: Vec<Option<Outcome>> = Vec::with_capacity(jobs.len());
        // For each commit, the index of its job.
        let mut commit_jobs: Vec<usize> = Vec::with_capacity(jobs.len());
        self.load_missing(&mut working, jobs.iter().map(|j| &j.request.command)).await?;
        let phase = crate::phases::Phases::start("writer", jobs.len());
        for (index, job) in jobs.iter().enumerate() {
            // Rare: a command whose needs depend on an earlier command of this batch.
            self.load_missing(&mut working, std::iter::once(&job.request.command)).await?;
            let request = &job.request;
            // A panic here is a bug an input reached; it costs only this command. The
            // working state it may have half-changed is thrown away with this attempt.
            let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decide_one(request, &mut working)));
            let (commit, has_events) =
                decided.map_err(|_| AttemptError::Command { index, cause: "deciding the command panicked".into() })?;
            if request.idempotency.is_none() && !has_events {
                // A rejection of an internal command has nothing to record.
                direct.push(Some(commit.outcome(None, chrono::Utc::now())));
                outcomes.push(None);
            } else {
                direct.push(None);
                outcomes.push(Some(commit));
                commit_jobs.push(index);
            }
        }
        let commits: Vec<Commit> = outcomes.iter_mut().filter_map(Option::take).collect();
        phase.next("decide");
        metrics::histogram!("ledger_append_batch_size").record(commits.len() as f64);
        let appended = if commits.is_empty() {
            Appended { results: Vec::new(), versions: Default::default() }
        } else {
            let append = std::panic::AssertUnwindSafe(self.store.append_batch(&commits));
            match futures::FutureExt::catch_unwind(append).await {
                Ok(Ok(appended)) => appended,
                Ok(Err(AppendError::Unstorable { commit, reason })) => {
                    let cause = format!("its events cannot be stored: {reason}");
                    return Err(AttemptError::Command { index: commit_jobs[commit], cause });
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(AttemptError::Batch { cause: "appending the batch panicked".into() }),
            }
        };
        self.remember_appended(&working, &appended.versions);
        let mut results = appended.results.into_iter();
        Ok(direct
            .into_iter()
            .map(|d| match d {
                Some(outcome) => {
                    CommandReply { answer: Stored::Outcome(outcome), replayed: false, recorded: Vec::new() }
                }
                None => {
                    let r = results.next().expect("one result per commit");
                    CommandReply { answer: Stored::Outcome(r.outcome), replayed: false, recorded: r.recorded }
                }
            })
            .collect())
    }

    /// Caches the working states that are exactly what the log now holds. A stream
    /// appended at a version other than the one the writer computed (a system account
    /// another process appended to meanwhile) is dropped from the cache instead, so
    /// its next load folds it from the log: the cache never holds a state the log does not.
    fn remember_appended(&self, working: &Ledger, versions: &std::collections::HashMap<Uuid, i64>) {
        let mut due = Vec::new();
        for (stream, state) in working.streams() {
            match versions.get(stream) {
                Some(logged) if *logged != state.version => self.loader.forget(*stream),
                Some(_) => {
                    if self.loader.snapshot_due(*stream, state.version) {
                        due.push((*stream, state.clone()));
                    }
                    self.loader.remember(*stream, Some(state));
                }
                None => self.loader.remember(*stream, Some(state)),
            }
        }
        self.loader.snapshot_in_background(due);
    }

    async fn load_missing<'a>(
        &self,
        working: &mut Ledger,
        commands: impl Iterator<Item = &'a Command> + Clone,
    ) -> Result<(), StoreError> {
        // A reversal or settlement needs a second round: the accounts of the loaded transfer.
        for _round in 0..3 {
            let mut missing: Vec<Uuid> = commands.clone().flat_map(|c| c.missing_streams(working)).collect();
            missing.sort_unstable();
            missing.dedup();
            if missing.is_empty() {
                break;
            }
            self.loader.load(working, &missing).await?;
        }
        Ok(())
    }

    /// Answers the jobs whose keys were used meanwhile; returns the others.
    async fn answer_used_keys(&self, jobs: Vec<Job>) -> Result<Vec<Job>, (Vec<Job>, sqlx::Error)> {
        let keys: Vec<(String, String)> = jobs
            .iter()
            .filter_map(|j| j.request.idempotency.as_ref().map(|k| (k.principal.clone(), k.key.clone())))
            .collect();
        let records = match self.store.idempotency_records(&keys).await {
            Ok(r) => r,
            Err(e) => return Err((jobs, e)),
        };
        let mut rest = Vec::with_capacity(jobs.len());
        for job in jobs {
            let found = job
                .request
                .idempotency
                .as_ref()
                .and_then(|k| records.get(&(k.principal.clone(), k.key.clone())).map(|r| (k, r)));
            match found {
                Some((claim, record)) if record.fingerprint != claim.fingerprint => {
                    let _ = job.reply.send(Err(CommandError::IdempotencyKeyReused));
                }
                Some((_, IdempotencyRecord { stored: Some(stored), .. })) => {
                    let reply = CommandReply { answer: stored.clone(), replayed: true, recorded: Vec::new() };
                    let _ = job.reply.send(Ok(reply));
                }
                // Claimed by a request of the same fingerprint that is still running.
                Some((_, IdempotencyRecord { stored: None, .. })) => {
                    let _ = job.reply.send(Err(CommandError::IdempotencyKeyInFlight));
                }
                None => rest.push(job),
            }
        }
        Ok(rest)
    }
}

enum AttemptError {
    /// Another process appended or used a key meanwhile: decide the batch again.
    Conflict { keys_used: bool },
    /// The command at `index` cannot be recorded (a bug its input reached).
    Command { index: usize, cause: String },
    /// The batch failed for a reason that is not a dependency failure and may be any
    /// one command's fault.
    Batch { cause: String },
    /// A dependency failed.
    Store(StoreError),
}

impl From<StoreError> for AttemptError {
    fn from(e: StoreError) -> Self {
        AttemptError::Store(e)
    }
}

impl From<AppendError> for AttemptError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Conflict { keys, .. } => AttemptError::Conflict { keys_used: !keys.is_empty() },
            // Not a dependency failure, so perhaps one command's: the batch is split.
            AppendError::Database(e) if crate::store::db_fault(&e) != DbFault::Unavailable => {
                AttemptError::Batch { cause: e.to_string() }
            }
            AppendError::Database(e) => AttemptError::Store(StoreError::Database(e)),
            AppendError::Unstorable { commit, reason } => {
                AttemptError::Batch { cause: format!("commit {commit} cannot be stored: {reason}") }
            }
        }
    }
}

fn fail_all(jobs: Vec<Job>, error: CommandError) {
    for job in jobs {
        let _ = job.reply.send(Err(error.clone()));
    }
}

/// A second job with the same key as an earlier one in the batch is still in flight.
fn reject_duplicate_keys(jobs: Vec<Job>) -> Vec<Job> {
    let mut seen = HashSet::new();
    let mut kept = Vec::with_capacity(jobs.len());
    for job in jobs {
        let key = job.request.idempotency.as_ref().map(|k| (k.principal.clone(), k.key.clone()));
        match key {
            Some(key) if !seen.insert(key.clone()) => {
                let _ = job.reply.send(Err(CommandError::IdempotencyKeyInFlight));
            }
            _ => kept.push(job),
        }
    }
    kept
}

/// A working state holding the streams the callers minted, empty: they are new, so
/// there is nothing to load for them.
fn fresh_streams<'a>(requests: impl Iterator<Item = &'a CommandRequest>) -> Ledger {
    let mut working = Ledger::new();
    for id in requests.filter_map(|r| r.fresh_stream) {
        working.insert(id, StreamState::default());
    }
    working
}

/// Decides one command against the working state and applies its events to it.
/// Returns the commit and whether it has events.
fn decide_one(request: &CommandRequest, working: &mut Ledger) -> (Commit, bool) {
    let (events, expected, read, streams, rejection) = match decide(&request.command, working) {
        Ok(events) => {
            let mut expected: Vec<(Uuid, i64)> = Vec::new();
            for event in &events {
                for (stream, concurrency) in event.streams() {
                    if concurrency == Concurrency::Exact && !expected.iter().any(|(s, _)| *s == stream) {
                        expected.push((stream, working.version(stream)));
                    }
                }
            }
            let read = read_only(&request.command, working, &events);
            for event in &events {
                working.apply(event);
            }
            // The outcome keeps the streams the decision depended on (`Exact`): never a
            // system account's state as this writer computed it, which another process
            // may have appended to meanwhile.
            let mut streams: Vec<(Uuid, StreamState)> = Vec::new();
            for event in &events {
                for (stream, concurrency) in event.streams() {
                    let new = concurrency == Concurrency::Exact && !streams.iter().any(|(s, _)| *s == stream);
                    if let Some(state) = working.stream(stream).filter(|_| new) {
                        streams.push((stream, state.clone()));
                    }
                }
            }
            (events, expected, read, streams, None)
        }
        Err(error) => (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Some(error)),
    };
    let has_events = !events.is_empty();
    let commit = Commit {
        events,
        expected,
        read,
        metadata: request.metadata.clone(),
        idempotency: request.idempotency.clone(),
        streams,
        rejection,
    };
    (commit, has_events)
}

/// The streams a decision read but its events do not append to, at the versions it
/// read (before its events are applied). System accounts are left out: they are
/// appended to at any version by design (`Concurrency::Any`), and nothing decided
/// about one depends on its version.
fn read_only(command: &Command, working: &Ledger, events: &[ledger_domain::Event]) -> Vec<(Uuid, i64)> {
    let written: HashSet<Uuid> = events.iter().flat_map(|e| e.streams()).map(|(stream, _)| stream).collect();
    let mut read = command.read_streams(working);
    read.retain(|id| !written.contains(id) && !ledger_domain::decide::is_reserved_id(*id));
    read.sort_unstable();
    read.dedup();
    read.into_iter().map(|id| (id, working.version(id))).collect()
}

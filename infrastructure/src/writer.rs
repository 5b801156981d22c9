//! The command writer: one task per process that takes commands from a bounded queue,
//! gathers those waiting into a batch, loads the streams they need (from a cache of
//! folded states, caught up from the log), decides each command in order against the
//! state its predecessors left, and appends the whole batch in one transaction: one
//! commit (one fsync) for many commands, each still decided, answered and remembered
//! for idempotent replay on its own. A rejected command never fails its neighbours.

use crate::store::{
    AppendError, Commit, EventMetadata, EventStore, IdempotencyClaim, RecordedEvent, Respond, StoreError,
    StoredResponse,
};
use ledger_domain::{Command, Concurrency, DomainError, Event, Ledger, StreamState, decide};
use moka::sync::Cache;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// What a decided command's response is made from.
pub struct Executed<'a> {
    /// The state of the streams the command touched, right after its events.
    pub state: &'a Ledger,
    pub events: &'a [Event],
    /// The position of the command's last event.
    pub position: i64,
}

/// Renders the HTTP response of a command from its outcome.
pub type Render = Arc<dyn Fn(Result<Executed<'_>, &DomainError>) -> StoredResponse + Send + Sync>;

/// A command with everything needed to record and answer it.
pub struct CommandRequest {
    pub command: Command,
    pub metadata: EventMetadata,
    pub idempotency: Option<IdempotencyClaim>,
    pub render: Render,
}

/// The answer to a command.
#[derive(Clone, Debug)]
pub struct CommandReply {
    pub response: StoredResponse,
    /// True when this is the stored answer of an earlier request with the same key.
    pub replayed: bool,
    pub recorded: Vec<RecordedEvent>,
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
    #[error("the event store is unavailable: {0}")]
    Unavailable(String),
    #[error("the writer has shut down")]
    ShuttingDown,
}

struct Job {
    request: CommandRequest,
    reply: oneshot::Sender<Result<CommandReply, CommandError>>,
}

/// Handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct CommandBus {
    tx: mpsc::Sender<Job>,
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
        let loader = StateLoader::new(store.clone(), limits.cache_max, limits.snapshot_every);
        let writer = Writer { store, loader: loader.clone(), limits };
        tokio::spawn(writer.run(rx));
        CommandBus { tx, loader }
    }

    /// Executes a command (queued behind others, batched with them).
    pub async fn execute(&self, request: CommandRequest) -> Result<CommandReply, CommandError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Job { request, reply }).await.map_err(|_| CommandError::ShuttingDown)?;
        answer.await.map_err(|_| CommandError::ShuttingDown)?
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
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.recv().await {
            let mut jobs = vec![first];
            while jobs.len() < self.limits.batch_max {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
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
        let commands: Vec<Command> = jobs.iter().map(|j| j.request.command.clone()).collect();
        let mut preloaded = Ledger::new();
        let (checked, loaded) = tokio::join!(
            async {
                if jobs.iter().any(|j| j.request.idempotency.is_some()) {
                    self.answer_used_keys(jobs).await
                } else {
                    Ok(jobs)
                }
            },
            self.load_missing(&mut preloaded, commands.iter())
        );
        jobs = match checked {
            Ok(rest) => rest,
            Err((jobs, e)) => {
                tracing::error!(error = %e, "reading idempotency records failed");
                return fail_all(jobs, CommandError::Unavailable(e.to_string()));
            }
        };
        if let Err(e) = loaded {
            tracing::error!(error = %e, "loading streams failed");
            return fail_all(jobs, CommandError::Unavailable(e.to_string()));
        }
        let mut preloaded = Some(preloaded);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.attempt(&jobs, preloaded.take().unwrap_or_default()).await {
                Ok(replies) => {
                    for (job, reply) in jobs.into_iter().zip(replies) {
                        let _ = job.reply.send(Ok(reply));
                    }
                    return;
                }
                Err(AttemptError::Conflict { keys_used }) if attempt <= self.limits.conflict_retries_max => {
                    metrics::counter!("ledger_append_conflicts_total").increment(1);
                    tracing::debug!(attempt, "append conflicted; deciding the batch again");
                    if keys_used {
                        jobs = match self.answer_used_keys(jobs).await {
                            Ok(rest) => rest,
                            Err((jobs, e)) => {
                                tracing::error!(error = %e, "reading idempotency records failed");
                                return fail_all(jobs, CommandError::Unavailable(e.to_string()));
                            }
                        };
                        if jobs.is_empty() {
                            return;
                        }
                    }
                }
                Err(AttemptError::Conflict { .. }) => {
                    return fail_all(jobs, CommandError::VersionConflict(attempt));
                }
                Err(AttemptError::Store(e)) => {
                    tracing::error!(error = %e, "append failed");
                    return fail_all(jobs, CommandError::Unavailable(e.to_string()));
                }
            }
        }
    }

    /// Loads (on top of what `working` already holds), decides and appends the batch once.
    async fn attempt(&self, jobs: &[Job], mut working: Ledger) -> Result<Vec<CommandReply>, AttemptError> {
        let mut outcomes: Vec<Option<Commit>> = Vec::with_capacity(jobs.len());
        let mut direct: Vec<Option<StoredResponse>> = Vec::with_capacity(jobs.len());
        self.load_missing(&mut working, jobs.iter().map(|j| &j.request.command)).await?;
        for job in jobs {
            // Rare: a command whose needs depend on an earlier command of this batch.
            self.load_missing(&mut working, std::iter::once(&job.request.command)).await?;
            let request = &job.request;
            let respond = decide_one(request, &mut working);
            if request.idempotency.is_none() && !respond.1 {
                // A rejection of an internal command has nothing to record.
                direct.push(Some((respond.0.respond)(None)));
                outcomes.push(None);
            } else {
                direct.push(None);
                outcomes.push(Some(respond.0));
            }
        }
        let commits: Vec<Commit> = outcomes.iter_mut().filter_map(Option::take).collect();
        metrics::histogram!("ledger_append_batch_size").record(commits.len() as f64);
        let mut results =
            if commits.is_empty() { Vec::new() } else { self.store.append_batch(&commits).await? }.into_iter();
        for (stream, _) in working.streams() {
            self.loader.remember(*stream, working.stream(*stream));
        }
        Ok(direct
            .into_iter()
            .map(|d| match d {
                Some(response) => CommandReply { response, replayed: false, recorded: Vec::new() },
                None => {
                    let r = results.next().expect("one result per commit");
                    CommandReply { response: r.response, replayed: false, recorded: r.recorded }
                }
            })
            .collect())
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
                Some((claim, record)) if record.fingerprint == claim.fingerprint => {
                    let reply =
                        CommandReply { response: record.response.clone(), replayed: true, recorded: Vec::new() };
                    let _ = job.reply.send(Ok(reply));
                }
                Some(_) => {
                    let _ = job.reply.send(Err(CommandError::IdempotencyKeyReused));
                }
                None => rest.push(job),
            }
        }
        Ok(rest)
    }
}

enum AttemptError {
    Conflict { keys_used: bool },
    Store(String),
}

impl From<StoreError> for AttemptError {
    fn from(e: StoreError) -> Self {
        AttemptError::Store(e.to_string())
    }
}

impl From<AppendError> for AttemptError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Conflict { keys, .. } => AttemptError::Conflict { keys_used: !keys.is_empty() },
            AppendError::Database(e) => AttemptError::Store(e.to_string()),
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

/// Decides one command against the working state and applies its events to it.
/// Returns the commit and whether it has events.
fn decide_one(request: &CommandRequest, working: &mut Ledger) -> (Commit, bool) {
    let render = request.render.clone();
    match decide(&request.command, working) {
        Ok(events) => {
            let mut expected: Vec<(Uuid, i64)> = Vec::new();
            for event in &events {
                for (stream, concurrency) in event.streams() {
                    if concurrency == Concurrency::Exact && !expected.iter().any(|(s, _)| *s == stream) {
                        expected.push((stream, working.version(stream)));
                    }
                }
            }
            let mut snapshot = Ledger::new();
            for event in &events {
                working.apply(event);
            }
            for event in &events {
                for (stream, _) in event.streams() {
                    if let Some(state) = working.stream(stream) {
                        snapshot.insert(stream, state.clone());
                    }
                }
            }
            let events_for_response = events.clone();
            let respond: Respond = Arc::new(move |position| {
                // A decision to record nothing (a reconciliation that matched) has no position.
                let position = position.unwrap_or_default();
                render(Ok(Executed { state: &snapshot, events: &events_for_response, position }))
            });
            let commit = Commit {
                events,
                expected,
                metadata: request.metadata.clone(),
                idempotency: request.idempotency.clone(),
                respond,
            };
            let has_events = !commit.events.is_empty();
            (commit, has_events)
        }
        Err(error) => {
            let respond: Respond = Arc::new(move |_| render(Err(&error)));
            let commit = Commit {
                events: Vec::new(),
                expected: Vec::new(),
                metadata: request.metadata.clone(),
                idempotency: request.idempotency.clone(),
                respond,
            };
            (commit, false)
        }
    }
}

//! The command writer: one task per process. Its unit is the **group**: one command, or
//! a set of commands recorded all together or not at all (an atomic bulk). A caller
//! submits groups (`CommandBus::submit`: a route one group of one, a bulk N groups of
//! one, an atomic bulk one group of N); the writer gathers whole submissions into a
//! batch, answers what is already answered (replays, keys in use), decides every other
//! command in order against the state its predecessors left, and appends the batch in
//! one transaction: one commit (one fsync) for many commands, each still decided,
//! answered and remembered for idempotent replay on its own. A rejected command never
//! fails its neighbours; a rejected command of an all-or-nothing group fails only its
//! group, which then records nothing.
//!
//! Pipelined: while batch N is being appended and committed, batch N+1 is prepared
//! (records looked up, streams loaded, commands decided) on top of N's working state.
//! Only when N has committed is N+1 appended; if N did not commit, N+1 is decided again
//! from the log. So the CPU of deciding overlaps the wait for N's fsync, and nothing is
//! ever appended over a state that did not commit.
//!
//! # Layout
//! - this module: the requests and answers, the bus, the pipelined loop;
//! - [`loader`]: folded stream states, cached (`state_cache`) and caught up with the log;
//! - `batch`: preparing a batch (records, streams, replays, decisions), landing it, and
//!   settling one that failed (decided again, split, or failed);
//! - `decide`: deciding one command into its commit.

mod batch;
mod decide;
pub mod loader;
mod state_cache;

use crate::outcome::{Outcome, Stored};
use crate::store::{EventMetadata, EventStore, IdempotencyClaim, RecordedEvent, StoreError};
use ledger_domain::DomainError;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

pub use loader::StateLoader;

/// A command with everything needed to record it.
pub struct CommandRequest {
    pub command: ledger_domain::Command,
    pub metadata: EventMetadata,
    pub idempotency: Option<IdempotencyClaim>,
    /// A stream id the caller has just minted (a v7 UUID for a new transfer,
    /// transaction, hold, …): it cannot be in the log yet, so the writer starts it empty
    /// without asking Postgres. Were it there after all, the unique `(stream_id,
    /// version)` of the append would refuse the batch.
    pub fresh_stream: Option<Uuid>,
    /// The owner look-up's row for the sealed owner of an account this command opens
    /// (`privacy`): written in the transaction that records the opening, and only then.
    pub owner_index: Option<crate::privacy::OwnerIndexRow>,
}

/// The writer's unit: one command, or commands recorded all together or not at all.
pub struct Group {
    pub requests: Vec<CommandRequest>,
    /// All or nothing: a command's rejection (or its key used for another request)
    /// fails the group, and nothing of it is stored, not even an idempotency record. A
    /// group of one that is not all-or-nothing stores its rejection, to be replayed.
    pub all_or_nothing: bool,
}

impl Group {
    /// A single command.
    pub fn one(request: CommandRequest) -> Group {
        Group { requests: vec![request], all_or_nothing: false }
    }

    /// Commands recorded in one transaction, in order, or not at all.
    pub fn all(requests: Vec<CommandRequest>) -> Group {
        Group { requests, all_or_nothing: true }
    }
}

/// The answer to a command: its outcome (or, for a replay, what its record keeps).
/// Only the API renders it.
#[derive(Clone, Debug)]
pub struct CommandReply {
    pub answer: Stored,
    /// True when this is the stored answer of an earlier request with the same key.
    pub replayed: bool,
    pub recorded: Vec<RecordedEvent>,
}

impl CommandReply {
    /// The outcome, unless this replays a reference or a response stored by an older version.
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
    /// The command sealed personal values under its subject's key, and the subject was
    /// erased before it could be recorded; nothing was stored, and a retry seals them
    /// under a new key.
    #[error("the subject was erased while the command was in flight; nothing was recorded")]
    SubjectKeyDestroyed,
    /// A time the command states (a period's `closes_at`, an `effective_at`) was ahead
    /// of the log's time when it was to be recorded; nothing was stored.
    #[error("a time the command states is ahead of the ledger's time ({0})")]
    AheadOfLog(chrono::DateTime<chrono::Utc>),
}

/// Why a group recorded nothing.
#[derive(Clone, Debug, thiserror::Error)]
pub enum GroupError {
    /// The command at `index` broke a rule (or replayed an earlier answer that did).
    #[error("command {index} was refused: {error}")]
    Rejected { index: usize, error: DomainError },
    /// The command at `index` cannot run as sent (its key in use, or a bug).
    #[error("command {index}: {error}")]
    Command { index: usize, error: CommandError },
    /// The group as a whole could not be recorded.
    #[error(transparent)]
    Failed(#[from] CommandError),
}

/// A group's answer: one reply per command, in order.
pub type GroupResult = Result<Vec<CommandReply>, GroupError>;

/// A group waiting for the writer, with where its answer goes.
struct Pending {
    group: Group,
    reply: oneshot::Sender<GroupResult>,
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
    /// Append a batch behind the one in flight (`LEDGER_APPEND_BEHIND`).
    pub append_behind: bool,
}

/// Handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct CommandBus {
    /// Submissions, each one or more groups that the writer never splits across batches.
    tx: mpsc::Sender<Vec<Pending>>,
    loader: StateLoader,
}

impl CommandBus {
    /// Starts the writer task. It stops when every handle has been dropped.
    pub fn start(store: EventStore, limits: WriterLimits) -> CommandBus {
        let (tx, rx) = mpsc::channel(limits.queue_max);
        let loader = StateLoader::new(store.clone(), limits.cache_max, limits.snapshot_every);
        let writer = batch::Writer { store, loader: loader.clone(), limits, key_lookups: Default::default() };
        tokio::spawn(writer.run(rx));
        CommandBus { tx, loader }
    }

    /// Submits groups to be decided in order and appended together (one batch, one
    /// commit); returns each group's answer, in order.
    pub async fn submit(&self, groups: Vec<Group>) -> Vec<GroupResult> {
        if groups.is_empty() {
            return Vec::new();
        }
        let (pending, answers): (Vec<Pending>, Vec<_>) = groups
            .into_iter()
            .map(|group| {
                let (reply, answer) = oneshot::channel();
                (Pending { group, reply }, answer)
            })
            .unzip();
        if self.tx.send(pending).await.is_err() {
            return answers.iter().map(|_| Err(CommandError::ShuttingDown.into())).collect();
        }
        let mut out = Vec::with_capacity(answers.len());
        for answer in answers {
            out.push(answer.await.unwrap_or(Err(CommandError::ShuttingDown.into())));
        }
        out
    }

    /// Executes one command (a group of one).
    pub async fn execute(&self, request: CommandRequest) -> Result<CommandReply, CommandError> {
        let mut results = self.submit(vec![Group::one(request)]).await;
        single(results.pop().unwrap_or(Err(CommandError::ShuttingDown.into())))
    }

    /// Executes commands each as if sent alone (groups of one), handed to the writer
    /// together so that they are appended in one batch.
    pub async fn execute_many(&self, requests: Vec<CommandRequest>) -> Vec<Result<CommandReply, CommandError>> {
        self.submit(requests.into_iter().map(Group::one).collect()).await.into_iter().map(single).collect()
    }

    /// Executes commands as one group: all recorded in one transaction, in order, or
    /// none (nothing stored). A command whose key was used for the same request counts
    /// with its stored answer.
    pub async fn execute_atomic(&self, requests: Vec<CommandRequest>) -> GroupResult {
        let mut results = self.submit(vec![Group::all(requests)]).await;
        results.pop().unwrap_or(Err(CommandError::ShuttingDown.into()))
    }

    /// The loader, for strong reads of the write-side state.
    pub fn loader(&self) -> &StateLoader {
        &self.loader
    }
}

/// A group of one's answer as the command's.
fn single(result: GroupResult) -> Result<CommandReply, CommandError> {
    match result {
        Ok(mut replies) => replies.pop().ok_or(CommandError::Internal),
        Err(GroupError::Command { error, .. } | GroupError::Failed(error)) => Err(error),
        // A group of one stores its rejection as an answer; it is never this error.
        Err(GroupError::Rejected { .. }) => Err(CommandError::Internal),
    }
}

//! What a command came to, as typed data: the writer returns it, the idempotency
//! record keeps it, and only the API turns it into an HTTP response. The store never
//! knows how a response is encoded; internal callers (payouts, reconciliation, the
//! CLI) match on [`Outcome::Rejected`]'s `DomainError` variants.

use crate::store::StoredResponse;
use ledger_domain::{DomainError, Event, Ledger, StreamState};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A decided command: recorded, or refused by a business rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Recorded(Recorded),
    Rejected(DomainError),
}

/// What a recorded command appended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// The log position of its last event (0 for a decision to record nothing, such as
    /// a reconciliation that matched).
    pub position: i64,
    pub events: Vec<Event>,
    /// The state of every stream its events touched, right after them.
    pub streams: Vec<(Uuid, StreamState)>,
    /// When its events were recorded (absent in outcomes stored before it was kept).
    #[serde(default)]
    pub recorded_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Recorded {
    /// The touched streams as a ledger, to read accounts, transfers or withdrawals from.
    pub fn state(&self) -> Ledger {
        let mut ledger = Ledger::new();
        for (id, state) in &self.streams {
            ledger.insert(*id, state.clone());
        }
        ledger
    }
}

/// What an idempotency record holds: the outcome of a command (a rejection, or a
/// recording kept whole by an earlier version), a reference to what a command recorded
/// (read back from the log: `EventStore::resolve`), or the rendered response of an
/// operation that records no event (and of commands recorded by versions of the
/// service from before outcomes were kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    Outcome(Outcome),
    Reference(OutcomeRef),
    Response(StoredResponse),
}

/// Where a recorded command's events are in the log: `events` of them, contiguous,
/// the last at `position`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutcomeRef {
    pub position: i64,
    pub events: i32,
}

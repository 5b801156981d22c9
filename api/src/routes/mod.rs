//! One `router()` per resource.

pub mod accounts;
pub mod admin;
pub mod audit;
pub mod bulk;
pub mod commands;
pub mod console;
pub mod deposits;
pub mod events;
pub mod health;
pub mod holds;
pub mod ledgers;
pub mod periods;
pub mod reconciliations;
pub mod subjects;
pub mod transactions;
pub mod transfers;
pub mod webhooks;
pub mod withdrawals;

use crate::http::error::ApiError;
use crate::run::state::AppState;
use ledger_domain::Ledger;
use uuid::Uuid;

/// The write-side state of some streams, exactly as the log has it, and the head
/// position it reflects at least.
pub async fn strong_state(state: &AppState, ids: &[Uuid]) -> Result<(Ledger, i64), ApiError> {
    let head = state.store.head().await?;
    let mut ledger = Ledger::new();
    state.bus.loader().load(&mut ledger, ids).await?;
    Ok((ledger, head))
}

/// When a stream's first event was recorded, and its position: the time a transfer or
/// transaction read from the write side was recorded at.
pub async fn created(state: &AppState, id: Uuid) -> Result<(chrono::DateTime<chrono::Utc>, i64), ApiError> {
    let first = state.store.read_stream(id, 1, 1).await?;
    first
        .first()
        .map(|e| (e.recorded_at, e.position))
        .ok_or_else(|| ApiError::internal(&format!("stream {id} has a state but no first event")))
}

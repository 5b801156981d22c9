//! One `router()` per resource.

pub mod accounts;
pub mod deposits;
pub mod events;
pub mod health;
pub mod transfers;
pub mod withdrawals;

use crate::error::ApiError;
use crate::state::AppState;
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

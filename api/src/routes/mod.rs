//! One `router()` per resource.

pub mod accounts;
pub mod admin;
pub mod audit;
pub mod bulk;
pub mod console;
pub mod deposits;
pub mod events;
pub mod health;
pub mod holds;
pub mod reconciliations;
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

/// A read model ready to be read: the position the answer must reflect at least, and
/// the pool to read it from.
pub struct ReadModel<'a> {
    pub min: i64,
    pub pool: &'a sqlx::PgPool,
}

/// Readies a read model at the requested consistency: eventual as is (from the
/// replica when there is one), `min_position` after waiting for the projection (from
/// the replica only if it has replayed that far, else the primary), strong after
/// catching the projection up to the head from the Postgres log itself (so it holds
/// even while NATS is down), on the primary.
pub async fn read_model_ready(
    state: &AppState,
    projection: ledger_projections::Projection,
    consistency: crate::read::Consistency,
) -> Result<ReadModel<'_>, ApiError> {
    use crate::read::Consistency;
    match consistency {
        Consistency::Eventual => Ok(ReadModel { min: 0, pool: state.read_pool(projection, 0) }),
        Consistency::MinPosition(n) => {
            let checkpoint = || ledger_projections::queries::checkpoint(&state.pool, projection);
            state.positions.wait(projection, n, state.config.consistency_wait, checkpoint).await?;
            Ok(ReadModel { min: n, pool: state.read_pool(projection, n) })
        }
        Consistency::Strong => {
            let head = state.store.head().await?;
            // Every projection together, as the projector applies them: a query may join
            // two (transactions by account read the accounts projection's entries).
            let all = ledger_projections::Projection::ALL;
            let batches = ledger_projections::apply::catch_up_applied(&state.pool, &all, Some(head), 1000)
                .await
                .map_err(|e| ApiError::unavailable(&e))?;
            // What the catch-up applied is announced like a worker's batch, so no
            // cache (here or in another instance) keeps a view from before it.
            for (applied_to, batch) in batches.iter().filter(|(_, b)| b.position > b.from) {
                let applied = crate::run::serve::Applied::batch(state.instance_id, *applied_to, batch);
                crate::run::serve::apply_announcement(state, &applied, true).await;
                crate::run::serve::announce(state, &applied).await;
            }
            for (applied_to, batch) in &batches {
                state.positions.advance(*applied_to, batch.position);
            }
            Ok(ReadModel { min: head, pool: &state.pool })
        }
    }
}

//! Read-side coherence: how this instance's cache and `min_position` waits learn what
//! the projections applied, here or in another process. A batch applied here is
//! announced locally (the cache first, then the positions) and over NATS; announcements
//! from other instances are hints, and a slow poll of the checkpoints, Postgres
//! `NOTIFY` and (with a replica) its replayed checkpoints are the safety net.

use crate::http::error::ApiError;
use crate::run::state::{AppState, Core};
use futures::StreamExt;
use ledger_projections::{OnApplied, Projection};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What a projection worker announces after each batch, on the NATS subject
/// `{prefix}.cache.accounts`: other API instances drop their cached views of the
/// accounts (all of them after a rebuild) and wake their `min_position` readers.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Applied {
    /// The instance that applied the batch (it ignores its own announcement).
    #[serde(default)]
    pub origin: Uuid,
    pub projection: String,
    pub position: i64,
    /// The position before the batch: an instance's cache counts itself told of
    /// everything up to `position` only if it was told of everything up to `from`.
    #[serde(default)]
    pub from: Option<i64>,
    pub accounts: Vec<Uuid>,
    #[serde(default)]
    pub all: bool,
}

impl Applied {
    /// The announcement of a projection batch applied by `origin`.
    pub fn batch(origin: Uuid, projection: Projection, batch: &ledger_projections::apply::Applied) -> Applied {
        Applied {
            origin,
            projection: projection.name().to_owned(),
            position: batch.position,
            from: Some(batch.from),
            accounts: batch.accounts.clone(),
            all: false,
        }
    }
}

/// Applies an announcement to this instance's cache and positions (in that order,
/// so a woken reader never finds a stale entry). One of this process's own (`local`)
/// states what it committed; one from NATS is a hint, confirmed with Postgres before
/// any read relies on it.
pub async fn apply_announcement(state: &AppState, applied: &Applied, local: bool) {
    if applied.all {
        state.cache.invalidate_all(applied.position);
    } else if applied.projection == Projection::Accounts.name() {
        state.cache.invalidate(&applied.accounts, applied.from, applied.position).await;
    }
    match Projection::from_name(&applied.projection) {
        Some(p) if local => state.positions.advance(p, applied.position),
        Some(p) => state.positions.hint(p, applied.position),
        None => {}
    }
}

/// Publishes an announcement for the other instances (best effort: the slow poll of
/// positions and the cache's time-to-live cover a lost one).
pub async fn announce(state: &Core, applied: &Applied) {
    let payload = serde_json::to_vec(applied).expect("announcements serialize");
    let _ = state.nats.publish(state.names.cache_invalidation_subject(), payload.into()).await;
}

/// After a projection batch: apply it to this process's HTTP state if it has one,
/// then tell the other instances.
pub fn on_applied(core: &Core, local: Option<AppState>) -> OnApplied {
    let core = core.clone();
    Arc::new(move |projection, batch: &ledger_projections::apply::Applied| {
        let (core, local) = (core.clone(), local.clone());
        let applied = Applied::batch(core.instance_id, projection, batch);
        tokio::spawn(async move {
            if let Some(state) = local {
                apply_announcement(&state, &applied, true).await;
            }
            announce(&core, &applied).await;
        });
    })
}

/// Keeps this instance's read side current when other processes run the workers:
/// announcements over NATS, plus a slow poll of the checkpoints (and Postgres
/// `NOTIFY` after a rebuild) as the safety net.
pub fn spawn_read_side(state: &AppState, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
    let listener_state = state.clone();
    let listener_shutdown = shutdown.clone();
    let positions = tokio::spawn(async move {
        while !listener_shutdown.is_cancelled() {
            if let Err(e) = follow_positions(&listener_state, &listener_shutdown).await {
                tracing::warn!(error = %e, "projection position listener failed; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    let sub_state = state.clone();
    let replica_shutdown = shutdown.clone();
    let invalidations = tokio::spawn(async move {
        let Ok(mut sub) = sub_state.nats.subscribe(sub_state.names.cache_invalidation_subject()).await else {
            tracing::warn!("cannot subscribe to projection announcements");
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                message = sub.next() => match message {
                    Some(m) => {
                        if let Ok(applied) = serde_json::from_slice::<Applied>(&m.payload)
                            && applied.origin != sub_state.instance_id
                        {
                            apply_announcement(&sub_state, &applied, false).await;
                        }
                    }
                    None => return,
                },
            }
        }
    });
    let mut tasks = vec![positions, invalidations];
    if state.replica.is_some() {
        tasks.push(tokio::spawn(follow_replica(state.clone(), replica_shutdown)));
    }
    tasks
}

/// How often the replica's replayed checkpoints are read.
const REPLICA_POLL: Duration = Duration::from_millis(100);

/// Polls how far the replica has replayed each projection (and whether it answers).
async fn follow_replica(state: AppState, shutdown: CancellationToken) {
    let Some(replica) = state.replica.as_ref() else { return };
    loop {
        tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(REPLICA_POLL) => {} }
        let polled: Result<Vec<(String, i64)>, sqlx::Error> =
            sqlx::query_as("select name, position from projection_checkpoints").fetch_all(&replica.pool).await;
        match polled {
            Ok(rows) => {
                replica.answered();
                for (name, position) in rows {
                    if let Some(p) = Projection::from_name(&name) {
                        replica.positions.advance(p, position);
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "the read replica does not answer"),
        }
    }
}

async fn follow_positions(state: &AppState, shutdown: &CancellationToken) -> Result<(), sqlx::Error> {
    use ledger_infrastructure::db::{LISTEN_QUIET, connect_timeout, listen_to, still_answers, within};
    let limit = connect_timeout();
    let mut listener = within(limit, "a LISTEN session", sqlx::postgres::PgListener::connect_with(&state.pool)).await?;
    listen_to(&mut listener, &["ledger_projection"]).await?;
    let mut refresh = tokio::time::interval(Duration::from_secs(1));
    // When the listener last answered: one quiet for long must still answer a ping, or
    // it is made anew (a network gone silent would leave it waiting for ever).
    let mut heard = tokio::time::Instant::now();
    // An accounts position this instance polled but was never told of.
    let mut unannounced: Option<i64> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = refresh.tick() => {
                let covered = state.cache.covered();
                if heard.elapsed() >= LISTEN_QUIET {
                    still_answers(&mut listener).await?;
                    heard = tokio::time::Instant::now();
                }
                let polled = sqlx::query_as("select name, position from projection_checkpoints").fetch_all(&state.pool);
                let rows: Vec<(String, i64)> = within(limit, "reading the projections' checkpoints", polled).await?;
                for (name, position) in rows {
                    let Some(p) = Projection::from_name(&name) else { continue };
                    state.positions.advance(p, position);
                    if p != Projection::Accounts {
                        continue;
                    }
                    // Batches applied elsewhere whose announcements did not come for a
                    // whole tick (NATS down): the cache cannot know which accounts they
                    // changed, so it drops every view older than them.
                    if let Some(waiting) = unannounced.take()
                        && state.cache.covered() < waiting
                    {
                        state.cache.invalidate_all(waiting);
                        metrics::counter!("ledger_cache_unannounced_invalidations_total").increment(1);
                    }
                    if position > covered {
                        unannounced = Some(position);
                    }
                }
            }
            n = listener.recv() => {
                let n = n?;
                heard = tokio::time::Instant::now();
                if let Some((name, pos)) = n.payload().split_once(':')
                    && let (Some(p), Ok(pos)) = (Projection::from_name(name), pos.parse())
                {
                    state.positions.advance(p, pos);
                }
            }
        }
    }
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
                let applied = Applied::batch(state.instance_id, *applied_to, batch);
                apply_announcement(state, &applied, true).await;
                announce(state, &applied).await;
            }
            for (applied_to, batch) in &batches {
                state.positions.advance(*applied_to, batch.position);
            }
            Ok(ReadModel { min: head, pool: &state.pool })
        }
    }
}

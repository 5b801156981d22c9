//! The hold expiry worker: every `interval` (and at once on start, for holds that
//! expired while the service was down) it makes one pass over the pending holds past
//! their `expires_at`, found through `holds_view`'s partial index a page at a time, and
//! asks the writer to record each expiry. Any number of processes may run it: two
//! expiries of one hold race on the hold stream's version, and the second is decided
//! again and refused (the hold is no longer pending), so each expiry is recorded
//! exactly once. A pass never looks at a hold twice, so holds that look due in a
//! lagging read model but are no longer pending cost one look per pass, not a spin.

use ledger_domain::Command;
use ledger_domain::decide::ExpireHold;
use ledger_infrastructure::{CommandBus, CommandRequest, EventMetadata, Outcome, Stored};
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Holds asked to expire per page.
const PAGE_MAX: i64 = 500;

pub struct ExpiryWorker {
    pub pool: PgPool,
    pub bus: CommandBus,
    pub interval: Duration,
    /// The ledger's time (the database's clock): a process whose clock runs ahead must
    /// not expire holds early for everyone.
    pub clock: ledger_infrastructure::clock::Clock,
    /// How long reading a page of due holds may take (`LEDGER_DB_STATEMENT_TIMEOUT_MS`).
    pub step_time_limit: std::time::Duration,
}

impl ExpiryWorker {
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "expiring holds failed; the next pass retries");
            }
            tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(self.interval) => {} }
        }
    }

    /// One pass over every hold due now, a page at a time: returns how many expiries it
    /// recorded.
    pub async fn pass(&self) -> Result<usize, sqlx::Error> {
        // Never on this process's own clock: until the database's has been read, no pass.
        if !self.clock.synced() {
            self.clock.sync(&self.pool).await?;
            if !self.clock.synced() {
                return Ok(0);
            }
        }
        let now = self.clock.now();
        let (mut after, mut recorded) = (None, 0);
        loop {
            // Bounded: a connection cut off by a silent network would stop expiry for ever
            // (each expiry is a command, bounded by the writer's own limit).
            let page = crate::queries::expired_holds(&self.pool, now, after, PAGE_MAX);
            let due = ledger_infrastructure::db::within(self.step_time_limit, "reading the holds due", page).await?;
            recorded += self.expire(&due, now).await;
            if due.len() < PAGE_MAX as usize {
                return Ok(recorded);
            }
            after = due.last().copied();
        }
    }

    /// Asks the writer to record each hold's expiry; returns how many it recorded.
    async fn expire(
        &self,
        due: &[(chrono::DateTime<chrono::Utc>, uuid::Uuid)],
        now: chrono::DateTime<chrono::Utc>,
    ) -> usize {
        let asks = due.iter().map(|&(_, hold_id)| {
            let request = CommandRequest {
                command: Command::ExpireHold(ExpireHold { hold_id, now }),
                metadata: EventMetadata { actor: "hold-expiry".into(), ..EventMetadata::default() },
                idempotency: None,
                fresh_stream: None,
                owner_index: None,
            };
            self.bus.execute(request)
        });
        let mut recorded = 0;
        for (&(_, hold_id), reply) in due.iter().zip(futures::future::join_all(asks).await) {
            match reply {
                Ok(reply) if matches!(reply.answer, Stored::Outcome(Outcome::Recorded(_))) => recorded += 1,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%hold_id, error = %e, "recording a hold's expiry failed; the next pass retries")
                }
            }
        }
        recorded
    }
}

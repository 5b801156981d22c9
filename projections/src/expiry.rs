//! The hold expiry worker: every second (and at once on start, for holds that
//! expired while the service was down) it asks the writer to record the expiry of
//! every pending hold past its `expires_at`, found through `holds_view`'s partial
//! index. Any number of processes may run it: two expiries of one hold race on the
//! hold stream's version, and the second is decided again and refused (the hold is no
//! longer pending), so each expiry is recorded exactly once.

use ledger_domain::Command;
use ledger_domain::decide::ExpireHold;
use ledger_infrastructure::{CommandBus, CommandRequest, EventMetadata};
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Holds expired per round at most (the next round takes the rest at once).
const ROUND_MAX: i64 = 500;

pub struct ExpiryWorker {
    pub pool: PgPool,
    pub bus: CommandBus,
    pub interval: Duration,
}

impl ExpiryWorker {
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let expired = match self.round().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "expiring holds failed; retrying");
                    0
                }
            };
            let pause = if expired as i64 == ROUND_MAX { Duration::ZERO } else { self.interval };
            tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(pause) => {} }
        }
    }

    /// One round: returns how many holds it asked to expire.
    pub async fn round(&self) -> Result<usize, sqlx::Error> {
        let now = chrono::Utc::now();
        let due = crate::queries::expired_holds(&self.pool, now, ROUND_MAX).await?;
        let asks = due.iter().map(|&hold_id| {
            let request = CommandRequest {
                command: Command::ExpireHold(ExpireHold { hold_id, now }),
                metadata: EventMetadata { actor: "hold-expiry".into(), ..EventMetadata::default() },
                idempotency: None,
                fresh_stream: None,
            };
            self.bus.execute(request)
        });
        for (hold_id, reply) in due.iter().zip(futures::future::join_all(asks).await) {
            if let Err(e) = reply {
                tracing::warn!(%hold_id, error = %e, "recording a hold's expiry failed; the next round retries");
            }
        }
        Ok(due.len())
    }
}

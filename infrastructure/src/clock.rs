//! The ledger's time (issue 31, "Clock"): the database's clock, read through this
//! process's monotonic clock. Every time-based rule that a process decides (hold expiry
//! and captures, the backdating window, idempotency expiry, reconciliation windows)
//! takes "now" from here, so a process whose wall clock jumps, runs fast or runs slow
//! decides exactly as the others do: the anchor is `clock_timestamp()` of the first
//! shard, re-read every [`SYNC_EVERY`], and between readings time advances by
//! `Instant` (monotonic, which wall-clock changes do not move). Appends stamp
//! `recorded_at` with their own shard's clock inside the append's transaction
//! (`store::append`), never with a process's.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the anchor is read again (monotonic clocks drift by parts per million).
pub const SYNC_EVERY: Duration = Duration::from_secs(5);

/// A reading whose round trip took longer is not trusted (its midpoint could be off by
/// half of it): the last anchor stays.
pub const ROUND_TRIP_MAX: Duration = Duration::from_millis(200);

/// The ledger's clock; cheap to clone (clones share the anchor).
#[derive(Clone, Debug)]
pub struct Clock {
    anchor: Arc<Mutex<Anchor>>,
}

#[derive(Clone, Copy, Debug)]
struct Anchor {
    /// The latest time `now` answered: once synced, the clock never goes back, even when
    /// a new reading is behind the old one (it then stands still until it catches up).
    last: DateTime<Utc>,
    /// When (on this process's monotonic clock) the database said `db`.
    at: Instant,
    db: DateTime<Utc>,
    /// Whether `db` came from the database (else from this process's wall clock, until
    /// the first reading).
    synced: bool,
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::local()
    }
}

impl Clock {
    /// A clock anchored at this process's wall clock, until [`Clock::sync`] succeeds.
    pub fn local() -> Clock {
        let now = Utc::now();
        Clock { anchor: Arc::new(Mutex::new(Anchor { last: now, at: Instant::now(), db: now, synced: false })) }
    }

    fn anchor(&self) -> Anchor {
        *self.anchor.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The ledger's time now.
    pub fn now(&self) -> DateTime<Utc> {
        let mut a = self.anchor.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = a.db + chrono::Duration::from_std(a.at.elapsed()).unwrap_or(chrono::Duration::zero());
        a.last = a.last.max(now);
        a.last
    }

    /// Whether the clock follows the database yet.
    pub fn synced(&self) -> bool {
        self.anchor().synced
    }

    /// Reads the database's clock; the reading is placed halfway through the round trip.
    pub async fn sync(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        // The connection first: waiting for one is not part of the round trip.
        let mut conn = pool.acquire().await?;
        let sent = Instant::now();
        // Bounded: a connection cut off by a silent network would stop the syncs for ever.
        let reading = sqlx::query_scalar("select clock_timestamp()").fetch_one(&mut *conn);
        let db: DateTime<Utc> =
            crate::db::within(crate::db::connect_timeout(), "reading the database's clock", reading).await?;
        let answered = Instant::now();
        if answered - sent > ROUND_TRIP_MAX {
            tracing::debug!(round_trip = ?(answered - sent), "a reading of the database's clock too slow to trust");
            return Ok(());
        }
        let at = sent + (answered - sent) / 2;
        let mut a = self.anchor.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The first reading replaces this process's own clock outright, however far off
        // it was; later readings never take the clock back.
        let last = if a.synced { a.last } else { db };
        *a = Anchor { last, at, db, synced: true };
        Ok(())
    }

    /// Re-reads the database's clock every [`SYNC_EVERY`] until `shutdown`; a failed
    /// reading keeps the last anchor (which goes on by the monotonic clock).
    pub fn spawn_sync(&self, pool: PgPool, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let clock = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = clock.sync(&pool).await {
                    tracing::debug!(error = %e, "reading the database's clock failed; keeping the last reading");
                }
                tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(SYNC_EVERY) => {} }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_goes_on_by_the_monotonic_clock_from_the_anchor() {
        let clock = Clock::local();
        let anchor = DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z").expect("a time").with_timezone(&Utc);
        *clock.anchor.lock().expect("lock") = Anchor { last: anchor, at: Instant::now(), db: anchor, synced: true };
        std::thread::sleep(Duration::from_millis(20));
        let now = clock.now();
        assert!(now >= anchor + chrono::Duration::milliseconds(20), "{now}");
        assert!(now < anchor + chrono::Duration::seconds(5), "{now}");
        assert!(clock.synced());
    }
}

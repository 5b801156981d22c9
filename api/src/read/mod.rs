//! Read consistency (API.md "Consistency"): eventual reads come from the read models
//! through a bounded moka cache; `min_position` waits (on a notification, never a
//! sleep loop) until the projection has applied that position; `strong` answers from
//! the write side. Every read says which log position it reflects. [`views`] turns
//! domain state and read-model rows into the wire types reads and commands answer with.

pub mod coherence;
pub mod views;

use crate::http::error::{ApiError, ErrorCode};
use axum::http::StatusCode;
use ledger_projections::Projection;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// How a read wants to see the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    Eventual,
    MinPosition(i64),
    Strong,
}

impl Consistency {
    pub fn from_query(q: &HashMap<String, String>) -> Result<Consistency, ApiError> {
        match q.get("consistency").map(String::as_str) {
            Some("strong") => return Ok(Consistency::Strong),
            None | Some("eventual") => {}
            Some(other) => return Err(ApiError::bad_request(format!("unknown consistency {other:?}"))),
        }
        match crate::http::validate::position_param("min_position", q.get("min_position").map(String::as_str))? {
            Some(p) => Ok(Consistency::MinPosition(p)),
            None => Ok(Consistency::Eventual),
        }
    }
}

/// How far each projection has applied the log, for `min_position` waits: `verified`
/// positions come from Postgres (a checkpoint read, this process's own commits);
/// `hinted` ones from other instances' announcements over NATS, which anyone who can
/// publish there could forge. A hint only wakes a waiter: no read is answered on one
/// until Postgres confirms it.
#[derive(Clone)]
pub struct ProjectionPositions {
    verified: Arc<HashMap<Projection, watch::Sender<i64>>>,
    hinted: Arc<HashMap<Projection, watch::Sender<i64>>>,
}

impl Default for ProjectionPositions {
    fn default() -> Self {
        let senders = || Arc::new(Projection::ALL.into_iter().map(|p| (p, watch::Sender::new(0))).collect());
        ProjectionPositions { verified: senders(), hinted: senders() }
    }
}

fn raise(senders: &HashMap<Projection, watch::Sender<i64>>, projection: Projection, position: i64) {
    if let Some(s) = senders.get(&projection) {
        s.send_if_modified(|current| {
            let newer = position > *current;
            if newer {
                *current = position;
            }
            newer
        });
    }
}

/// How often a waiter whose hint Postgres did not confirm asks Postgres again.
const VERIFY_POLL: Duration = Duration::from_millis(50);

impl ProjectionPositions {
    /// Records that `projection` has applied everything up to `position`, as Postgres
    /// says (a checkpoint read, or a batch this process committed).
    pub fn advance(&self, projection: Projection, position: i64) {
        raise(&self.hinted, projection, position);
        raise(&self.verified, projection, position);
    }

    /// Records that another instance says `projection` reached `position`.
    pub fn hint(&self, projection: Projection, position: i64) {
        raise(&self.hinted, projection, position);
    }

    /// The verified position.
    pub fn current(&self, projection: Projection) -> i64 {
        self.verified.get(&projection).map_or(0, |s| *s.borrow())
    }

    /// Waits until `projection` has verifiably reached `position`, or fails with 503
    /// `consistency_timeout` after `timeout`. A hint that it has wakes the waiter, which
    /// then reads the checkpoint with `checkpoint` (from the pool it will read).
    pub async fn wait<F, Fut>(
        &self,
        projection: Projection,
        position: i64,
        timeout: Duration,
        checkpoint: F,
    ) -> Result<(), ApiError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<i64, sqlx::Error>>,
    {
        let (Some(verified), Some(hinted)) = (self.verified.get(&projection), self.hinted.get(&projection)) else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let (mut verified_rx, mut hinted_rx) = (verified.subscribe(), hinted.subscribe());
        let reached = async {
            loop {
                if *verified_rx.borrow_and_update() >= position {
                    return Ok::<(), sqlx::Error>(());
                }
                if *hinted_rx.borrow_and_update() >= position {
                    let confirmed = checkpoint().await?;
                    self.advance(projection, confirmed);
                    if confirmed >= position {
                        return Ok(());
                    }
                    tokio::time::sleep(VERIFY_POLL).await;
                    continue;
                }
                tokio::select! {
                    _ = verified_rx.changed() => {}
                    _ = hinted_rx.changed() => {}
                }
            }
        };
        match tokio::time::timeout_at(deadline, reached).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(ApiError {
                retry_after_s: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::ConsistencyTimeout,
                    format!("the read model has not reached position {position} yet"),
                )
            }),
        }
    }
}

/// Cached account views with the position each reflects; bounded in size and age.
/// An entry only ever moves forward: a view read from the read model replaces a view
/// or a tombstone only if it reflects a later position, so two reads racing to fill
/// the cache (or a read racing an invalidation) never leave an older view behind.
/// That compare-then-put is one step under a lock of the entry's stripe; reads take no
/// lock. (moka's own `and_compute_with` did the same at about 5 % of the service's CPU
/// in bulks, one waiter registration per invalidated account.)
#[derive(Clone)]
pub struct AccountCache {
    /// `(Some(view), position)`, or `(None, position)`: invalidated at that position.
    /// A view is kept as its JSON, written once when it is cached, not on every read.
    cache: moka::sync::Cache<Uuid, (Option<bytes::Bytes>, i64)>,
    /// Serializes compare-then-put per entry (an entry's stripe: its id's low bits).
    stripes: Arc<[std::sync::Mutex<()>]>,
    /// Views read before this position are not cached (set when everything is invalidated).
    floor: Arc<std::sync::atomic::AtomicI64>,
    /// The highest position an invalidation (an announcement) has covered.
    covered: Arc<std::sync::atomic::AtomicI64>,
    hits: Arc<AtomicU64>,
    misses: Arc<AtomicU64>,
}

/// How many stripes the entries' compare-then-put lock has.
const STRIPES: usize = 64;

impl AccountCache {
    pub fn new(capacity_max: u64, ttl: Duration) -> AccountCache {
        let cache = moka::sync::Cache::builder().max_capacity(capacity_max).time_to_live(ttl).build();
        AccountCache {
            cache,
            stripes: (0..STRIPES).map(|_| std::sync::Mutex::new(())).collect(),
            floor: Arc::default(),
            covered: Arc::default(),
            hits: Arc::default(),
            misses: Arc::default(),
        }
    }

    /// The lock of `id`'s stripe (held for a get and a put, never across an await).
    fn stripe(&self, id: &Uuid) -> std::sync::MutexGuard<'_, ()> {
        let i = (id.as_u128() % STRIPES as u128) as usize;
        self.stripes[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A cached view (its JSON) reflecting at least `min_position`.
    pub async fn get(&self, id: Uuid, min_position: i64) -> Option<(bytes::Bytes, i64)> {
        let found = match self.cache.get(&id) {
            Some((Some(view), p)) if p >= min_position => Some((view, p)),
            _ => None,
        };
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Caches a view read at `position`, unless the entry already reflects a later
    /// one (a newer view, or an invalidation after `position`).
    /// The view is given as its JSON (`views::account_json`), the bytes the read that
    /// filled the entry answers with.
    pub async fn insert(&self, id: Uuid, json: bytes::Bytes, position: i64) {
        if position < self.floor.load(Ordering::Acquire) {
            return;
        }
        let _held = self.stripe(&id);
        let newer = match self.cache.get(&id) {
            Some((Some(_), p)) => p >= position,
            Some((None, p)) => p > position,
            None => false,
        };
        if !newer {
            self.cache.insert(id, (Some(json), position));
        }
    }

    /// Invalidates the given accounts as of `position` (a batch after `from` changed
    /// them): reads at earlier positions can no longer fill their entries. The cache
    /// counts itself told of everything up to `position` only if it had been told of
    /// everything up to `from` (an announcement lost before this one leaves a gap that
    /// the position poll then closes by dropping every entry).
    pub async fn invalidate(&self, ids: &[Uuid], from: Option<i64>, position: i64) {
        let _ = self.covered.fetch_update(Ordering::AcqRel, Ordering::Acquire, |covered| {
            (from.is_none_or(|f| f <= covered) && position > covered).then_some(position)
        });
        for id in ids {
            let _held = self.stripe(id);
            let newest = self.cache.get(id).map_or(position, |(_, p)| p.max(position));
            self.cache.insert(*id, (None, newest));
        }
    }

    /// Invalidates every account as of `position` (a rebuilt read model was switched in).
    pub fn invalidate_all(&self, position: i64) {
        self.floor.fetch_max(position, Ordering::AcqRel);
        self.covered.fetch_max(position, Ordering::AcqRel);
        self.cache.invalidate_all();
    }

    /// The highest position whose changes this cache has been told of.
    pub fn covered(&self) -> i64 {
        self.covered.load(Ordering::Acquire)
    }

    /// (hits, misses, entries).
    pub fn stats(&self) -> (u64, u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed), self.cache.entry_count())
    }
}

/// A streaming replica (`DATABASE_READ_URL`) and how far it has replayed each
/// projection, polled by `coherence::spawn_read_side`.
pub struct Replica {
    pub pool: sqlx::PgPool,
    /// The projections' checkpoints as the replica has replayed them.
    pub positions: ProjectionPositions,
    /// When the replica last answered the poll, in ms after `epoch` (0: never).
    answered_ms: AtomicU64,
    epoch: std::time::Instant,
}

/// A replica that has not answered its poll for this long is not read from.
const REPLICA_SILENCE_MAX: Duration = Duration::from_secs(2);

impl Replica {
    pub fn new(pool: sqlx::PgPool) -> Replica {
        Replica {
            pool,
            positions: ProjectionPositions::default(),
            answered_ms: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        }
    }

    /// Records an answered poll.
    pub fn answered(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
        self.answered_ms.store(ms, Ordering::Release);
    }

    /// Whether the replica answered its poll recently.
    pub fn healthy(&self) -> bool {
        let last = self.answered_ms.load(Ordering::Acquire);
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        last > 0 && now.saturating_sub(last) <= REPLICA_SILENCE_MAX.as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: Uuid, position: i64) -> ledger_wire::Account {
        ledger_wire::Account {
            id,
            currency: "EUR".into(),
            owner: None,
            subject: id.to_string(),
            erased: false,
            status: ledger_wire::AccountStatus::Open,
            balance: position.into(),
            available: position.into(),
            pending_holds: 0,
            overdraft_limit: 0,
            system: false,
            metadata: None,
            version: 1,
            position,
        }
    }

    /// Fills and invalidations racing on a few entries, from several threads: each
    /// entry ends at the highest position any of them named, as a tombstone when that
    /// position was only an invalidation's, and no read ever went back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn entries_only_move_forward_whatever_races() {
        let cache = AccountCache::new(1_000, Duration::from_secs(60));
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        let tasks: Vec<_> = (0..8u64)
            .map(|t| {
                let (cache, ids) = (cache.clone(), ids.clone());
                tokio::spawn(async move {
                    // A fixed generator per task: runs differ only in their interleaving.
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t + 1);
                    let mut done: Vec<(Uuid, i64, bool)> = Vec::new();
                    let mut seen: HashMap<Uuid, i64> = HashMap::new();
                    for _ in 0..2_000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let id = ids[(x % 4) as usize];
                        let position = ((x >> 8) % 500) as i64;
                        if (x >> 20).is_multiple_of(3) {
                            cache.invalidate(&[id], None, position).await;
                            done.push((id, position, true));
                        } else {
                            let json = serde_json::to_vec(&view(id, position)).expect("a view's JSON");
                            cache.insert(id, json.into(), position).await;
                            done.push((id, position, false));
                        }
                        if let Some((v, p)) = cache.get(id, 0).await {
                            let v: ledger_wire::Account = serde_json::from_slice(&v).expect("a view's JSON");
                            assert_eq!(v.position, p, "a view is cached at its own position");
                            let last = seen.entry(id).or_insert(p);
                            assert!(p >= *last, "a read went back from {last} to {p}");
                            *last = p;
                        }
                    }
                    done
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("no assertion failed"));
        }
        for id in &ids {
            let mine: Vec<_> = all.iter().filter(|(i, _, _)| i == id).collect();
            let top = mine.iter().map(|(_, p, _)| *p).max().expect("some ops");
            let top_filled = mine.iter().any(|(_, p, invalidation)| *p == top && !invalidation);
            let top_invalidated = mine.iter().any(|(_, p, invalidation)| *p == top && *invalidation);
            let entry = cache.cache.get(id).expect("an entry");
            assert_eq!(entry.1, top, "the entry is at the highest position named");
            if top_invalidated && !top_filled {
                assert!(entry.0.is_none(), "only an invalidation named {top}: a tombstone");
            }
        }
    }
}

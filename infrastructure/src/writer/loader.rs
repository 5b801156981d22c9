//! The state loader: folded stream states, cached (moka), always caught up with the log
//! before use; snapshots of streams that needed many events folded, and of busy streams
//! as their appends cross a multiple of `snapshot_every`.

use crate::store::{EventStore, StoreError};
use ledger_domain::{Ledger, StreamState};
use moka::sync::Cache;
use uuid::Uuid;

/// Folded stream states, cached, always caught up with the log before use. A stream
/// not in the cache starts from its latest snapshot; one that needed `snapshot_every`
/// or more events folded from the log gets a new snapshot.
#[derive(Clone)]
pub struct StateLoader {
    store: EventStore,
    cache: Cache<Uuid, StreamState>,
    /// 0 disables snapshots.
    snapshot_every: usize,
}

impl StateLoader {
    pub fn new(store: EventStore, cache_max: u64, snapshot_every: usize) -> StateLoader {
        StateLoader { store, cache: Cache::new(cache_max), snapshot_every }
    }

    /// Loads the given streams into `ledger`, exactly as the log has them now; bounded by
    /// the writer's time limit, as its appends are (a connection cut off by a silent
    /// network would otherwise stall the writer for ever).
    pub async fn load(&self, ledger: &mut Ledger, ids: &[Uuid]) -> Result<(), StoreError> {
        crate::db::within(self.store.writer_time_limit(), "loading streams", self.load_unbounded(ledger, ids)).await
    }

    async fn load_unbounded(&self, ledger: &mut Ledger, ids: &[Uuid]) -> Result<(), StoreError> {
        let mut missing = Vec::new();
        for id in ids {
            match self.cache.get(id) {
                Some(state) => ledger.insert(*id, state),
                None => {
                    missing.push(*id);
                    ledger.insert(*id, StreamState::default());
                }
            }
        }
        if self.snapshot_every > 0 && !missing.is_empty() {
            for (id, state) in crate::snapshots::latest(self.store.pool(), &missing).await? {
                ledger.insert(id, state);
            }
        }
        let known: Vec<(Uuid, i64)> = ids.iter().map(|id| (*id, ledger.version(*id))).collect();
        let mut folded: std::collections::HashMap<Uuid, usize> = std::collections::HashMap::new();
        for (stream, version, event) in self.store.events_after(&known).await? {
            ledger.apply_to_stream(stream, version, &event);
            *folded.entry(stream).or_default() += 1;
        }
        for id in ids {
            self.remember(*id, ledger.stream(*id));
        }
        if self.snapshot_every > 0 {
            for (id, count) in folded.into_iter().filter(|(_, n)| *n >= self.snapshot_every) {
                if let Some(state) = ledger.stream(id)
                    && let Err(e) = crate::snapshots::save(self.store.pool(), id, state).await
                {
                    tracing::warn!(error = %e, stream = %id, count, "saving a snapshot failed");
                }
            }
        }
        Ok(())
    }

    /// Whether a stream appended up to `version` crossed a multiple of `snapshot_every`
    /// since its cached (pre-batch) state: a stream that stays in the cache is never
    /// loaded from the log again, so this is where busy streams get their snapshots
    /// (and historical reads of them a near starting point).
    pub(super) fn snapshot_due(&self, id: Uuid, version: i64) -> bool {
        let every = i64::try_from(self.snapshot_every).unwrap_or(i64::MAX);
        let before = self.cache.get(&id).map_or(0, |s| s.version);
        every > 0 && before / every < version / every
    }

    /// Saves states that are exactly what the log holds, off the writer's path.
    pub(super) fn snapshot_in_background(&self, states: Vec<(Uuid, StreamState)>) {
        if states.is_empty() {
            return;
        }
        let pool = self.store.pool().clone();
        let limit = self.store.writer_time_limit();
        tokio::spawn(async move {
            for (id, state) in states {
                let saving = crate::snapshots::save(&pool, id, &state);
                if let Err(e) = crate::db::within(limit, "saving a snapshot", saving).await {
                    tracing::warn!(error = %e, stream = %id, "saving a snapshot failed");
                }
            }
        });
    }

    /// Drops a stream's cached state; its next load folds it from the log.
    pub(super) fn forget(&self, id: Uuid) {
        self.cache.invalidate(&id);
    }

    /// Drops every cached state; each stream's next load folds it from the log.
    pub(super) fn forget_all(&self) {
        self.cache.invalidate_all();
    }

    pub(super) fn remember(&self, id: Uuid, state: Option<&StreamState>) {
        if let Some(state) = state.filter(|s| s.version > 0) {
            let newer = self.cache.get(&id).is_none_or(|cached| cached.version < state.version);
            if newer {
                self.cache.insert(id, state.clone());
            }
        }
    }
}

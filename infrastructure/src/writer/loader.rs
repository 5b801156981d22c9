//! The state loader: folded stream states, cached (`state_cache`), always caught up with the log
//! before use; snapshots of streams that needed many events folded, and of busy streams
//! as their appends cross a multiple of `snapshot_every`.
//!
//! Caught up without reading every stream back: the loader keeps `synced`, a position
//! through which every cached state reflects the log. Before a batch is decided,
//! [`StateLoader::catch_up`] reads the log's head; when no other process appended since
//! `synced` that is all (one read of one row), else the streams the events after
//! `synced` touched are dropped from the cache. A batch this writer commits right after
//! `synced` moves it on ([`StateLoader::committed`]). A stream not in the cache is
//! folded from its snapshot and the log.

use super::state_cache::StateCache;
use crate::store::{EventStore, StoreError};
use ledger_domain::{Ledger, StreamState};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// The most events a catch-up reads to find the streams they touched; further behind,
/// the whole cache is dropped instead.
const CATCH_UP_MAX: i64 = 20_000;

/// Folded stream states, cached, always caught up with the log before use. A stream
/// not in the cache starts from its latest snapshot; one that needed `snapshot_every`
/// or more events folded from the log gets a new snapshot.
#[derive(Clone)]
pub struct StateLoader {
    store: EventStore,
    /// Shared, not copied: a look-up that only compares versions copies nothing, and a
    /// committed batch's states move in whole.
    cache: Arc<StateCache>,
    /// 0 disables snapshots.
    snapshot_every: usize,
    /// Every cached state reflects every event of the log at or before this position
    /// (`None`: not known yet; the first catch-up drops the cache).
    synced: Arc<Mutex<Option<i64>>>,
}

impl StateLoader {
    pub fn new(store: EventStore, cache_max: u64, snapshot_every: usize) -> StateLoader {
        StateLoader { store, cache: Arc::new(StateCache::new(cache_max)), snapshot_every, synced: Arc::default() }
    }

    /// Brings the cache up to the log's head (see the module's notes): a stream another
    /// process (or a batch of this writer whose answer is not settled yet) appended to
    /// since `synced` is dropped, so its next load folds it from the log. Bounded by the
    /// writer's time limit, as its appends are.
    pub async fn catch_up(&self) -> Result<(), StoreError> {
        crate::db::within(self.store.writer_time_limit(), "catching up with the log", self.catch_up_unbounded()).await
    }

    async fn catch_up_unbounded(&self) -> Result<(), StoreError> {
        let head: i64 = sqlx::query_scalar("select position from log_head").fetch_one(self.store.pool()).await?;
        let from = *self.synced.lock().expect("not poisoned");
        match from {
            Some(from) if from >= head => return Ok(()),
            Some(from) if head - from <= CATCH_UP_MAX => {
                let mut touched = 0usize;
                for event in self.store.events_between(from, head).await? {
                    // One this build cannot read (a newer writer's type): its streams
                    // are unknown, so nothing cached is vouched for.
                    let Some(event) = event else {
                        self.cache.invalidate_all();
                        break;
                    };
                    for (stream, _) in event.streams() {
                        self.cache.invalidate(&stream);
                        touched += 1;
                    }
                }
                metrics::counter!("ledger_writer_catch_up_streams_total").increment(touched as u64);
            }
            _ => self.cache.invalidate_all(),
        }
        let mut synced = self.synced.lock().expect("not poisoned");
        *synced = Some(synced.map_or(head, |s| s.max(head)));
        Ok(())
    }

    /// A batch of this writer committed the positions after `before` through `after`,
    /// and its states were cached as committed (or dropped): if the cache was synced
    /// right up to it, it is synced through it.
    pub(super) fn committed(&self, before: i64, after: i64) {
        let mut synced = self.synced.lock().expect("not poisoned");
        if *synced == Some(before) {
            *synced = Some(after);
        }
    }

    /// Loads the given streams into `ledger`, exactly as the log has them now (strong
    /// reads, payouts: every stream caught up by a read of the log); bounded by the
    /// writer's time limit, as its appends are (a connection cut off by a silent network
    /// would otherwise stall the writer for ever).
    pub async fn load(&self, ledger: &mut Ledger, ids: &[Uuid]) -> Result<(), StoreError> {
        crate::db::within(self.store.writer_time_limit(), "loading streams", self.load_unbounded(ledger, ids, false))
            .await
    }

    /// Loads the given streams into `ledger` for the writer, after its batch's
    /// [`StateLoader::catch_up`]: cached ones as cached, the others from the log.
    pub(super) async fn load_caught_up(&self, ledger: &mut Ledger, ids: &[Uuid]) -> Result<(), StoreError> {
        crate::db::within(self.store.writer_time_limit(), "loading streams", self.load_unbounded(ledger, ids, true))
            .await
    }

    /// Loads the given streams into `ledger`: each from the cache, its snapshot or
    /// nothing, then folded with what the log holds after it; with `caught_up`, a
    /// cached stream is taken as it is (the batch's catch-up made it the log's).
    async fn load_unbounded(&self, ledger: &mut Ledger, ids: &[Uuid], caught_up: bool) -> Result<(), StoreError> {
        let mut missing = Vec::new();
        for id in ids {
            match self.cache.get(id) {
                Some(state) => ledger.insert(*id, StreamState::clone(&state)),
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
        let ids = if caught_up { &missing[..] } else { ids };
        if ids.is_empty() {
            return Ok(());
        }
        let known: Vec<(Uuid, i64)> = ids.iter().map(|id| (*id, ledger.version(*id))).collect();
        let mut folded: std::collections::HashMap<Uuid, usize> = std::collections::HashMap::new();
        for (stream, version, event) in self.store.events_after(&known).await? {
            ledger.apply_to_stream(stream, version, &event);
            *folded.entry(stream).or_default() += 1;
        }
        // Only the writer's loads fill the cache: a strong read's load, running beside
        // the writer's catch-up, could put back a state read before an append the
        // catch-up has just dropped it for (and `synced` would vouch for it).
        if caught_up {
            for id in ids {
                if let Some(state) = ledger.stream(*id) {
                    self.remember(*id, state.clone());
                }
            }
        }
        if self.snapshot_every > 0 {
            let due: Vec<(Uuid, &StreamState)> = folded
                .into_iter()
                .filter(|(_, n)| *n >= self.snapshot_every)
                .filter_map(|(id, _)| ledger.stream(id).map(|state| (id, state)))
                .collect();
            if let Err(e) = crate::snapshots::save_all(self.store.pool(), &due).await {
                tracing::warn!(error = %e, streams = due.len(), "saving snapshots failed");
            }
        }
        Ok(())
    }

    /// Caches a state a batch of this writer committed (unless a newer one is cached),
    /// and returns it when the append crossed a multiple of `snapshot_every` since the
    /// cached (pre-batch) state: a stream that stays in the cache is never loaded from
    /// the log again, so this is where busy streams get their snapshots (and historical
    /// reads of them a near starting point).
    pub(super) fn remember_committed(&self, id: Uuid, state: StreamState) -> Option<Arc<StreamState>> {
        if state.version == 0 {
            return None;
        }
        let (version, state) = (state.version, Arc::new(state));
        let before = self.cache.insert_if_newer(id, || state.clone(), version);
        let every = i64::try_from(self.snapshot_every).unwrap_or(i64::MAX);
        (version > before && every > 0 && before / every < version / every).then_some(state)
    }

    /// Saves states that are exactly what the log holds, off the writer's path.
    pub(super) fn snapshot_in_background(&self, states: Vec<(Uuid, Arc<StreamState>)>) {
        if states.is_empty() {
            return;
        }
        let pool = self.store.pool().clone();
        let limit = self.store.writer_time_limit();
        tokio::spawn(async move {
            let states: Vec<(Uuid, &StreamState)> = states.iter().map(|(id, state)| (*id, &**state)).collect();
            let saving = crate::snapshots::save_all(&pool, &states);
            if let Err(e) = crate::db::within(limit, "saving snapshots", saving).await {
                tracing::warn!(error = %e, streams = states.len(), "saving snapshots failed");
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

    /// Caches a state folded from the log, unless a newer one is cached.
    fn remember(&self, id: Uuid, state: StreamState) {
        if state.version > 0 {
            let version = state.version;
            self.cache.insert_if_newer(id, || Arc::new(state), version);
        }
    }
}

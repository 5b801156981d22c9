//! The writer's folded stream states, bounded, in two generations of a hash map.
//!
//! A state goes into the young generation. A look-up that finds it in the old one
//! moves it to the young one while that has room. When an insertion finds the young
//! generation holding half the bound, it becomes the old one, and the old one before
//! it is dropped (off the caller's path). So at most `max` states are held (none below
//! 2), and a stream used within the last `max / 2` insertions of new streams is kept:
//! the accounts the writer keeps using stay, the transfer streams that are never
//! loaded again age out. Only insertions (the writer's) retire a generation: strong
//! reads, which share the cache, never evict the writer's states.
//!
//! It replaced a moka cache here. Every command of a batch looks up and caches the
//! streams it appends to, and moka's bookkeeping (its concurrent table, frequency
//! sketch, deques and clock) was about 6 % of the service's CPU at the peak
//! (docs/PERFORMANCE.md, "Issue 27, tenth stop"). Each operation here is one short
//! lock and one or two lookups.

use ledger_domain::StreamState;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

type States = HashMap<Uuid, Arc<StreamState>>;

pub(super) struct StateCache {
    /// Half the bound: the young generation's size when it is retired.
    generation_max: usize,
    generations: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    young: States,
    old: States,
}

impl StateCache {
    pub(super) fn new(max: u64) -> StateCache {
        let generation_max = usize::try_from(max / 2).unwrap_or(usize::MAX);
        StateCache { generation_max, generations: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // Every operation leaves the maps consistent (no step can panic half-way), so
        // a panic elsewhere while holding the lock leaves nothing to repair.
        self.generations.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn get(&self, id: &Uuid) -> Option<Arc<StreamState>> {
        let mut g = self.lock();
        if let Some(state) = g.young.get(id) {
            return Some(state.clone());
        }
        let state = g.old.get(id)?.clone();
        if g.young.len() < self.generation_max {
            g.old.remove(id);
            g.young.insert(*id, state.clone());
        }
        Some(state)
    }

    /// Caches `state` unless a state of the same or a later version is cached; returns
    /// the version cached before (0 when none).
    pub(super) fn insert_if_newer(&self, id: Uuid, state: impl FnOnce() -> Arc<StreamState>, version: i64) -> i64 {
        let mut g = self.lock();
        let before = g.young.get(&id).or_else(|| g.old.get(&id)).map_or(0, |s| s.version);
        if version <= before || self.generation_max == 0 {
            return before;
        }
        g.old.remove(&id);
        let mut retired = None;
        if g.young.len() >= self.generation_max && !g.young.contains_key(&id) {
            let young = std::mem::take(&mut g.young);
            retired = Some(std::mem::replace(&mut g.old, young));
        }
        g.young.insert(id, state());
        drop(g);
        if let Some(retired) = retired {
            drop_aside(retired);
        }
        before
    }

    pub(super) fn invalidate(&self, id: &Uuid) {
        let mut g = self.lock();
        g.young.remove(id);
        g.old.remove(id);
    }

    pub(super) fn invalidate_all(&self) {
        let retired = std::mem::take(&mut *self.lock());
        if !retired.young.is_empty() || !retired.old.is_empty() {
            drop_aside(retired);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let g = self.lock();
        g.young.len() + g.old.len()
    }
}

/// Drops a retired generation on a thread of its own (tens of thousands of states take
/// milliseconds to free), or here if no thread can be started: never a panic, since
/// the writer calls this (`forget_all` runs outside the writer's own unwind guard).
fn drop_aside<T: Send + 'static>(retired: T) {
    // On failure the closure, and with it the generation, is dropped right here.
    let _ = std::thread::Builder::new().name("ledger-cache-drop".into()).spawn(move || drop(retired));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(version: i64) -> Arc<StreamState> {
        Arc::new(StreamState { version, ..StreamState::default() })
    }

    #[test]
    fn holds_at_most_its_bound_and_keeps_what_is_used() {
        let cache = StateCache::new(10);
        let kept = Uuid::from_u128(u128::MAX);
        cache.insert_if_newer(kept, || state(1), 1);
        for i in 0..1_000u128 {
            cache.insert_if_newer(Uuid::from_u128(i), || state(1), 1);
            assert!(cache.len() <= 10, "{} states held", cache.len());
            // Used as often as a busy account: never aged out.
            assert_eq!(cache.get(&kept).map(|s| s.version), Some(1), "after {i} insertions");
        }
        // One inserted long ago and never used again has aged out.
        assert!(cache.get(&Uuid::from_u128(0)).is_none());
    }

    #[test]
    fn a_bound_below_two_keeps_nothing() {
        for max in [0, 1] {
            let cache = StateCache::new(max);
            cache.insert_if_newer(Uuid::from_u128(1), || state(1), 1);
            cache.insert_if_newer(Uuid::from_u128(2), || state(1), 1);
            assert_eq!(cache.len(), 0, "bound {max}");
        }
    }

    #[test]
    fn look_ups_never_evict() {
        let cache = StateCache::new(4);
        for i in 0..4u128 {
            cache.insert_if_newer(Uuid::from_u128(i), || state(1), 1);
        }
        // 0 and 1 are old, 2 and 3 young (full): look-ups find all four, and keep all four.
        for _ in 0..3 {
            for i in 0..4u128 {
                assert!(cache.get(&Uuid::from_u128(i)).is_some(), "state {i}");
            }
        }
        assert_eq!(cache.len(), 4);
    }

    #[test]
    fn keeps_the_newest_version_and_forgets_on_request() {
        let cache = StateCache::new(4);
        let id = Uuid::from_u128(7);
        assert_eq!(cache.insert_if_newer(id, || state(3), 3), 0);
        assert_eq!(cache.insert_if_newer(id, || state(2), 2), 3, "an older state is not cached");
        assert_eq!(cache.get(&id).map(|s| s.version), Some(3));
        // Aged into the old generation, then found and updated there.
        cache.insert_if_newer(Uuid::from_u128(1), || state(1), 1);
        cache.insert_if_newer(Uuid::from_u128(2), || state(1), 1);
        assert_eq!(cache.insert_if_newer(id, || state(4), 4), 3);
        assert_eq!(cache.get(&id).map(|s| s.version), Some(4));
        cache.invalidate(&id);
        assert!(cache.get(&id).is_none());
        cache.insert_if_newer(id, || state(5), 5);
        cache.invalidate_all();
        assert!(cache.get(&id).is_none());
        assert_eq!(cache.len(), 0);
    }
}

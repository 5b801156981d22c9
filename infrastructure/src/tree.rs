//! The log's Merkle tree in Postgres (`merkle_nodes`, `merkle_state`; migration 0024)
//! and the worker that grows it (API.md v1.2 "Verifiable log"; docs/AUDIT.md).
//!
//! The tree is grown by a worker that follows the log, not by the append: the write
//! path stays as lean as issue 27 left it, and the worker is at most one poll (250 ms)
//! and one batch behind the head. Tree heads and proofs are given only for sizes the
//! tree has reached; a request for a size it has not reached yet waits for it, bounded,
//! and wakes its process's worker, which then steps at once (at most once per 50 ms).
//!
//! Each event's chain hash is recomputed from its stored content and its predecessor's
//! when it enters the tree; the tree never grows over an event that does not recompute
//! (its position is reported and the worker stops there), and a stored hash changed
//! after its event entered the tree no longer matches the leaf, nor the tree heads
//! signed over it.

use crate::hash::GENESIS_HASH;
use crate::merkle::{self, Hash, Known, Needed, NodeId, Nodes};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why the tree did not grow, or a proof was not made.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The event at `position` does not recompute from its content and predecessor
    /// (or is missing): the tree stops before it.
    #[error("the event at position {position} does not match its chain hash: the tree stops before it")]
    Tampered { position: i64 },
    #[error("a stored node of the tree is missing: {0:?}")]
    MissingNode(NodeId),
    /// The stored chain hashes of the events at `from..=to` no longer fold to the
    /// subtree the tree stored over them: one was changed after it entered the tree.
    #[error("the events at positions {from} to {to} no longer match the tree grown over them")]
    BlockChanged { from: i64, to: i64 },
}

/// How far the tree has grown: its size (leaves 0..size are positions 1..=size).
pub async fn size(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select size from merkle_state").fetch_one(pool).await
}

/// Perfect subtrees of `2^STORED_LEVEL` leaves and up are stored; the smaller ones are
/// folded from the events' chain hashes when needed (one block of 16 leaves read per
/// node), which the tree checked when they entered it. So the tree stores about one
/// node per 8 events instead of two per event (its rows and WAL an eighth-and-a-bit),
/// and a head or proof still reads `O(log n)` rows.
pub const STORED_LEVEL: u32 = 4;
const BLOCK: u64 = 1 << STORED_LEVEL;

/// Fetches the perfect subtrees named. The stored ones come in one query. The smaller
/// ones are folded from leaves: a complete block's from its 16 events' `hash`, checked
/// against the subtree stored over them (a stored hash changed since is
/// [`TreeError::BlockChanged`]); the open block's (the last, not yet 16 leaves) from the
/// leaves the tree recomputed when they entered it (`merkle_state.tail`), never from
/// stored hashes nothing has checked against the tree.
async fn fetch(conn: &mut sqlx::PgConnection, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash>, TreeError> {
    let (mut stored, small): (Vec<NodeId>, Vec<NodeId>) = ids.iter().partition(|(level, _)| *level >= STORED_LEVEL);
    let mut blocks: Vec<u64> = small.iter().map(|(l, i)| (i << l) / BLOCK).collect();
    blocks.sort_unstable();
    blocks.dedup();
    // Read before the stored nodes: a block that completes in between is then read as
    // a complete one, its subtree stored.
    let (size, tail): (i64, Vec<Vec<u8>>) = if blocks.is_empty() {
        (0, Vec::new())
    } else {
        sqlx::query_as("select size, tail from merkle_state").fetch_one(&mut *conn).await?
    };
    stored.extend(blocks.iter().map(|b| (STORED_LEVEL, *b)));
    stored.sort_unstable();
    stored.dedup();
    let levels: Vec<i16> = stored.iter().map(|(l, _)| *l as i16).collect();
    let indexes: Vec<i64> = stored.iter().map(|(_, i)| *i as i64).collect();
    let rows: Vec<(i16, i64, Vec<u8>)> = if stored.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "select n.level, n.index, n.hash from unnest($1::int2[], $2::int8[]) as k(level, index)
             join merkle_nodes n on n.level = k.level and n.index = k.index",
        )
        .bind(&levels)
        .bind(&indexes)
        .fetch_all(&mut *conn)
        .await?
    };
    let mut nodes: HashMap<NodeId, Hash> = rows
        .into_iter()
        .filter_map(|(l, i, h)| <Hash>::try_from(h.as_slice()).ok().map(|h| ((l as u32, i as u64), h)))
        .collect();
    if small.is_empty() {
        return Ok(nodes);
    }
    let complete: Vec<i64> =
        blocks.iter().filter(|b| nodes.contains_key(&(STORED_LEVEL, **b))).map(|b| *b as i64).collect();
    let mut leaves: HashMap<u64, Hash> = HashMap::new();
    if !complete.is_empty() {
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "select e.position, e.hash from unnest($1::int8[]) as b(block)
             join events e on e.position > b.block * 16 and e.position <= b.block * 16 + 16",
        )
        .bind(&complete)
        .fetch_all(&mut *conn)
        .await?;
        leaves.extend(rows.into_iter().map(|(position, hash)| (position as u64 - 1, merkle::leaf_hash(&hash))));
        for block in complete.iter().map(|b| *b as u64) {
            let kept = nodes[&(STORED_LEVEL, block)];
            let span: Option<Vec<Hash>> =
                (block * BLOCK..(block + 1) * BLOCK).map(|l| leaves.get(&l).copied()).collect();
            if span.is_none_or(|span| perfect_root(&span) != kept) {
                let from = (block * BLOCK) as i64 + 1;
                return Err(TreeError::BlockChanged { from, to: from + BLOCK as i64 - 1 });
            }
        }
    }
    let open = size as u64 / BLOCK;
    if blocks.contains(&open) && !complete.contains(&(open as i64)) {
        for (i, leaf) in tail.iter().enumerate() {
            let leaf = <Hash>::try_from(leaf.as_slice()).map_err(|_| TreeError::MissingNode((0, open * BLOCK)))?;
            leaves.insert(open * BLOCK + i as u64, leaf);
        }
    }
    for (level, index) in small {
        let first = index << level;
        let span: Option<Vec<Hash>> = (first..first + (1 << level)).map(|leaf| leaves.get(&leaf).copied()).collect();
        if let Some(span) = span {
            nodes.insert((level, index), perfect_root(&span));
        }
    }
    Ok(nodes)
}

/// The root of a perfect subtree (a power of two of leaf hashes).
fn perfect_root(leaves: &[Hash]) -> Hash {
    match leaves {
        [leaf] => *leaf,
        _ => {
            let (left, right) = leaves.split_at(leaves.len() / 2);
            merkle::node_hash(&perfect_root(left), &perfect_root(right))
        }
    }
}

/// Runs `algorithm` twice: listing the perfect subtrees it reads, then over them.
async fn computed<T>(pool: &PgPool, algorithm: impl Fn(&mut dyn Nodes) -> T) -> Result<T, TreeError> {
    let mut needed = Needed::default();
    algorithm(&mut needed);
    needed.0.sort_unstable();
    needed.0.dedup();
    let mut conn = pool.acquire().await?;
    let mut known = Known { nodes: fetch(&mut conn, &needed.0).await?, missing: None };
    let out = algorithm(&mut known);
    match known.missing {
        Some(id) => Err(TreeError::MissingNode(id)),
        None => Ok(out),
    }
}

/// A tree head: the root of the first `size` leaves, and the time of its last event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeHead {
    pub size: i64,
    pub root: Hash,
    pub timestamp: DateTime<Utc>,
}

/// The head of the tree at `size` (which the tree has reached). Its timestamp is the
/// recorded time of the event at `size`, which is part of that event's chain hash: the
/// event is recomputed from its content and its predecessor's hash and must give the
/// leaf the tree is folded from, so a `recorded_at` changed after the tree grew over it
/// is refused, never signed (and one changed with its hash changes the root, which then
/// no longer matches heads signed before).
pub async fn head(pool: &PgPool, size: i64) -> Result<TreeHead, TreeError> {
    let n = size as u64;
    // The root and the last leaf, in one pass over the subtrees they read.
    let (root, kept) =
        computed(pool, |nodes| (merkle::root(n, nodes), (n > 0).then(|| nodes.node((0, n - 1))))).await?;
    let Some(kept) = kept else {
        return Ok(TreeHead { size, root, timestamp: DateTime::<Utc>::UNIX_EPOCH });
    };
    let events = crate::store::ChainRow::read(pool, (size - 2).max(0), size).await?;
    let (previous, last) = match events.as_slice() {
        [last] if size == 1 => (GENESIS_HASH.as_slice(), last),
        [before, last] => (before.hash.as_slice(), last),
        _ => return Err(TreeError::Tampered { position: size }),
    };
    if last.recompute(previous).map(|h| merkle::leaf_hash(&h)) != Some(kept) {
        return Err(TreeError::Tampered { position: size });
    }
    Ok(TreeHead { size, root, timestamp: last.recorded_at })
}

/// The leaf hash of `position` and its audit path in the tree of `size` (1 ≤ position ≤ size).
pub async fn inclusion(pool: &PgPool, position: i64, size: i64) -> Result<(Hash, Vec<Hash>), TreeError> {
    let (m, n) = (position as u64 - 1, size as u64);
    computed(pool, |nodes| (nodes.node((0, m)), merkle::inclusion_proof(m, n, nodes))).await
}

/// The consistency proof from the tree of `from` leaves to that of `to` (1 ≤ from ≤ to).
pub async fn consistency(pool: &PgPool, from: i64, to: i64) -> Result<Vec<Hash>, TreeError> {
    computed(pool, |nodes| merkle::consistency_proof(from as u64, to as u64, nodes)).await
}

/// What one step of the worker did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grown {
    /// The tree is at the head.
    AtHead(i64),
    /// The tree grew to this size.
    To(i64),
}

/// Grows the tree by up to `batch` events, in one transaction (the state row's lock
/// makes one builder at a time, whatever the processes). An event that does not
/// recompute stops it: the events before it enter the tree, the position is recorded
/// (`merkle_state.stopped_at`, so every process answers heads over it at once) and
/// returned as [`TreeError::Tampered`].
pub async fn grow(pool: &PgPool, batch: i64) -> Result<Grown, TreeError> {
    let mut tx = pool.begin().await?;
    let (size, last, tail): (i64, Option<Vec<u8>>, Vec<Vec<u8>>) =
        sqlx::query_as("select size, last_hash, tail from merkle_state for update").fetch_one(&mut *tx).await?;
    let head: i64 = sqlx::query_scalar("select position from log_head").fetch_one(&mut *tx).await?;
    if head <= size {
        return Ok(Grown::AtHead(size));
    }
    let up_to = head.min(size + batch);
    let events = crate::store::ChainRow::read(&mut *tx, size, up_to).await?;
    let mut previous = last.unwrap_or_else(|| GENESIS_HASH.to_vec());
    let mut leaves = Vec::with_capacity(events.len());
    let mut stopped = None;
    for (i, event) in events.into_iter().enumerate() {
        let expected = size + 1 + i as i64;
        if !event.verifies(expected, &previous) {
            stopped = Some(expected);
            break;
        }
        leaves.push(merkle::leaf_hash(&event.hash));
        previous = event.hash;
    }
    if stopped.is_none() && (leaves.len() as i64) < up_to - size {
        stopped = Some(size + 1 + leaves.len() as i64);
    }
    let grown = size + leaves.len() as i64;
    if !leaves.is_empty() {
        let frontier_ids = merkle::frontier(size as u64);
        let known = fetch(&mut tx, &frontier_ids).await?;
        let mut frontier = Vec::with_capacity(frontier_ids.len());
        for id in frontier_ids {
            frontier.push((id, *known.get(&id).ok_or(TreeError::MissingNode(id))?));
        }
        let (made, _) = merkle::grow(frontier, size as u64, &leaves);
        let made: Vec<_> = made.into_iter().filter(|((level, _), _)| *level >= STORED_LEVEL).collect();
        sqlx::query(
            "insert into merkle_nodes (level, index, hash) select * from unnest($1::int2[], $2::int8[], $3::bytea[])",
        )
        .bind(made.iter().map(|((l, _), _)| *l as i16).collect::<Vec<_>>())
        .bind(made.iter().map(|((_, i), _)| *i as i64).collect::<Vec<_>>())
        .bind(made.iter().map(|(_, h)| h.to_vec()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    // The open block's leaves as recomputed: the tail the next heads and steps fold from.
    let mut tail = tail;
    for leaf in &leaves {
        tail.push(leaf.to_vec());
        if tail.len() as u64 == BLOCK {
            tail.clear();
        }
    }
    sqlx::query("update merkle_state set size = $1, last_hash = $2, stopped_at = $3, tail = $4")
        .bind(grown)
        .bind(&previous)
        .bind(stopped)
        .bind(&tail)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    match stopped {
        Some(position) => Err(TreeError::Tampered { position }),
        None => Ok(Grown::To(grown)),
    }
}

/// How far the tree has grown, as this process last read it, and the position the
/// worker stopped at (an event that does not recompute), if it did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    pub size: i64,
    pub stopped_at: Option<i64>,
}

/// Whether the tree reached a size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    Reached,
    /// Not within the wait.
    TimedOut,
    /// Never will: the log does not verify at this position, at or before the size.
    Stopped(i64),
}

/// This process's view of how far the tree has grown, shared by every request: a size
/// reached once is known without a query (the tree only grows while the service runs),
/// and while requests wait for a larger one a single one of them reads the state row
/// every 20 ms for all (a stopped or lagging tree costs one query per 20 ms, not one
/// per waiting request).
#[derive(Debug)]
pub struct Follower {
    seen: tokio::sync::watch::Sender<Reading>,
    poll: tokio::sync::Mutex<()>,
    /// Wakes this process's worker: a request waits for a size the tree has not reached.
    wanted: tokio::sync::Notify,
}

impl Default for Follower {
    fn default() -> Follower {
        Follower {
            seen: tokio::sync::watch::Sender::new(Reading::default()),
            poll: tokio::sync::Mutex::new(()),
            wanted: tokio::sync::Notify::new(),
        }
    }
}

impl Follower {
    /// How far the tree has grown as this process last learned it: a reading of the
    /// state row, or its worker's report.
    pub fn last_known(&self) -> Reading {
        *self.seen.borrow()
    }

    /// What this process's worker grew the tree to (or found it at): requests waiting
    /// for it see it at once, without reading the state row. A step that ended so
    /// committed no stop (`stopped_at` null), so none is kept from an earlier reading.
    fn grown(&self, size: i64) {
        self.seen.send_if_modified(|r| {
            let grew = size > r.size;
            if grew {
                *r = Reading { size, stopped_at: None };
            }
            grew
        });
    }

    /// Waits (bounded by `wait`) until the tree has reached `size`.
    pub async fn reached(&self, pool: &PgPool, size: i64, wait: Duration) -> Result<Reach, sqlx::Error> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut seen = self.seen.subscribe();
        // A stop is believed only as read during this call: the tree grows again once
        // the log is repaired, and a reading from before would keep refusing.
        let mut fresh = false;
        let mut asked = false;
        loop {
            let reading = *seen.borrow_and_update();
            if reading.size >= size {
                return Ok(Reach::Reached);
            }
            if let Some(position) = reading.stopped_at.filter(|p| fresh && *p <= size && *p > reading.size) {
                return Ok(Reach::Stopped(position));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Reach::TimedOut);
            }
            if !asked {
                // The worker of this process (if it runs one) grows the tree now rather
                // than at its next poll; another process's worker is not woken.
                self.wanted.notify_one();
                asked = true;
            }
            match self.poll.try_lock() {
                Ok(_polling) => {
                    let (grown, stopped_at): (i64, Option<i64>) =
                        sqlx::query_as("select size, stopped_at from merkle_state").fetch_one(pool).await?;
                    self.seen.send_replace(Reading { size: grown, stopped_at });
                    seen.borrow_and_update();
                    fresh = true;
                    if grown < size && stopped_at.is_none_or(|p| p > size) {
                        // Pausing with the lock held: the others wait for this reading
                        // (and the next) instead of reading too; what the worker grows
                        // meanwhile ends the pause.
                        let pause = async {
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                                _ = seen.changed() => {}
                            }
                        };
                        let _ = tokio::time::timeout_at(deadline, pause).await;
                    }
                }
                Err(_) => {
                    // In slices: if the one reading is dropped (its client gone), another
                    // waiter takes the lock within one slice.
                    let slice = (tokio::time::Instant::now() + Duration::from_millis(25)).min(deadline);
                    fresh |= matches!(tokio::time::timeout_at(slice, seen.changed()).await, Ok(Ok(())));
                }
            }
        }
    }
}

/// Events per step of the worker.
pub const BATCH: i64 = 5_000;

/// The least time between the end of a step and a step that requests woke: however
/// many requests wait, the worker steps no more often than the 50 ms poll it had before
/// it could be woken.
const WOKEN_GAP: Duration = Duration::from_millis(50);

/// The worker: grows the tree until `shutdown`. When at the head, or when its last step
/// was not a full one, it pauses `poll`, unless a request of this process waits for a
/// size the tree has not reached (`follower`): then it steps at once, but no sooner
/// than [`WOKEN_GAP`] after its last step, however many requests wait. A step is a
/// transaction of five statements and two checking triggers whatever its size: growing
/// back to back by the few events a busy log adds between two steps cost Postgres about
/// 50 µs per transfer at half this machine's peak, and the commands' p50 2.5 ms; a step
/// every 50 ms still cost it about 19.5 µs per transfer at 1,400 transfers/s
/// (docs/PERFORMANCE.md, "Issue 27, fifth stop"). After a failed step, or an event that
/// does not recompute, requests do not wake it. An event that does not recompute stops
/// it there (reported every 10 s). One growth may take
/// `step_time_limit` (a connection cut off by a silent network would otherwise stop
/// the tree for ever; a growth given up never commits).
pub async fn run(
    pool: PgPool,
    poll: Duration,
    step_time_limit: Duration,
    follower: std::sync::Arc<Follower>,
    shutdown: CancellationToken,
) {
    let mut size_before: Option<i64> = None;
    loop {
        let step = crate::db::within(step_time_limit, "growing the Merkle tree", grow(&pool, BATCH)).await;
        let wakeable = step.is_ok();
        let pause = match step {
            Ok(Grown::To(size)) => {
                metrics::gauge!("ledger_tree_size").set(size as f64);
                follower.grown(size);
                let full = size_before.is_none_or(|before| size - before >= BATCH);
                size_before = Some(size);
                if full { Duration::ZERO } else { poll }
            }
            Ok(Grown::AtHead(size)) => {
                follower.grown(size);
                poll
            }
            Err(TreeError::Tampered { position }) => {
                tracing::error!(position, "the log does not verify at this position: the Merkle tree stops before it");
                metrics::counter!("ledger_tree_tampered_total").increment(1);
                Duration::from_secs(10)
            }
            Err(e) => {
                tracing::warn!(error = %e, "growing the Merkle tree failed; trying again");
                Duration::from_secs(1)
            }
        };
        if pause.is_zero() {
            if shutdown.is_cancelled() {
                return;
            }
            continue;
        }
        let stepped = tokio::time::Instant::now();
        let woken = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => false,
            _ = follower.wanted.notified(), if wakeable => true,
        };
        if woken {
            let gap = WOKEN_GAP.min(pause);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(stepped + gap) => {}
            }
        }
    }
}

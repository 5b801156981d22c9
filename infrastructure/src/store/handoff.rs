//! Committed events handed to this process's relay in memory, so that it publishes them
//! without reading back what was just written. Only what committed is handed, in
//! commit order, and only while this process's relay leads; the log stays the relay's
//! source of truth: a handed batch the channel had no room for, or a gap (another
//! process appended, the relay restarted), makes the relay read the log as before.

use super::{CommitResult, RecordedEvent};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use uuid::Uuid;

/// Batches that may wait for the relay; past that a batch is not handed (the relay
/// reads it from the log).
const BATCHES_MAX: usize = 64;
/// Events the relay keeps from handed batches; past that it forgets them and reads the log.
const EVENTS_MAX: usize = 100_000;
/// How long the relay, woken by a commit, waits for the batch this process's writer is
/// committing to be handed, before it reads the log instead.
const WAIT_MAX: Duration = Duration::from_millis(50);

/// One event as the relay publishes it: its JSON (the log's row, as
/// `serde_json::to_vec(&RecordedEvent)` writes it) and what names and orders it.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub position: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub payload: Bytes,
}

impl Outgoing {
    pub fn of(e: &RecordedEvent) -> Outgoing {
        Outgoing {
            position: e.position,
            event_id: e.event_id,
            event_type: e.event_type.clone(),
            payload: serde_json::to_vec(e).expect("recorded events serialize").into(),
        }
    }
}

/// The writer's side: the event store hands each committed batch here.
pub struct Handoff {
    tx: mpsc::Sender<Vec<Outgoing>>,
    /// True while the relay this hands to leads (else nothing is handed).
    leader: Arc<AtomicBool>,
    /// Appends under way in this process (each hands its batch, or fails, soon).
    appending: Arc<AtomicUsize>,
}

/// An append under way (see [`Handoff::begin`]).
pub(super) struct Appending(Arc<AtomicUsize>);

impl Drop for Appending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Handoff {
    /// A handoff to the relay whose leadership `leader` tells, and the relay's inbox.
    pub fn new(leader: Arc<AtomicBool>) -> (Handoff, Inbox) {
        let (tx, rx) = mpsc::channel(BATCHES_MAX);
        let appending = Arc::new(AtomicUsize::new(0));
        (
            Handoff { tx, leader, appending: appending.clone() },
            Inbox { rx: Some(rx), queue: VecDeque::new(), appending },
        )
    }

    /// Marks an append under way until the guard drops (after its batch is handed).
    pub(super) fn begin(&self) -> Appending {
        self.appending.fetch_add(1, Ordering::SeqCst);
        Appending(self.appending.clone())
    }

    /// Hands what a batch committed (called after its commit only).
    pub(super) fn hand(&self, results: &[CommitResult]) {
        if !self.leader.load(Ordering::Relaxed) {
            return;
        }
        let Ok(permit) = self.tx.try_reserve() else {
            metrics::counter!("ledger_relay_handoff_skipped_total").increment(1);
            return;
        };
        permit.send(results.iter().flat_map(|r| &r.recorded).map(Outgoing::of).collect());
    }
}

/// The relay's side: handed events in position order, possibly with gaps.
#[derive(Default)]
pub struct Inbox {
    rx: Option<mpsc::Receiver<Vec<Outgoing>>>,
    queue: VecDeque<Outgoing>,
    appending: Arc<AtomicUsize>,
}

impl Inbox {
    /// An inbox nothing hands to (the relay only reads the log).
    pub fn none() -> Inbox {
        Inbox::default()
    }

    /// Waits for a handed batch (forever if nothing can hand one).
    pub async fn recv(&mut self) {
        match self.rx.as_mut() {
            Some(rx) => match rx.recv().await {
                Some(batch) => self.keep(batch),
                None => self.rx = None,
            },
            None => std::future::pending().await,
        }
    }

    /// Forgets what was handed so far (leadership starts or ends).
    pub fn clear(&mut self) {
        self.drain();
        self.queue.clear();
    }

    /// The handed events that follow `checkpoint` without a gap, at most `max`; none
    /// when the next event after `checkpoint` was not handed (the log has it).
    pub fn next_after(&mut self, checkpoint: i64, max: usize) -> Vec<Outgoing> {
        self.drain();
        self.take_after(checkpoint, max)
    }

    /// [`Inbox::next_after`], waiting (at most [`WAIT_MAX`]) for the batch an append of
    /// this process is committing when nothing after `checkpoint` was handed yet and
    /// nothing handed shows a gap: a commit's notification can arrive before its batch.
    pub async fn next_after_commit(&mut self, checkpoint: i64, max: usize) -> Vec<Outgoing> {
        let events = self.next_after(checkpoint, max);
        if !events.is_empty() || self.rx.is_none() || !self.queue.is_empty() {
            return events;
        }
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        while self.appending.load(Ordering::SeqCst) > 0 && self.queue.is_empty() {
            if tokio::time::timeout_at(deadline, self.recv()).await.is_err() {
                break;
            }
        }
        self.take_after(checkpoint, max)
    }

    fn take_after(&mut self, checkpoint: i64, max: usize) -> Vec<Outgoing> {
        while self.queue.front().is_some_and(|e| e.position <= checkpoint) {
            self.queue.pop_front();
        }
        let mut out = Vec::new();
        let mut expected = checkpoint + 1;
        while out.len() < max && self.queue.front().is_some_and(|e| e.position == expected) {
            out.push(self.queue.pop_front().expect("checked"));
            expected += 1;
        }
        out
    }

    fn drain(&mut self) {
        while let Some(batch) = self.rx.as_mut().and_then(|rx| rx.try_recv().ok()) {
            self.keep(batch);
        }
    }

    fn keep(&mut self, batch: Vec<Outgoing>) {
        if self.queue.len() + batch.len() > EVENTS_MAX {
            self.queue.clear();
        }
        self.queue.extend(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handed(positions: std::ops::RangeInclusive<i64>) -> Vec<Outgoing> {
        positions
            .map(|position| Outgoing { position, event_id: Uuid::nil(), event_type: "T".into(), payload: Bytes::new() })
            .collect()
    }

    fn positions(events: &[Outgoing]) -> Vec<i64> {
        events.iter().map(|e| e.position).collect()
    }

    #[test]
    fn only_what_follows_the_checkpoint_without_a_gap_is_taken() {
        let mut inbox = Inbox::none();
        inbox.keep(handed(1..=3));
        inbox.keep(handed(6..=7));
        assert_eq!(positions(&inbox.next_after(1, 10)), vec![2, 3], "up to the gap");
        assert!(inbox.next_after(3, 10).is_empty(), "4 and 5 were not handed: the log has them");
        assert_eq!(positions(&inbox.next_after(5, 1)), vec![6], "at most max");
        assert_eq!(positions(&inbox.next_after(6, 10)), vec![7]);
        inbox.keep(handed(8..=9));
        assert!(inbox.next_after(9, 10).is_empty(), "what the log already gave is dropped");
        assert!(inbox.queue.is_empty());
    }

    #[test]
    fn nothing_is_handed_unless_the_relay_leads_or_once_the_channel_is_full() {
        let leader = Arc::new(AtomicBool::new(false));
        let (handoff, mut inbox) = Handoff::new(leader.clone());
        let recorded = |position| RecordedEvent {
            position,
            event_id: Uuid::nil(),
            stream_id: Uuid::nil(),
            version: 1,
            event_type: "T".into(),
            data: serde_json::json!({}),
            metadata: serde_json::json!({}),
            recorded_at: chrono::Utc::now(),
            decoded: Default::default(),
            hash: None,
        };
        let result = |position| CommitResult {
            recorded: vec![recorded(position)],
            outcome: crate::outcome::Outcome::Rejected(ledger_domain::DomainError::AccountNotFound {
                account_id: Uuid::nil(),
            }),
        };
        handoff.hand(&[result(1)]);
        assert!(inbox.next_after(0, 10).is_empty(), "not leading: nothing handed");
        leader.store(true, Ordering::Relaxed);
        for p in 1..=(BATCHES_MAX as i64 + 1) {
            handoff.hand(&[result(p)]);
        }
        let taken = inbox.next_after(0, 1_000);
        assert_eq!(taken.len(), BATCHES_MAX, "the batch past the channel's room was skipped");
        let first: RecordedEvent = serde_json::from_slice(&taken[0].payload).expect("the log's JSON");
        assert_eq!((first.position, first.event_type.as_str()), (1, "T"));
    }
}

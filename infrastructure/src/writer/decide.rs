//! Deciding one command against the working state of a batch: its commit (events, the
//! versions of the streams it appends to and of those it only read, its idempotency
//! record) and what the working state becomes.

use super::CommandRequest;
use crate::store::Commit;
use ledger_domain::{Command, Concurrency, Ledger, StreamState, decide};
use std::collections::HashSet;
use uuid::Uuid;

/// A working state holding the streams the callers minted, empty: they are new, so
/// there is nothing to load for them.
pub(super) fn fresh_streams<'a>(requests: impl Iterator<Item = &'a CommandRequest>) -> Ledger {
    let mut working = Ledger::new();
    for id in requests.filter_map(|r| r.fresh_stream) {
        working.insert(id, StreamState::default());
    }
    working
}

/// Decides one command against the working state and applies its events to it.
/// Returns the commit and whether it has events.
pub(super) fn decide_one(request: &CommandRequest, working: &mut Ledger) -> (Commit, bool) {
    let (events, expected, read, streams, rejection) = match decide(&request.command, working) {
        Ok(events) => {
            let mut expected: Vec<(Uuid, i64)> = Vec::new();
            for event in &events {
                for (stream, concurrency) in event.streams() {
                    if concurrency == Concurrency::Exact && !expected.iter().any(|(s, _)| *s == stream) {
                        expected.push((stream, working.version(stream)));
                    }
                }
            }
            let read = read_only(&request.command, working, &events);
            for event in &events {
                working.apply(event);
            }
            // The outcome keeps the streams the decision depended on (`Exact`): never a
            // system account's state as this writer computed it, which another process
            // may have appended to meanwhile.
            let mut streams: Vec<(Uuid, StreamState)> = Vec::new();
            for event in &events {
                for (stream, concurrency) in event.streams() {
                    let new = concurrency == Concurrency::Exact && !streams.iter().any(|(s, _)| *s == stream);
                    if let Some(state) = working.stream(stream).filter(|_| new) {
                        streams.push((stream, state.clone()));
                    }
                }
            }
            (events, expected, read, streams, None)
        }
        Err(error) => (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Some(error)),
    };
    let has_events = !events.is_empty();
    let commit = Commit {
        events,
        expected,
        read,
        metadata: request.metadata.clone(),
        idempotency: request.idempotency.clone(),
        streams,
        rejection,
        owner_index: request.owner_index.clone().filter(|_| has_events),
    };
    (commit, has_events)
}

/// The streams a decision read but its events do not append to, at the versions it
/// read (before its events are applied). System accounts are left out: they are
/// appended to at any version by design (`Concurrency::Any`), and nothing decided
/// about one depends on its version.
fn read_only(command: &Command, working: &Ledger, events: &[ledger_domain::Event]) -> Vec<(Uuid, i64)> {
    let written: HashSet<Uuid> = events.iter().flat_map(|e| e.streams()).map(|(stream, _)| stream).collect();
    let mut read = command.read_streams(working);
    read.retain(|id| !written.contains(id) && !ledger_domain::decide::is_reserved_id(*id));
    read.sort_unstable();
    read.dedup();
    read.into_iter().map(|id| (id, working.version(id))).collect()
}

//! Infrastructure: everything the domain needs to run against Postgres, NATS and the
//! payment provider. Depends on the domain; must not depend on the HTTP layer or on
//! projections.
//!
//! - The log: [`store`] (append as pure staging and planning around one transaction,
//!   reading, idempotency records, database faults), [`hash`] (the tamper-evident chain),
//!   [`outcome`] (what a command's idempotency record keeps), [`snapshots`] (folded
//!   states, and the as-of and bitemporal folds), [`audit`] (walking the chain).
//! - Writing: [`writer`] (one pipelined group-commit writer per process: groups of one
//!   command or all-or-nothing sets).
//! - Fan-out and side effects: [`relay`] (the outbox to JetStream, one leader),
//!   [`nats`] (names and streams), [`payouts`] (the payout worker), [`provider`] (its
//!   client), [`reconcile`] (runs against the provider's statement), [`breaker`],
//!   [`webhooks`] (deliveries to clients' endpoints).
//! - Running: [`config`] (every setting and its default), [`db`] (pool and migrations),
//!   [`keys`] (the master key, and what it seals).

pub mod audit;
pub mod breaker;
pub mod clock;
pub mod config;
pub mod db;
pub mod hash;
pub mod keys;
pub mod ledgers;
pub mod merkle;
pub mod nats;
pub mod outcome;
pub mod payouts;
pub mod phases;
pub mod privacy;
pub mod provider;
pub mod reconcile;
pub mod relay;
pub mod signing;
pub mod snapshots;
pub mod store;
pub mod tree;
pub mod webhooks;
pub mod writer;

pub use config::Config;
pub use db::{MIGRATOR, connect, connect_and_migrate, ensure_database};
pub use outcome::{Outcome, Recorded, Stored};
pub use store::{EventMetadata, EventStore, IdempotencyClaim, RecordedEvent, StoredResponse};
pub use writer::{
    CommandBus, CommandError, CommandReply, CommandRequest, Group, GroupError, GroupResult, StateLoader, WriterLimits,
};

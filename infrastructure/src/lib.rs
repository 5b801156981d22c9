//! Infrastructure: the Postgres event store and idempotency records, the command
//! writer (group commit), the hash chain, configuration and migrations. Depends on the
//! domain; must not depend on the HTTP layer or on projections.

pub mod config;
pub mod db;
pub mod hash;
pub mod outcome;
pub mod store;
pub mod writer;

pub use config::Config;
pub use db::{MIGRATOR, connect, connect_and_migrate, ensure_database};
pub use outcome::{Outcome, Recorded, Stored};
pub use store::{EventMetadata, EventStore, IdempotencyClaim, RecordedEvent, StoredResponse};
pub use writer::{AtomicError, CommandBus, CommandError, CommandReply, CommandRequest, StateLoader, WriterLimits};
pub mod audit;
pub mod breaker;
pub mod nats;
pub mod payouts;
pub mod provider;
pub mod reconcile;
pub mod relay;
pub mod snapshots;

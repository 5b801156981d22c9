//! Read models (the CQRS query side), built from the event log by JetStream consumers.
//! Each projection writes its rows and its checkpoint in one transaction, so an event
//! is applied exactly once; a gap in what NATS delivered is filled from the Postgres
//! log, so no event is ever skipped. Depends on the domain and infrastructure; must not
//! depend on the HTTP layer.
//!
//! - [`accounts`]: `accounts_view` and the statements (`account_entries`);
//!   [`transfers`]: transfers, transactions, withdrawals, holds and dead letters.
//! - [`apply`]: exactly-once application and catching up from the log; [`worker`]: the
//!   JetStream consumers; [`rebuild`]: blue-green rebuilds; [`verify`]: read models
//!   against a fold of the log.
//! - [`queries`]: typed rows for the API's reads; [`expiry`]: the hold expiry worker.

// Column arrays for `unnest` binds and row tuples read the clearest spelled out.
#![allow(clippy::type_complexity)]

pub mod accounts;
pub mod apply;
pub mod expiry;
pub mod queries;
pub mod rebuild;
pub mod transfers;
pub mod verify;
pub mod worker;

pub use apply::{ApplyError, Projection, catch_up};
pub use worker::{OnApplied, ProjectionWorker, WorkerLimits};

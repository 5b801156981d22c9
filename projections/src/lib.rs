//! Read models (the CQRS query side), built from the event log by JetStream consumers.
//! Each projection writes its rows and its checkpoint in one transaction, so an event
//! is applied exactly once; a gap in what NATS delivered is filled from the Postgres
//! log, so no event is ever skipped. Depends on the domain and infrastructure; must not
//! depend on the HTTP layer.

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

//! The edge: what every request goes through before and after its handler.
//!
//! - [`context`]: request and correlation ids, the principal; [`auth`]: bearer tokens,
//!   roles and the per-token rate limit; [`guard`]: the Postgres circuit breaker.
//! - [`extract`]: strict path and query parsing; [`validate`]: strict JSON, query
//!   parameters; [`requests`]: a command's body into its `ledger_wire` request type.
//! - [`command`]: running a command once per `Idempotency-Key`, rendering its outcome;
//!   [`operation`]: the same key rules for operations, claimed before they run.
//! - [`error`]: `ApiError`, the one error type, as RFC 9457 problem documents.
//! - [`limits`]: the request limits of the contract and the HTTP layer's caches.
//! - [`metrics`]: Prometheus metrics; [`openapi`]: the OpenAPI document and Swagger UI.

pub mod auth;
pub mod command;
pub mod context;
pub mod error;
pub mod extract;
pub mod guard;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod operation;
pub mod privacy;
pub mod requests;
pub mod shed;
pub mod validate;

//! The integration tests, one binary (linked once): each module is one area, run
//! against real Postgres and NATS, most on a database of its own. Run one area with
//! `cargo test -p ledger-tests --test suite faults::`, one test by its name.

mod attacks;
mod audit_auth;
mod breakers;
mod bulk;
mod client;
mod clock;
mod console;
mod faults;
mod fuzz;
mod hangs;
mod hardening;
mod history;
mod hold_expiry;
mod holds;
mod ledgers;
mod openapi;
mod operability;
mod overload;
mod pauses;
mod payouts;
mod periods;
mod privacy;
mod python_client;
mod quiet_faults;
mod read_side;
mod reconciliation;
mod replica;
mod transaction_properties;
mod transactions;
mod verifiable;
mod webhooks;
mod write_side;

//! The ledger's domain: money, commands, events and the Decider functions
//! (`decide`, `evolve`). Pure: it must not depend on tokio, sqlx, async-nats, moka,
//! axum or any other I/O crate, and it reads no clock and no randomness. Ids and
//! anything looked up travel inside commands and the prefetched state.

pub mod access;
pub mod decide;
pub mod effective;
pub mod events;
pub mod money;
pub mod reconcile;
pub mod state;

#[cfg(test)]
mod holds_transactions_tests;
#[cfg(test)]
mod tests;

pub use access::Role;
pub use decide::{Command, DomainError, decide, system_account_id};
pub use events::{
    Concurrency, EVENT_TYPES, Event, Leg, Posting, chain_stream_id, periods_stream_id, subject_stream_id,
};
pub use money::{AMOUNT_MAX, Amount, AmountError, Currency, CurrencyError, Money};
pub use reconcile::{MismatchKind, Resolution};
pub use state::{
    Account, AccountStatus, Aggregate, EVOLVE_VERSION, Hold, HoldStatus, Ledger, StreamState, Subject, Transaction,
    Transfer, Withdrawal, WithdrawalStatus, evolve, is_personal_key, without_personal_keys,
};

//! The HTTP layer's limits in one place (TigerBeetle's `constants.zig`): what one
//! request may hold (text and metadata sizes, query strings, header ids, token names,
//! pages) is part of the contract and comes from `ledger_wire::limits`; the in-process
//! caches of the HTTP layer are here. Operational limits (pool, timeouts,
//! batches, rates, retries) are settings: `ledger_infrastructure::Config`.

use std::time::Duration;

pub use ledger_wire::limits::*;

/// Issued tokens remembered by this process (known, unknown, rate buckets: each).
pub const TOKEN_CACHE_ENTRIES_MAX: u64 = 10_000;
/// How long a known token's look-up is remembered.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(60);
/// How long an unknown token's look-up is remembered.
pub const UNKNOWN_TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);
/// Cached account views.
pub const ACCOUNT_CACHE_ENTRIES_MAX: u64 = 100_000;
/// How long a cached account view may be served.
pub const ACCOUNT_CACHE_TTL: Duration = Duration::from_secs(30);

// How the limits relate.
const _: () = assert!(UNKNOWN_TOKEN_CACHE_TTL.as_secs() <= TOKEN_CACHE_TTL.as_secs(), "a new token is found soon");

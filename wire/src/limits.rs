//! Every limit of what one request may hold, in one place (TigerBeetle's
//! `constants.zig`): text and metadata sizes, header ids, token names and pages. The
//! server's own limits (caches, timeouts, rates) are its settings.

/// Longest free-text field (`owner`, `reference`, `destination`, `reason`), in bytes.
pub const TEXT_BYTES_MAX: usize = 1024;
/// Most keys in a metadata object.
pub const METADATA_KEYS_MAX: usize = 64;
/// Longest metadata key, in characters.
pub const METADATA_KEY_CHARS_MAX: usize = 64;
/// Longest metadata string value, in characters.
pub const METADATA_STRING_CHARS_MAX: usize = 1024;
/// Largest metadata object, in bytes of its compact serialization.
pub const METADATA_BYTES_MAX: usize = 8 * 1024;
/// Longest query parameter value accepted, in bytes.
pub const PARAM_BYTES_MAX: usize = 1024;
/// Most query parameters accepted on one request.
pub const PARAMS_MAX: usize = 32;
/// Longest `Idempotency-Key` and `X-Correlation-Id`, in (printable ASCII) bytes.
pub const HEADER_ID_BYTES_MAX: usize = 255;
/// Longest token name, in characters of `[A-Za-z0-9_.-]`.
pub const TOKEN_NAME_CHARS_MAX: usize = 64;
/// Largest page of any listing (`limit`).
pub const PAGE_MAX: i64 = 1000;
/// Most postings in one transaction.
pub const POSTINGS_MAX: usize = 100;
/// Most conditions in one transaction (each is a stream the writer loads and checks).
pub const CONDITIONS_MAX: usize = 100;
/// Most `metadata.KEY=VALUE` filters on one transaction query.
pub const METADATA_FILTERS_MAX: usize = 5;
/// How far in the future an `effective_at` may be, in seconds.
pub const EFFECTIVE_AHEAD_S: i64 = 60;
/// Most items of one `POST /v1/bulk`.
pub const BULK_ITEMS_MAX: usize = 1000;
/// Largest `POST /v1/bulk` body, in bytes.
pub const BULK_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most accounts `GET /v1/accounts?owner=` answers.
pub const OWNER_ACCOUNTS_MAX: i64 = 1000;

// How the limits relate.
const _: () = assert!(PARAM_BYTES_MAX >= TEXT_BYTES_MAX, "an owner look-up takes every owner an account may have");
const _: () = assert!(METADATA_KEY_CHARS_MAX + 4 < METADATA_BYTES_MAX, "one key and a small value fit in an object");
const _: () = assert!(TOKEN_NAME_CHARS_MAX + "token:".len() <= HEADER_ID_BYTES_MAX, "principals stay short");

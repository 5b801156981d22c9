//! The request bodies of the commands: one type per route, deserialized by the
//! server's handler, serialized by the client, and the schema of the OpenAPI document,
//! so the three cannot drift. Each field's type parses it fully (parse, don't
//! validate): a body that deserializes is valid, and whatever does not is one 422
//! `validation_error` naming the field.

use crate::fields::{
    AccountMetadata, LedgerName, Metadata, NewId, OverdraftLimit, Postings, SubjectId, Text, Timestamp, TokenName,
};
use ledger_domain::{Amount, Currency, Role};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// `POST /v1/accounts`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct OpenAccountRequest {
    /// ISO-4217 style code: three upper-case letters.
    #[schema(value_type = String, pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: Currency,
    /// Free text (e.g. an e-mail, 1–1024 bytes, no NUL) for the indexed look-up `GET /v1/accounts?owner=`.
    /// Personal data: sealed under the subject's key, `null` once the subject is erased.
    #[schema(value_type = Option<String>, example = "alice@example.com")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Text>,
    /// How far below zero `available` may go, in minor units (default 0).
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overdraft_limit: Option<OverdraftLimit>,
    /// The account's id; the server generates a v7 UUID when absent. An id that exists
    /// is 409 `version_conflict`; a version-8 UUID is 422 `validation_error` (that space
    /// is reserved for the ledger's own streams, such as system accounts).
    #[schema(value_type = Option<Uuid>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<NewId>,
    /// Kept with the account and returned as sent: an object of at most 64 keys, each
    /// 1–64 characters of `[A-Za-z0-9_.-]`; each value a string (≤ 1,024 characters, no
    /// U+0000), a signed 64-bit integer (no fraction, no exponent), `true`, `false` or
    /// `null`; at most 8 KiB compact. Anything else is 422 `validation_error`. Values of
    /// keys beginning with `pii.` are personal data (only accounts may have them).
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<AccountMetadata>,
    /// The person or company the account belongs to: a pseudonymous id (a customer
    /// number, not a name or e-mail), 1–128 characters of `[A-Za-z0-9_.:@-]`; default:
    /// the account's id. Erasing it (`POST /v1/admin/subjects/{subject}/erase`) erases
    /// the personal data of all its accounts.
    #[schema(value_type = Option<String>, example = "customer-4711")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<SubjectId>,
}

/// A command that takes no fields: an empty object (or no body at all).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct EmptyRequest {}

/// `POST /v1/deposits`: money entering from the outside world through the currency's
/// system account.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct DepositRequest {
    pub account_id: Uuid,
    /// Minor units (cents), 1 ..= 10^15.
    #[schema(value_type = i64, minimum = 1, maximum = 1_000_000_000_000_000_i64, example = 2500)]
    pub amount: Amount,
    /// Must be the account's currency.
    #[schema(value_type = String, pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: Currency,
    /// Free text, 1–1024 bytes.
    #[schema(value_type = Option<String>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<Text>,
    /// The client's metadata, returned as sent (the rules of `OpenAccountRequest.metadata`).
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Business time (RFC 3339): at most `LEDGER_BACKDATE_MAX_S` (default 30 days) in
    /// the past and 60 s in the future; default: when it is recorded.
    #[schema(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_at: Option<Timestamp>,
}

/// `POST /v1/transfers`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct TransferRequest {
    /// The debited account.
    pub from: Uuid,
    /// The credited account (not `from`).
    pub to: Uuid,
    /// Minor units (cents), 1 ..= 10^15.
    #[schema(value_type = i64, minimum = 1, maximum = 1_000_000_000_000_000_i64, example = 1000)]
    pub amount: Amount,
    /// The currency of both accounts.
    #[schema(value_type = String, pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: Currency,
    /// Free text, 1–1024 bytes.
    #[schema(value_type = Option<String>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<Text>,
    /// The client's metadata, returned as sent (the rules of `OpenAccountRequest.metadata`).
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Business time (RFC 3339): at most `LEDGER_BACKDATE_MAX_S` (default 30 days) in
    /// the past and 60 s in the future; default: when it is recorded.
    #[schema(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_at: Option<Timestamp>,
}

/// `POST /v1/transfers/{id}/reverse`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct ReverseRequest {
    /// Why the transfer is reversed (1–1024 bytes); recorded on the reversing transfer.
    #[schema(value_type = String)]
    pub reason: Text,
}

/// `POST /v1/withdrawals`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct WithdrawalRequest {
    pub account_id: Uuid,
    /// Minor units (cents), 1 ..= 10^15.
    #[schema(value_type = i64, minimum = 1, maximum = 1_000_000_000_000_000_i64, example = 700)]
    pub amount: Amount,
    #[schema(value_type = String, pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: Currency,
    /// Where the provider pays out to (1–1024 bytes), e.g. an IBAN.
    #[schema(value_type = String, example = "NL00BANK0001")]
    pub destination: Text,
    /// The client's metadata, returned as sent (the rules of `OpenAccountRequest.metadata`).
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

/// `POST /v1/admin/tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct TokenRequest {
    /// 1–64 characters of `[A-Za-z0-9_.-]`; each name is issued once.
    #[schema(value_type = String, pattern = "^[A-Za-z0-9_.-]{1,64}$", example = "checkout-service")]
    pub name: TokenName,
    pub role: Role,
    /// The ledgers the token may use (each must exist); absent: every ledger.
    #[schema(value_type = Option<Vec<String>>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledgers: Option<Vec<LedgerName>>,
}

/// `POST /v1/admin/ledgers`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct LedgerRequest {
    /// 1–63 characters of `[a-z0-9-]`, starting with a letter.
    #[schema(value_type = String, pattern = "^[a-z][a-z0-9-]{0,62}$", example = "acme")]
    pub name: LedgerName,
    /// The shard (a name of `LEDGER_SHARDS`); default: the one with the fewest ledgers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// The client's metadata, returned as sent (the rules of `OpenAccountRequest.metadata`).
    #[schema(value_type = Option<Object>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

/// `POST /v1/admin/reconciliations`: the window to compare (default: the 24 hours
/// before `to`, which defaults to now); `from` must be before `to`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct ReconciliationRequest {
    #[schema(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Timestamp>,
    #[schema(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Timestamp>,
}

/// `POST /v1/transactions`: 1–100 postings recorded as one event at one position,
/// checked as a whole.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct TransactionRequest {
    /// The transaction's id; the server generates a v7 UUID when absent. An id that
    /// exists is 409 `version_conflict`; a version-8 UUID is 422 `validation_error`.
    #[schema(value_type = Option<Uuid>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<NewId>,
    /// 1–100 postings, applied in order; different postings may use different currencies.
    #[schema(value_type = Vec<PostingRequest>, min_items = 1, max_items = 100)]
    pub postings: Postings,
    /// Free text, 1–1024 bytes.
    #[schema(value_type = Option<String>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<Text>,
    /// The client's metadata, returned as sent (the rules of `OpenAccountRequest.metadata`).
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Business time (RFC 3339): at most `LEDGER_BACKDATE_MAX_S` (default 30 days) in
    /// the past and 60 s in the future; default: when it is recorded.
    #[schema(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_at: Option<Timestamp>,
    /// Checked against the state before the transaction: a different version is 409
    /// `version_conflict`; less available than asked is 422 `condition_failed`. At most 100.
    #[schema(value_type = Option<Vec<ConditionRequest>>, max_items = 100)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditions: Option<crate::fields::Conditions>,
}

/// One posting: `amount` of `currency` from `from` to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct PostingRequest {
    pub from: Uuid,
    pub to: Uuid,
    /// Minor units (cents), 1 ..= 10^15.
    #[schema(value_type = i64, minimum = 1, maximum = 1_000_000_000_000_000_i64, example = 1000)]
    pub amount: Amount,
    /// The currency of both accounts.
    #[schema(value_type = String, pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: Currency,
}

/// What must hold of an account before the transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct ConditionRequest {
    pub account_id: Uuid,
    /// The account's `version` (its number of events).
    #[schema(minimum = 0)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u32>,
    /// Minor units the account's `available` must at least be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_at_least: Option<i64>,
}

/// `POST /v1/holds`: reserve `amount` of `account_id` for `to`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct HoldRequest {
    /// The hold's id; the server generates a v7 UUID when absent (an id that exists is
    /// 409 `version_conflict`).
    #[schema(value_type = Option<Uuid>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<NewId>,
    pub account_id: Uuid,
    /// Who receives what is captured.
    pub to: Uuid,
    /// Minor units (cents), 1 ..= 10^15.
    #[schema(value_type = i64, minimum = 1, maximum = 1_000_000_000_000_000_i64, example = 1000)]
    pub amount: Amount,
    #[schema(value_type = String, pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: Currency,
    /// When the hold expires (RFC 3339, in the future); none: it waits for a capture or a void.
    #[schema(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    #[schema(value_type = Option<String>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<Text>,
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

/// `POST /v1/holds/{id}/capture`: all of the hold unless `amount` says less.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct CaptureRequest {
    /// At most the held amount; the rest is released.
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<Amount>,
    /// Business time of the capture (the backdating window applies).
    #[schema(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_at: Option<Timestamp>,
}

/// `POST /v1/bulk`: 1–1,000 command requests in one (body at most 4 MiB).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct BulkRequest {
    /// `false` (default): each item runs as if sent alone. `true`: every item commits
    /// in one database transaction, or none does and nothing is stored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub atomic: bool,
    #[schema(min_items = 1, max_items = 1000)]
    pub items: Vec<BulkItem>,
}

/// One command of a bulk: a command route of this contract (POST under /v1, outside
/// /v1/admin and /v1/bulk) with its own idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct BulkItem {
    #[schema(example = "POST")]
    pub method: String,
    #[schema(example = "/v1/transactions")]
    pub path: String,
    /// Scoped to the caller like an `Idempotency-Key` header: 1–255 printable ASCII.
    pub idempotency_key: String,
    /// The route's request body (default `{}`).
    #[schema(value_type = Option<Object>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
}

/// The `type` of an event, as `GET /v1/events` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, ToSchema)]
pub enum EventType {
    AccountOpened,
    AccountClosed,
    DepositRecorded,
    TransferPosted,
    TransactionPosted,
    HoldPlaced,
    HoldCaptured,
    HoldVoided,
    HoldExpired,
    WithdrawalRequested,
    WithdrawalSettled,
    WithdrawalFailed,
    PayoutDeadLettered,
    PayoutRedriven,
    TokenIssued,
    LedgerCreated,
    WithdrawalReconciled,
    ReconciliationStarted,
    ReconciliationMismatchFound,
    ReconciliationFinished,
    SubjectErased,
    ChainReanchored,
    PeriodClosed,
}

impl EventType {
    /// The name, as in the log.
    pub fn name(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    }
}

/// `POST /v1/admin/webhooks`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct WebhookRequest {
    /// Where events are POSTed: an `http` or `https` URL (at most 2048 bytes).
    #[schema(example = "https://example.com/ledger-events")]
    pub url: String,
    /// The event types to deliver; absent or `null`: every type. At least one when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_types: Option<Vec<EventType>>,
    #[schema(value_type = Option<String>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Text>,
}

#[cfg(test)]
mod event_type_tests {
    use super::EventType;

    #[test]
    fn the_event_types_are_those_of_the_log() {
        let all: Vec<String> = serde_json::from_str::<Vec<EventType>>(
            &serde_json::to_string(&ledger_domain::EVENT_TYPES).expect("names serialize"),
        )
        .expect("every type of the log is an EventType")
        .into_iter()
        .map(EventType::name)
        .collect();
        assert_eq!(all, ledger_domain::EVENT_TYPES);
        assert!(serde_json::from_str::<EventType>("\"NoSuchEvent\"").is_err());
    }
}

/// `POST /v1/admin/periods` (API.md v1.2 "Verifiable log").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PeriodRequest {
    /// The business time the books close up to: not in the future, and later than the
    /// previous period's.
    #[schema(value_type = chrono::DateTime<chrono::Utc>)]
    pub closes_at: Timestamp,
}

/// `POST /v1/admin/subjects/{subject}/erase`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EraseSubjectRequest {
    /// Why (kept in the `SubjectErased` event, which the chain covers: it must not
    /// hold personal data itself), 1–1024 bytes, no NUL.
    #[schema(value_type = String, example = "erasure request 2026-12-05")]
    pub reason: Text,
}

//! The JSON shapes of the HTTP API as OpenAPI schemas (API.md). Request bodies are the
//! handlers' own types (`crate::requests`, re-exported here). Responses are still built
//! with `serde_json::json!` (`crate::views`), so the response types below exist only to
//! describe them in `GET /openapi.json`; nothing constructs them yet (issue 14).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// An RFC 9457 problem document (`application/problem+json`): every error answer.
#[derive(Serialize, ToSchema)]
pub struct Problem {
    /// `urn:ledger:problem:<code>`.
    #[serde(rename = "type")]
    #[schema(example = "urn:ledger:problem:insufficient_funds")]
    pub problem_type: String,
    /// The HTTP reason phrase of `status`.
    #[schema(example = "Unprocessable Entity")]
    pub title: String,
    /// The HTTP status code.
    #[schema(example = 422, minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong, for humans; 5xx details say nothing internal.
    pub detail: String,
    pub code: ErrorCode,
}

pub use crate::error::ErrorCode;

// ---- Commands: request bodies ----

// The request bodies are the handlers' own types.
pub use crate::requests::{
    DepositRequest, EmptyRequest, OpenAccountRequest, ReconciliationRequest, ReverseRequest, Role, TokenRequest,
    TransferRequest, WithdrawalRequest,
};

// ---- Commands and queries: response bodies ----

/// An account. Amounts are minor units; `available` = `balance` − `pending_holds`.
#[derive(Serialize, ToSchema)]
pub struct Account {
    pub id: Uuid,
    #[schema(example = "EUR")]
    pub currency: String,
    #[schema(required = true)]
    pub owner: Option<String>,
    pub status: AccountStatus,
    pub balance: i64,
    pub available: i64,
    pub pending_holds: i64,
    pub overdraft_limit: i64,
    /// A currency's system account (money from or to the outside world); may go negative.
    pub system: bool,
    #[schema(value_type = Option<Object>, required = true)]
    pub metadata: Option<Value>,
    /// The account stream's version (number of its events).
    pub version: i64,
    /// The log position this view reflects (for a command: of its last event).
    pub position: i64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    Open,
    Closed,
}

/// `GET /v1/accounts?owner=`: at most 1000 accounts, ordered by id.
#[derive(Serialize, ToSchema)]
pub struct AccountList {
    pub accounts: Vec<Account>,
}

/// A recorded deposit.
#[derive(Serialize, ToSchema)]
pub struct Deposit {
    pub id: Uuid,
    pub account_id: Uuid,
    pub amount: i64,
    pub currency: String,
    #[schema(required = true)]
    pub reference: Option<String>,
    /// The client's metadata as sent (null when none was).
    #[schema(value_type = Option<Object>, required = true)]
    pub metadata: Option<Value>,
    /// The log position of the deposit's event.
    pub position: i64,
}

/// A transfer. A reversal is a transfer of its own with `reverses` set; the original
/// then has `reversed_by`.
#[derive(Serialize, ToSchema)]
pub struct Transfer {
    pub id: Uuid,
    pub from: Uuid,
    pub to: Uuid,
    pub amount: i64,
    pub currency: String,
    pub status: TransferStatus,
    #[schema(required = true)]
    pub reference: Option<String>,
    /// The transfer this one reverses.
    #[schema(required = true)]
    pub reverses: Option<Uuid>,
    /// The reason given for a reversal.
    #[schema(required = true)]
    pub reason: Option<String>,
    /// The transfer that reversed this one.
    #[schema(required = true)]
    pub reversed_by: Option<Uuid>,
    /// The client's metadata as sent (null when none was).
    #[schema(value_type = Option<Object>, required = true)]
    pub metadata: Option<Value>,
    /// In command responses only: the log position of the transfer's event.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub position: Option<i64>,
}

/// Transfers complete at once.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransferStatus {
    Completed,
}

/// A withdrawal: `pending` (funds held, payout queued) → `settled` | `failed`.
#[derive(Serialize, ToSchema)]
pub struct Withdrawal {
    pub id: Uuid,
    pub account_id: Uuid,
    pub amount: i64,
    pub currency: String,
    pub destination: String,
    pub status: WithdrawalStatus,
    /// The provider's reference, once it has one.
    #[schema(required = true)]
    pub provider_ref: Option<String>,
    #[schema(required = true)]
    pub failure_reason: Option<String>,
    /// The client's metadata as sent (null when none was).
    #[schema(value_type = Option<Object>, required = true)]
    pub metadata: Option<Value>,
    /// In command responses only: the log position of the withdrawal's event.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub position: Option<i64>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WithdrawalStatus {
    Pending,
    Settled,
    Failed,
}

/// `GET /v1/accounts/{id}/transactions`: one page of the statement, newest first.
#[derive(Serialize, ToSchema)]
pub struct TransactionsPage {
    pub entries: Vec<Entry>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    #[schema(required = true, example = "41")]
    pub next_cursor: Option<String>,
}

/// One line of an account's statement.
#[derive(Serialize, ToSchema)]
pub struct Entry {
    pub position: i64,
    pub kind: EntryKind,
    /// The movement: the deposit, transfer, reversal or withdrawal id.
    pub transfer_id: Uuid,
    /// Signed from this account's view: credits positive, debits negative.
    pub amount: i64,
    pub balance_after: i64,
    /// The other side of the movement (a system account for deposits and withdrawals).
    pub counterparty: Uuid,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Deposit,
    Transfer,
    Reversal,
    Withdrawal,
    Reconciliation,
    Other,
}

/// `GET /v1/accounts/{id}/balance`: the account as it was, folded from the log.
#[derive(Serialize, ToSchema)]
pub struct HistoricalBalance {
    pub id: Uuid,
    pub balance: i64,
    pub available: i64,
    pub pending_holds: i64,
    /// The stream's version at that point.
    pub version: i64,
    /// The log position the balance was computed at.
    pub as_of_position: i64,
}

/// An event as it is in the log.
#[derive(Serialize, ToSchema)]
pub struct RecordedEvent {
    /// Global, gapless, in commit order.
    pub position: i64,
    pub event_id: Uuid,
    pub stream_id: Uuid,
    /// The event's version within its stream.
    pub version: i64,
    /// The event type, e.g. `TransferPosted`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The event's fields (depend on `type`).
    #[schema(value_type = Object)]
    pub data: Value,
    pub metadata: EventMetadata,
    pub recorded_at: DateTime<Utc>,
}

/// Who caused an event, and why.
#[derive(Serialize, ToSchema)]
pub struct EventMetadata {
    /// Who issued the command: `token:<name>` for an issued token,
    /// `env:LEDGER_ADMIN_TOKEN` for the bootstrap token, or a worker of the service
    /// (`payout-worker`, `cli`, …: names without a colon, which no token can take).
    pub actor: String,
    pub request_id: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub idempotency_key: Option<String>,
}

/// `GET /v1/accounts/{id}/events`: the account's own stream in version order.
#[derive(Serialize, ToSchema)]
pub struct StreamEventsPage {
    pub events: Vec<RecordedEvent>,
    /// Pass as `from_version` for the next page; null when the page is empty.
    #[schema(required = true)]
    pub next_from_version: Option<i64>,
}

/// `GET /v1/events`: the global log in position order.
#[derive(Serialize, ToSchema)]
pub struct EventsPage {
    pub events: Vec<RecordedEvent>,
    /// Pass as `after` for the next page (the last position returned, or `after` itself).
    pub next_after: i64,
}

/// `GET /v1/system-accounts`.
#[derive(Serialize, ToSchema)]
pub struct SystemAccounts {
    pub accounts: Vec<SystemAccount>,
}

/// The system account of one currency.
#[derive(Serialize, ToSchema)]
pub struct SystemAccount {
    #[schema(example = "EUR")]
    pub currency: String,
    pub id: Uuid,
}

// ---- Audit ----

/// `GET /v1/audit`: events with who/why metadata, in position order.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// An event with its metadata spelled out.
#[derive(Serialize, ToSchema)]
pub struct AuditEvent {
    pub position: i64,
    pub event_id: Uuid,
    /// The event's primary stream; with the `stream_id` filter, the filtered stream.
    pub stream_id: Uuid,
    /// The event's version in `stream_id`.
    pub version: i64,
    /// Every stream the event belongs to (a transfer: itself and both accounts), the
    /// primary one first.
    pub streams: Vec<Uuid>,
    #[serde(rename = "type")]
    pub event_type: String,
    #[schema(value_type = Object)]
    pub data: Value,
    pub recorded_at: DateTime<Utc>,
    #[schema(required = true)]
    pub actor: Option<String>,
    #[schema(required = true)]
    pub request_id: Option<String>,
    #[schema(required = true)]
    pub correlation_id: Option<String>,
    #[schema(required = true)]
    pub causation_id: Option<String>,
    #[schema(required = true)]
    pub idempotency_key: Option<String>,
}

/// `GET /v1/audit/verify`: `{"ok":true,"checked":N,"head":"<hex>"}` or
/// `{"ok":false,"checked":N,"first_bad_position":P}`.
#[derive(Serialize, ToSchema)]
pub struct ChainReport {
    pub ok: bool,
    /// Events checked.
    pub checked: i64,
    /// Hex sha256 of the last event (when ok).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub head: Option<String>,
    /// The first position whose hash does not match its content and predecessor (when not ok).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub first_bad_position: Option<i64>,
}

// ---- Operations ----

/// `GET /v1/admin/projections`.
#[derive(Serialize, ToSchema)]
pub struct Projections {
    /// The log's head position.
    pub head: i64,
    pub projections: Vec<ProjectionStatus>,
    pub account_cache: CacheStats,
}

/// One read model's progress.
#[derive(Serialize, ToSchema)]
pub struct ProjectionStatus {
    pub name: ProjectionName,
    /// The last log position it applied.
    pub position: i64,
    pub lag_events: i64,
    pub status: ProjectionState,
    pub updated_at: DateTime<Utc>,
    /// Progress of a running blue-green rebuild.
    #[schema(required = true)]
    pub rebuild: Option<RebuildProgress>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionName {
    Accounts,
    Transfers,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionState {
    Running,
    Rebuilding,
    CatchingUp,
    Stopped,
}

#[derive(Serialize, ToSchema)]
pub struct RebuildProgress {
    pub position: i64,
    pub target: Option<i64>,
}

/// This process's account cache.
#[derive(Serialize, ToSchema)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
}

/// `POST /v1/admin/projections/{name}/rebuild`: the rebuild runs in the background.
#[derive(Serialize, ToSchema)]
pub struct RebuildStarted {
    pub name: ProjectionName,
    #[schema(example = "rebuilding")]
    pub status: String,
}

/// `GET /v1/admin/circuit-breakers`.
#[derive(Serialize, ToSchema)]
pub struct Breakers {
    pub breakers: Vec<Breaker>,
}

#[derive(Serialize, ToSchema)]
pub struct Breaker {
    #[schema(example = "payment-provider")]
    pub name: String,
    pub state: BreakerState,
    /// Failures within the breaker's window.
    pub failures: u32,
    #[schema(required = true)]
    pub opened_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// `GET /v1/admin/dead-letters`: the open ones, oldest first.
#[derive(Serialize, ToSchema)]
pub struct DeadLetters {
    pub dead_letters: Vec<DeadLetter>,
}

/// A payout that exhausted its retries; its withdrawal stays `pending`.
#[derive(Serialize, ToSchema)]
pub struct DeadLetter {
    pub id: Uuid,
    #[schema(example = "payout")]
    pub source: String,
    pub withdrawal_id: Uuid,
    /// The log position of the event that asked for the payout.
    pub event_position: i64,
    pub attempts: i32,
    pub last_error: String,
    pub dead_lettered_at: DateTime<Utc>,
}

/// `POST /v1/admin/dead-letters/{id}/redrive` and `/discard`.
#[derive(Serialize, ToSchema)]
pub struct DeadLetterResolution {
    pub id: Uuid,
    pub withdrawal_id: Uuid,
    pub status: DeadLetterOutcome,
    pub position: i64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterOutcome {
    Redriven,
    Discarded,
}

/// `POST /v1/admin/tokens`.
#[derive(Serialize, ToSchema)]
pub struct TokenCreated {
    /// The token's stream id (derived from its name).
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    /// The secret: in the first response only (stored hashed). A replay for the same
    /// Idempotency-Key answers `null`.
    #[schema(required = true)]
    pub token: Option<String>,
}

/// `POST /v1/admin/reconciliations`: the run goes on in the background.
#[derive(Serialize, ToSchema)]
pub struct ReconciliationStarted {
    pub id: Uuid,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// `GET /v1/admin/reconciliations/{id}`.
#[derive(Serialize, ToSchema)]
pub struct ReconciliationReport {
    pub id: Uuid,
    pub status: ReconciliationStatus,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Provider records that matched the ledger.
    pub matched: i64,
    pub started_position: i64,
    pub mismatches: Vec<Mismatch>,
    /// Once finished: why a `failed` run failed (null when it did not).
    pub error: Option<String>,
    /// Once finished: the log position of its last event.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub finished_position: Option<i64>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReconciliationStatus {
    Running,
    Finished,
    Failed,
}

/// A difference between the provider's statement and the ledger, and what was done.
#[derive(Serialize, ToSchema)]
pub struct Mismatch {
    pub kind: MismatchKind,
    #[schema(required = true)]
    pub withdrawal_id: Option<Uuid>,
    /// The payout reference sent to the provider.
    pub reference: String,
    #[schema(required = true)]
    pub provider_ref: Option<String>,
    /// The ledger's side: `{"status","amount"}`.
    #[schema(value_type = Option<Object>, required = true)]
    pub ours: Option<Value>,
    /// The provider's side: `{"status","amount","currency","provider_ref"}`; for a line
    /// that could not be read, `{"unreadable","provider_ref","line"}`; for a duplicated
    /// reference, `{"lines","lines_total"}`.
    #[schema(value_type = Option<Object>, required = true)]
    pub theirs: Option<Value>,
    pub resolution: Resolution,
    /// The log position of the correcting event (null when only flagged).
    #[schema(required = true)]
    pub resolution_position: Option<i64>,
    /// The correction left the account below its overdraft limit (reported, not refused).
    pub account_below_limit: bool,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MismatchKind {
    UnknownReference,
    MissingAtProvider,
    AmountMismatch,
    SettledAtProvider,
    RejectedAtProvider,
    /// The statement lists the reference more than once: never corrected automatically.
    DuplicateReference,
    /// The line's currency is not the withdrawal's: never corrected automatically.
    CurrencyMismatch,
    /// The line's amount is not an integer in 1 ..= 10^15: never corrected automatically.
    InvalidAmount,
    /// A field is missing or garbled: never corrected automatically.
    MalformedLine,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    Flagged,
    Adjusted,
    Settled,
    CreditedBack,
    Failed,
}

// ---- Infrastructure ----

/// `GET /health/live`.
#[derive(Serialize, ToSchema)]
pub struct Live {
    #[schema(example = "live")]
    pub status: String,
}

/// `GET /health/ready`.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    pub status: ReadyStatus,
    pub dependencies: Dependencies,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadyStatus {
    Ready,
    NotReady,
}

/// Each dependency's state.
#[derive(Serialize, ToSchema)]
pub struct Dependencies {
    pub postgres: DependencyState,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DependencyState {
    Up,
    Down,
}

// ---- Query parameters ----

/// How a read wants to see the ledger (API.md "Consistency").
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// From the read model (and cache); may lag.
    Eventual,
    /// From the write side: reflects every command acknowledged before the request.
    Strong,
}

/// Read consistency of read-model queries.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsistencyQuery {
    /// `eventual` (default) answers from the read model and may lag; `strong` reflects
    /// every command acknowledged before the request.
    #[param(inline)]
    pub consistency: Option<Consistency>,
    /// Wait until the read model has applied this log position (at most
    /// `LEDGER_CONSISTENCY_WAIT_MS`, else 503 `consistency_timeout`).
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

/// `GET /v1/accounts`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OwnerQuery {
    /// The owner to look up (required, non-empty).
    #[param(min_length = 1, example = "alice@example.com")]
    pub owner: String,
}

/// `GET /v1/accounts/{id}/transactions`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TransactionsQuery {
    /// Page size, 1–1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /v1/accounts/{id}/events`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamEventsQuery {
    /// The first version to return (default 1).
    #[param(minimum = 0)]
    pub from_version: Option<i64>,
    /// Page size, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// `GET /v1/accounts/{id}/balance`: exactly one of the two.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BalanceQuery {
    /// A time (RFC 3339): the balance after every event recorded up to then.
    pub as_of: Option<DateTime<Utc>>,
    /// A log position, at most the head.
    #[param(minimum = 0)]
    pub at_position: Option<i64>,
}

/// `GET /v1/events`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Return events after this position (default 0).
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// Page size, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// `GET /v1/audit`: all filters are optional and combine with "and".
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// The token name that caused the event.
    pub actor: Option<String>,
    pub correlation_id: Option<String>,
    pub stream_id: Option<Uuid>,
    /// Recorded at or after (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Recorded before (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// Page size, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

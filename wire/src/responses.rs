//! The response bodies of the API: one type per answer, built by the server's
//! handlers, read by the client, and the schemas of the OpenAPI document. Error
//! answers are [`crate::Problem`].

use chrono::{DateTime, Utc};
use ledger_domain::{HoldStatus, MismatchKind, Resolution, Role};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

// ---- Commands and queries: response bodies ----

/// An account. Amounts are minor units; `available` = `balance` − `pending_holds`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Account {
    pub id: Uuid,
    #[schema(example = "EUR")]
    pub currency: String,
    /// Personal data: `null` once the subject is erased.
    #[schema(required = true)]
    pub owner: Option<String>,
    /// The person or company the account belongs to (its id if none was given).
    /// (Absent from servers before v1.2: a client reads it as empty.)
    #[serde(default)]
    pub subject: String,
    /// The subject was erased: `owner` and the `pii.` metadata are gone.
    #[serde(default)]
    pub erased: bool,
    pub status: AccountStatus,
    /// A customer account's balance fits in 64 bits; a system account's (the negative
    /// sum of its currency's customers) may not: read it as an arbitrary-size integer.
    #[schema(value_type = i128)]
    pub balance: i128,
    #[schema(value_type = i128)]
    pub available: i128,
    #[schema(value_type = i128)]
    pub pending_holds: i128,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    Open,
    Closed,
}

/// A subject's erasure (`POST /v1/admin/subjects/{subject}/erase`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SubjectErasure {
    pub subject: String,
    /// The accounts whose personal data it erased.
    pub accounts: Vec<Uuid>,
    pub erased_at: chrono::DateTime<chrono::Utc>,
    /// The log position of its `SubjectErased` event.
    pub position: i64,
}

/// `GET /v1/accounts?owner=`: at most 1000 accounts, ordered by id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccountList {
    pub accounts: Vec<Account>,
}

/// A recorded deposit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
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
    /// Business time: as given, else when it was recorded.
    pub effective_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    /// The log position of the deposit's event.
    pub position: i64,
}

/// A transfer. A reversal is a transfer of its own with `reverses` set; the original
/// then has `reversed_by`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
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
    /// Business time: as given, else when it was recorded.
    pub effective_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    /// In command responses only: the log position of the transfer's event.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub position: Option<i64>,
}

/// Transfers complete at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransferStatus {
    Completed,
}

/// A withdrawal: `pending` (funds held, payout queued) → `settled` | `failed`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WithdrawalStatus {
    Pending,
    Settled,
    Failed,
}

/// `GET /v1/accounts/{id}/transactions`: one page of the statement, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TransactionsPage {
    pub entries: Vec<Entry>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    #[schema(required = true, example = "41")]
    pub next_cursor: Option<String>,
}

/// One line of an account's statement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Entry {
    pub position: i64,
    pub kind: EntryKind,
    /// The movement: the deposit, transfer, transaction, reversal or withdrawal id.
    pub transfer_id: Uuid,
    /// Signed from this account's view (credits positive, debits negative); for a
    /// transaction, the account's net over all its postings.
    pub amount: i64,
    /// Past 64 bits only for a system account.
    #[schema(value_type = i128)]
    pub balance_after: i128,
    /// The other side of the movement (a system account for deposits and withdrawals);
    /// null for a transaction whose postings to this account have several.
    #[schema(required = true)]
    pub counterparty: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
    /// Business time: as given, else when it was recorded.
    pub effective_at: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Deposit,
    Transfer,
    Transaction,
    Capture,
    Reversal,
    Withdrawal,
    Reconciliation,
    Other,
}

/// `GET /v1/accounts/{id}/balance`: the account as it was, folded from the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoricalBalance {
    pub id: Uuid,
    /// Past 64 bits only for a system account.
    #[schema(value_type = i128)]
    pub balance: i128,
    #[schema(value_type = i128)]
    pub available: i128,
    #[schema(value_type = i128)]
    pub pending_holds: i128,
    /// The stream's version at that point.
    pub version: i64,
    /// The log position the balance was computed at.
    pub as_of_position: i64,
    /// With `effective_at`: the business time the balance is at (postings effective
    /// at or before it).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub effective_at: Option<DateTime<Utc>>,
}

/// A transaction: 1–100 postings recorded as one event. A transfer is a one-posting
/// transaction with the same id; a reversal is one with every posting swapped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Transaction {
    pub id: Uuid,
    pub postings: Vec<Posting>,
    #[schema(required = true)]
    pub reference: Option<String>,
    /// The client's metadata as sent (null when none was).
    #[schema(value_type = Option<Object>, required = true)]
    pub metadata: Option<Value>,
    /// Business time: as given, else when it was recorded.
    pub effective_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub status: TransferStatus,
    /// The transaction this one reverses.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reverses: Option<Uuid>,
    /// The transaction that reversed this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reversed_by: Option<Uuid>,
    /// The log position of its event.
    pub position: i64,
}

/// One posting of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Posting {
    pub from: Uuid,
    pub to: Uuid,
    pub amount: i64,
    #[schema(example = "EUR")]
    pub currency: String,
}

/// `GET /v1/transactions`: newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TransactionList {
    pub transactions: Vec<Transaction>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// An event as it is in the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
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
    /// Its hash-chain value, 64 hex characters: leaf `position − 1` of the ledger's
    /// Merkle tree is SHA-256(0x00 ‖ these 32 bytes) (API.md v1.2 "Verifiable log").
    #[serde(default)]
    pub hash: String,
}

/// Who caused an event, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StreamEventsPage {
    pub events: Vec<RecordedEvent>,
    /// Pass as `from_version` for the next page; null when the page is empty.
    #[schema(required = true)]
    pub next_from_version: Option<i64>,
}

/// `GET /v1/events`: the global log in position order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventsPage {
    pub events: Vec<RecordedEvent>,
    /// Pass as `after` for the next page (the last position returned, or `after` itself).
    pub next_after: i64,
}

/// `GET /v1/system-accounts`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SystemAccounts {
    pub accounts: Vec<SystemAccount>,
}

/// The system account of one currency.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SystemAccount {
    #[schema(example = "EUR")]
    pub currency: String,
    pub id: Uuid,
}

// ---- Audit ----

/// `GET /v1/audit`: events with who/why metadata, in position order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// An event with its metadata spelled out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
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
    /// Its hash-chain value, 64 hex characters (see `RecordedEvent.hash`).
    #[serde(default)]
    pub hash: String,
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Projections {
    /// The log's head position.
    pub head: i64,
    pub projections: Vec<ProjectionStatus>,
    pub account_cache: CacheStats,
}

/// One read model's progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionName {
    Accounts,
    Transfers,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionState {
    Running,
    Rebuilding,
    CatchingUp,
    Stopped,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RebuildProgress {
    pub position: i64,
    pub target: Option<i64>,
}

/// This process's account cache.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
}

/// `POST /v1/admin/projections/{name}/rebuild`: the rebuild runs in the background.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RebuildStarted {
    pub name: ProjectionName,
    #[schema(example = "rebuilding")]
    pub status: String,
}

/// `GET /v1/admin/circuit-breakers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Breakers {
    pub breakers: Vec<Breaker>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Breaker {
    #[schema(example = "payment-provider")]
    pub name: String,
    pub state: BreakerState,
    /// Failures within the breaker's window.
    pub failures: u32,
    #[schema(required = true)]
    pub opened_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// `GET /v1/admin/dead-letters`: the open ones, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetters {
    pub dead_letters: Vec<DeadLetter>,
}

/// A payout that exhausted its retries; its withdrawal stays `pending`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetter {
    pub id: Uuid,
    #[schema(example = "payout")]
    pub source: String,
    /// The withdrawal of a payout's dead letter; `null` for a webhook's.
    #[schema(required = true)]
    pub withdrawal_id: Option<Uuid>,
    /// The log position of the event that asked for the payout, or that the webhook
    /// could not deliver.
    pub event_position: i64,
    pub attempts: i32,
    pub last_error: String,
    pub dead_lettered_at: DateTime<Utc>,
}

/// `POST /v1/admin/dead-letters/{id}/redrive` and `/discard`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterResolution {
    pub id: Uuid,
    /// `null` for a webhook's dead letter.
    #[schema(required = true)]
    pub withdrawal_id: Option<Uuid>,
    pub status: DeadLetterOutcome,
    pub position: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterOutcome {
    Redriven,
    Discarded,
}

/// `POST /v1/admin/tokens`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
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

/// A ledger of the directory (`POST /v1/admin/ledgers` answers it without `head`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LedgerView {
    pub name: String,
    pub shard: String,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The position of its last event; `null` while its shard does not answer. Only in
    /// the list and in `GET /v1/admin/ledgers/{ledger}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<Option<i64>>,
}

/// `GET /v1/admin/ledgers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Ledgers {
    pub ledgers: Vec<LedgerView>,
}

/// `POST /v1/admin/reconciliations`: the run goes on in the background.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReconciliationStarted {
    pub id: Uuid,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// `GET /v1/admin/reconciliations/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReconciliationReport {
    pub id: Uuid,
    pub status: ReconciliationStatus,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Provider records that matched the ledger.
    pub matched: u64,
    pub started_position: i64,
    pub mismatches: Vec<Mismatch>,
    /// Once finished: why a `failed` run failed (null when it did not).
    pub error: Option<String>,
    /// Once finished: the log position of its last event.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub finished_position: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReconciliationStatus {
    Running,
    Finished,
    Failed,
}

/// A difference between the provider's statement and the ledger, and what was done.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
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

// ---- Infrastructure ----

/// `GET /health/live`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Live {
    #[schema(example = "live")]
    pub status: String,
}

/// `GET /health/ready`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    pub status: ReadyStatus,
    pub dependencies: Dependencies,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadyStatus {
    Ready,
    NotReady,
}

/// Each dependency's state. Only Postgres decides readiness: without NATS commands and
/// strong reads still work (projections lag); without the provider payouts wait behind
/// its breaker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Dependencies {
    pub postgres: DependencyState,
    pub nats: NatsState,
    pub provider_breaker: BreakerState,
    pub relay_breaker: BreakerState,
    pub postgres_breaker: BreakerState,
    /// The read replica (`DATABASE_READ_URL`), when one is configured; it does not
    /// decide readiness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_replica: Option<DependencyState>,
}

/// This process's connection to NATS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NatsState {
    Up,
    Connecting,
    Down,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DependencyState {
    Up,
    Down,
}

/// A hold: funds of `account_id` reserved for `to` (`available` drops by `amount`,
/// `balance` does not) until captured, voided or expired.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Hold {
    pub id: Uuid,
    pub account_id: Uuid,
    pub to: Uuid,
    pub amount: i64,
    #[schema(example = "EUR")]
    pub currency: String,
    pub status: HoldStatus,
    /// What a capture moved (null unless captured).
    #[schema(required = true)]
    pub captured_amount: Option<i64>,
    #[schema(required = true)]
    pub expires_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    pub reference: Option<String>,
    #[schema(value_type = Option<Object>, required = true)]
    pub metadata: Option<Value>,
    /// The log position of the hold's last event.
    pub position: i64,
}

/// `POST /v1/bulk`: one result per item, in item order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BulkResponse {
    pub results: Vec<BulkResult>,
}

/// What one item's route answered: its status and body (a view, or a problem
/// document), and whether it was the stored answer of an earlier request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BulkResult {
    pub status: u16,
    #[schema(value_type = Object)]
    pub body: Value,
    pub replayed: bool,
}

/// `POST /v1/admin/webhooks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookCreated {
    pub id: Uuid,
    pub url: String,
    /// `null`: every type.
    #[schema(required = true)]
    pub event_types: Option<Vec<crate::EventType>>,
    #[schema(example = "active")]
    pub status: String,
    /// The HMAC-SHA256 key of `Ledger-Signature` (its UTF-8 bytes): in this response
    /// and its replay for the same Idempotency-Key only; never listed.
    #[schema(required = true)]
    pub secret: Option<String>,
}

/// A webhook, as `GET /v1/admin/webhooks` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    #[schema(required = true)]
    pub event_types: Option<Vec<crate::EventType>>,
    #[schema(example = "active")]
    pub status: String,
    /// Every matching event up to this log position was delivered or dead-lettered.
    pub delivered_position: i64,
    /// Failed attempts at the next event so far.
    pub failures: i32,
    /// The webhook's circuit breaker (`webhook:<id>` in `/v1/admin/circuit-breakers`).
    pub breaker: BreakerState,
}

/// `GET /v1/admin/webhooks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Webhooks {
    pub webhooks: Vec<Webhook>,
}

/// `GET /v1/admin/reconciliations`: the latest runs, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReconciliationList {
    pub reconciliations: Vec<ReconciliationReport>,
}

/// `GET /v1/audit/tree-head`: a signed head of the ledger's Merkle tree (API.md v1.2
/// "Verifiable log"). `signature` is base64 of the Ed25519 signature over the UTF-8
/// bytes of `ledger-tree-head:v1\n{ledger}\n{tree_size}\n{root_hash}\n{timestamp}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TreeHead {
    pub ledger: String,
    pub tree_size: i64,
    /// Lowercase hex, 64 characters.
    pub root_hash: String,
    /// When the event at `tree_size` was recorded (RFC 3339, microseconds, UTC).
    pub timestamp: String,
    pub key_id: String,
    pub signature: String,
}

/// A closed period (API.md v1.2 "Verifiable log"): `position` is its `PeriodClosed`
/// event's, and `tree_head` is signed over the log up to and including it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PeriodView {
    pub id: Uuid,
    pub closes_at: DateTime<Utc>,
    /// When the close was recorded.
    pub closed_at: DateTime<Utc>,
    pub position: i64,
    pub tree_head: TreeHead,
}

/// `GET /v1/admin/periods`: newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PeriodList {
    pub periods: Vec<PeriodView>,
}

/// An account's balance effective at a period's close.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PeriodBalance {
    pub account_id: Uuid,
    pub currency: String,
    #[schema(value_type = i128)]
    pub balance: i128,
}

/// `GET /v1/admin/periods/{id}/balances`: by account id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PeriodBalances {
    pub balances: Vec<PeriodBalance>,
    pub next_cursor: Option<String>,
}

/// `GET /v1/audit/proofs/inclusion`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InclusionProof {
    pub position: i64,
    pub tree_size: i64,
    /// SHA-256(0x00 ‖ the event's `hash`), hex.
    pub leaf_hash: String,
    pub audit_path: Vec<String>,
}

/// `GET /v1/audit/proofs/consistency`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConsistencyProof {
    pub from_size: i64,
    pub to_size: i64,
    pub proof: Vec<String>,
}

/// A key tree heads are signed with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SigningKeyView {
    /// The first 16 hex characters of SHA-256 of the public key.
    pub key_id: String,
    #[schema(example = "ed25519")]
    pub algorithm: String,
    /// Base64 of the 32-byte public key.
    pub public_key: String,
}

/// `GET /v1/audit/keys`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SigningKeys {
    pub keys: Vec<SigningKeyView>,
}

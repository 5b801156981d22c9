//! Commands and `decide`: every business rule lives here. `decide` sees only the
//! state handed to it (prefetched by the caller), so it is pure and deterministic.
//! This module holds the commands, the rules they can break and the dispatch; the
//! rules of each aggregate are in its own file:
//!
//! - [`accounts`]: opening and closing accounts, deposits, and the checks every
//!   posting makes (usable accounts, funds, no overflow);
//! - [`transfers`]: transfers and their reversal;
//! - [`holds`]: two-phase holds: placed, captured, voided, expired;
//! - [`transactions`]: transactions of many postings, checked as a whole, with
//!   conditions; their reversal;
//! - [`withdrawals`]: withdrawals, their payout's outcome and its dead letter;
//! - tokens and reconciliation runs are decided here; reconciling one payout is
//!   `crate::reconcile`.

mod accounts;
mod holds;
mod transactions;
mod transfers;
mod withdrawals;

pub(crate) use accounts::ensure_no_overflow;
use accounts::{close_account, deposit, open_account};
use holds::{capture_hold, expire_hold, place_hold, void_hold};
use transactions::{post_transaction, reverse_transaction};
use transfers::{reverse, transfer};
use withdrawals::{dead_letter, discard, fail_withdrawal, redrive, request_withdrawal, settle_withdrawal};

use crate::events::*;
use crate::money::{Amount, Currency, Money};
use crate::state::{AccountStatus, Aggregate, Ledger, WithdrawalStatus};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Whether an id belongs to the space the ledger derives its own ids in (UUID
/// version 8: system accounts, token streams). No client may claim one: a command that
/// names a reserved id as a new stream is refused, so a derived id is never taken.
pub fn is_reserved_id(id: Uuid) -> bool {
    id.get_version_num() == 8
}

/// The id of the one system account per currency, through which money enters and
/// leaves the ledger. Derived from the currency so no look-up is needed to find it;
/// it lies in the reserved space ([`is_reserved_id`]).
pub fn system_account_id(currency: Currency) -> Uuid {
    let mut bytes = *b"ledger-system\0\0\0";
    bytes[13..16].copy_from_slice(&currency.bytes());
    Uuid::new_v8(bytes)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenAccount {
    pub account_id: Uuid,
    pub currency: Currency,
    /// Sealed (`pii:v1:…`) by the API before the command reaches the writer.
    pub owner: Option<String>,
    pub overdraft_limit: Money,
    /// Its `pii.` values sealed like `owner`.
    pub metadata: Option<serde_json::Value>,
    /// The subject (API.md v1.2 "Personal data"); the API defaults it to the account's id.
    #[serde(default)]
    pub subject: Option<String>,
}

/// Erase a subject: its key is destroyed, and its readable accounts' personal values
/// with it (API.md v1.2 "Personal data").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EraseSubject {
    pub subject: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MakeDeposit {
    pub deposit_id: Uuid,
    pub account_id: Uuid,
    pub amount: Amount,
    pub currency: Currency,
    pub reference: Option<String>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub effective_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostTransfer {
    pub transfer_id: Uuid,
    pub from: Uuid,
    pub to: Uuid,
    pub amount: Amount,
    pub currency: Currency,
    pub reference: Option<String>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub effective_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The most readable accounts one subject may have: what bounds the subject's state,
/// its snapshots and the one event that erases them all.
pub const SUBJECT_ACCOUNTS_MAX: usize = 1_000;

/// The most postings one transaction may hold (API.md "Transactions").
pub const POSTINGS_MAX: usize = 100;

/// What must hold of an account before a transaction (API.md "conditions").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    pub account_id: Uuid,
    /// The account stream's version (its number of events).
    pub expected_version: Option<i64>,
    pub available_at_least: Option<Money>,
}

/// Post 1..=[`POSTINGS_MAX`] postings as one transaction, checked as a whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostTransaction {
    pub transaction_id: Uuid,
    pub postings: Vec<Leg>,
    pub reference: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub effective_at: Option<chrono::DateTime<chrono::Utc>>,
    pub conditions: Vec<Condition>,
}

/// Reserve `amount` of `account_id` for `to` until captured, voided or `expires_at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceHold {
    pub hold_id: Uuid,
    pub account_id: Uuid,
    pub to: Uuid,
    pub amount: Amount,
    pub currency: Currency,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub reference: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

/// Capture a hold (all of it unless `amount` says less), decided at `now`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureHold {
    pub hold_id: Uuid,
    pub amount: Option<Amount>,
    pub effective_at: Option<chrono::DateTime<chrono::Utc>>,
    pub now: chrono::DateTime<chrono::Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoidHold {
    pub hold_id: Uuid,
}

/// Record a hold's expiry, decided at `now` (the expiry worker's clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpireHold {
    pub hold_id: Uuid,
    pub now: chrono::DateTime<chrono::Utc>,
}

/// Reverse a transaction (or a transfer, which is a one-posting transaction) by a new
/// one with every posting swapped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReverseTransaction {
    pub reversal_id: Uuid,
    pub transaction_id: Uuid,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReverseTransfer {
    pub reversal_id: Uuid,
    pub transfer_id: Uuid,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestWithdrawal {
    pub withdrawal_id: Uuid,
    pub account_id: Uuid,
    pub amount: Amount,
    pub currency: Currency,
    pub destination: String,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettleWithdrawal {
    pub withdrawal_id: Uuid,
    pub provider_ref: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailWithdrawal {
    pub withdrawal_id: Uuid,
    pub reason: String,
}

/// The payout worker gives up on a payout after its attempts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterPayout {
    pub dead_letter_id: Uuid,
    pub withdrawal_id: Uuid,
    pub attempts: u32,
    pub last_error: String,
    pub source_position: i64,
}

/// An operator acts on a dead-lettered payout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveDeadLetter {
    pub dead_letter_id: Uuid,
    pub withdrawal_id: Uuid,
}

/// Issue an API token. The caller derives `token_id` from the name, so a name is
/// issued once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueToken {
    pub token_id: Uuid,
    pub name: String,
    pub role: crate::access::Role,
    pub token_sha256: String,
    /// The ledgers the token may use; `None`: all.
    pub ledgers: Option<Vec<String>>,
}

/// Add a ledger to the directory. The caller derives `ledger_id` from the name, so a
/// name is created once, and has prepared its schema on its shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateLedger {
    pub ledger_id: Uuid,
    pub name: String,
    pub shard: String,
    pub schema: String,
    pub metadata: Option<serde_json::Value>,
}

/// What the provider's record says of one payout: one statement line, or a look-up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderRecord {
    pub provider_ref: String,
    pub settled: bool,
    pub amount: i64,
    /// The line's currency as the provider wrote it (`None` where it does not say).
    #[serde(default)]
    pub currency: Option<String>,
    /// Why the line could not be read as written; `settled` and `amount` then mean nothing.
    #[serde(default)]
    pub defect: Option<crate::reconcile::LineDefect>,
    /// The unreadable line as the provider wrote it, for the person who resolves it.
    #[serde(default)]
    pub line: Option<serde_json::Value>,
}

/// Start a reconciliation run over a window of the provider's statement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartReconciliation {
    pub run_id: Uuid,
    pub from: chrono::DateTime<chrono::Utc>,
    pub to: chrono::DateTime<chrono::Utc>,
}

/// Reconcile one payout with the provider's record of it (`provider: None` when the
/// provider has no record of a payout the ledger settled).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcilePayout {
    pub run_id: Uuid,
    pub reference: String,
    pub withdrawal_id: Option<Uuid>,
    pub provider: Option<ProviderRecord>,
    /// The statement's further lines with the same reference (PROVIDER.md v1.1: never
    /// corrected automatically).
    #[serde(default)]
    pub also_listed: Vec<ProviderRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishReconciliation {
    pub run_id: Uuid,
    pub matched: u64,
    pub mismatches: u64,
    pub error: Option<String>,
}

/// Close the books up to the business time `closes_at` (API.md v1.2 "Verifiable
/// log"): from then on no command may state a business time at or before it. That
/// `closes_at` is not in the future is the append's to check, with the log's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosePeriod {
    pub period_id: Uuid,
    pub closes_at: chrono::DateTime<chrono::Utc>,
}

/// Everything the ledger can be asked to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    OpenAccount(OpenAccount),
    CloseAccount {
        account_id: Uuid,
    },
    MakeDeposit(MakeDeposit),
    PostTransfer(PostTransfer),
    ReverseTransfer(ReverseTransfer),
    PostTransaction(PostTransaction),
    ReverseTransaction(ReverseTransaction),
    PlaceHold(PlaceHold),
    CaptureHold(CaptureHold),
    VoidHold(VoidHold),
    ExpireHold(ExpireHold),
    RequestWithdrawal(RequestWithdrawal),
    SettleWithdrawal(SettleWithdrawal),
    FailWithdrawal(FailWithdrawal),
    DeadLetterPayout(DeadLetterPayout),
    /// Try the payout again.
    RedrivePayout(ResolveDeadLetter),
    /// Give up: the withdrawal fails and its hold is released.
    DiscardPayout(ResolveDeadLetter),
    IssueToken(IssueToken),
    CreateLedger(CreateLedger),
    StartReconciliation(StartReconciliation),
    ReconcilePayout(ReconcilePayout),
    FinishReconciliation(FinishReconciliation),
    EraseSubject(EraseSubject),
    ClosePeriod(ClosePeriod),
}

/// A business rule a command would break. Each maps to one stable API error code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum DomainError {
    #[error("account {account_id} not found")]
    AccountNotFound { account_id: Uuid },
    #[error("transfer {transfer_id} not found")]
    TransferNotFound { transfer_id: Uuid },
    #[error("withdrawal {withdrawal_id} not found")]
    WithdrawalNotFound { withdrawal_id: Uuid },
    #[error("stream {id} already exists")]
    AlreadyExists { id: Uuid },
    #[error("insufficient funds: available {available}, overdraft limit {overdraft_limit}, requested {requested}")]
    InsufficientFunds {
        /// The account that would end below its limit (absent in outcomes stored
        /// before transactions existed).
        #[serde(default)]
        account_id: Option<Uuid>,
        available: Money,
        overdraft_limit: Money,
        requested: Money,
    },
    #[error("transaction {transaction_id} not found")]
    TransactionNotFound { transaction_id: Uuid },
    #[error("a transaction holds 1 to {POSTINGS_MAX} postings, not {count}")]
    PostingsCount { count: usize },
    #[error("account {account_id} is at version {actual}, not the expected {expected}")]
    UnexpectedVersion { account_id: Uuid, expected: i64, actual: i64 },
    #[error("account {account_id} has {available} available, less than the {required} required")]
    ConditionFailed { account_id: Uuid, available: Money, required: Money },
    #[error("hold {hold_id} not found")]
    HoldNotFound { hold_id: Uuid },
    #[error("hold {hold_id} is {status:?}, not pending")]
    HoldNotPending { hold_id: Uuid, status: crate::state::HoldStatus },
    #[error("hold {hold_id} has expired")]
    HoldExpired { hold_id: Uuid },
    #[error("hold {hold_id} holds {held}; {requested} cannot be captured")]
    CaptureExceedsHold { hold_id: Uuid, held: Amount, requested: Amount },
    #[error("hold {hold_id} has not expired yet")]
    HoldNotDue { hold_id: Uuid },
    #[error("currency mismatch: account is {expected}, command is {found}")]
    CurrencyMismatch { expected: Currency, found: Currency },
    #[error("account {account_id} is closed")]
    AccountClosed { account_id: Uuid },
    #[error("source and destination are the same account")]
    SameAccount,
    #[error("account not empty: balance {balance}, pending holds {pending_holds}")]
    AccountNotEmpty { balance: Money, pending_holds: Money },
    #[error("transfer {transfer_id} was already reversed by {reversed_by}")]
    AlreadyReversed { transfer_id: Uuid, reversed_by: Uuid },
    #[error("the balance of account {account_id} would overflow")]
    BalanceOverflow { account_id: Uuid },
    #[error("overdraft limit must be zero or positive, got {0}")]
    NegativeOverdraftLimit(Money),
    #[error("system accounts cannot be used directly")]
    SystemAccount { account_id: Uuid },
    #[error("withdrawal {withdrawal_id} is no longer pending")]
    WithdrawalNotPending { withdrawal_id: Uuid, status: WithdrawalStatus },
    #[error("dead letter {dead_letter_id} is not open")]
    DeadLetterNotOpen { dead_letter_id: Uuid },
    #[error("reconciliation {run_id} has not been started")]
    ReconciliationNotStarted { run_id: Uuid },
    #[error("id {id} is in the space the ledger reserves for its own streams")]
    ReservedId { id: Uuid },
    /// The subject has as many readable accounts as one subject may have.
    #[error("a subject has at most {max} accounts")]
    SubjectAccountsLimit { max: usize },
    /// No account was ever opened for the subject.
    #[error("no account has this subject")]
    SubjectNotFound,
    /// The subject has no readable account left: its last erasure covered `accounts`.
    #[error("the subject was erased already")]
    SubjectAlreadyErased { accounts: Vec<Uuid> },
    /// The command's business time falls in a closed period.
    #[error("the books are closed up to {closed_through}; effective_at {effective_at} is at or before it")]
    PeriodClosed { closed_through: chrono::DateTime<chrono::Utc>, effective_at: chrono::DateTime<chrono::Utc> },
    /// A period must close later than the one before it.
    #[error("closes_at must be later than the previous period's, {previous}")]
    PeriodNotAfter { previous: chrono::DateTime<chrono::Utc> },
}

impl Command {
    /// The streams `decide` needs that `state` has not loaded yet. The caller loads
    /// them and asks again until the list is empty (a reversal needs the original
    /// transfer before it knows which accounts to load).
    pub fn missing_streams(&self, state: &Ledger) -> Vec<Uuid> {
        // Sorted, not searched: a command names at most a few hundred streams, but a
        // quadratic de-duplication would let one request stall the writer.
        let mut missing = self.read_streams(state);
        missing.retain(|id| !state.is_loaded(*id));
        missing.sort_unstable();
        missing.dedup();
        missing
    }

    /// Every stream `decide` reads for this command, given what `state` holds so far (a
    /// reversal names the original transfer's accounts once the transfer is loaded);
    /// possibly with repeats. A stream it reads but does not append to is still part of
    /// the decision: the writer carries its version as an expectation, checked at commit.
    pub fn read_streams(&self, state: &Ledger) -> Vec<Uuid> {
        let mut ids = self.own_read_streams(state);
        if self.effective_at().is_some() {
            ids.push(periods_stream_id());
        }
        ids
    }

    /// The business time the command states, if any: whatever states one must not be
    /// decided into a closed period.
    pub fn effective_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        match self {
            Command::MakeDeposit(c) => c.effective_at,
            Command::PostTransfer(c) => c.effective_at,
            Command::PostTransaction(c) => c.effective_at,
            Command::CaptureHold(c) => c.effective_at,
            _ => None,
        }
    }

    fn own_read_streams(&self, state: &Ledger) -> Vec<Uuid> {
        match self {
            Command::ClosePeriod(_) => vec![periods_stream_id()],
            Command::OpenAccount(c) => {
                let mut ids = vec![c.account_id, system_account_id(c.currency)];
                ids.extend(c.subject.as_deref().map(subject_stream_id));
                ids
            }
            Command::EraseSubject(c) => {
                let mut ids = vec![subject_stream_id(&c.subject)];
                if let Some(s) = state.subject(&c.subject) {
                    ids.extend(s.accounts.iter().copied());
                }
                ids
            }
            Command::CloseAccount { account_id } => vec![*account_id],
            Command::MakeDeposit(c) => vec![c.account_id, system_account_id(c.currency)],
            Command::PostTransfer(c) => vec![c.transfer_id, c.from, c.to],
            Command::PostTransaction(c) => {
                let mut ids = vec![c.transaction_id];
                ids.extend(c.postings.iter().flat_map(|l| [l.from, l.to]));
                ids.extend(c.conditions.iter().map(|c| c.account_id));
                ids
            }
            Command::ReverseTransaction(c) => {
                let mut ids = vec![c.reversal_id, c.transaction_id];
                if let Some(t) = state.transfer(c.transaction_id) {
                    ids.extend([t.from, t.to]);
                }
                if let Some(t) = state.transaction(c.transaction_id) {
                    ids.extend(t.postings.iter().flat_map(|l| [l.from, l.to]));
                }
                ids
            }
            Command::ReverseTransfer(c) => {
                let mut ids = vec![c.reversal_id, c.transfer_id];
                if let Some(t) = state.transfer(c.transfer_id) {
                    ids.extend([t.from, t.to]);
                }
                ids
            }
            Command::RequestWithdrawal(c) => vec![c.withdrawal_id, c.account_id],
            Command::PlaceHold(c) => vec![c.hold_id, c.account_id, c.to],
            Command::CaptureHold(CaptureHold { hold_id, .. })
            | Command::VoidHold(VoidHold { hold_id })
            | Command::ExpireHold(ExpireHold { hold_id, .. }) => {
                let mut ids = vec![*hold_id];
                if let Some(h) = state.hold(*hold_id) {
                    ids.extend([h.account_id, h.to]);
                }
                ids
            }
            Command::IssueToken(c) => vec![c.token_id],
            Command::CreateLedger(c) => vec![c.ledger_id],
            Command::StartReconciliation(c) => vec![c.run_id],
            Command::FinishReconciliation(c) => vec![c.run_id],
            Command::ReconcilePayout(c) => {
                let mut ids = vec![c.run_id];
                if let Some(id) = c.withdrawal_id {
                    ids.push(id);
                    if let Some(w) = state.withdrawal(id) {
                        ids.extend([w.account_id, system_account_id(w.currency)]);
                    }
                }
                ids
            }
            Command::SettleWithdrawal(SettleWithdrawal { withdrawal_id, .. })
            | Command::FailWithdrawal(FailWithdrawal { withdrawal_id, .. })
            | Command::DeadLetterPayout(DeadLetterPayout { withdrawal_id, .. })
            | Command::RedrivePayout(ResolveDeadLetter { withdrawal_id, .. })
            | Command::DiscardPayout(ResolveDeadLetter { withdrawal_id, .. }) => {
                let mut ids = vec![*withdrawal_id];
                if let Some(w) = state.withdrawal(*withdrawal_id) {
                    ids.extend([w.account_id, system_account_id(w.currency)]);
                }
                ids
            }
        }
    }
}

/// Decides what a command records, or which rule it breaks.
pub fn decide(command: &Command, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    if let (Some(effective_at), Some(closed_through)) = (command.effective_at(), state.closed_through())
        && effective_at <= closed_through
    {
        return Err(DomainError::PeriodClosed { closed_through, effective_at });
    }
    match command {
        Command::ClosePeriod(c) => match state.closed_through() {
            Some(previous) if c.closes_at <= previous => Err(DomainError::PeriodNotAfter { previous }),
            _ => Ok(vec![Event::PeriodClosed(PeriodClosed { period_id: c.period_id, closes_at: c.closes_at })]),
        },
        Command::OpenAccount(c) => open_account(c, state),
        Command::CloseAccount { account_id } => close_account(*account_id, state),
        Command::MakeDeposit(c) => deposit(c, state),
        Command::PostTransfer(c) => transfer(c, state),
        Command::ReverseTransfer(c) => reverse(c, state),
        Command::PostTransaction(c) => post_transaction(c, state),
        Command::ReverseTransaction(c) => reverse_transaction(c, state),
        Command::PlaceHold(c) => place_hold(c, state),
        Command::CaptureHold(c) => capture_hold(c, state),
        Command::VoidHold(c) => void_hold(c, state),
        Command::ExpireHold(c) => expire_hold(c, state),
        Command::RequestWithdrawal(c) => request_withdrawal(c, state),
        Command::SettleWithdrawal(c) => settle_withdrawal(c, state),
        Command::FailWithdrawal(c) => fail_withdrawal(c, state),
        Command::DeadLetterPayout(c) => dead_letter(c, state),
        Command::RedrivePayout(c) => redrive(c, state),
        Command::DiscardPayout(c) => discard(c, state),
        Command::StartReconciliation(c) => {
            ensure_new(state, c.run_id)?;
            Ok(vec![Event::ReconciliationStarted(ReconciliationStarted { run_id: c.run_id, from: c.from, to: c.to })])
        }
        Command::ReconcilePayout(c) => crate::reconcile::reconcile(c, state),
        Command::FinishReconciliation(c) => Ok(vec![Event::ReconciliationFinished(ReconciliationFinished {
            run_id: c.run_id,
            matched: c.matched,
            mismatches: c.mismatches,
            error: c.error.clone(),
        })]),
        Command::IssueToken(c) => {
            ensure_new(state, c.token_id)?;
            Ok(vec![Event::TokenIssued(TokenIssued {
                token_id: c.token_id,
                name: c.name.clone(),
                role: c.role,
                token_sha256: c.token_sha256.clone(),
                ledgers: c.ledgers.clone(),
            })])
        }
        Command::EraseSubject(c) => erase_subject(c, state),
        Command::CreateLedger(c) => {
            ensure_new(state, c.ledger_id)?;
            Ok(vec![Event::LedgerCreated(LedgerCreated {
                ledger_id: c.ledger_id,
                name: c.name.clone(),
                shard: c.shard.clone(),
                schema: c.schema.clone(),
                metadata: c.metadata.clone(),
            })])
        }
    }
}

fn erase_subject(c: &EraseSubject, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    let subject = state.subject(&c.subject).ok_or(DomainError::SubjectNotFound)?;
    if subject.accounts.is_empty() {
        return Err(DomainError::SubjectAlreadyErased { accounts: subject.erased.clone() });
    }
    Ok(vec![Event::SubjectErased(SubjectErased {
        subject: c.subject.clone(),
        accounts: subject.accounts.clone(),
        reason: c.reason.clone(),
    })])
}

pub(crate) fn ensure_new(state: &Ledger, id: Uuid) -> Result<(), DomainError> {
    match state.stream(id) {
        Some(s) if s.aggregate != Aggregate::Empty => Err(DomainError::AlreadyExists { id }),
        _ => Ok(()),
    }
}

//! Commands and `decide`: every business rule lives here. `decide` sees only the
//! state handed to it (prefetched by the caller), so it is pure and deterministic.

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
    pub owner: Option<String>,
    pub overdraft_limit: Money,
    pub metadata: Option<serde_json::Value>,
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
    RequestWithdrawal(RequestWithdrawal),
    SettleWithdrawal(SettleWithdrawal),
    FailWithdrawal(FailWithdrawal),
    DeadLetterPayout(DeadLetterPayout),
    /// Try the payout again.
    RedrivePayout(ResolveDeadLetter),
    /// Give up: the withdrawal fails and its hold is released.
    DiscardPayout(ResolveDeadLetter),
    IssueToken(IssueToken),
    StartReconciliation(StartReconciliation),
    ReconcilePayout(ReconcilePayout),
    FinishReconciliation(FinishReconciliation),
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
    InsufficientFunds { available: Money, overdraft_limit: Money, requested: Amount },
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
}

impl Command {
    /// The streams `decide` needs that `state` has not loaded yet. The caller loads
    /// them and asks again until the list is empty (a reversal needs the original
    /// transfer before it knows which accounts to load).
    pub fn missing_streams(&self, state: &Ledger) -> Vec<Uuid> {
        let wanted: Vec<Uuid> = match self {
            Command::OpenAccount(c) => vec![c.account_id, system_account_id(c.currency)],
            Command::CloseAccount { account_id } => vec![*account_id],
            Command::MakeDeposit(c) => vec![c.account_id, system_account_id(c.currency)],
            Command::PostTransfer(c) => vec![c.transfer_id, c.from, c.to],
            Command::ReverseTransfer(c) => {
                let mut ids = vec![c.reversal_id, c.transfer_id];
                if let Some(t) = state.transfer(c.transfer_id) {
                    ids.extend([t.from, t.to]);
                }
                ids
            }
            Command::RequestWithdrawal(c) => vec![c.withdrawal_id, c.account_id],
            Command::IssueToken(c) => vec![c.token_id],
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
        };
        let mut missing: Vec<Uuid> = wanted.into_iter().filter(|id| !state.is_loaded(*id)).collect();
        missing.dedup();
        missing
    }
}

/// Decides what a command records, or which rule it breaks.
pub fn decide(command: &Command, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    match command {
        Command::OpenAccount(c) => open_account(c, state),
        Command::CloseAccount { account_id } => close_account(*account_id, state),
        Command::MakeDeposit(c) => deposit(c, state),
        Command::PostTransfer(c) => transfer(c, state),
        Command::ReverseTransfer(c) => reverse(c, state),
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
            })])
        }
    }
}

fn ensure_new(state: &Ledger, id: Uuid) -> Result<(), DomainError> {
    match state.stream(id) {
        Some(s) if s.aggregate != Aggregate::Empty => Err(DomainError::AlreadyExists { id }),
        _ => Ok(()),
    }
}

fn open_account(c: &OpenAccount, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    if c.overdraft_limit < Money::ZERO {
        return Err(DomainError::NegativeOverdraftLimit(c.overdraft_limit));
    }
    if is_reserved_id(c.account_id) {
        return Err(DomainError::ReservedId { id: c.account_id });
    }
    ensure_new(state, c.account_id)?;
    let mut events = Vec::with_capacity(2);
    let system_id = system_account_id(c.currency);
    if let Some(existing) = state.account(system_id) {
        // Only the ledger opens streams in the reserved space, and only this way; a log
        // written before ids were reserved may hold a client's account there, which
        // needs a person, not a panic.
        if !existing.system || existing.currency != c.currency {
            return Err(DomainError::ReservedId { id: system_id });
        }
    } else {
        ensure_new(state, system_id)?;
        events.push(Event::AccountOpened(AccountOpened {
            account_id: system_id,
            currency: c.currency,
            owner: None,
            overdraft_limit: Money::ZERO,
            system: true,
            metadata: None,
        }));
    }
    events.push(Event::AccountOpened(AccountOpened {
        account_id: c.account_id,
        currency: c.currency,
        owner: c.owner.clone(),
        overdraft_limit: c.overdraft_limit,
        system: false,
        metadata: c.metadata.clone(),
    }));
    Ok(events)
}

/// A customer account that is open and in the command's currency.
fn usable_account(state: &Ledger, id: Uuid, currency: Currency) -> Result<&crate::state::Account, DomainError> {
    let account = state.account(id).ok_or(DomainError::AccountNotFound { account_id: id })?;
    if account.system {
        return Err(DomainError::SystemAccount { account_id: id });
    }
    if account.status == AccountStatus::Closed {
        return Err(DomainError::AccountClosed { account_id: id });
    }
    if account.currency != currency {
        return Err(DomainError::CurrencyMismatch { expected: account.currency, found: currency });
    }
    Ok(account)
}

/// The payer of a posting, after the checks in the contract's order: both accounts
/// exist, are customer accounts, are open, differ, and share the posting's currency.
fn posting_accounts(
    state: &Ledger,
    from: Uuid,
    to: Uuid,
    currency: Currency,
) -> Result<&crate::state::Account, DomainError> {
    let found = |id| state.account(id).ok_or(DomainError::AccountNotFound { account_id: id });
    let (payer, payee) = (found(from)?, found(to)?);
    for a in [payer, payee] {
        if a.system {
            return Err(DomainError::SystemAccount { account_id: a.id });
        }
    }
    for a in [payer, payee] {
        if a.status == AccountStatus::Closed {
            return Err(DomainError::AccountClosed { account_id: a.id });
        }
    }
    if from == to {
        return Err(DomainError::SameAccount);
    }
    for a in [payer, payee] {
        if a.currency != currency {
            return Err(DomainError::CurrencyMismatch { expected: a.currency, found: currency });
        }
    }
    Ok(payer)
}

/// Checks that `amount` can leave `account` without breaching its overdraft limit.
fn ensure_funds(account: &crate::state::Account, amount: Amount) -> Result<(), DomainError> {
    let floor = account.overdraft_limit.checked_neg().expect("overdraft limits are non-negative");
    let after = account.available().checked_sub(amount.money());
    match after {
        Some(after) if after >= floor => Ok(()),
        _ => Err(DomainError::InsufficientFunds {
            available: account.available(),
            overdraft_limit: account.overdraft_limit,
            requested: amount,
        }),
    }
}

/// Checks that no balance the event touches would overflow.
pub(crate) fn ensure_no_overflow(state: &Ledger, event: &Event) -> Result<(), DomainError> {
    for p in event.postings() {
        let balance = state.account(p.account_id).map_or(Money::ZERO, |a| a.balance);
        if balance.checked_add(p.delta).is_none() {
            return Err(DomainError::BalanceOverflow { account_id: p.account_id });
        }
    }
    Ok(())
}

fn close_account(account_id: Uuid, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    let account = state.account(account_id).ok_or(DomainError::AccountNotFound { account_id })?;
    if account.system {
        return Err(DomainError::SystemAccount { account_id });
    }
    if account.status == AccountStatus::Closed {
        return Err(DomainError::AccountClosed { account_id });
    }
    if account.balance != Money::ZERO || account.pending_holds != Money::ZERO {
        return Err(DomainError::AccountNotEmpty { balance: account.balance, pending_holds: account.pending_holds });
    }
    Ok(vec![Event::AccountClosed(AccountClosed { account_id })])
}

fn deposit(c: &MakeDeposit, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    usable_account(state, c.account_id, c.currency)?;
    let system_account_id = system_account_id(c.currency);
    let event = Event::DepositRecorded(DepositRecorded {
        deposit_id: c.deposit_id,
        account_id: c.account_id,
        system_account_id,
        amount: c.amount,
        currency: c.currency,
        reference: c.reference.clone(),
        metadata: c.metadata.clone(),
    });
    ensure_no_overflow(state, &event)?;
    Ok(vec![event])
}

fn transfer(c: &PostTransfer, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    ensure_new(state, c.transfer_id)?;
    let from = posting_accounts(state, c.from, c.to, c.currency)?;
    ensure_funds(from, c.amount)?;
    let event = Event::TransferPosted(TransferPosted {
        transfer_id: c.transfer_id,
        from: c.from,
        to: c.to,
        amount: c.amount,
        currency: c.currency,
        reference: c.reference.clone(),
        reverses: None,
        reason: None,
        metadata: c.metadata.clone(),
    });
    ensure_no_overflow(state, &event)?;
    Ok(vec![event])
}

fn reverse(c: &ReverseTransfer, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    let original = state.transfer(c.transfer_id).ok_or(DomainError::TransferNotFound { transfer_id: c.transfer_id })?;
    if let Some(reversed_by) = original.reversed_by {
        return Err(DomainError::AlreadyReversed { transfer_id: original.id, reversed_by });
    }
    ensure_new(state, c.reversal_id)?;
    // The compensating transfer moves the same amount back; the original stays in the log.
    let payer = posting_accounts(state, original.to, original.from, original.currency)?;
    ensure_funds(payer, original.amount)?;
    let event = Event::TransferPosted(TransferPosted {
        transfer_id: c.reversal_id,
        from: original.to,
        to: original.from,
        amount: original.amount,
        currency: original.currency,
        reference: original.reference.clone(),
        reverses: Some(original.id),
        reason: Some(c.reason.clone()),
        metadata: None,
    });
    ensure_no_overflow(state, &event)?;
    Ok(vec![event])
}

fn request_withdrawal(c: &RequestWithdrawal, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    ensure_new(state, c.withdrawal_id)?;
    let account = usable_account(state, c.account_id, c.currency)?;
    ensure_funds(account, c.amount)?;
    account
        .pending_holds
        .checked_add(c.amount.money())
        .ok_or(DomainError::BalanceOverflow { account_id: c.account_id })?;
    Ok(vec![Event::WithdrawalRequested(WithdrawalRequested {
        withdrawal_id: c.withdrawal_id,
        account_id: c.account_id,
        amount: c.amount,
        currency: c.currency,
        destination: c.destination.clone(),
        metadata: c.metadata.clone(),
    })])
}

pub(crate) fn pending_withdrawal(state: &Ledger, id: Uuid) -> Result<&crate::state::Withdrawal, DomainError> {
    let w = state.withdrawal(id).ok_or(DomainError::WithdrawalNotFound { withdrawal_id: id })?;
    if w.status != WithdrawalStatus::Pending {
        return Err(DomainError::WithdrawalNotPending { withdrawal_id: id, status: w.status });
    }
    Ok(w)
}

fn settle_withdrawal(c: &SettleWithdrawal, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    let w = pending_withdrawal(state, c.withdrawal_id)?;
    let event = Event::WithdrawalSettled(WithdrawalSettled {
        withdrawal_id: w.id,
        account_id: w.account_id,
        system_account_id: system_account_id(w.currency),
        amount: w.amount,
        currency: w.currency,
        provider_ref: c.provider_ref.clone(),
    });
    ensure_no_overflow(state, &event)?;
    Ok(vec![event])
}

fn fail_withdrawal(c: &FailWithdrawal, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    let w = pending_withdrawal(state, c.withdrawal_id)?;
    Ok(vec![Event::WithdrawalFailed(WithdrawalFailed {
        withdrawal_id: w.id,
        account_id: w.account_id,
        amount: w.amount,
        currency: w.currency,
        reason: c.reason.clone(),
    })])
}

fn dead_letter(c: &DeadLetterPayout, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    let w = pending_withdrawal(state, c.withdrawal_id)?;
    if let Some(open) = w.dead_letter {
        // Already dead-lettered (a second worker gave up too): nothing new to record.
        return Err(DomainError::DeadLetterNotOpen { dead_letter_id: open });
    }
    Ok(vec![Event::PayoutDeadLettered(PayoutDeadLettered {
        dead_letter_id: c.dead_letter_id,
        withdrawal_id: w.id,
        attempts: c.attempts,
        last_error: c.last_error.clone(),
        source_position: c.source_position,
    })])
}

fn open_dead_letter<'a>(c: &ResolveDeadLetter, state: &'a Ledger) -> Result<&'a crate::state::Withdrawal, DomainError> {
    let w =
        state.withdrawal(c.withdrawal_id).ok_or(DomainError::WithdrawalNotFound { withdrawal_id: c.withdrawal_id })?;
    if w.status != WithdrawalStatus::Pending || w.dead_letter != Some(c.dead_letter_id) {
        return Err(DomainError::DeadLetterNotOpen { dead_letter_id: c.dead_letter_id });
    }
    Ok(w)
}

fn redrive(c: &ResolveDeadLetter, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    let w = open_dead_letter(c, state)?;
    Ok(vec![Event::PayoutRedriven(PayoutRedriven { dead_letter_id: c.dead_letter_id, withdrawal_id: w.id })])
}

fn discard(c: &ResolveDeadLetter, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    let w = open_dead_letter(c, state)?;
    Ok(vec![Event::WithdrawalFailed(WithdrawalFailed {
        withdrawal_id: w.id,
        account_id: w.account_id,
        amount: w.amount,
        currency: w.currency,
        reason: format!("discarded from the dead-letter queue ({})", c.dead_letter_id),
    })])
}

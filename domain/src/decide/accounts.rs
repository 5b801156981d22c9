//! Accounts: opening, closing, deposits, and the checks every posting makes.

use super::*;
use crate::state::Account;

pub(super) fn open_account(c: &OpenAccount, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    if c.overdraft_limit < Money::ZERO {
        return Err(DomainError::NegativeOverdraftLimit(c.overdraft_limit));
    }
    if is_reserved_id(c.account_id) {
        return Err(DomainError::ReservedId { id: c.account_id });
    }
    ensure_new(state, c.account_id)?;
    if let Some(subject) = &c.subject {
        // A stream in the reserved space holds the subject, or nothing yet.
        let stream = subject_stream_id(subject);
        match state.stream(stream).map(|s| &s.aggregate) {
            None | Some(Aggregate::Empty) => {}
            Some(Aggregate::Subject(s)) if s.subject == *subject => {
                if s.accounts.len() >= SUBJECT_ACCOUNTS_MAX {
                    return Err(DomainError::SubjectAccountsLimit { max: SUBJECT_ACCOUNTS_MAX });
                }
            }
            Some(_) => return Err(DomainError::ReservedId { id: stream }),
        }
    }
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
            subject: None,
        }));
    }
    events.push(Event::AccountOpened(AccountOpened {
        account_id: c.account_id,
        currency: c.currency,
        owner: c.owner.clone(),
        overdraft_limit: c.overdraft_limit,
        system: false,
        metadata: c.metadata.clone(),
        subject: c.subject.clone(),
    }));
    Ok(events)
}

/// A customer account that is open and in the command's currency.
pub(super) fn usable_account(state: &Ledger, id: Uuid, currency: Currency) -> Result<&Account, DomainError> {
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
pub(super) fn posting_accounts(
    state: &Ledger,
    from: Uuid,
    to: Uuid,
    currency: Currency,
) -> Result<&Account, DomainError> {
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
pub(super) fn ensure_funds(account: &Account, amount: Amount) -> Result<(), DomainError> {
    let floor = account.overdraft_limit.checked_neg().expect("overdraft limits are non-negative");
    let after = account.available().checked_sub(amount.money());
    match after {
        Some(after) if after >= floor => Ok(()),
        _ => Err(DomainError::InsufficientFunds {
            account_id: Some(account.id),
            available: account.available(),
            overdraft_limit: account.overdraft_limit,
            requested: amount.money(),
        }),
    }
}

/// Checks that the funds held on `account` stay within 64 bits with `amount` more held:
/// a customer's balance may reach `i64::MAX` and its overdraft limit 10^15, so what
/// `ensure_funds` allows to be held could otherwise pass what every view and read model
/// keeps of a customer's holds.
pub(super) fn ensure_holds_fit(account: &Account, amount: Amount) -> Result<(), DomainError> {
    match account.pending_holds.checked_add(amount.money()).and_then(Money::to_i64) {
        Some(_) => Ok(()),
        None => Err(DomainError::BalanceOverflow { account_id: account.id }),
    }
}

/// Checks that no balance the event touches would overflow, its postings applied in
/// order (a transaction may post to one account many times): a customer balance must
/// stay within an `i64`; a system account's, the sum of many, only within the `i128`
/// that holds it (see `money`), which no sequence of commands can reach.
pub(crate) fn ensure_no_overflow(state: &Ledger, event: &Event) -> Result<(), DomainError> {
    let mut balances: std::collections::HashMap<Uuid, Money> = std::collections::HashMap::new();
    for p in event.postings() {
        let account = state.account(p.account_id);
        let balance = balances.entry(p.account_id).or_insert_with(|| account.map_or(Money::ZERO, |a| a.balance));
        let after = balance.checked_add(p.delta);
        let system = account.is_some_and(|a| a.system) || is_reserved_id(p.account_id);
        *balance = after
            .filter(|b| system || b.to_i64().is_some())
            .ok_or(DomainError::BalanceOverflow { account_id: p.account_id })?;
    }
    Ok(())
}

pub(super) fn close_account(account_id: Uuid, state: &Ledger) -> Result<Vec<Event>, DomainError> {
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

pub(super) fn deposit(c: &MakeDeposit, state: &Ledger) -> Result<Vec<Event>, DomainError> {
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
        effective_at: c.effective_at,
    });
    ensure_no_overflow(state, &event)?;
    Ok(vec![event])
}

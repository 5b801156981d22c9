//! Transactions (API.md v1.1 "Transactions"): 1..=[`POSTINGS_MAX`] postings recorded as
//! one event at one position, checked as a whole, in the contract's order: each
//! posting's accounts (exist, are customer accounts, are open, differ, share its
//! currency), then the conditions (versions before availability), then funds, with
//! every posting applied.

use super::accounts::{ensure_no_overflow, posting_accounts};
use super::*;
use crate::events::Leg;
use std::collections::HashMap;

pub(super) fn post_transaction(c: &PostTransaction, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    if c.postings.is_empty() || c.postings.len() > POSTINGS_MAX {
        return Err(DomainError::PostingsCount { count: c.postings.len() });
    }
    ensure_new(state, c.transaction_id)?;
    for leg in &c.postings {
        posting_accounts(state, leg.from, leg.to, leg.currency)?;
    }
    check_conditions(&c.conditions, state)?;
    let posted = TransactionPosted {
        transaction_id: c.transaction_id,
        postings: c.postings.clone(),
        reference: c.reference.clone(),
        metadata: c.metadata.clone(),
        effective_at: c.effective_at,
        reverses: None,
        reason: None,
    };
    record(posted, state)
}

/// A transaction is reversed by one with every posting swapped; a transfer (a
/// one-posting transaction) by a compensating transfer, as `POST /v1/transfers/{id}/reverse`.
pub(super) fn reverse_transaction(c: &ReverseTransaction, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    if state.transfer(c.transaction_id).is_some() {
        let reversal =
            ReverseTransfer { reversal_id: c.reversal_id, transfer_id: c.transaction_id, reason: c.reason.clone() };
        return super::transfers::reverse(&reversal, state);
    }
    let original = state
        .transaction(c.transaction_id)
        .ok_or(DomainError::TransactionNotFound { transaction_id: c.transaction_id })?;
    if let Some(reversed_by) = original.reversed_by {
        return Err(DomainError::AlreadyReversed { transfer_id: original.id, reversed_by });
    }
    ensure_new(state, c.reversal_id)?;
    let postings: Vec<Leg> = original.postings.iter().map(|l| Leg { from: l.to, to: l.from, ..*l }).collect();
    for leg in &postings {
        posting_accounts(state, leg.from, leg.to, leg.currency)?;
    }
    let posted = TransactionPosted {
        transaction_id: c.reversal_id,
        postings,
        reference: original.reference.clone(),
        metadata: None,
        effective_at: None,
        reverses: Some(original.id),
        reason: Some(c.reason.clone()),
    };
    record(posted, state)
}

/// Funds and overflow, with every posting applied; then the one event.
fn record(posted: TransactionPosted, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    ensure_funds_after(&posted, state)?;
    let event = Event::TransactionPosted(posted);
    ensure_no_overflow(state, &event)?;
    Ok(vec![event])
}

/// Each condition against the state before the transaction: every expected version
/// first (409 `version_conflict`), then every `available_at_least` (422 `condition_failed`).
fn check_conditions(conditions: &[Condition], state: &Ledger) -> Result<(), DomainError> {
    let account = |id| state.account(id).ok_or(DomainError::AccountNotFound { account_id: id });
    for c in conditions {
        account(c.account_id)?;
        if let Some(expected) = c.expected_version {
            let actual = state.version(c.account_id);
            if actual != expected {
                return Err(DomainError::UnexpectedVersion { account_id: c.account_id, expected, actual });
            }
        }
    }
    for c in conditions {
        let available = account(c.account_id)?.available();
        if let Some(required) = c.available_at_least
            && available < required
        {
            return Err(DomainError::ConditionFailed { account_id: c.account_id, available, required });
        }
    }
    Ok(())
}

/// After the last posting, no account the transaction takes money from may be below
/// its overdraft limit; the first such account in posting order is named. An account
/// the transaction leaves as well off or better is never refused, even if it was below
/// its limit already (a reconciliation correction can leave it there).
fn ensure_funds_after(posted: &TransactionPosted, state: &Ledger) -> Result<(), DomainError> {
    let mut net: HashMap<Uuid, i64> = HashMap::new();
    for leg in &posted.postings {
        let amount = leg.amount.minor_units();
        *net.entry(leg.from).or_default() -= amount;
        *net.entry(leg.to).or_default() += amount;
    }
    for id in posted.accounts() {
        let change = net[&id];
        if change >= 0 {
            continue;
        }
        let account = state.account(id).ok_or(DomainError::AccountNotFound { account_id: id })?;
        let floor = account.overdraft_limit.checked_neg().expect("overdraft limits are non-negative");
        let after = account.available().checked_add(Money::new(change));
        if after.is_none_or(|after| after < floor) {
            return Err(DomainError::InsufficientFunds {
                account_id: Some(id),
                available: account.available(),
                overdraft_limit: account.overdraft_limit,
                requested: Money::new(-change),
            });
        }
    }
    Ok(())
}

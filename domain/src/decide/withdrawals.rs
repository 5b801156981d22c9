//! Withdrawals: the request (funds held), the payout's outcome (settled, failed), and
//! its dead letter (redriven or discarded).

use super::accounts::{ensure_funds, ensure_holds_fit, ensure_no_overflow, usable_account};
use super::*;
use crate::state::Withdrawal;

pub(super) fn request_withdrawal(c: &RequestWithdrawal, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    ensure_new(state, c.withdrawal_id)?;
    let account = usable_account(state, c.account_id, c.currency)?;
    ensure_funds(account, c.amount)?;
    ensure_holds_fit(account, c.amount)?;
    Ok(vec![Event::WithdrawalRequested(WithdrawalRequested {
        withdrawal_id: c.withdrawal_id,
        account_id: c.account_id,
        amount: c.amount,
        currency: c.currency,
        destination: c.destination.clone(),
        metadata: c.metadata.clone(),
    })])
}

fn pending_withdrawal(state: &Ledger, id: Uuid) -> Result<&Withdrawal, DomainError> {
    let w = state.withdrawal(id).ok_or(DomainError::WithdrawalNotFound { withdrawal_id: id })?;
    if w.status != WithdrawalStatus::Pending {
        return Err(DomainError::WithdrawalNotPending { withdrawal_id: id, status: w.status });
    }
    Ok(w)
}

pub(super) fn settle_withdrawal(c: &SettleWithdrawal, state: &Ledger) -> Result<Vec<Event>, DomainError> {
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

pub(super) fn fail_withdrawal(c: &FailWithdrawal, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    let w = pending_withdrawal(state, c.withdrawal_id)?;
    Ok(vec![Event::WithdrawalFailed(WithdrawalFailed {
        withdrawal_id: w.id,
        account_id: w.account_id,
        amount: w.amount,
        currency: w.currency,
        reason: c.reason.clone(),
    })])
}

pub(super) fn dead_letter(c: &DeadLetterPayout, state: &Ledger) -> Result<Vec<Event>, DomainError> {
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

pub(super) fn open_dead_letter<'a>(c: &ResolveDeadLetter, state: &'a Ledger) -> Result<&'a Withdrawal, DomainError> {
    let w =
        state.withdrawal(c.withdrawal_id).ok_or(DomainError::WithdrawalNotFound { withdrawal_id: c.withdrawal_id })?;
    if w.status != WithdrawalStatus::Pending || w.dead_letter != Some(c.dead_letter_id) {
        return Err(DomainError::DeadLetterNotOpen { dead_letter_id: c.dead_letter_id });
    }
    Ok(w)
}

pub(super) fn redrive(c: &ResolveDeadLetter, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    let w = open_dead_letter(c, state)?;
    Ok(vec![Event::PayoutRedriven(PayoutRedriven { dead_letter_id: c.dead_letter_id, withdrawal_id: w.id })])
}

pub(super) fn discard(c: &ResolveDeadLetter, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    let w = open_dead_letter(c, state)?;
    Ok(vec![Event::WithdrawalFailed(WithdrawalFailed {
        withdrawal_id: w.id,
        account_id: w.account_id,
        amount: w.amount,
        currency: w.currency,
        reason: format!("discarded from the dead-letter queue ({})", c.dead_letter_id),
    })])
}

//! Transfers between customer accounts, and their reversal as a compensating transfer.

use super::accounts::{ensure_funds, ensure_no_overflow, posting_accounts};
use super::*;

pub(super) fn transfer(c: &PostTransfer, state: &Ledger) -> Result<Vec<Event>, DomainError> {
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
        effective_at: c.effective_at,
    });
    ensure_no_overflow(state, &event)?;
    Ok(vec![event])
}

pub(super) fn reverse(c: &ReverseTransfer, state: &Ledger) -> Result<Vec<Event>, DomainError> {
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
        effective_at: None,
    });
    ensure_no_overflow(state, &event)?;
    Ok(vec![event])
}

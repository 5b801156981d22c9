//! Two-phase holds (API.md v1.1 "Holds"): placed like a transfer of their amount
//! (funds checked, `available` drops, `balance` does not), then captured (all or part;
//! the rest released), voided, or expired. The time a capture or an expiry is decided
//! at travels in the command, so a capture at or after `expires_at` is refused even
//! before the expiry is recorded.

use super::accounts::{ensure_funds, ensure_holds_fit, ensure_no_overflow, posting_accounts};
use super::*;
use crate::state::{Hold, HoldStatus};

pub(super) fn place_hold(c: &PlaceHold, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    ensure_new(state, c.hold_id)?;
    let payer = posting_accounts(state, c.account_id, c.to, c.currency)?;
    ensure_funds(payer, c.amount)?;
    ensure_holds_fit(payer, c.amount)?;
    Ok(vec![Event::HoldPlaced(HoldPlaced {
        hold_id: c.hold_id,
        account_id: c.account_id,
        to: c.to,
        amount: c.amount,
        currency: c.currency,
        expires_at: c.expires_at,
        reference: c.reference.clone(),
        metadata: c.metadata.clone(),
    })])
}

/// The hold, if it is still pending.
fn pending(state: &Ledger, hold_id: Uuid) -> Result<&Hold, DomainError> {
    let hold = state.hold(hold_id).ok_or(DomainError::HoldNotFound { hold_id })?;
    if hold.status != HoldStatus::Pending {
        return Err(DomainError::HoldNotPending { hold_id, status: hold.status });
    }
    Ok(hold)
}

fn expired(hold: &Hold, now: chrono::DateTime<chrono::Utc>) -> bool {
    hold.expires_at.is_some_and(|at| now >= at)
}

pub(super) fn capture_hold(c: &CaptureHold, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    let hold = pending(state, c.hold_id)?;
    if expired(hold, c.now) {
        return Err(DomainError::HoldExpired { hold_id: c.hold_id });
    }
    let amount = c.amount.unwrap_or(hold.amount);
    if amount > hold.amount {
        return Err(DomainError::CaptureExceedsHold { hold_id: c.hold_id, held: hold.amount, requested: amount });
    }
    // The accounts must still be usable; funds were reserved when the hold was placed.
    posting_accounts(state, hold.account_id, hold.to, hold.currency)?;
    let event = Event::HoldCaptured(HoldCaptured {
        hold_id: hold.id,
        account_id: hold.account_id,
        to: hold.to,
        amount,
        held: hold.amount,
        currency: hold.currency,
        effective_at: c.effective_at,
    });
    ensure_no_overflow(state, &event)?;
    Ok(vec![event])
}

pub(super) fn void_hold(c: &VoidHold, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    let hold = pending(state, c.hold_id)?;
    Ok(vec![Event::HoldVoided(released(hold))])
}

/// Records a pending hold's expiry once `expires_at` has passed; anything else is a
/// rejection with nothing recorded (the expiry worker of another process won).
pub(super) fn expire_hold(c: &ExpireHold, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    let hold = pending(state, c.hold_id)?;
    if !expired(hold, c.now) {
        return Err(DomainError::HoldNotDue { hold_id: c.hold_id });
    }
    Ok(vec![Event::HoldExpired(released(hold))])
}

fn released(hold: &Hold) -> HoldReleased {
    HoldReleased { hold_id: hold.id, account_id: hold.account_id, amount: hold.amount, currency: hold.currency }
}

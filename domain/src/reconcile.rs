//! Reconciliation decisions (PROVIDER.md's table): the provider's record is the truth
//! about what money left; every correction is a new event, never an edit, and is
//! recorded with the mismatch it resolves. Matching records decide nothing (an empty
//! list), which is what makes a second run over the same window change nothing.

use crate::decide::{DomainError, ReconcilePayout, ensure_no_overflow, system_account_id};
use crate::events::*;
use crate::money::Money;
use crate::state::{Ledger, Withdrawal, WithdrawalStatus};
use serde_json::json;

fn ours(w: &Withdrawal) -> serde_json::Value {
    json!({ "status": w.status, "amount": w.settled_amount.map_or(w.amount.minor_units(), Money::minor_units) })
}

/// Decides how to bring one payout in line with the provider's record.
pub fn reconcile(c: &ReconcilePayout, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    if state.stream(c.run_id).is_none_or(|s| s.version == 0) {
        return Err(DomainError::ReconciliationNotStarted { run_id: c.run_id });
    }
    let withdrawal = c.withdrawal_id.and_then(|id| state.withdrawal(id));
    let theirs = c.provider.as_ref().map(|p| {
        json!({ "status": if p.settled { "settled" } else { "rejected" }, "amount": p.amount, "provider_ref": p.provider_ref })
    });
    let mismatch = |kind: &str, resolution: &str, w: Option<&Withdrawal>, below: bool| {
        Event::ReconciliationMismatchFound(ReconciliationMismatchFound {
            run_id: c.run_id,
            kind: kind.to_owned(),
            withdrawal_id: w.map(|w| w.id).or(c.withdrawal_id),
            reference: c.reference.clone(),
            provider_ref: c
                .provider
                .as_ref()
                .map(|p| p.provider_ref.clone())
                .or_else(|| w.and_then(|w| w.provider_ref.clone())),
            ours: w.map(ours),
            theirs: theirs.clone(),
            resolution: resolution.to_owned(),
            account_below_limit: below,
        })
    };
    let Some(w) = withdrawal else {
        return Ok(vec![mismatch("unknown_reference", "flagged", None, false)]);
    };
    let Some(record) = &c.provider else {
        return Ok(match w.status {
            WithdrawalStatus::Settled => vec![mismatch("missing_at_provider", "flagged", Some(w), false)],
            _ => Vec::new(),
        });
    };
    let provider_amount = Money::new(record.amount);
    let correction = |delta: Money, status_after: WithdrawalStatus| {
        Event::WithdrawalReconciled(WithdrawalReconciled {
            run_id: c.run_id,
            withdrawal_id: w.id,
            account_id: w.account_id,
            system_account_id: system_account_id(w.currency),
            currency: w.currency,
            delta,
            status_after,
            provider_ref: Some(record.provider_ref.clone()),
            provider_amount: Some(record.amount),
        })
    };
    let diff = |from: Money| {
        provider_amount.checked_sub(from).ok_or(DomainError::BalanceOverflow { account_id: w.account_id })
    };
    let (mut events, kind, resolution) = match (record.settled, w.status) {
        (true, WithdrawalStatus::Settled) => {
            let delta = diff(w.settled_amount.unwrap_or(w.amount.money()))?;
            if delta == Money::ZERO {
                return Ok(Vec::new());
            }
            (vec![correction(delta, WithdrawalStatus::Settled)], "amount_mismatch", "adjusted")
        }
        (true, WithdrawalStatus::Pending) => {
            let mut events = vec![Event::WithdrawalSettled(WithdrawalSettled {
                withdrawal_id: w.id,
                account_id: w.account_id,
                system_account_id: system_account_id(w.currency),
                amount: w.amount,
                currency: w.currency,
                provider_ref: Some(record.provider_ref.clone()),
            })];
            let delta = diff(w.amount.money())?;
            if delta != Money::ZERO {
                events.push(correction(delta, WithdrawalStatus::Settled));
            }
            (events, "settled_at_provider", "settled")
        }
        (true, WithdrawalStatus::Failed) => {
            (vec![correction(provider_amount, WithdrawalStatus::Settled)], "settled_at_provider", "settled")
        }
        (false, WithdrawalStatus::Settled) => {
            let back = w.settled_amount.unwrap_or(w.amount.money()).checked_neg().expect("settled amounts are bounded");
            (vec![correction(back, WithdrawalStatus::Failed)], "rejected_at_provider", "credited_back")
        }
        (false, WithdrawalStatus::Pending) => {
            let failed = Event::WithdrawalFailed(WithdrawalFailed {
                withdrawal_id: w.id,
                account_id: w.account_id,
                amount: w.amount,
                currency: w.currency,
                reason: format!("rejected by the provider (reconciliation {})", c.run_id),
            });
            (vec![failed], "rejected_at_provider", "failed")
        }
        (false, WithdrawalStatus::Failed) => return Ok(Vec::new()),
    };
    let mut after = state.clone();
    for e in &events {
        ensure_no_overflow(&after, e)?;
        after.apply(e);
    }
    let below =
        after.account(w.account_id).is_some_and(|a| a.available().minor_units() < -a.overdraft_limit.minor_units());
    events.push(mismatch(kind, resolution, Some(w), below));
    Ok(events)
}

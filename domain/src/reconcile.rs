//! Reconciliation decisions (PROVIDER.md's table): the provider's record is the truth
//! about what money left; every correction is a new event, never an edit, and is
//! recorded with the mismatch it resolves. Matching records decide nothing (an empty
//! list), which is what makes a second run over the same window change nothing.
//!
//! The table applies to well-formed lines only (PROVIDER.md v1.1): one line per
//! reference, in the withdrawal's currency, with an amount in `1..=AMOUNT_MAX`.
//! Anything else is never corrected automatically: it is flagged for a person (no
//! correcting event), and since the decision depends only on the statement and the
//! ledger, every later run over the same window flags it again until it is resolved.
//! Nothing a line says can make `reconcile` panic or refuse: what it cannot decide
//! is a flagged mismatch.
//!
//! The kinds of mismatch ([`MismatchKind`], the `kind` of `ReconciliationMismatchFound`):
//!
//! | kind | found when | resolution |
//! |---|---|---|
//! | `unknown_reference` | a line names no withdrawal of the ledger | `flagged` |
//! | `missing_at_provider` | the ledger settled a payout the provider has no record of | `flagged` |
//! | `amount_mismatch` | settled on both sides, different amounts | `adjusted` |
//! | `settled_at_provider` | settled there, pending or failed here | `settled` |
//! | `rejected_at_provider` | rejected there, settled or pending here | `credited_back` / `failed` |
//! | `duplicate_reference` | the statement lists the reference more than once | `flagged` |
//! | `currency_mismatch` | the line is not in the withdrawal's currency | `flagged` |
//! | `invalid_amount` | the amount is not an integer in `1..=AMOUNT_MAX` | `flagged` |
//! | `malformed_line` | a field is missing or garbled, or the line is not an object | `flagged` |
//!
//! A correction that would overflow a balance is not made either: its kind is reported
//! with resolution `flagged`.

use crate::decide::{DomainError, ProviderRecord, ReconcilePayout, ensure_no_overflow, system_account_id};
use crate::events::*;
use crate::money::{Amount, Money};
use crate::state::{Ledger, Withdrawal, WithdrawalStatus};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// How many lines of a duplicated reference a mismatch shows (it counts them all).
pub const STATEMENT_LINES_SHOWN_MAX: usize = 16;

/// What a reconciliation found for one reference: the `kind` of its mismatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MismatchKind {
    UnknownReference,
    MissingAtProvider,
    AmountMismatch,
    SettledAtProvider,
    RejectedAtProvider,
    DuplicateReference,
    CurrencyMismatch,
    InvalidAmount,
    MalformedLine,
}

impl MismatchKind {
    pub const ALL: [MismatchKind; 9] = [
        MismatchKind::UnknownReference,
        MismatchKind::MissingAtProvider,
        MismatchKind::AmountMismatch,
        MismatchKind::SettledAtProvider,
        MismatchKind::RejectedAtProvider,
        MismatchKind::DuplicateReference,
        MismatchKind::CurrencyMismatch,
        MismatchKind::InvalidAmount,
        MismatchKind::MalformedLine,
    ];

    /// The name recorded in the event and shown in the report.
    pub const fn as_str(self) -> &'static str {
        match self {
            MismatchKind::UnknownReference => "unknown_reference",
            MismatchKind::MissingAtProvider => "missing_at_provider",
            MismatchKind::AmountMismatch => "amount_mismatch",
            MismatchKind::SettledAtProvider => "settled_at_provider",
            MismatchKind::RejectedAtProvider => "rejected_at_provider",
            MismatchKind::DuplicateReference => "duplicate_reference",
            MismatchKind::CurrencyMismatch => "currency_mismatch",
            MismatchKind::InvalidAmount => "invalid_amount",
            MismatchKind::MalformedLine => "malformed_line",
        }
    }
}

/// What was done about a mismatch: corrected by compensating events (`adjusted`,
/// `settled`, `credited_back`, `failed`), or left for a person (`flagged`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    Flagged,
    Adjusted,
    Settled,
    CreditedBack,
    Failed,
}

impl Resolution {
    /// The name recorded in the event and shown in the report.
    pub const fn as_str(self) -> &'static str {
        match self {
            Resolution::Flagged => "flagged",
            Resolution::Adjusted => "adjusted",
            Resolution::Settled => "settled",
            Resolution::CreditedBack => "credited_back",
            Resolution::Failed => "failed",
        }
    }
}

/// Why a line of the provider's answer could not be read as written (found by the
/// reader of the statement, which knows the wire format; judged here).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineDefect {
    /// `amount` is a number, but not a whole number of minor units that fits in `i64`
    /// (`1.5`, `1e2`, `2^63`, `1e400`).
    AmountNotInteger,
    /// `field` is missing, null, of the wrong type or garbled (`line`: the line is not
    /// a JSON object at all).
    FieldUnreadable { field: String },
}

impl LineDefect {
    fn kind(&self) -> MismatchKind {
        match self {
            LineDefect::AmountNotInteger => MismatchKind::InvalidAmount,
            LineDefect::FieldUnreadable { .. } => MismatchKind::MalformedLine,
        }
    }
}

fn ours(w: &Withdrawal) -> serde_json::Value {
    let amount = w.settled_amount.map_or(w.amount.money(), |m| m).minor_units();
    json!({ "status": w.status, "amount": amount, "currency": w.currency })
}

/// One line as the report shows it: what it says, or why it could not be read.
fn line_view(p: &ProviderRecord) -> serde_json::Value {
    match &p.defect {
        None => json!({
            "status": if p.settled { "settled" } else { "rejected" }, "amount": p.amount,
            "currency": p.currency, "provider_ref": p.provider_ref,
        }),
        Some(defect) => {
            let field = match defect {
                LineDefect::AmountNotInteger => "amount",
                LineDefect::FieldUnreadable { field } => field.as_str(),
            };
            json!({ "unreadable": field, "provider_ref": non_empty(&p.provider_ref), "line": p.line })
        }
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// The provider's side: the one line, or every line of a duplicated reference.
fn theirs(c: &ReconcilePayout) -> Option<serde_json::Value> {
    let lines: Vec<&ProviderRecord> = c.provider.iter().chain(&c.also_listed).collect();
    match lines.as_slice() {
        [] => None,
        [one] => Some(line_view(one)),
        all => Some(json!({
            "lines": all.iter().take(STATEMENT_LINES_SHOWN_MAX).map(|p| line_view(p)).collect::<Vec<_>>(),
            "lines_total": all.len(),
        })),
    }
}

/// The PROVIDER.md v1.1 rules: the kind of a line the table may not act on, if it is one.
fn untrusted(c: &ReconcilePayout, w: Option<&Withdrawal>) -> Option<MismatchKind> {
    if !c.also_listed.is_empty() {
        return Some(MismatchKind::DuplicateReference);
    }
    let record = c.provider.as_ref()?;
    if let Some(defect) = &record.defect {
        return Some(defect.kind());
    }
    if Amount::new(record.amount).is_err() {
        return Some(MismatchKind::InvalidAmount);
    }
    match (w, record.currency.as_deref()) {
        (Some(w), Some(currency)) if currency != w.currency.as_str() => Some(MismatchKind::CurrencyMismatch),
        _ => None,
    }
}

/// The events that bring a withdrawal in line with a well-formed record, with the
/// mismatch's kind and resolution.
type Correction = (Vec<Event>, MismatchKind, Resolution);

/// Decides how to bring one payout in line with the provider's record.
pub fn reconcile(c: &ReconcilePayout, state: &Ledger) -> Result<Vec<Event>, DomainError> {
    if state.stream(c.run_id).is_none_or(|s| s.version == 0) {
        return Err(DomainError::ReconciliationNotStarted { run_id: c.run_id });
    }
    let withdrawal = c.withdrawal_id.and_then(|id| state.withdrawal(id));
    let mismatch = |kind: MismatchKind, resolution: Resolution, below: bool| {
        Event::ReconciliationMismatchFound(ReconciliationMismatchFound {
            run_id: c.run_id,
            kind,
            withdrawal_id: withdrawal.map(|w| w.id).or(c.withdrawal_id),
            reference: c.reference.clone(),
            provider_ref: c
                .provider
                .as_ref()
                .and_then(|p| non_empty(&p.provider_ref).map(str::to_owned))
                .or_else(|| withdrawal.and_then(|w| w.provider_ref.clone())),
            ours: withdrawal.map(ours),
            theirs: theirs(c),
            resolution,
            account_below_limit: below,
        })
    };
    if let Some(kind) = untrusted(c, withdrawal) {
        return Ok(vec![mismatch(kind, Resolution::Flagged, false)]);
    }
    let Some(w) = withdrawal else {
        return Ok(vec![mismatch(MismatchKind::UnknownReference, Resolution::Flagged, false)]);
    };
    let Some(record) = &c.provider else {
        return Ok(match w.status {
            WithdrawalStatus::Settled => vec![mismatch(MismatchKind::MissingAtProvider, Resolution::Flagged, false)],
            _ => Vec::new(),
        });
    };
    let (mut events, kind, resolution) = match correct(c, record, w) {
        Ok(None) => return Ok(Vec::new()),
        Ok(Some(correction)) => correction,
        // No correction that overflows a balance: a person decides.
        Err(kind) => return Ok(vec![mismatch(kind, Resolution::Flagged, false)]),
    };
    let mut after = state.clone();
    for e in &events {
        if ensure_no_overflow(&after, e).is_err() {
            return Ok(vec![mismatch(kind, Resolution::Flagged, false)]);
        }
        after.apply(e);
    }
    let below =
        after.account(w.account_id).is_some_and(|a| a.available().minor_units() < -a.overdraft_limit.minor_units());
    events.push(mismatch(kind, resolution, below));
    Ok(events)
}

/// PROVIDER.md's table for a well-formed record (amount in `1..=AMOUNT_MAX`). `Err`
/// with the mismatch's kind when the correction's delta cannot be computed without
/// overflow (only a settled amount from a corrupted history gets there).
fn correct(c: &ReconcilePayout, record: &ProviderRecord, w: &Withdrawal) -> Result<Option<Correction>, MismatchKind> {
    let provider_amount = Money::new(record.amount);
    let correction = |delta: Money, status_after: WithdrawalStatus, kind: MismatchKind| {
        // The account's leg is the negated delta: refused here, so `postings` never overflows.
        delta.checked_neg().ok_or(kind)?;
        Ok(Event::WithdrawalReconciled(WithdrawalReconciled {
            run_id: c.run_id,
            withdrawal_id: w.id,
            account_id: w.account_id,
            system_account_id: system_account_id(w.currency),
            currency: w.currency,
            delta,
            status_after,
            provider_ref: Some(record.provider_ref.clone()),
            provider_amount: Some(record.amount),
        }))
    };
    let diff = |from: Money, kind: MismatchKind| provider_amount.checked_sub(from).ok_or(kind);
    let settled_amount = w.settled_amount.unwrap_or(w.amount.money());
    Ok(Some(match (record.settled, w.status) {
        (true, WithdrawalStatus::Settled) => {
            let kind = MismatchKind::AmountMismatch;
            let delta = diff(settled_amount, kind)?;
            if delta == Money::ZERO {
                return Ok(None);
            }
            (vec![correction(delta, WithdrawalStatus::Settled, kind)?], kind, Resolution::Adjusted)
        }
        (true, WithdrawalStatus::Pending) => {
            let kind = MismatchKind::SettledAtProvider;
            let mut events = vec![Event::WithdrawalSettled(WithdrawalSettled {
                withdrawal_id: w.id,
                account_id: w.account_id,
                system_account_id: system_account_id(w.currency),
                amount: w.amount,
                currency: w.currency,
                provider_ref: Some(record.provider_ref.clone()),
            })];
            let delta = diff(w.amount.money(), kind)?;
            if delta != Money::ZERO {
                events.push(correction(delta, WithdrawalStatus::Settled, kind)?);
            }
            (events, kind, Resolution::Settled)
        }
        (true, WithdrawalStatus::Failed) => {
            let kind = MismatchKind::SettledAtProvider;
            (vec![correction(provider_amount, WithdrawalStatus::Settled, kind)?], kind, Resolution::Settled)
        }
        (false, WithdrawalStatus::Settled) => {
            let kind = MismatchKind::RejectedAtProvider;
            let back = settled_amount.checked_neg().ok_or(kind)?;
            (vec![correction(back, WithdrawalStatus::Failed, kind)?], kind, Resolution::CreditedBack)
        }
        (false, WithdrawalStatus::Pending) => {
            let failed = Event::WithdrawalFailed(WithdrawalFailed {
                withdrawal_id: w.id,
                account_id: w.account_id,
                amount: w.amount,
                currency: w.currency,
                reason: format!("rejected by the provider (reconciliation {})", c.run_id),
            });
            (vec![failed], MismatchKind::RejectedAtProvider, Resolution::Failed)
        }
        (false, WithdrawalStatus::Failed) => return Ok(None),
    }))
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;

//! The wire types of domain state and read-model rows (`ledger_wire::responses`),
//! shared by command responses and queries, and the one way a read is answered.

use crate::http::error::ApiError;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use ledger_domain::{AccountStatus, WithdrawalStatus};
use ledger_infrastructure::reconcile::{RunReport, RunStatus};
use ledger_infrastructure::store::RecordedEvent;
use ledger_projections::queries::{AccountRow, EntryRow, TransactionRow, TransferRow, WithdrawalRow};
use ledger_wire as wire;
use serde::Serialize;

pub const LEDGER_POSITION: HeaderName = HeaderName::from_static("x-ledger-position");

pub fn account(a: &ledger_domain::Account, version: i64, position: i64) -> wire::Account {
    wire::Account {
        id: a.id,
        currency: a.currency.as_str().to_owned(),
        owner: a.owner.clone(),
        subject: a.subject_or_id(),
        erased: a.erased,
        status: account_status(a.status),
        balance: a.balance.minor_units(),
        available: a.available().minor_units(),
        pending_holds: a.pending_holds.minor_units(),
        overdraft_limit: units64(a.overdraft_limit),
        system: a.system,
        metadata: a.metadata.clone(),
        version,
        position,
    }
}

/// An overdraft limit: at most 10^15, checked at the edge when the account was opened
/// (system accounts have none), so always within 64 bits.
pub fn units64(m: ledger_domain::Money) -> i64 {
    m.to_i64().unwrap_or(i64::MAX)
}

fn account_status(s: AccountStatus) -> wire::AccountStatus {
    match s {
        AccountStatus::Open => wire::AccountStatus::Open,
        AccountStatus::Closed => wire::AccountStatus::Closed,
    }
}

/// An account of the read model.
pub fn account_row(r: AccountRow) -> wire::Account {
    wire::Account {
        id: r.id,
        currency: r.currency,
        owner: r.owner,
        subject: r.subject.unwrap_or_else(|| r.id.to_string()),
        erased: r.erased,
        status: account_status(r.status),
        balance: r.balance,
        available: r.balance - r.pending_holds,
        pending_holds: r.pending_holds,
        overdraft_limit: r.overdraft_limit,
        system: r.system,
        metadata: r.metadata,
        version: r.version,
        position: r.position,
    }
}

/// A transfer from the write side, recorded at `recorded_at`.
pub fn transfer(t: &ledger_domain::Transfer, recorded_at: DateTime<Utc>, position: Option<i64>) -> wire::Transfer {
    wire::Transfer {
        id: t.id,
        from: t.from,
        to: t.to,
        amount: t.amount.minor_units(),
        currency: t.currency.as_str().to_owned(),
        status: wire::TransferStatus::Completed,
        reference: t.reference.clone(),
        reverses: t.reverses,
        reason: t.reason.clone(),
        reversed_by: t.reversed_by,
        metadata: t.metadata.clone(),
        effective_at: t.effective_at.unwrap_or(recorded_at),
        recorded_at,
        position,
    }
}

/// A transfer of the read model.
pub fn transfer_row(r: TransferRow) -> wire::Transfer {
    wire::Transfer {
        id: r.id,
        from: r.from_account,
        to: r.to_account,
        amount: r.amount,
        currency: r.currency,
        status: wire::TransferStatus::Completed,
        reference: r.reference,
        reverses: r.reverses,
        reason: r.reason,
        reversed_by: r.reversed_by,
        metadata: r.metadata,
        effective_at: r.effective_at.unwrap_or(r.created_at),
        recorded_at: r.created_at,
        position: None,
    }
}

/// A hold from the write side, whose last event is at `position`.
pub fn hold(h: &ledger_domain::Hold, position: i64) -> wire::Hold {
    wire::Hold {
        id: h.id,
        account_id: h.account_id,
        to: h.to,
        amount: h.amount.minor_units(),
        currency: h.currency.as_str().to_owned(),
        status: h.status,
        captured_amount: h.captured_amount.map(|a| a.minor_units()),
        expires_at: h.expires_at,
        reference: h.reference.clone(),
        metadata: h.metadata.clone(),
        position,
    }
}

/// A hold of the read model.
pub fn hold_row(r: ledger_projections::queries::HoldRow) -> Result<wire::Hold, ApiError> {
    Ok(wire::Hold {
        id: r.id,
        account_id: r.account_id,
        to: r.to_account,
        amount: r.amount,
        currency: r.currency,
        status: written("a hold's status", serde_json::Value::String(r.status))?,
        captured_amount: r.captured_amount,
        expires_at: r.expires_at,
        reference: r.reference,
        metadata: r.metadata,
        position: r.position,
    })
}

/// A transaction from the write side, recorded at `recorded_at` and `position`.
pub fn transaction(t: &ledger_domain::Transaction, recorded_at: DateTime<Utc>, position: i64) -> wire::Transaction {
    wire::Transaction {
        id: t.id,
        postings: t.postings.iter().map(posting).collect(),
        reference: t.reference.clone(),
        metadata: t.metadata.clone(),
        effective_at: t.effective_at.unwrap_or(recorded_at),
        recorded_at,
        status: wire::TransferStatus::Completed,
        reverses: t.reverses,
        reversed_by: t.reversed_by,
        position,
    }
}

/// A transfer as the one-posting transaction it also is.
pub fn transfer_as_transaction(
    t: &ledger_domain::Transfer,
    recorded_at: DateTime<Utc>,
    position: i64,
) -> wire::Transaction {
    let as_transaction = ledger_domain::Transaction {
        id: t.id,
        postings: vec![ledger_domain::Leg { from: t.from, to: t.to, amount: t.amount, currency: t.currency }],
        reference: t.reference.clone(),
        metadata: t.metadata.clone(),
        effective_at: t.effective_at,
        reverses: t.reverses,
        reason: t.reason.clone(),
        reversed_by: t.reversed_by,
    };
    transaction(&as_transaction, recorded_at, position)
}

fn posting(l: &ledger_domain::Leg) -> wire::Posting {
    wire::Posting { from: l.from, to: l.to, amount: l.amount.minor_units(), currency: l.currency.as_str().to_owned() }
}

/// A transaction of the read model.
pub fn transaction_row(r: TransactionRow) -> Result<wire::Transaction, ApiError> {
    Ok(wire::Transaction {
        id: r.id,
        postings: written("a transaction's postings", r.postings)?,
        reference: r.reference,
        metadata: r.metadata,
        effective_at: r.effective_at,
        recorded_at: r.recorded_at,
        status: wire::TransferStatus::Completed,
        reverses: r.reverses,
        reversed_by: r.reversed_by,
        position: r.position,
    })
}

pub fn withdrawal(w: &ledger_domain::Withdrawal, position: Option<i64>) -> wire::Withdrawal {
    wire::Withdrawal {
        id: w.id,
        account_id: w.account_id,
        amount: w.amount.minor_units(),
        currency: w.currency.as_str().to_owned(),
        destination: w.destination.clone(),
        status: withdrawal_status(w.status),
        provider_ref: w.provider_ref.clone(),
        failure_reason: w.failure_reason.clone(),
        metadata: w.metadata.clone(),
        position,
    }
}

fn withdrawal_status(s: WithdrawalStatus) -> wire::WithdrawalStatus {
    match s {
        WithdrawalStatus::Pending => wire::WithdrawalStatus::Pending,
        WithdrawalStatus::Settled => wire::WithdrawalStatus::Settled,
        WithdrawalStatus::Failed => wire::WithdrawalStatus::Failed,
    }
}

/// A withdrawal of the read model.
pub fn withdrawal_row(r: WithdrawalRow) -> wire::Withdrawal {
    wire::Withdrawal {
        id: r.id,
        account_id: r.account_id,
        amount: r.amount,
        currency: r.currency,
        destination: r.destination,
        status: withdrawal_status(r.status),
        provider_ref: r.provider_ref,
        failure_reason: r.failure_reason,
        metadata: r.metadata,
        position: None,
    }
}

/// A reconciliation run's report.
pub fn reconciliation(r: RunReport) -> wire::ReconciliationReport {
    wire::ReconciliationReport {
        id: r.id,
        status: match r.status {
            RunStatus::Running => wire::ReconciliationStatus::Running,
            RunStatus::Finished => wire::ReconciliationStatus::Finished,
            RunStatus::Failed => wire::ReconciliationStatus::Failed,
        },
        from: r.from,
        to: r.to,
        matched: r.matched,
        started_position: r.started_position,
        mismatches: r
            .mismatches
            .into_iter()
            .map(|m| wire::Mismatch {
                kind: m.found.kind,
                withdrawal_id: m.found.withdrawal_id,
                reference: m.found.reference,
                provider_ref: m.found.provider_ref,
                ours: m.found.ours,
                theirs: m.found.theirs,
                resolution: m.found.resolution,
                resolution_position: m.resolution_position,
                account_below_limit: m.found.account_below_limit,
            })
            .collect(),
        error: r.error,
        finished_position: r.finished_position,
    }
}

/// A value the ledger wrote itself (a read model's text column, an event's metadata)
/// as its wire type; one that does not parse is corrupted data, 500.
fn written<T: serde::de::DeserializeOwned>(what: &str, value: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| ApiError::internal(&format!("{what} does not parse: {e}")))
}

/// One line of a statement.
pub fn entry(r: EntryRow) -> Result<wire::Entry, ApiError> {
    Ok(wire::Entry {
        position: r.position,
        kind: written("an entry's kind", serde_json::Value::String(r.kind))?,
        transfer_id: r.movement_id,
        amount: r.amount,
        balance_after: r.balance_after,
        counterparty: r.counterparty,
        occurred_at: r.occurred_at,
        effective_at: r.effective_at,
    })
}

/// An event as it is in the log.
pub fn recorded_event(e: RecordedEvent) -> Result<wire::RecordedEvent, ApiError> {
    Ok(wire::RecordedEvent {
        position: e.position,
        event_id: e.event_id,
        stream_id: e.stream_id,
        version: e.version,
        event_type: e.event_type,
        data: e.data,
        metadata: written("an event's metadata", e.metadata)?,
        recorded_at: e.recorded_at,
        hash: e.hash.as_deref().map(hex::encode).unwrap_or_default(),
    })
}

/// An event with its metadata spelled out, and every stream it belongs to.
pub fn audit_event(e: RecordedEvent) -> Result<wire::AuditEvent, ApiError> {
    // Every stream the event belongs to, the primary one first.
    let streams = e.event().map(|ev| ev.streams().into_iter().map(|(id, _)| id).collect()).unwrap_or_default();
    let m: wire::EventMetadata = written("an event's metadata", e.metadata)?;
    Ok(wire::AuditEvent {
        position: e.position,
        event_id: e.event_id,
        stream_id: e.stream_id,
        version: e.version,
        streams,
        event_type: e.event_type,
        data: e.data,
        recorded_at: e.recorded_at,
        hash: e.hash.as_deref().map(hex::encode).unwrap_or_default(),
        actor: Some(m.actor),
        request_id: m.request_id,
        correlation_id: m.correlation_id,
        causation_id: m.causation_id,
        idempotency_key: m.idempotency_key,
    })
}

pub fn breaker_state(s: ledger_infrastructure::breaker::BreakerState) -> wire::BreakerState {
    use ledger_infrastructure::breaker::BreakerState as S;
    match s {
        S::Closed => wire::BreakerState::Closed,
        S::Open => wire::BreakerState::Open,
        S::HalfOpen => wire::BreakerState::HalfOpen,
    }
}

/// What `GET /v1/admin/circuit-breakers` shows of a breaker.
pub fn breaker(b: ledger_infrastructure::breaker::BreakerSnapshot) -> wire::Breaker {
    wire::Breaker { name: b.name, state: breaker_state(b.state), failures: b.failures, opened_at: b.opened_at }
}

pub fn projection_name(p: ledger_projections::Projection) -> wire::ProjectionName {
    match p {
        ledger_projections::Projection::Accounts => wire::ProjectionName::Accounts,
        ledger_projections::Projection::Transfers => wire::ProjectionName::Transfers,
    }
}

/// An open dead letter.
pub fn dead_letter(r: ledger_projections::queries::DeadLetterRow) -> wire::DeadLetter {
    wire::DeadLetter {
        id: r.id,
        source: r.source,
        withdrawal_id: Some(r.withdrawal_id),
        event_position: r.event_position,
        attempts: r.attempts,
        last_error: r.last_error,
        dead_lettered_at: r.dead_lettered_at,
    }
}

/// A webhook's dead letter.
pub fn webhook_dead_letter(r: ledger_infrastructure::webhooks::WebhookDeadLetter) -> wire::DeadLetter {
    wire::DeadLetter {
        id: r.id,
        source: format!("webhook:{}", r.webhook_id),
        withdrawal_id: None,
        event_position: r.event_position,
        attempts: r.attempts,
        last_error: r.last_error,
        dead_lettered_at: r.dead_lettered_at,
    }
}

/// An account view as the JSON a read answers with (what the account cache keeps).
pub fn account_json(view: &wire::Account) -> Result<bytes::Bytes, ApiError> {
    serde_json::to_vec(view).map(Into::into).map_err(|e| ApiError::internal(&format!("writing an account: {e}")))
}

/// [`read`] of a body already written as JSON.
pub fn read_json(json: bytes::Bytes, position: i64) -> Response {
    let mut response =
        (StatusCode::OK, [(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], json)
            .into_response();
    response.headers_mut().insert(LEDGER_POSITION, HeaderValue::from(position));
    response
}

/// A read response: 200, the JSON body and the position the data reflects.
pub fn read(body: &impl Serialize, position: i64) -> Response {
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    response.headers_mut().insert(LEDGER_POSITION, HeaderValue::from(position));
    response
}

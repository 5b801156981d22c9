//! JSON views of domain state, shared by command responses and queries.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ledger_domain::{Account, AccountStatus, Transfer, Withdrawal, WithdrawalStatus};
use serde_json::{Value, json};

pub const LEDGER_POSITION: HeaderName = HeaderName::from_static("x-ledger-position");

pub fn account(a: &Account, version: i64, position: i64) -> Value {
    json!({
        "id": a.id,
        "currency": a.currency,
        "owner": a.owner,
        "status": match a.status { AccountStatus::Open => "open", AccountStatus::Closed => "closed" },
        "balance": a.balance,
        "available": a.available(),
        "pending_holds": a.pending_holds,
        "overdraft_limit": a.overdraft_limit,
        "system": a.system,
        "metadata": a.metadata,
        "version": version,
        "position": position,
    })
}

pub fn transfer(t: &Transfer, position: Option<i64>) -> Value {
    let mut v = json!({
        "id": t.id,
        "from": t.from,
        "to": t.to,
        "amount": t.amount,
        "currency": t.currency,
        "status": "completed",
        "reference": t.reference,
        "reverses": t.reverses,
        "reason": t.reason,
        "reversed_by": t.reversed_by,
        "metadata": t.metadata,
    });
    if let Some(p) = position {
        v["position"] = json!(p);
    }
    v
}

pub fn withdrawal(w: &Withdrawal, position: Option<i64>) -> Value {
    let mut v = json!({
        "id": w.id,
        "account_id": w.account_id,
        "amount": w.amount,
        "currency": w.currency,
        "destination": w.destination,
        "status": match w.status {
            WithdrawalStatus::Pending => "pending",
            WithdrawalStatus::Settled => "settled",
            WithdrawalStatus::Failed => "failed",
        },
        "provider_ref": w.provider_ref,
        "failure_reason": w.failure_reason,
        "metadata": w.metadata,
    });
    if let Some(p) = position {
        v["position"] = json!(p);
    }
    v
}

/// A read response: 200, the JSON body and the position the data reflects.
pub fn read(body: Value, position: i64) -> Response {
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    response.headers_mut().insert(LEDGER_POSITION, HeaderValue::from(position));
    response
}

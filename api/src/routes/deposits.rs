//! Deposits: money entering the ledger from the outside world, through the
//! currency's system account.

use crate::http::error::ApiError;
use crate::http::requests::parse;
use crate::run::state::AppState;
use ledger_domain::Command;
use ledger_domain::decide::MakeDeposit;
use ledger_infrastructure::{Recorded, StoredResponse};
use ledger_wire::DepositRequest;
use uuid::Uuid;

#[utoipa::path(
    post,
    path = "/v1/deposits",
    operation_id = "deposit",
    tag = "deposits",
    summary = "Record a deposit",
    description = "Credits the account and debits the currency's system account.",
    request_body = ledger_wire::DepositRequest,
    responses(
        (status = 201, description = "The deposit, with the `position` of its event.", body = ledger_wire::Deposit),
        (status = 404, description = "`account_not_found`: no such account."),
        (status = 422, description = "`currency_mismatch`: not the account's currency; `account_closed`; \
            `validation_error`: a field is missing or malformed (e.g. `amount` not in 1 ..= 10^15), a system \
            account, or the balance would overflow."),
    )
)]
pub fn plan(state: &AppState, json: &serde_json::Value) -> Result<crate::http::command::Planned, ApiError> {
    let r: DepositRequest = parse(json)?;
    let c = MakeDeposit {
        deposit_id: Uuid::now_v7(),
        account_id: r.account_id,
        amount: r.amount,
        currency: r.currency,
        reference: r.reference.map(|t| t.0),
        metadata: r.metadata.map(|m| m.0),
        effective_at: crate::http::validate::effective_at(state, r.effective_at)?,
    };
    Ok(crate::http::command::Planned::new(Command::MakeDeposit(c), None, render_deposit))
}

/// Renders the deposit a command recorded.
fn render_deposit(recorded: &Recorded) -> StoredResponse {
    let d = recorded
        .events
        .iter()
        .find_map(|e| match e {
            ledger_domain::Event::DepositRecorded(d) => Some(d),
            _ => None,
        })
        .expect("a deposit command records its deposit");
    let recorded_at = recorded.recorded_at.unwrap_or(chrono::DateTime::UNIX_EPOCH);
    let body = ledger_wire::Deposit {
        id: d.deposit_id,
        account_id: d.account_id,
        amount: d.amount.minor_units(),
        currency: d.currency.as_str().to_owned(),
        reference: d.reference.clone(),
        metadata: d.metadata.clone(),
        effective_at: d.effective_at.unwrap_or(recorded_at),
        recorded_at,
        position: recorded.position,
    };
    crate::http::command::stored(201, &body)
}

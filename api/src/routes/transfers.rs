//! Transfers between accounts, and their reversal as a compensating transfer.

use crate::http::error::ApiError;
use crate::http::extract::{Params, Segment};
use crate::http::requests::parse;
use crate::http::validate::path_uuid;
use crate::read::Consistency;
use crate::read::coherence::read_model_ready;
use crate::read::views;
use crate::routes::strong_state;
use crate::run::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use ledger_domain::Command;
use ledger_domain::Event;
use ledger_domain::decide::{PostTransfer, ReverseTransfer};
use ledger_infrastructure::{Recorded, StoredResponse};
use ledger_projections::Projection;
use ledger_wire::{ReverseRequest, TransferRequest};
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/transfers/{id}", get(read))
}

/// Renders the transfer a command posted (a transfer or a reversal).
fn render_transfer(recorded: &Recorded) -> StoredResponse {
    let transfer_id = recorded
        .events
        .iter()
        .find_map(|e| match e {
            Event::TransferPosted(t) => Some(t.transfer_id),
            _ => None,
        })
        .expect("a transfer command records its transfer");
    let state = recorded.state();
    let t = state.transfer(transfer_id).expect("the command created this transfer");
    let recorded_at = recorded.recorded_at.unwrap_or(chrono::DateTime::UNIX_EPOCH);
    crate::http::command::stored(201, &views::transfer(t, recorded_at, Some(recorded.position)))
}

#[utoipa::path(
    post,
    path = "/v1/transfers",
    operation_id = "transfer",
    tag = "transfers",
    summary = "Post a transfer",
    description = "Moves money between two accounts of the same currency, within the payer's overdraft limit.",
    request_body = ledger_wire::TransferRequest,
    responses(
        (status = 201, description = "The completed transfer, with the `position` of its event.", body = ledger_wire::Transfer),
        (status = 404, description = "`account_not_found`: `from` or `to` does not exist."),
        (status = 422, description = "`insufficient_funds`; `currency_mismatch`; `account_closed`; `same_account`: \
            `from` = `to`; `validation_error`: a field is missing or malformed, a system account, or a balance \
            would overflow."),
    )
)]
pub fn plan_transfer(state: &AppState, json: &serde_json::Value) -> Result<crate::http::command::Planned, ApiError> {
    let r: TransferRequest = parse(json)?;
    let transfer_id = Uuid::now_v7();
    let command = Command::PostTransfer(PostTransfer {
        transfer_id,
        from: r.from,
        to: r.to,
        amount: r.amount,
        currency: r.currency,
        reference: r.reference.map(|t| t.0),
        metadata: r.metadata.map(|m| m.0),
        effective_at: crate::http::validate::effective_at(state, r.effective_at)?,
    });
    Ok(crate::http::command::Planned::new(command, None, render_transfer).minted(Some(transfer_id)))
}

#[utoipa::path(
    post,
    path = "/v1/transfers/{id}/reverse",
    operation_id = "reverse_transfer",
    tag = "transfers",
    summary = "Reverse a transfer",
    description = "Posts a compensating transfer (`reverses` = id) moving the amount back; the original stays in \
        the log.",
    params(("id" = Uuid, Path, description = "The transfer to reverse.")),
    request_body = ledger_wire::ReverseRequest,
    responses(
        (status = 201, description = "The reversing transfer, with the `position` of its event.", body = ledger_wire::Transfer),
        (status = 404, description = "`not_found`: no such transfer (or the id is not a UUID)."),
        (status = 422, description = "`already_reversed`; `insufficient_funds`: the credited account cannot pay it \
            back; `account_closed`; `validation_error`: `reason` is missing or malformed, or a balance would overflow."),
    )
)]
pub fn plan_reverse(raw: &str, json: &serde_json::Value) -> Result<crate::http::command::Planned, ApiError> {
    let transfer_id = path_uuid(raw, || ApiError::not_found(format!("transfer {raw} not found")))?;
    let r: ReverseRequest = parse(json)?;
    let reversal_id = Uuid::now_v7();
    let command = Command::ReverseTransfer(ReverseTransfer { reversal_id, transfer_id, reason: r.reason.0 });
    // The reversal is caused by the original transfer: the audit trail links them.
    let causation = Some(transfer_id.to_string());
    Ok(crate::http::command::Planned::new(command, causation, render_transfer).minted(Some(reversal_id)))
}

#[utoipa::path(
    get,
    path = "/v1/transfers/{id}",
    operation_id = "get_transfer",
    tag = "transfers",
    summary = "Read a transfer",
    params(("id" = Uuid, Path, description = "The transfer id."), ledger_wire::ConsistencyQuery),
    responses(
        (status = 200, description = "The transfer's current state.", body = ledger_wire::Transfer),
        (status = 400, description = "`validation_error`: `consistency` or `min_position` is invalid."),
        (status = 404, description = "`not_found`: no such transfer (or the id is not a UUID)."),
        (status = 503, description = "`consistency_timeout`: the read model did not reach `min_position` in time."),
    )
)]
async fn read(State(state): State<AppState>, Segment(raw): Segment, Params(q): Params) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found(format!("transfer {raw} not found"));
    let id = path_uuid(&raw, not_found)?;
    let consistency = Consistency::from_query(&q)?;
    if consistency != Consistency::Strong {
        let ready = read_model_ready(&state, Projection::Transfers, consistency).await?;
        if let (Some(row), position) = ledger_projections::queries::transfer(ready.pool, id).await? {
            return Ok(views::read(&views::transfer_row(row), position));
        }
    }
    // Strong, or not in the read model yet: an id the service returned is never 404.
    let (ledger, head) = strong_state(&state, &[id]).await?;
    let found = ledger.transfer(id).ok_or_else(not_found)?;
    let (recorded_at, _) = crate::routes::created(&state, id).await?;
    Ok(views::read(&views::transfer(found, recorded_at, None), head))
}

//! Withdrawals: funds are held at once; the payout to the provider settles or fails
//! the withdrawal later.

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
use ledger_domain::decide::RequestWithdrawal;
use ledger_infrastructure::{Recorded, StoredResponse};
use ledger_projections::Projection;
use ledger_wire::WithdrawalRequest;
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/withdrawals/{id}", get(read))
}

#[utoipa::path(
    post,
    path = "/v1/withdrawals",
    operation_id = "withdraw",
    tag = "withdrawals",
    summary = "Request a withdrawal",
    description = "Holds the funds at once (`available` drops, `balance` does not) and queues a payout to the \
        payment provider, which settles or fails the withdrawal later.",
    request_body = ledger_wire::WithdrawalRequest,
    responses(
        (status = 202, description = "The pending withdrawal, with the `position` of its event.", body = ledger_wire::Withdrawal),
        (status = 404, description = "`account_not_found`: no such account."),
        (status = 422, description = "`insufficient_funds`; `currency_mismatch`; `account_closed`; \
            `validation_error`: a field is missing or malformed, a system account, or the holds would overflow."),
    )
)]
pub fn plan(json: &serde_json::Value) -> Result<crate::http::command::Planned, ApiError> {
    let r: WithdrawalRequest = parse(json)?;
    let withdrawal_id = Uuid::now_v7();
    let command = Command::RequestWithdrawal(RequestWithdrawal {
        withdrawal_id,
        account_id: r.account_id,
        amount: r.amount,
        currency: r.currency,
        destination: r.destination.0,
        metadata: r.metadata.map(|m| m.0),
    });
    Ok(crate::http::command::Planned::new(command, None, render_withdrawal).minted(Some(withdrawal_id)))
}

/// Renders the withdrawal a command requested.
fn render_withdrawal(recorded: &Recorded) -> StoredResponse {
    let withdrawal_id = recorded
        .events
        .iter()
        .find_map(|e| match e {
            ledger_domain::Event::WithdrawalRequested(w) => Some(w.withdrawal_id),
            _ => None,
        })
        .expect("a withdrawal command records its withdrawal");
    let state = recorded.state();
    let w = state.withdrawal(withdrawal_id).expect("the command created this withdrawal");
    crate::http::command::stored(202, &views::withdrawal(w, Some(recorded.position)))
}

#[utoipa::path(
    get,
    path = "/v1/withdrawals/{id}",
    operation_id = "get_withdrawal",
    tag = "withdrawals",
    summary = "Read a withdrawal",
    params(("id" = Uuid, Path, description = "The withdrawal id."), ledger_wire::ConsistencyQuery),
    responses(
        (status = 200, description = "The withdrawal's current state.", body = ledger_wire::Withdrawal),
        (status = 400, description = "`validation_error`: `consistency` or `min_position` is invalid."),
        (status = 404, description = "`not_found`: no such withdrawal (or the id is not a UUID)."),
        (status = 503, description = "`consistency_timeout`: the read model did not reach `min_position` in time."),
    )
)]
async fn read(State(state): State<AppState>, Segment(raw): Segment, Params(q): Params) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found(format!("withdrawal {raw} not found"));
    let id = path_uuid(&raw, not_found)?;
    let consistency = Consistency::from_query(&q)?;
    if consistency == Consistency::Strong {
        let (ledger, head) = strong_state(&state, &[id]).await?;
        let found = ledger.withdrawal(id).ok_or_else(not_found)?;
        return Ok(views::read(&views::withdrawal(found, None), head));
    }
    let ready = read_model_ready(&state, Projection::Transfers, consistency).await?;
    match ledger_projections::queries::withdrawal(ready.pool, id).await? {
        (Some(row), position) => Ok(views::read(&views::withdrawal_row(row), position)),
        (None, _) => {
            // Not in the read model yet: an id the service returned is never 404.
            let (ledger, head) = strong_state(&state, &[id]).await?;
            let found = ledger.withdrawal(id).ok_or_else(not_found)?;
            Ok(views::read(&views::withdrawal(found, None), head))
        }
    }
}

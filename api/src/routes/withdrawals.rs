//! Withdrawals: funds are held at once; the payout to the provider settles or fails
//! the withdrawal later.

use crate::command::{CommandBody, execute, rejection};
use crate::context::{Principal, RequestContext};
use crate::error::ApiError;
use crate::read::Consistency;
use crate::routes::{read_model_ready, strong_state};
use crate::state::AppState;
use crate::validate::{Fields, path_uuid};
use crate::views;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use ledger_domain::Command;
use ledger_domain::decide::RequestWithdrawal;
use ledger_infrastructure::{Executed, StoredResponse};
use ledger_projections::Projection;
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/withdrawals", post(withdraw)).route("/v1/withdrawals/{id}", get(read))
}

async fn withdraw(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    body: CommandBody,
) -> Result<Response, ApiError> {
    let f = Fields::of(&body.json)?;
    let withdrawal_id = Uuid::now_v7();
    let command = Command::RequestWithdrawal(RequestWithdrawal {
        withdrawal_id,
        account_id: f.uuid("account_id")?,
        amount: f.amount("amount")?,
        currency: f.currency("currency")?,
        destination: f.text("destination")?,
    });
    let render = Arc::new(move |outcome: Result<Executed<'_>, &ledger_domain::DomainError>| match outcome {
        Ok(Executed { state, position, .. }) => {
            let w = state.withdrawal(withdrawal_id).expect("the command created this withdrawal");
            StoredResponse { status: 202, body: views::withdrawal(w, Some(position)) }
        }
        Err(e) => rejection(e),
    });
    execute(&state, &principal, &context, body, command, None, render).await
}

async fn read(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found(format!("withdrawal {raw} not found"));
    let id = path_uuid(&raw, not_found)?;
    let consistency = Consistency::from_query(&q)?;
    if consistency == Consistency::Strong {
        let (ledger, head) = strong_state(&state, &[id]).await?;
        let found = ledger.withdrawal(id).ok_or_else(not_found)?;
        return Ok(views::read(views::withdrawal(found, None), head));
    }
    read_model_ready(&state, Projection::Transfers, consistency).await?;
    let (view, position) = ledger_projections::queries::withdrawal(&state.pool, id).await?;
    Ok(views::read(view.ok_or_else(not_found)?, position))
}

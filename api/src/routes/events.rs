//! The global log and the system accounts.

use crate::http::error::ApiError;
use crate::http::extract::Params;
use crate::http::validate::{limit_param, position_param};
use crate::read::views;
use crate::run::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/events", get(events)).route("/v1/system-accounts", get(system_accounts))
}

/// Pages through the log in position order. Positions are gapless and in commit
/// order, so `after` is a stable cursor: nothing can appear behind it later.
#[utoipa::path(
    get,
    path = "/v1/events",
    operation_id = "log_events",
    tag = "log",
    summary = "Page through the global log",
    description = "Events in position order. Positions are gapless and in commit order, so `after` is a stable \
        cursor.",
    params(ledger_wire::EventsQuery),
    responses(
        (status = 200, description = "One page of the log.", body = ledger_wire::EventsPage),
        (status = 400, description = "`validation_error`: `after` or `limit` is invalid."),
    )
)]
async fn events(State(state): State<AppState>, Params(q): Params) -> Result<Response, ApiError> {
    let after = position_param("after", q.get("after").map(String::as_str))?.unwrap_or(0);
    let limit = limit_param(q.get("limit").map(String::as_str), 100, ledger_wire::limits::PAGE_MAX)?;
    let head = state.store.head().await?;
    let events = state.store.read_all(after, limit).await?;
    let next_after = events.last().map_or(after, |e| e.position);
    let events = events.into_iter().map(views::recorded_event).collect::<Result<_, _>>()?;
    Ok(views::read(&ledger_wire::EventsPage { events, next_after }, head))
}

#[utoipa::path(
    get,
    path = "/v1/system-accounts",
    operation_id = "system_accounts",
    tag = "log",
    summary = "The system accounts",
    description = "One per currency: money from or to the outside world moves through it; it may go negative.",
    responses((status = 200, description = "The system accounts.", body = ledger_wire::SystemAccounts))
)]
async fn system_accounts(State(state): State<AppState>) -> Result<Response, ApiError> {
    let head = state.store.head().await?;
    let accounts: Vec<_> = state
        .store
        .system_accounts()
        .await?
        .into_iter()
        .map(|(currency, id)| ledger_wire::SystemAccount { currency: currency.as_str().to_owned(), id })
        .collect();
    Ok(views::read(&ledger_wire::SystemAccounts { accounts }, head))
}

//! Closed periods (API.md v1.2 "Verifiable log"; docs/AUDIT.md "Periods"): closing the
//! books up to a business time, the periods with their signed tree heads, and each
//! period's closing balances.

use crate::http::command::{CommandBody, Planned};
use crate::http::context::{Principal, RequestContext};
use crate::http::error::ApiError;
use crate::http::extract::{Params, Segment};
use crate::http::validate::{limit_param, path_uuid};
use crate::read::views;
use crate::run::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use chrono::{DateTime, SubsecRound, Utc};
use ledger_domain::decide::ClosePeriod;
use ledger_domain::{Command, Event, periods_stream_id};
use ledger_infrastructure::Recorded;
use ledger_projections::Projection;
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/periods", get(list).post(close))
        .route("/v1/admin/periods/{id}", get(one))
        .route("/v1/admin/periods/{id}/balances", get(balances))
}

/// A period as the log has it: its `PeriodClosed` event. Also the stored answer of a
/// close (the tree head is added to every answer, a replay's too).
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
struct Period {
    id: Uuid,
    closes_at: DateTime<Utc>,
    closed_at: DateTime<Utc>,
    position: i64,
}

fn period_not_found() -> ApiError {
    ApiError::not_found("no period has this id")
}

/// The periods of the log, newest first (all of them, or the one with `id`): the
/// periods stream's events.
async fn periods(state: &AppState, id: Option<Uuid>) -> Result<Vec<Period>, ApiError> {
    let events = state.store.read_stream(periods_stream_id(), 1, i64::MAX).await?;
    let mut periods = Vec::with_capacity(events.len());
    for recorded in events.iter().rev() {
        let Event::PeriodClosed(e) = recorded.event_ref().map_err(|e| ApiError::internal(&e))? else {
            return Err(ApiError::internal(&"the periods stream holds another event"));
        };
        if id.is_none_or(|id| id == e.period_id) {
            let closed_at = recorded.recorded_at;
            periods.push(Period { id: e.period_id, closes_at: e.closes_at, closed_at, position: recorded.position });
        }
    }
    Ok(periods)
}

/// The period view: with the tree head signed over the log up to its event (the tree
/// follows the log closely; one it has not reached in the consistency wait is 503).
async fn view(state: &AppState, p: Period) -> Result<ledger_wire::PeriodView, ApiError> {
    let tree_head = crate::routes::audit::tree_head_at(state, p.position).await?;
    Ok(ledger_wire::PeriodView {
        id: p.id,
        closes_at: p.closes_at,
        closed_at: p.closed_at,
        position: p.position,
        tree_head,
    })
}

#[utoipa::path(
    post,
    path = "/v1/admin/periods",
    operation_id = "close_period",
    tag = "operations",
    summary = "Close a period",
    description = "Operator or admin. Closes the books up to `closes_at`: from then on every command whose \
        `effective_at` (given, or when it is recorded) is at or before it is 422 `period_closed`. The period's \
        balances are kept as they stood at `closes_at`, and its tree head is signed over the log up to its event.",
    request_body = ledger_wire::PeriodRequest,
    responses(
        (status = 201, description = "The closed period.", body = ledger_wire::PeriodView),
        (status = 409, description = "`idempotency_key_in_flight`: a request with this key is still executing; \
            `version_conflict`: concurrent commands kept conflicting."),
        (status = 422, description = "`validation_error`: `closes_at` is missing, not RFC 3339, in the future, or \
            not later than the previous period's."),
        (status = 503, description = "`consistency_timeout`: the period was closed, but the tree has not reached it \
            in time; the same request again answers it."),
    )
)]
async fn close(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    body: CommandBody,
) -> Result<Response, ApiError> {
    let r: ledger_wire::PeriodRequest = crate::http::requests::parse(&body.json)?;
    // Postgres keeps microseconds: the event keeps what every check compares.
    let closes_at = r.closes_at.0.trunc_subsecs(6);
    let now = state.clock.now();
    if closes_at >= now {
        return Err(ApiError::validation(format!(
            "`closes_at` must be in the past: the ledger's time is {}",
            now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        )));
    }
    let command = Command::ClosePeriod(ClosePeriod { period_id: Uuid::now_v7(), closes_at });
    let render = |recorded: &Recorded| {
        let Some(Event::PeriodClosed(e)) = recorded.events.first() else { unreachable!("a close records its event") };
        let closed_at = recorded.recorded_at.unwrap_or_default();
        let period = Period { id: e.period_id, closes_at: e.closes_at, closed_at, position: recorded.position };
        crate::http::command::stored(201, &period)
    };
    let (stored, replayed) = Planned::new(command, None, render).answer(&state, &principal, &context, body).await?;
    if stored.status != 201 {
        return Ok(crate::http::command::respond(stored, replayed));
    }
    let period: Period = serde_json::from_value(stored.body).map_err(|e| ApiError::internal(&e))?;
    let view = view(&state, period).await?;
    let stored = crate::http::command::stored(201, &view);
    Ok(crate::http::command::respond(stored, replayed))
}

#[utoipa::path(
    get,
    path = "/v1/admin/periods",
    operation_id = "periods",
    tag = "operations",
    summary = "Closed periods",
    description = "Operator or admin. Every closed period, newest first, each with its signed tree head.",
    responses(
        (status = 200, description = "The periods.", body = ledger_wire::PeriodList),
        (status = 503, description = "`consistency_timeout`: the tree has not reached the latest period in time."),
    )
)]
async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let head = state.store.head().await?;
    let mut out = Vec::new();
    for p in periods(&state, None).await? {
        out.push(view(&state, p).await?);
    }
    Ok(views::read(&ledger_wire::PeriodList { periods: out }, head))
}

#[utoipa::path(
    get,
    path = "/v1/admin/periods/{id}",
    operation_id = "period",
    tag = "operations",
    summary = "A closed period",
    description = "Operator or admin.",
    params(("id" = Uuid, Path, description = "The period id.")),
    responses(
        (status = 200, description = "The period.", body = ledger_wire::PeriodView),
        (status = 404, description = "`not_found`: no period has this id (or it is not a UUID)."),
        (status = 503, description = "`consistency_timeout`: the tree has not reached the period in time."),
    )
)]
async fn one(State(state): State<AppState>, Segment(raw): Segment) -> Result<Response, ApiError> {
    let id = path_uuid(&raw, period_not_found)?;
    let head = state.store.head().await?;
    let period = periods(&state, Some(id)).await?.into_iter().next().ok_or_else(period_not_found)?;
    Ok(views::read(&view(&state, period).await?, head))
}

#[utoipa::path(
    get,
    path = "/v1/admin/periods/{id}/balances",
    operation_id = "period_balances",
    tag = "operations",
    summary = "A period's closing balances",
    description = "Operator or admin. Every account of the ledger at the close (system accounts included), by id, \
        with its balance effective at `closes_at`; for each currency they sum to 0. Kept when the period closed, \
        never changed after.",
    params(
        ("id" = Uuid, Path, description = "The period id."),
        ("limit" = Option<i64>, Query, description = "1–1000, default 100."),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the page before."),
    ),
    responses(
        (status = 200, description = "One page of balances.", body = ledger_wire::PeriodBalances),
        (status = 400, description = "`validation_error`: `limit` or `cursor` is invalid."),
        (status = 404, description = "`not_found`: no period has this id (or it is not a UUID)."),
        (status = 503, description = "`consistency_timeout`: the read model has not reached the period in time."),
    )
)]
async fn balances(
    State(state): State<AppState>,
    Segment(raw): Segment,
    Params(q): Params,
) -> Result<Response, ApiError> {
    let id = path_uuid(&raw, period_not_found)?;
    let limit = limit_param(q.get("limit").map(String::as_str), 100, ledger_wire::limits::PAGE_MAX)?;
    let cursor = match q.get("cursor") {
        None => None,
        Some(c) => {
            Some(Uuid::parse_str(c).map_err(|_| ApiError::bad_request("`cursor` is not a cursor from this API"))?)
        }
    };
    let period = periods(&state, Some(id)).await?.into_iter().next().ok_or_else(period_not_found)?;
    // The balances are written as the accounts projection applies the period's event.
    let checkpoint = || ledger_projections::queries::checkpoint(&state.pool, Projection::Accounts);
    state.positions.wait(Projection::Accounts, period.position, state.config.consistency_wait, checkpoint).await?;
    let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
        "select account_id, currency, balance::text from period_balances
         where period_id = $1 and ($2::uuid is null or account_id > $2) order by account_id limit $3",
    )
    .bind(period.id)
    .bind(cursor)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    let mut balances = Vec::with_capacity(rows.len());
    for (account_id, currency, balance) in rows {
        let balance = balance.parse::<i128>().map_err(|e| ApiError::internal(&e))?;
        balances.push(ledger_wire::PeriodBalance { account_id, currency, balance });
    }
    let next_cursor =
        if balances.len() as i64 == limit { balances.last().map(|b| b.account_id.to_string()) } else { None };
    Ok(views::read(&ledger_wire::PeriodBalances { balances, next_cursor }, period.position))
}

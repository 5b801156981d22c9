//! Reconciliation runs (operator or admin): start one, read its report.

use crate::http::command::CommandBody;
use crate::http::context::Principal;
use crate::http::error::{ApiError, ErrorCode};
use crate::http::extract::Segment;
use crate::http::validate::path_uuid;
use crate::read::views;
use crate::run::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use chrono::Utc;
use ledger_infrastructure::reconcile::{ReconcileError, Reconciler, report};
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/reconciliations", post(start).get(list))
        .route("/v1/admin/reconciliations/{id}", get(read))
}

/// The default window: the last 24 hours.
const DEFAULT_WINDOW_H: i64 = 24;

pub fn reconciler(state: &crate::run::state::Core) -> Reconciler {
    Reconciler {
        pool: state.pool.clone(),
        database_url: state.config.database_url.clone(),
        bus: state.bus.clone(),
        provider: state.provider.clone(),
        breaker: state.provider_breaker.clone(),
        provider_attempts_max: state.config.reconcile_provider_attempts_max,
        reports_unknown: state.config.ledger == ledger_infrastructure::ledgers::DEFAULT_LEDGER,
        elsewhere: (state.config.ledger == ledger_infrastructure::ledgers::DEFAULT_LEDGER).then(|| {
            std::sync::Arc::new(ledger_infrastructure::ledgers::Elsewhere::new(state.store.clone(), &state.config))
        }),
    }
}

/// Starts a run in the background: 202 `{"id"}`; 409 while another run is going.
#[utoipa::path(
    post,
    path = "/v1/admin/reconciliations",
    operation_id = "start_reconciliation",
    tag = "operations",
    summary = "Start a reconciliation",
    description = "Operator or admin. Compares the provider's statement with the ledger over a window, in the \
        background; one run at a time.",
    request_body(content = Option<ledger_wire::ReconciliationRequest>, description = "The window; `{}` or no body for \
        the last 24 hours."),
    responses(
        (status = 202, description = "The run started.", body = ledger_wire::ReconciliationStarted),
        (status = 409, description = "`version_conflict`: another run is going."),
        (status = 422, description = "`validation_error`: `from` or `to` is not RFC 3339, `from` is not before `to`, \
            or the body is not an object."),
    )
)]
async fn start(State(state): State<AppState>, principal: Principal, body: CommandBody) -> Result<Response, ApiError> {
    use crate::http::operation::{Begun, begin};
    let key = match begin(&state, &principal, &body).await? {
        Begun::Answered(replay) => return Ok(crate::http::command::respond(replay, true)),
        Begun::Run(key) => key,
    };
    let window = match window(&body, state.clock.now()) {
        Ok(window) => window,
        Err(e) => return Err(key.refuse(e).await),
    };
    let (from, to) = window;
    let reconciler = reconciler(&state);
    let lock = reconciler.lock().await.map_err(|e| match e {
        ReconcileError::AlreadyRunning => {
            ApiError::new(StatusCode::CONFLICT, ErrorCode::VersionConflict, e.to_string())
        }
        other => ApiError::unavailable(&other),
    })?;
    let run_id = Uuid::now_v7();
    reconciler.start(run_id, from, to, &principal.name).await.map_err(|e| ApiError::unavailable(&e))?;
    let started = crate::http::command::stored(202, &ledger_wire::ReconciliationStarted { id: run_id, from, to });
    let response = key.finish(started).await?;
    let actor = principal.name.clone();
    tokio::spawn(async move {
        match reconciler.run(lock, run_id, (from, to), &actor, |_, _| {}).await {
            Ok(t) => tracing::info!(%run_id, matched = t.matched, mismatches = t.mismatches, "reconciliation finished"),
            Err(e) => tracing::warn!(%run_id, error = %e, "reconciliation failed"),
        }
    });
    Ok(response)
}

/// The run's window from the request: `to` default now, `from` default a day before it.
fn window(
    body: &CommandBody,
    now: chrono::DateTime<Utc>,
) -> Result<(chrono::DateTime<Utc>, chrono::DateTime<Utc>), ApiError> {
    let window: ledger_wire::ReconciliationRequest = crate::http::requests::parse(&body.json)?;
    let to = window.to.map_or(now, |t| t.0);
    let from = window.from.map_or(to - chrono::Duration::hours(DEFAULT_WINDOW_H), |t| t.0);
    if from >= to {
        return Err(ApiError::validation("`from` must be before `to`"));
    }
    Ok((from, to))
}

/// The most recent runs a list may hold (each is read from its own stream).
const LIST_MAX: i64 = 20;

/// The latest runs, newest first (what the console's overview shows). Not in API.md's
/// table: an addition beside `POST` and `GET /{id}`, read from the log like them.
#[utoipa::path(
    get,
    path = "/v1/admin/reconciliations",
    operation_id = "list_reconciliations",
    tag = "operations",
    summary = "The latest reconciliation runs",
    description = "Operator or admin. The most recent runs (scheduled or started by hand), newest first, each \
        with its report.",
    params(ledger_wire::ReconciliationListQuery),
    responses(
        (status = 200, description = "The runs.", body = ledger_wire::ReconciliationList),
        (status = 400, description = "`validation_error`: `limit` is invalid."),
    )
)]
async fn list(
    State(state): State<AppState>,
    crate::http::extract::Params(q): crate::http::extract::Params,
) -> Result<Response, ApiError> {
    let limit = crate::http::validate::limit_param(q.get("limit").map(String::as_str), 10, LIST_MAX)?;
    let head = state.store.head().await?;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "select stream_id from events where type = 'ReconciliationStarted' order by position desc limit $1",
    )
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    let mut reconciliations = Vec::with_capacity(ids.len());
    for id in ids {
        let events = state.store.read_stream(id, 1, 100_000).await?;
        if let Some(r) = report(id, &events) {
            reconciliations.push(views::reconciliation(r));
        }
    }
    Ok(views::read(&ledger_wire::ReconciliationList { reconciliations }, head))
}

#[utoipa::path(
    get,
    path = "/v1/admin/reconciliations/{id}",
    operation_id = "get_reconciliation",
    tag = "operations",
    summary = "A reconciliation's report",
    description = "Operator or admin. One mismatch per reference the run could not match. Corrected \
        (PROVIDER.md's table, well-formed lines only): `amount_mismatch` (`adjusted`), `settled_at_provider` \
        (`settled`), `rejected_at_provider` (`credited_back` or `failed`). Flagged for a person, with no \
        `resolution_position`, on this run and every later run over the window until resolved: \
        `unknown_reference`, `missing_at_provider`, `duplicate_reference` (the statement lists the reference \
        more than once; `theirs` is `{\"lines\",\"lines_total\"}`), `currency_mismatch` (not the \
        withdrawal's currency), `invalid_amount` (not an integer in 1..=10^15: zero, negative, too large, a \
        fraction), `malformed_line` (a field missing or garbled, or not an object; `theirs.line` is the line \
        as written). A correction that would overflow a balance is flagged under its own kind instead.",
    params(("id" = Uuid, Path, description = "The run id.")),
    responses(
        (status = 200, description = "The run and its mismatches.", body = ledger_wire::ReconciliationReport),
        (status = 404, description = "`not_found`: no such run (or the id is not a UUID)."),
    )
)]
async fn read(State(state): State<AppState>, Segment(raw): Segment) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found(format!("reconciliation {raw} not found"));
    let id = path_uuid(&raw, not_found)?;
    let head = state.store.head().await?;
    let events = state.store.read_stream(id, 1, 100_000).await?;
    let report = report(id, &events).ok_or_else(not_found)?;
    Ok(views::read(&views::reconciliation(report), head))
}

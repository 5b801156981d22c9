//! The audit trail: events with who/why metadata, filtered; and the hash-chain check.

use crate::http::error::ApiError;
use crate::http::extract::Params;
use crate::http::validate::{limit_param, position_param};
use crate::read::views;
use crate::run::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use chrono::{DateTime, Utc};
use ledger_infrastructure::audit::{AuditFilter, audit_events, verify_chain};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/audit", get(audit)).route("/v1/audit/verify", get(verify))
}

fn time_param(name: &str, raw: Option<&String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.map(|s| {
        crate::http::validate::timestamp(s)
            .ok_or_else(|| ApiError::bad_request(format!("`{name}` must be an RFC 3339 timestamp")))
    })
    .transpose()
}

#[utoipa::path(
    get,
    path = "/v1/audit",
    operation_id = "audit_events",
    tag = "audit",
    summary = "Search the audit trail",
    description = "Events with who/why metadata, in position order, filtered.",
    params(ledger_wire::AuditQuery),
    responses(
        (status = 200, description = "One page of events.", body = ledger_wire::AuditPage),
        (status = 400, description = "`validation_error`: `stream_id` is not a UUID, `from` or `to` is not RFC 3339, \
            or `limit` or `cursor` is invalid."),
    )
)]
async fn audit(State(state): State<AppState>, Params(q): Params) -> Result<Response, ApiError> {
    let stream_id = match q.get("stream_id") {
        None => None,
        Some(s) => Some(uuid::Uuid::parse_str(s).map_err(|_| ApiError::bad_request("`stream_id` must be a UUID"))?),
    };
    let filter = AuditFilter {
        actor: q.get("actor").cloned(),
        correlation_id: q.get("correlation_id").cloned(),
        stream_id,
        from: time_param("from", q.get("from"))?,
        to: time_param("to", q.get("to"))?,
        after: position_param("cursor", q.get("cursor").map(String::as_str))?.unwrap_or(0),
        limit: limit_param(q.get("limit").map(String::as_str), 100, ledger_wire::limits::PAGE_MAX)?,
    };
    let head = state.store.head().await?;
    let events = audit_events(&state.store, &filter).await?;
    let next_cursor =
        if events.len() as i64 == filter.limit { events.last().map(|e| e.position.to_string()) } else { None };
    let events = events.into_iter().map(views::audit_event).collect::<Result<_, _>>()?;
    Ok(views::read(&ledger_wire::AuditPage { events, next_cursor }, head))
}

/// Batch size of a chain walk.
const VERIFY_BATCH_MAX: i64 = 5_000;

#[utoipa::path(
    get,
    path = "/v1/audit/verify",
    operation_id = "audit_verify",
    tag = "audit",
    summary = "Verify the hash chain",
    description = "Walks the tamper-evident hash chain over the whole log.",
    responses((status = 200, description = "The outcome (`ok` false names the first bad position).", body = ledger_wire::ChainReport))
)]
async fn verify(State(state): State<AppState>) -> Result<Response, ApiError> {
    let report = verify_chain(&state.store, VERIFY_BATCH_MAX, |_, _| {}).await?;
    let position = report.checked;
    let report = ledger_wire::ChainReport {
        ok: report.ok,
        checked: report.checked,
        head: report.head,
        first_bad_position: report.first_bad_position,
    };
    Ok(views::read(&report, position))
}

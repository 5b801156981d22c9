//! The audit trail: events with who/why metadata, filtered; and the hash-chain check.

use crate::error::ApiError;
use crate::extract::Params;
use crate::state::AppState;
use crate::validate::{limit_param, position_param};
use crate::views;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use chrono::{DateTime, Utc};
use ledger_infrastructure::audit::{AuditFilter, audit_events, verify_chain};
use serde_json::json;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/audit", get(audit)).route("/v1/audit/verify", get(verify))
}

fn time_param(name: &str, raw: Option<&String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.map(|s| {
        crate::validate::timestamp(s)
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
    params(crate::schemas::AuditQuery),
    responses(
        (status = 200, description = "One page of events.", body = crate::schemas::AuditPage),
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
        limit: limit_param(q.get("limit").map(String::as_str), 100, 1000)?,
    };
    let head = state.store.head().await?;
    let events = audit_events(&state.store, &filter).await?;
    let next = if events.len() as i64 == filter.limit { events.last().map(|e| e.position.to_string()) } else { None };
    let entries: Vec<_> = events
        .into_iter()
        .map(|e| {
            let m = &e.metadata;
            // Every stream the event belongs to, the primary one first.
            let streams: Vec<uuid::Uuid> =
                e.event().map(|ev| ev.streams().into_iter().map(|(id, _)| id).collect()).unwrap_or_default();
            json!({
                "position": e.position, "event_id": e.event_id, "stream_id": e.stream_id, "version": e.version,
                "streams": streams, "type": e.event_type, "data": e.data, "recorded_at": e.recorded_at,
                "actor": m["actor"], "request_id": m["request_id"], "correlation_id": m["correlation_id"],
                "causation_id": m["causation_id"], "idempotency_key": m["idempotency_key"],
            })
        })
        .collect();
    Ok(views::read(json!({ "events": entries, "next_cursor": next }), head))
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
    responses((status = 200, description = "The outcome (`ok` false names the first bad position).", body = crate::schemas::ChainReport))
)]
async fn verify(State(state): State<AppState>) -> Result<Response, ApiError> {
    let report = verify_chain(&state.store, VERIFY_BATCH_MAX, |_, _| {}).await?;
    let position = report.checked;
    Ok(views::read(serde_json::to_value(report).map_err(|e| ApiError::internal(&e))?, position))
}

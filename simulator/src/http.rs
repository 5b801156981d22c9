//! The contract routes of PROVIDER.md (`POST /payouts`, `GET /payouts/{provider_ref}`,
//! `GET /statement`) and the fault gate every one of them passes first.
//!
//! Handlers take raw headers, bodies and query maps rather than axum's typed
//! extractors, so that every refusal is a JSON error from `SimError` and so that the
//! transient faults hit a call before its body is even looked at, as a real outage
//! would. The lock on the state is never held across an `.await`.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SubsecRound, Utc};

use crate::Simulator;
use crate::admin;
use crate::error::SimError;
use crate::model::{PayoutRequest, Statement};
use crate::state::{PayoutOutcome, Route, Transient};

/// The header that names a payout attempt; the ledger sends its withdrawal id.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The whole application: contract routes plus the `/_sim/` admin routes.
pub(crate) fn router(sim: Simulator) -> Router {
    Router::new()
        .route("/payouts", post(create_payout))
        .route("/payouts/{provider_ref}", get(get_payout))
        .route("/statement", get(statement))
        .merge(admin::routes())
        .with_state(sim)
}

/// Counts the call, waits the configured latency and applies `down`, `error_rate`
/// and (for payouts) `timeout_rate`.
async fn gate(sim: &Simulator, route: Route) -> Result<(), SimError> {
    let arrival = sim.lock().arrive(route);
    if arrival.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(arrival.latency_ms)).await;
    }
    match arrival.fault {
        None => Ok(()),
        Some(Transient::Unavailable { retry_after_s }) => {
            tracing::info!(?route, "injected fault: 503 unavailable");
            Err(SimError::SimulatedUnavailable { retry_after_s })
        }
        Some(Transient::Hang { hang_ms }) => {
            tracing::info!(?route, hang_ms, "injected fault: hang, then 504");
            tokio::time::sleep(Duration::from_millis(hang_ms)).await;
            Err(SimError::SimulatedTimeout)
        }
    }
}

/// The current time as the provider records it: UTC, truncated to microseconds so
/// that it survives a round trip through a Postgres `timestamptz` unchanged.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, SimError> {
    let key = headers.get(IDEMPOTENCY_KEY).and_then(|value| value.to_str().ok()).map(str::trim);
    match key {
        Some(key) if !key.is_empty() => Ok(key.to_owned()),
        _ => Err(SimError::MissingIdempotencyKey),
    }
}

/// `POST /payouts`: 201 for a new payout, 200 for a replay of a known key.
async fn create_payout(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Result<Response, SimError> {
    gate(&sim, Route::CreatePayout).await?;
    let key = idempotency_key(&headers)?;
    let request = PayoutRequest::from_json(&body)?;
    let outcome = sim.lock().create_payout(&key, request, now());
    match outcome {
        Ok(PayoutOutcome::Created(payout)) => {
            tracing::info!(%key, provider_ref = %payout.provider_ref, status = ?payout.status, "payout recorded");
            Ok((StatusCode::CREATED, Json(payout)).into_response())
        }
        Ok(PayoutOutcome::Replayed(payout)) => {
            tracing::info!(%key, provider_ref = %payout.provider_ref, "payout replayed");
            Ok((StatusCode::OK, Json(payout)).into_response())
        }
        Ok(PayoutOutcome::ResponseLost(payout)) => {
            tracing::info!(%key, provider_ref = %payout.provider_ref, "payout recorded; injected fault: 502");
            Err(SimError::SimulatedResponseLost)
        }
        Err(error) => {
            tracing::info!(%key, %error, "payout refused");
            Err(error)
        }
    }
}

/// `GET /payouts/{provider_ref}`.
async fn get_payout(State(sim): State<Simulator>, Path(provider_ref): Path<String>) -> Result<Response, SimError> {
    gate(&sim, Route::GetPayout).await?;
    let payout = sim.lock().payout(&provider_ref)?;
    Ok(Json(payout).into_response())
}

/// `GET /statement?from=<RFC3339>&to=<RFC3339>`: entries with `from <= settled_at < to`,
/// then the raw lines, spliced in as written (so they may be anything at all).
async fn statement(
    State(sim): State<Simulator>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, SimError> {
    gate(&sim, Route::Statement).await?;
    let from = time_param(&params, "from")?;
    let to = time_param(&params, "to")?;
    if from > to {
        return Err(SimError::MalformedQuery { detail: format!("from ({from}) is after to ({to})") });
    }
    let (entries, raw_lines) = {
        let state = sim.lock();
        (state.statement(from, to), state.raw_lines())
    };
    if raw_lines.is_empty() {
        return Ok(Json(Statement { entries }).into_response());
    }
    let mut lines: Vec<String> = entries
        .iter()
        .map(|e| serde_json::to_string(e).expect("an entry serializes: string keys, no floats"))
        .collect();
    lines.extend(raw_lines);
    let body = format!("{{\"entries\":[{}]}}", lines.join(","));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Parses an RFC 3339 query parameter. A `+` offset sent without percent-encoding
/// arrives as a space; it is read back as `+` rather than refused.
fn time_param(params: &HashMap<String, String>, name: &str) -> Result<DateTime<Utc>, SimError> {
    let value = params
        .get(name)
        .ok_or_else(|| SimError::MalformedQuery { detail: format!("query parameter {name:?} is required") })?;
    DateTime::parse_from_rfc3339(value)
        .or_else(|_| DateTime::parse_from_rfc3339(&value.replace(' ', "+")))
        .map(|time| time.with_timezone(&Utc))
        .map_err(|e| SimError::MalformedQuery { detail: format!("{name}={value:?} is not an RFC 3339 time: {e}") })
}

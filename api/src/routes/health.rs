//! Liveness and readiness (no token needed).

use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

pub fn router() -> Router<AppState> {
    Router::new().route("/health/live", get(live)).route("/health/ready", get(ready))
}

#[utoipa::path(
    get,
    path = "/health/live",
    operation_id = "live",
    tag = "infrastructure",
    summary = "Liveness",
    responses((status = 200, description = "The process runs.", body = crate::schemas::Live))
)]
async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "live" }))
}

/// Ready only while Postgres answers: without it the process can do nothing useful.
#[utoipa::path(
    get,
    path = "/health/ready",
    operation_id = "ready",
    tag = "infrastructure",
    summary = "Readiness",
    description = "Ready only while Postgres answers; the body also reports NATS and the circuit breakers.",
    responses(
        (status = 200, description = "Ready.", body = crate::schemas::Ready),
        (status = 503, description = "Not ready: a dependency is down.", body = crate::schemas::Ready),
    )
)]
async fn ready(State(state): State<AppState>) -> Response {
    let postgres = sqlx::query("select 1").execute(&state.pool).await.is_ok();
    let nats = match state.nats.connection_state() {
        async_nats::connection::State::Connected => "up",
        async_nats::connection::State::Pending => "connecting",
        async_nats::connection::State::Disconnected => "down",
    };
    let status = if postgres { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    // Only Postgres is required: without NATS commands and strong reads still work
    // (projections lag); without the provider payouts wait behind the breaker.
    let body = json!({
        "status": if postgres { "ready" } else { "not_ready" },
        "dependencies": {
            "postgres": if postgres { "up" } else { "down" },
            "nats": nats,
            "provider_breaker": state.provider_breaker.state(),
            "relay_breaker": state.relay_breaker.state(),
            "postgres_breaker": state.db_breaker.state(),
        },
    });
    (status, Json(body)).into_response()
}

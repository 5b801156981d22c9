//! Liveness and readiness (no token needed).

use crate::run::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ledger_wire as wire;

pub fn router() -> Router<AppState> {
    Router::new().route("/health/live", get(live)).route("/health/ready", get(ready))
}

#[utoipa::path(
    get,
    path = "/health/live",
    operation_id = "live",
    tag = "infrastructure",
    summary = "Liveness",
    responses((status = 200, description = "The process runs.", body = ledger_wire::Live))
)]
async fn live() -> Json<ledger_wire::Live> {
    Json(ledger_wire::Live { status: "live".to_owned() })
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
        (status = 200, description = "Ready.", body = ledger_wire::Ready),
        (status = 503, description = "Not ready: a dependency is down.", body = ledger_wire::Ready),
    )
)]
async fn ready(State(state): State<AppState>) -> Response {
    let postgres = sqlx::query("select 1").execute(&state.pool).await.is_ok();
    let nats = match state.nats.connection_state() {
        async_nats::connection::State::Connected => wire::NatsState::Up,
        async_nats::connection::State::Pending => wire::NatsState::Connecting,
        async_nats::connection::State::Disconnected => wire::NatsState::Down,
    };
    // As the 100 ms poll last found it (a query here could wait out a dead replica).
    let replica = state.replica.as_ref().map(|r| r.healthy());
    let up_or_down = |up: bool| if up { wire::DependencyState::Up } else { wire::DependencyState::Down };
    let status = if postgres { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    // Only Postgres is required: without NATS commands and strong reads still work
    // (projections lag); without the provider payouts wait behind the breaker.
    let body = wire::Ready {
        status: if postgres { wire::ReadyStatus::Ready } else { wire::ReadyStatus::NotReady },
        dependencies: wire::Dependencies {
            postgres: up_or_down(postgres),
            nats,
            provider_breaker: crate::read::views::breaker_state(state.provider_breaker.state()),
            relay_breaker: crate::read::views::breaker_state(state.relay_breaker.state()),
            postgres_breaker: crate::read::views::breaker_state(state.db_breaker.state()),
            postgres_replica: replica.map(up_or_down),
        },
    };
    (status, Json(body)).into_response()
}

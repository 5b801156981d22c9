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

async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "live" }))
}

/// Ready only while Postgres answers: without it the process can do nothing useful.
async fn ready(State(state): State<AppState>) -> Response {
    let postgres = sqlx::query("select 1").execute(&state.pool).await.is_ok();
    let status = if postgres { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if postgres { "ready" } else { "not_ready" },
        "dependencies": { "postgres": if postgres { "up" } else { "down" } },
    });
    (status, Json(body)).into_response()
}

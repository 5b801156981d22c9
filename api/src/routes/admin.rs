//! Operations (operator or admin): projection status.

use crate::error::ApiError;
use crate::state::AppState;
use crate::views;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use serde_json::json;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/admin/projections", get(projections))
}

/// A worker that has not written for this long while behind is reported `stopped`.
const STALL_S: i64 = 10;

async fn projections(State(state): State<AppState>) -> Result<Response, ApiError> {
    let (head, rows) = ledger_projections::queries::statuses(&state.pool).await?;
    let now = chrono::Utc::now();
    let projections: Vec<_> = rows
        .into_iter()
        .map(|(name, position, status, updated_at)| {
            let lag = head - position;
            let status = match status.as_str() {
                "rebuilding" => "rebuilding",
                _ if lag == 0 => "running",
                _ if (now - updated_at).num_seconds() <= STALL_S => "catching_up",
                _ => "stopped",
            };
            json!({ "name": name, "position": position, "lag_events": lag, "status": status, "updated_at": updated_at })
        })
        .collect();
    let (hits, misses, entries) = state.cache.stats();
    let cache = json!({ "hits": hits, "misses": misses, "entries": entries });
    Ok(views::read(json!({ "head": head, "projections": projections, "account_cache": cache }), head))
}

//! Overload (issue 31): bounds on the work in flight, shed at once when reached. A
//! request beyond `LEDGER_HTTP_IN_FLIGHT_MAX` in this process is answered 503
//! `unavailable` with `Retry-After` before anything is read or queued, and one beyond
//! `LEDGER_TOKEN_IN_FLIGHT_MAX` of its token 429 `rate_limited`: accepted work keeps
//! its latency, refused work costs a few microseconds, and no client can take every turn.

use crate::http::context::Principal;
use crate::http::error::{ApiError, ErrorCode};
use crate::run::state::AppState;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Every request of the process but its health and metrics, within the process's bound.
pub async fn shed(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path.starts_with("/health/") || path == "/metrics" {
        return next.run(request).await;
    }
    let Ok(_turn) = state.home().request_permits.clone().try_acquire_owned() else {
        metrics::counter!("ledger_requests_shed_total", "bound" => "process").increment(1);
        return ApiError::overloaded("the service is at its bound of requests in flight; retry later").into_response();
    };
    next.run(request).await
}

/// A principal's turn in flight; released when dropped.
pub struct TokenTurn {
    state: AppState,
    principal: String,
}

impl TokenTurn {
    /// Takes one of the principal's turns, or the 429 that refuses it.
    pub fn take(state: &AppState, principal: &Principal) -> Result<TokenTurn, ApiError> {
        let state = state.home();
        let mut counts = state.token_in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry(principal.name.clone()).or_default();
        if *count >= state.config.token_in_flight_max.max(1) {
            metrics::counter!("ledger_requests_shed_total", "bound" => "token").increment(1);
            let e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                "this token has as many requests in flight as it may; retry later",
            );
            return Err(ApiError { retry_after_s: Some(1), ..e });
        }
        *count += 1;
        Ok(TokenTurn { state: state.clone(), principal: principal.name.clone() })
    }
}

impl Drop for TokenTurn {
    fn drop(&mut self) {
        let mut counts = self.state.token_in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.principal) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.principal);
            }
        }
    }
}

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
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Every request of the process but its health and metrics, within the process's bound.
pub async fn shed(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path.starts_with("/health/") || path == "/metrics" {
        return next.run(request).await;
    }
    let Ok(_turn) = state.shared.request_permits.clone().try_acquire_owned() else {
        metrics::counter!("ledger_requests_shed_total", "bound" => "process").increment(1);
        return ApiError::overloaded("the service is at its bound of requests in flight; retry later").into_response();
    };
    next.run(request).await
}

/// Turns in flight per principal, each bounded: one client's work never takes the turns
/// the others need. Cheap to clone (clones share the counts).
#[derive(Clone, Default)]
pub struct Turns(Arc<Mutex<HashMap<String, usize>>>);

/// A principal's turn; given back when dropped, on every path.
pub struct Turn {
    turns: Turns,
    principal: String,
}

impl Turns {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One of at most `max` turns of `principal`, if one is free.
    pub fn take(&self, principal: &str, max: usize) -> Option<Turn> {
        let mut counts = self.counts();
        let count = counts.entry(principal.to_owned()).or_default();
        if *count >= max.max(1) {
            return None;
        }
        *count += 1;
        Some(Turn { turns: self.clone(), principal: principal.to_owned() })
    }

    /// The turns `principal` holds now.
    pub fn held(&self, principal: &str) -> usize {
        self.counts().get(principal).copied().unwrap_or(0)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut counts = self.turns.counts();
        if let Some(count) = counts.get_mut(&self.principal) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.principal);
            }
        }
    }
}

/// One of the principal's `LEDGER_TOKEN_IN_FLIGHT_MAX` turns, or the 429 that refuses it.
pub fn token_turn(state: &AppState, principal: &Principal) -> Result<Turn, ApiError> {
    state.shared.token_in_flight.take(&principal.name, state.config.token_in_flight_max).ok_or_else(|| {
        metrics::counter!("ledger_requests_shed_total", "bound" => "token").increment(1);
        let e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "this token has as many requests in flight as it may; retry later",
        );
        ApiError { retry_after_s: Some(1), ..e }
    })
}

//! The HTTP API (axum) and the `ledger` binary's subcommands. Depends on the domain,
//! infrastructure and projections; nothing depends on it.

pub mod auth;
pub mod cli;
pub mod command;
pub mod context;
pub mod error;
pub mod extract;
pub mod guard;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod progress;
pub mod read;
pub mod requests;
pub mod routes;
pub mod serve;
pub mod state;
pub mod validate;
pub mod views;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
pub use state::AppState;

/// The whole HTTP application; testable without a socket.
pub fn app(state: AppState) -> Router {
    let v1 = Router::new()
        .merge(routes::accounts::router())
        .merge(routes::deposits::router())
        .merge(routes::transfers::router())
        .merge(routes::withdrawals::router())
        .merge(routes::events::router())
        .merge(routes::admin::router())
        .merge(routes::audit::router())
        .merge(routes::reconciliations::router())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), guard::db_guard));
    Router::new()
        .merge(v1)
        .merge(routes::health::router())
        .merge(openapi::router())
        .route("/metrics", axum::routing::get(metrics::render))
        .fallback(|| async { error::ApiError::not_found("no such route").into_response() })
        .method_not_allowed_fallback(|| async {
            error::ApiError::new(StatusCode::METHOD_NOT_ALLOWED, error::ErrorCode::NotFound, "method not allowed")
                .into_response()
        })
        .layer(axum::middleware::from_fn(context::request_context))
        .route_layer(axum::middleware::from_fn(metrics::track))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            error::ApiError::internal(&"a handler panicked").into_response()
        }))
        .with_state(state)
}

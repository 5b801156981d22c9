//! The HTTP API (axum) and the `ledger` binary's subcommands. Depends on the domain,
//! infrastructure, projections and the wire types; nothing depends on it.
//!
//! - [`http`]: the edge every request crosses: context, auth, the Postgres guard,
//!   strict extraction, idempotent command execution, errors, limits, metrics, OpenAPI.
//! - [`routes`]: one module per resource of API.md; each handler parses its
//!   `ledger_wire` request, builds a domain `Command` or runs a query, and answers
//!   with a `ledger_wire` response.
//! - [`read`]: how reads see the ledger (eventual, `min_position`, strong), the account
//!   cache, and [`read::views`], domain state and read-model rows as wire types.
//! - [`run`]: process state, start-up and shutdown of each mode, the CLI.

pub mod http;
pub mod read;
pub mod routes;
pub mod run;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
pub use run::state::AppState;

/// The HTTP application of one ledger: every `/v1` route of the contract, unprefixed,
/// behind authentication and the Postgres guard of that ledger. The whole application
/// ([`app`]) reaches it at `/v1/ledgers/{ledger}/…`, and `default`'s at `/v1/…`.
pub fn ledger_router(state: AppState) -> Router {
    Router::new()
        .merge(routes::accounts::router())
        .merge(routes::commands::router())
        .merge(routes::transfers::router())
        .merge(routes::transactions::router())
        .merge(routes::holds::router())
        .merge(routes::bulk::router())
        .merge(routes::withdrawals::router())
        .merge(routes::events::router())
        .merge(routes::admin::router())
        .merge(routes::subjects::router())
        .merge(routes::periods::router())
        .merge(routes::ledgers::router())
        .merge(routes::audit::router())
        .merge(routes::reconciliations::router())
        .merge(routes::webhooks::router())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), http::auth::authenticate))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), http::guard::db_guard))
        .route_layer(axum::middleware::from_fn(http::metrics::track))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), http::privacy::reveal))
        .fallback(|| async { http::error::ApiError::not_found("no such route").into_response() })
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn method_not_allowed() -> axum::response::Response {
    http::error::ApiError::new(StatusCode::METHOD_NOT_ALLOWED, http::error::ErrorCode::NotFound, "method not allowed")
        .into_response()
}

/// The whole HTTP application over the deployment's ledgers; testable without a socket.
pub fn app(ledgers: std::sync::Arc<run::ledgers::Ledgers>) -> Router {
    let home = ledgers.home().clone();
    Router::new()
        .merge(routes::health::router())
        .merge(routes::console::router())
        .merge(http::openapi::router())
        .route("/metrics", axum::routing::get(http::metrics::render))
        .route("/v1/audit/keys", axum::routing::get(routes::audit::keys))
        .route_layer(axum::middleware::from_fn(http::metrics::track))
        .route("/v1/ledgers/{ledger}", axum::routing::any(routes::ledgers::dispatch))
        .route("/v1/ledgers/{ledger}/{*rest}", axum::routing::any(routes::ledgers::dispatch))
        .fallback(routes::ledgers::dispatch_default)
        .layer(axum::Extension(ledgers))
        .layer(axum::middleware::from_fn_with_state(home.clone(), http::shed::shed))
        .layer(axum::middleware::from_fn(http::context::request_context))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            http::error::ApiError::internal(&"a handler panicked").into_response()
        }))
        .with_state(home)
}

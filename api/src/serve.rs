//! Starting the service: state, background tasks and the HTTP server with graceful
//! shutdown.

use crate::state::AppState;
use ledger_infrastructure::Config;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;

/// Connects (creating and migrating the database if needed) and builds the state.
pub async fn build_state(config: Config) -> Result<AppState, sqlx::Error> {
    let pool = ledger_infrastructure::connect_and_migrate(&config).await?;
    Ok(AppState::new(config, pool))
}

/// How many expired idempotency records one sweep deletes at most.
const SWEEP_BATCH_MAX: i64 = 10_000;

/// Deletes expired idempotency records every minute.
pub fn spawn_idempotency_sweeper(state: &AppState) -> tokio::task::JoinHandle<()> {
    let store = state.store.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            match store.sweep_expired_keys(SWEEP_BATCH_MAX).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "swept expired idempotency keys"),
                Err(e) => tracing::warn!(error = %e, "idempotency sweep failed"),
            }
        }
    })
}

/// Serves the API on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let timeout = state.config.request_timeout;
    let app = crate::app(state).layer(tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        timeout,
    ));
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

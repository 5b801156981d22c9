//! The `/_sim/` routes that tests and developers use to steer and inspect the
//! simulator. They are not part of the provider contract: they are never counted
//! in the stats and never hit by injected faults.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use crate::Simulator;
use crate::error::SimError;
use crate::faults::Faults;
use crate::model::{Payout, PayoutOverride, StatementEntry, Stats};

/// The admin routes, to be merged into the application router.
pub(crate) fn routes() -> Router<Simulator> {
    Router::new()
        .route("/_sim/faults", get(get_faults).put(put_faults))
        .route("/_sim/stats", get(stats))
        .route("/_sim/payouts", get(payouts))
        .route("/_sim/payouts/{reference}/override", post(override_payout))
        .route("/_sim/statement/extra", post(add_extra_entry))
        .route("/_sim/statement/raw", post(add_raw_line).delete(clear_raw_lines))
}

/// Parses a JSON body, answering a JSON 400 rather than axum's plain-text rejection.
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, SimError> {
    serde_json::from_slice(body).map_err(|e| SimError::MalformedJson { detail: e.to_string() })
}

/// `GET /_sim/faults`: the faults in force.
async fn get_faults(State(sim): State<Simulator>) -> Json<Faults> {
    Json(sim.faults())
}

/// `PUT /_sim/faults`: replaces the faults; omitted fields reset to their defaults.
async fn put_faults(State(sim): State<Simulator>, body: Bytes) -> Result<Json<Faults>, SimError> {
    let faults: Faults = parse_json(&body)?;
    faults.validate()?;
    sim.lock().set_faults(faults);
    tracing::info!(?faults, "faults replaced");
    Ok(Json(faults))
}

/// `GET /_sim/stats`.
async fn stats(State(sim): State<Simulator>) -> Json<Stats> {
    Json(sim.stats())
}

/// `GET /_sim/payouts`: every recorded payout as the record now reads, removed ones included.
async fn payouts(State(sim): State<Simulator>) -> Json<Vec<Payout>> {
    Json(sim.payouts())
}

/// `POST /_sim/payouts/{reference}/override`: answers the changed payouts.
async fn override_payout(
    State(sim): State<Simulator>,
    Path(reference): Path<String>,
    body: Bytes,
) -> Result<Json<Vec<Payout>>, SimError> {
    let change: PayoutOverride = parse_json(&body)?;
    let changed = sim.override_payout(&reference, &change)?;
    tracing::info!(%reference, ?change, "payout record overridden");
    Ok(Json(changed))
}

/// `POST /_sim/statement/raw`: the body, as text, becomes a statement line as is.
async fn add_raw_line(State(sim): State<Simulator>, body: String) -> StatusCode {
    tracing::info!(bytes = body.len(), "raw statement line added");
    sim.add_raw_statement_line(body);
    StatusCode::CREATED
}

/// `DELETE /_sim/statement/raw`: removes every raw statement line.
async fn clear_raw_lines(State(sim): State<Simulator>) -> StatusCode {
    sim.clear_raw_statement_lines();
    StatusCode::NO_CONTENT
}

/// `POST /_sim/statement/extra`: adds an entry the ledger knows nothing of.
async fn add_extra_entry(
    State(sim): State<Simulator>,
    body: Bytes,
) -> Result<(StatusCode, Json<StatementEntry>), SimError> {
    let entry: StatementEntry = parse_json(&body)?;
    sim.add_statement_entry(entry.clone());
    tracing::info!(reference = %entry.reference, "extra statement entry added");
    Ok((StatusCode::CREATED, Json(entry)))
}

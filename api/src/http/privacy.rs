//! Personal data on the way out (API.md v1.2 "Personal data"; docs/PRIVACY.md): every
//! JSON answer of a ledger's routes passes through [`reveal`], which gives sealed
//! personal values their plaintext while their subject's key exists and the erased
//! form once it is destroyed. Routes, stored answers, replays and bulk answers hold
//! the sealed form only; this is the one place it is opened.

use crate::http::error::ApiError;
use crate::run::state::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ledger_infrastructure::keys::KeyError;
use ledger_infrastructure::privacy::SEALED_PREFIX;

/// The error a failed seal or reveal answers: the database's unavailability is 503;
/// a value that does not open under its own live key was changed (a tampered log or
/// key table, which `/v1/audit/verify` names), a loud 500, never garbage.
pub fn key_error(e: KeyError) -> ApiError {
    match e {
        KeyError::Database(e) => ApiError::from(ledger_infrastructure::store::StoreError::Database(e)),
        other => ApiError::internal(&format!("personal data could not be opened: {other}")),
    }
}

/// Reveals the personal values of a JSON answer (see the module's notes).
pub async fn reveal(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json") || t.starts_with("application/problem+json"));
    if !json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Answers are built in memory; this takes what is already there.
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return ApiError::internal(&format!("reading an answer: {e}")).into_response(),
    };
    if !contains(&bytes, SEALED_PREFIX.as_bytes()) {
        return Response::from_parts(parts, Body::from(bytes));
    }
    // Keys are read from the primary: while it cannot answer (down, or slower than a
    // read may wait), personal values are withheld, never shown from a memory of
    // their key that an erasure may have made wrong. The rest of the answer stands.
    let wait = state.config.db_wait.min(REVEAL_WAIT_MAX);
    match tokio::time::timeout(wait, state.privacy.reveal_body(&bytes)).await {
        Ok(Ok(Some(revealed))) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            return Response::from_parts(parts, Body::from(revealed));
        }
        Ok(Ok(None)) => return Response::from_parts(parts, Body::from(bytes)),
        Ok(Err(KeyError::Database(e))) => {
            tracing::warn!(error = %e, "personal values withheld: their keys could not be read");
        }
        Err(_) | Ok(Err(KeyError::LeaseEnded)) => {
            tracing::warn!("personal values withheld: their keys were not read in time");
        }
        Ok(Err(e)) => return key_error(e).into_response(),
    }
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    withhold(&mut value, &mut parts);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(value.to_string()))
}

/// The longest a reveal waits for the keys before it withholds.
const REVEAL_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// Says so in `X-Ledger-Personal-Withheld: true`.
fn withhold(value: &mut serde_json::Value, parts: &mut axum::http::response::Parts) {
    ledger_infrastructure::privacy::Privacy::withhold(value);
    parts.headers.insert("x-ledger-personal-withheld", axum::http::HeaderValue::from_static("true"));
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

//! Per-request context: who is calling (bearer token → principal), the request id and
//! the correlation id (taken from `X-Correlation-Id` or generated, and echoed back).

use crate::http::error::ApiError;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

pub const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub use ledger_domain::Role;

/// The authenticated caller.
#[derive(Clone, Debug)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// The ledgers the token may use; `None`: every ledger (API.md "Ledgers").
    pub ledgers: Option<std::sync::Arc<[String]>>,
}

impl Principal {
    /// Whether the token may use the ledger named `ledger`.
    pub fn may_use(&self, ledger: &str) -> bool {
        self.ledgers.as_ref().is_none_or(|l| l.iter().any(|n| n == ledger))
    }
}

/// Ids that tie a request to the events it records and to the log lines it writes.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub request_id: String,
    pub correlation_id: String,
}

/// 1 to [`crate::http::limits::HEADER_ID_BYTES_MAX`] printable ASCII bytes: an
/// `Idempotency-Key` or an `X-Correlation-Id`.
pub fn printable(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= crate::http::limits::HEADER_ID_BYTES_MAX
        && s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// Adds the request context to every request, echoes its ids on the response, and
/// writes one log line per request at info level (method, route template, status,
/// latency, request id, correlation id), so an operator finds a request by its ids.
pub async fn request_context(mut request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str().to_owned());
    let started = std::time::Instant::now();
    let request_id = uuid::Uuid::now_v7().to_string();
    let correlation_id = request
        .headers()
        .get(&CORRELATION_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| printable(s))
        .map_or_else(|| request_id.clone(), str::to_owned);
    let context = RequestContext { request_id, correlation_id };
    request.extensions_mut().insert(context.clone());
    let span =
        tracing::info_span!("request", request_id = %context.request_id, correlation_id = %context.correlation_id);
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    let answered_by = response.extensions().get::<crate::http::metrics::RouteTemplate>().map(|r| r.0.clone());
    let route = route.or(answered_by);
    let route = route.as_deref().unwrap_or("unmatched");
    tracing::info!(
        target: "ledger::request",
        method = %method,
        route,
        status = response.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        request_id = %context.request_id,
        correlation_id = %context.correlation_id,
        "request"
    );
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&context.correlation_id) {
        headers.insert(CORRELATION_ID, v);
    }
    if let Ok(v) = HeaderValue::from_str(&context.request_id) {
        headers.insert(REQUEST_ID, v);
    }
    response
}

/// Compares two secrets in time independent of where they differ (hashes first, so
/// lengths leak nothing either).
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter().zip(y.iter()).fold(0u8, |acc, (p, q)| acc | (p ^ q)) == 0
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(ApiError::unauthorized)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<RequestContext>().cloned().unwrap_or_else(|| {
            let id = uuid::Uuid::now_v7().to_string();
            RequestContext { request_id: id.clone(), correlation_id: id }
        }))
    }
}

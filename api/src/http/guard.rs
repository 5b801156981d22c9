//! Fail fast while Postgres is down: a circuit breaker in front of every /v1 request.
//! When dependency failures (503 `unavailable`) pile up, the breaker opens and requests
//! are answered 503 at once instead of each waiting for a connection that will not
//! come; after the cool-down one request probes. Account reads alone may still answer
//! from the cache while it is open, marked `X-Ledger-Stale: true`.
//!
//! With a read replica (`DATABASE_READ_URL`), eventual reads do not depend on the
//! primary at all: they pass the breaker without a permit (their answers say nothing of
//! the primary, so they must not close it), and while it is not closed they are
//! marked `X-Ledger-Stale: true`.
//!
//! The breaker's permit is held across the request: a request dropped before it
//! answers (by the request time-out, or because the client hung up) releases it on drop
//! without a verdict, so a dropped probe never leaves the breaker half-open for good.

use crate::http::error::ApiError;
use crate::run::state::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Set on a response whose request failed because a dependency did.
#[derive(Clone, Copy, Debug)]
pub struct DependencyFailed;

/// The route allowed through an open breaker (to try the cache).
const CACHED_ROUTE: &str = "/v1/accounts/{id}";

/// The routes whose eventual reads a replica answers (`AppState::read_pool`).
const REPLICA_ROUTES: &[&str] = &[
    "/v1/accounts/{id}",
    "/v1/accounts",
    "/v1/accounts/{id}/transactions",
    "/v1/transfers/{id}",
    "/v1/transactions",
    "/v1/transactions/{id}",
    "/v1/holds/{id}",
    "/v1/withdrawals/{id}",
    "/v1/admin/dead-letters",
];

pub async fn db_guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let eventual = crate::http::extract::parse_query(request.uri().query().unwrap_or(""))
        .ok()
        .and_then(|q| crate::read::Consistency::from_query(&q).ok())
        == Some(crate::read::Consistency::Eventual);
    let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    let cached_read = eventual && route == Some(CACHED_ROUTE);
    let replica_read = eventual
        && request.method() == axum::http::Method::GET
        && route.is_some_and(|r| REPLICA_ROUTES.contains(&r))
        && state.replica.as_ref().is_some_and(|r| r.healthy());
    if replica_read {
        let stale = state.db_breaker.state() != ledger_infrastructure::breaker::BreakerState::Closed;
        let mut response = next.run(request).await;
        if stale && response.status().is_success() {
            response.headers_mut().insert("x-ledger-stale", axum::http::HeaderValue::from_static("true"));
        }
        return response;
    }
    let permit = match state.db_breaker.acquire() {
        Ok(permit) => permit,
        Err(open) => {
            if cached_read {
                let mut response = next.run(request).await;
                if response.status().is_success() {
                    response.headers_mut().insert("x-ledger-stale", axum::http::HeaderValue::from_static("true"));
                }
                return response;
            }
            let retry = open.retry_in.as_secs().max(1);
            return ApiError { retry_after_s: Some(retry), ..ApiError::unavailable(&"the database breaker is open") }
                .into_response();
        }
    };
    // If this future is dropped here (time-out, client gone), so is the permit. A
    // request still waiting `LEDGER_DB_WAIT_MS` after its body was received is what a
    // hung Postgres looks like: answered 503 now and counted, so the breaker opens and
    // the next requests fail at once instead of each waiting out the request time-out.
    // The wait starts once the body is in: a client that sends it slowly costs only its
    // own request (the request time-out), never a failure of Postgres. Requests whose own
    // work may take longer (see `untimed`) are left to the request time-out.
    let timed = !state.config.db_wait.is_zero() && !untimed(&request);
    let (parts, body) = request.into_parts();
    let (received, body) = watch_body(body);
    let run = next.run(Request::from_parts(parts, body));
    tokio::pin!(run);
    let response = if !timed {
        run.await
    } else {
        let mut received = received;
        let body_in = async move {
            // Err: the body was dropped unread, which is as good as read here.
            let _ = received.wait_for(|done| *done).await;
        };
        let early = tokio::select! {
            response = &mut run => Some(response),
            () = body_in => None,
        };
        match early {
            Some(response) => response,
            None => match tokio::time::timeout(state.config.db_wait, &mut run).await {
                Ok(response) => response,
                Err(_) => {
                    permit.failure();
                    metrics::counter!("ledger_db_waits_exceeded_total").increment(1);
                    let e = ApiError::unavailable(&"postgres did not answer in time");
                    return ApiError { retry_after_s: Some(1), ..e }.into_response();
                }
            },
        }
    };
    if response.extensions().get::<DependencyFailed>().is_some() {
        permit.failure();
    } else if answered_from_the_database(response.status()) {
        permit.success();
    }
    // Anything else (a request refused at the edge: malformed, unauthenticated, too
    // large, rate-limited; or an internal error) says nothing of Postgres: the permit is
    // dropped with no verdict, so such a probe neither closes nor reopens the breaker.
    response
}

/// Requests whose own work may outlast `LEDGER_DB_WAIT_MS` with Postgres answering: a
/// walk of the whole chain, a strong read catching the read models up after an outage,
/// a ledger's creation (its migrations), an erasure (it waits out the keys' leases).
/// The request time-out bounds them.
fn untimed(request: &Request) -> bool {
    let path = request.uri().path();
    let strong = request.uri().query().is_some_and(|q| q.split('&').any(|p| p == "consistency=strong"));
    strong
        || path.ends_with("/audit/verify")
        || (request.method() == axum::http::Method::POST && path == "/v1/admin/ledgers")
        || path.contains("/admin/dead-letters/")
        // An erasure answers `privacy::ERASURE_SETTLE` after its commit, by design.
        || (path.contains("/admin/subjects/") && path.ends_with("/erase"))
}

/// The body, and a flag that turns true once it has been read to its end (at once for
/// a request without one).
fn watch_body(body: axum::body::Body) -> (tokio::sync::watch::Receiver<bool>, axum::body::Body) {
    use http_body::Body as _;
    let (tx, rx) = tokio::sync::watch::channel(body.is_end_stream());
    if body.is_end_stream() {
        return (rx, body);
    }
    let stream = futures::stream::unfold((body.into_data_stream(), Some(tx)), |(mut data, tx)| async move {
        use futures::StreamExt;
        let tx = tx?;
        match data.next().await {
            Some(Ok(chunk)) => Some((Ok::<_, axum::Error>(chunk), (data, Some(tx)))),
            Some(Err(e)) => {
                let _ = tx.send(true);
                Some((Err(e), (data, None)))
            }
            None => {
                let _ = tx.send(true);
                None
            }
        }
    });
    (rx, axum::body::Body::from_stream(stream))
}

/// Whether a response shows that Postgres answered: a success, or a business answer
/// that needed a look-up (not found, conflict, a rule the request breaks).
fn answered_from_the_database(status: axum::http::StatusCode) -> bool {
    use axum::http::StatusCode;
    status.is_success()
        || matches!(status, StatusCode::NOT_FOUND | StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY)
}

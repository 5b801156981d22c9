//! Authentication and authorization: bearer tokens (the bootstrap admin token from
//! `LEDGER_ADMIN_TOKEN`, compared in constant time, and issued tokens, looked up by the
//! sha256 of the secret), the role table of API.md, and a per-token rate limit.

use crate::http::context::{Principal, Role, constant_time_eq};
use crate::http::error::{ApiError, ErrorCode};
use crate::http::limits::{TOKEN_CACHE_ENTRIES_MAX, TOKEN_CACHE_TTL, UNKNOWN_TOKEN_CACHE_TTL};
use crate::run::state::AppState;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Known and unknown tokens, by the hex sha256 of the secret.
#[derive(Clone)]
pub struct TokenCache {
    known: moka::sync::Cache<String, Principal>,
    unknown: moka::sync::Cache<String, ()>,
    buckets: moka::sync::Cache<String, Arc<Mutex<Bucket>>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            known: moka::sync::Cache::builder()
                .max_capacity(TOKEN_CACHE_ENTRIES_MAX)
                .time_to_live(TOKEN_CACHE_TTL)
                .build(),
            unknown: moka::sync::Cache::builder()
                .max_capacity(TOKEN_CACHE_ENTRIES_MAX)
                .time_to_live(UNKNOWN_TOKEN_CACHE_TTL)
                .build(),
            buckets: moka::sync::Cache::builder()
                .max_capacity(TOKEN_CACHE_ENTRIES_MAX)
                .time_to_idle(Duration::from_secs(600))
                .build(),
        }
    }
}

/// A token bucket.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The principal of the bootstrap token (`LEDGER_ADMIN_TOKEN`). Principals name the
/// actor of every event, scope idempotency keys and own a rate bucket; issued tokens
/// are `token:<name>` and the service's own workers use names without a colon, so
/// no issued token can pass for the bootstrap token or an internal actor.
pub const BOOTSTRAP_PRINCIPAL: &str = "env:LEDGER_ADMIN_TOKEN";

/// The principal of an issued token.
pub fn token_principal(name: &str) -> String {
    format!("token:{name}")
}

pub use ledger_wire::fields::valid_token_name;

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The principal of a token: tokens are issued in the log of `default` (the
/// directory), so every ledger looks them up there, through one cache.
async fn principal(state: &AppState, token: &str) -> Result<Option<Principal>, ApiError> {
    let state = state.home();
    if let Some(admin) = state.config.admin_token.as_deref()
        && constant_time_eq(token, admin)
    {
        return Ok(Some(Principal { name: BOOTSTRAP_PRINCIPAL.into(), role: Role::Admin, ledgers: None }));
    }
    let hash = token_hash(token);
    if let Some(p) = state.shared.tokens.known.get(&hash) {
        return Ok(Some(p));
    }
    if state.shared.tokens.unknown.contains_key(&hash) {
        return Ok(None);
    }
    let found = match ledger_infrastructure::audit::token_by_hash(&state.store, &hash).await {
        Ok(found) => found,
        // While the primary is down, a token issued before can still read eventually
        // from the replica (issuing is an event, so the replica has it).
        Err(e) => match &state.replica {
            Some(r) if r.healthy() => {
                let replica = ledger_infrastructure::EventStore::new(r.pool.clone());
                ledger_infrastructure::audit::token_by_hash(&replica, &hash).await.map_err(|_| e)?
            }
            _ => return Err(e.into()),
        },
    };
    match found {
        Some((name, role, ledgers)) => {
            let role = Role::parse(&role).ok_or_else(|| ApiError::internal(&"a stored token has an unknown role"))?;
            let ledgers = match ledgers {
                None => None,
                Some(list) => Some(
                    serde_json::from_value::<Vec<String>>(list)
                        .map_err(|_| ApiError::internal(&"a stored token has a malformed ledger list"))?
                        .into(),
                ),
            };
            let p = Principal { name: token_principal(&name), role, ledgers };
            state.shared.tokens.known.insert(hash, p.clone());
            Ok(Some(p))
        }
        None => {
            state.shared.tokens.unknown.insert(hash, ());
            Ok(None)
        }
    }
}

/// The role table of API.md: admin everything; operator everything under
/// /v1/admin except tokens, plus all reads; client commands and reads outside /v1/admin.
pub fn allowed(role: Role, method: &Method, path: &str) -> bool {
    let admin_area = path.starts_with("/v1/admin");
    let read = method == Method::GET || method == Method::HEAD;
    match role {
        Role::Admin => true,
        // Issuing tokens, creating ledgers and erasing subjects stay the admin's.
        Role::Operator => {
            read || (admin_area
                && !path.starts_with("/v1/admin/tokens")
                && !path.starts_with("/v1/admin/ledgers")
                && !path.starts_with("/v1/admin/subjects"))
        }
        Role::Client => !admin_area,
    }
}

/// Takes one request from the principal's bucket, or says how long to wait.
pub fn take(state: &AppState, name: &str) -> Result<(), u64> {
    let rate = f64::from(state.config.rate_limit_per_s.max(1));
    let burst = f64::from(state.config.rate_limit_burst.max(1));
    let bucket = state
        .shared
        .tokens
        .buckets
        .get_with(name.to_owned(), || Arc::new(Mutex::new(Bucket { tokens: burst, at: Instant::now() })));
    let mut b = bucket.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = Instant::now();
    b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
    b.at = now;
    if b.tokens >= 1.0 {
        b.tokens -= 1.0;
        Ok(())
    } else {
        Err(((1.0 - b.tokens) / rate).ceil().max(1.0) as u64)
    }
}

/// The principal of the request's bearer token, or the answer that refuses it (401).
pub async fn bearer(state: &AppState, headers: &axum::http::HeaderMap) -> Result<Principal, ApiError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    match token {
        None => Err(ApiError::unauthorized()),
        Some(t) => principal(state, t).await?.ok_or_else(ApiError::unauthorized),
    }
}

/// Takes one request from the principal's bucket, or the 429 that refuses it.
pub fn within_rate(state: &AppState, principal: &Principal) -> Result<(), ApiError> {
    take(state, &principal.name).map_err(|retry_after_s| {
        let e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many requests for this token; slow down",
        );
        ApiError { retry_after_s: Some(retry_after_s), ..e }
    })
}

/// Routes that are the deployment's, not a ledger's: only a token without a ledger
/// list may use them (a token confined to some ledgers must not mint a wider one).
pub fn deployment_wide(path: &str) -> bool {
    path.starts_with("/v1/admin/tokens") || path.starts_with("/v1/admin/ledgers")
}

/// Requires a valid bearer token that may use this ledger, with a role that allows
/// the route, within its rate.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let principal = match bearer(&state, request.headers()).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    // Refused requests count against the token's rate too.
    if let Err(e) = within_rate(&state, &principal) {
        return e.into_response();
    }
    let path = request.uri().path();
    if !principal.may_use(&state.config.ledger) || (deployment_wide(path) && principal.ledgers.is_some()) {
        return ApiError::forbidden().into_response();
    }
    if !allowed(principal.role, request.method(), path) {
        return ApiError::forbidden().into_response();
    }
    let _turn = match crate::http::shed::token_turn(&state, &principal) {
        Ok(turn) => turn,
        Err(e) => return e.into_response(),
    };
    request.extensions_mut().insert(principal);
    next.run(request).await
}

//! The audit trail: events with who/why metadata, filtered; and the hash-chain check.

use crate::http::error::ApiError;
use crate::http::extract::Params;
use crate::http::validate::{limit_param, position_param};
use crate::read::views;
use crate::run::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use ledger_infrastructure::audit::{AuditFilter, audit_events, verify_chain};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/audit", get(audit))
        .route("/v1/audit/verify", get(verify))
        .route("/v1/audit/tree-head", get(tree_head))
        .route("/v1/audit/proofs/inclusion", get(inclusion))
        .route("/v1/audit/proofs/consistency", get(consistency))
}

fn time_param(name: &str, raw: Option<&String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.map(|s| {
        crate::http::validate::timestamp(s)
            .ok_or_else(|| ApiError::bad_request(format!("`{name}` must be an RFC 3339 timestamp")))
    })
    .transpose()
}

#[utoipa::path(
    get,
    path = "/v1/audit",
    operation_id = "audit_events",
    tag = "audit",
    summary = "Search the audit trail",
    description = "Events with who/why metadata, in position order, filtered.",
    params(ledger_wire::AuditQuery),
    responses(
        (status = 200, description = "One page of events.", body = ledger_wire::AuditPage),
        (status = 400, description = "`validation_error`: `stream_id` is not a UUID, `from` or `to` is not RFC 3339, \
            or `limit` or `cursor` is invalid."),
    )
)]
async fn audit(State(state): State<AppState>, Params(q): Params) -> Result<Response, ApiError> {
    let stream_id = match q.get("stream_id") {
        None => None,
        Some(s) => Some(uuid::Uuid::parse_str(s).map_err(|_| ApiError::bad_request("`stream_id` must be a UUID"))?),
    };
    let filter = AuditFilter {
        actor: q.get("actor").cloned(),
        correlation_id: q.get("correlation_id").cloned(),
        stream_id,
        from: time_param("from", q.get("from"))?,
        to: time_param("to", q.get("to"))?,
        after: position_param("cursor", q.get("cursor").map(String::as_str))?.unwrap_or(0),
        limit: limit_param(q.get("limit").map(String::as_str), 100, ledger_wire::limits::PAGE_MAX)?,
    };
    let head = state.store.head().await?;
    let events = audit_events(&state.store, &filter).await?;
    let next_cursor =
        if events.len() as i64 == filter.limit { events.last().map(|e| e.position.to_string()) } else { None };
    let events = events.into_iter().map(views::audit_event).collect::<Result<_, _>>()?;
    Ok(views::read(&ledger_wire::AuditPage { events, next_cursor }, head))
}

/// Batch size of a chain walk.
const VERIFY_BATCH_MAX: i64 = 5_000;

#[utoipa::path(
    get,
    path = "/v1/audit/verify",
    operation_id = "audit_verify",
    tag = "audit",
    summary = "Verify the hash chain",
    description = "Walks the tamper-evident hash chain over the whole log.",
    responses((status = 200, description = "The outcome (`ok` false names the first bad position).", body = ledger_wire::ChainReport))
)]
async fn verify(State(state): State<AppState>) -> Result<Response, ApiError> {
    let report = verify_chain(&state.store, VERIFY_BATCH_MAX, |_, _| {}).await?;
    let position = report.checked;
    let report = ledger_wire::ChainReport {
        ok: report.ok,
        checked: report.checked,
        head: report.head,
        first_bad_position: report.first_bad_position,
    };
    Ok(views::read(&report, position))
}

/// A size or a position: 1 to 18 ASCII digits (so it fits, and a huge, negative or
/// non-numeric one is refused before anything is read).
fn count_param(name: &str, raw: Option<&String>) -> Result<Option<i64>, ApiError> {
    raw.map(|s| match s.parse::<i64>() {
        Ok(n) if (1..=18).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(ApiError::validation(format!("`{name}` must be a non-negative integer of at most 18 digits"))),
    })
    .transpose()
}

fn required(name: &str, value: Option<i64>) -> Result<i64, ApiError> {
    value.ok_or_else(|| ApiError::validation(format!("`{name}` is required")))
}

/// The log no longer matches its tree: a 500 that says where (the positions are the
/// log's, not a secret).
fn broken(detail: String) -> ApiError {
    ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, crate::http::error::ErrorCode::Internal, detail)
}

fn tree_error(e: ledger_infrastructure::tree::TreeError) -> ApiError {
    use ledger_infrastructure::tree::TreeError;
    match e {
        TreeError::Database(e) => ApiError::from(e),
        TreeError::Tampered { position } => broken(format!(
            "the log does not verify at position {position} (GET /v1/audit/verify): the tree stops before it, and \
             no head covers it"
        )),
        TreeError::BlockChanged { from, to } => broken(format!(
            "the stored hashes of the events at positions {from} to {to} were changed after they entered the tree \
             (GET /v1/audit/verify)"
        )),
        other => ApiError::internal(&other),
    }
}

/// Sizes up to the log's head are answered once the tree has reached them (it follows
/// the log closely); one it has not reached within the consistency wait is 503, and one
/// it never will (the log does not verify at or before it) is 500, naming the position.
async fn reached(state: &AppState, size: i64) -> Result<(), ApiError> {
    use ledger_infrastructure::tree::Reach;
    match state.tree.reached(&state.pool, size, state.config.consistency_wait).await? {
        Reach::Reached => Ok(()),
        Reach::TimedOut => Err(ApiError {
            retry_after_s: Some(1),
            ..ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                crate::http::error::ErrorCode::ConsistencyTimeout,
                format!("the Merkle tree has not reached size {size} yet"),
            )
        }),
        Reach::Stopped(position) => Err(tree_error(ledger_infrastructure::tree::TreeError::Tampered { position })),
    }
}

/// The head of the log, and `size` checked against it.
async fn within_head(state: &AppState, name: &str, size: Option<i64>) -> Result<(i64, i64), ApiError> {
    let head = state.store.head().await?;
    let size = size.unwrap_or(head);
    if size > head {
        return Err(ApiError::validation(format!("`{name}` {size} is beyond the log's head ({head})")));
    }
    Ok((size, head))
}

/// A tree head signed with this deployment's first signing key.
pub fn signed_head(state: &AppState, head: &ledger_infrastructure::tree::TreeHead) -> ledger_wire::TreeHead {
    sign_head(&state.signer, &state.config.ledger, head)
}

/// A tree head of `ledger`, signed with the first key of `signer`, as the API shows it.
pub fn sign_head(
    signer: &ledger_infrastructure::signing::Signer,
    ledger: &str,
    head: &ledger_infrastructure::tree::TreeHead,
) -> ledger_wire::TreeHead {
    let root_hash = hex::encode(head.root);
    let timestamp = head.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (key_id, signature) = signer.sign_head(ledger, head.size, &root_hash, &timestamp);
    ledger_wire::TreeHead { ledger: ledger.to_owned(), tree_size: head.size, root_hash, timestamp, key_id, signature }
}

/// An inclusion proof as the API shows it.
pub fn inclusion_view(
    position: i64,
    size: i64,
    leaf: &ledger_infrastructure::merkle::Hash,
    path: &[ledger_infrastructure::merkle::Hash],
) -> ledger_wire::InclusionProof {
    ledger_wire::InclusionProof {
        position,
        tree_size: size,
        leaf_hash: hex::encode(leaf),
        audit_path: path.iter().map(hex::encode).collect(),
    }
}

/// The public keys, as `GET /v1/audit/keys` shows them.
pub fn signing_keys(signer: &ledger_infrastructure::signing::Signer) -> ledger_wire::SigningKeys {
    let keys = signer
        .keys()
        .into_iter()
        .map(|(key_id, public_key)| ledger_wire::SigningKeyView { key_id, algorithm: "ed25519".into(), public_key })
        .collect();
    ledger_wire::SigningKeys { keys }
}

#[utoipa::path(
    get,
    path = "/v1/audit/tree-head",
    operation_id = "tree_head",
    tag = "audit",
    summary = "A signed tree head",
    description = "The root of the ledger's Merkle tree (RFC 9162) at `tree_size` (default: the log's head), signed \
        with Ed25519 (docs/AUDIT.md).",
    params(("tree_size" = Option<i64>, Query, description = "0 ≤ tree_size ≤ the head.")),
    responses(
        (status = 200, description = "The signed head.", body = ledger_wire::TreeHead),
        (status = 422, description = "`validation_error`: `tree_size` is not an integer of at most 18 digits, or \
            beyond the head."),
        (status = 503, description = "`consistency_timeout`: the tree has not reached that size in time."),
    )
)]
async fn tree_head(State(state): State<AppState>, Params(q): Params) -> Result<Response, ApiError> {
    let (size, head) = within_head(&state, "tree_size", count_param("tree_size", q.get("tree_size"))?).await?;
    Ok(views::read(&tree_head_at(&state, size).await?, head))
}

/// The signed head of the tree at `size` (at most the log's head), once the tree has
/// reached it.
pub async fn tree_head_at(state: &AppState, size: i64) -> Result<ledger_wire::TreeHead, ApiError> {
    reached(state, size).await?;
    let tree_head = ledger_infrastructure::tree::head(&state.pool, size).await.map_err(tree_error)?;
    Ok(signed_head(state, &tree_head))
}

#[utoipa::path(
    get,
    path = "/v1/audit/proofs/inclusion",
    operation_id = "inclusion_proof",
    tag = "audit",
    summary = "An event's inclusion proof",
    description = "The audit path of the event at `position` in the tree of `tree_size` (default: the head): with \
        the leaf hash it leads to that tree head's root (RFC 9162, 2.1.3).",
    params(
        ("position" = i64, Query, description = "1 ≤ position ≤ tree_size."),
        ("tree_size" = Option<i64>, Query, description = "position ≤ tree_size ≤ the head."),
    ),
    responses(
        (status = 200, description = "The proof.", body = ledger_wire::InclusionProof),
        (status = 422, description = "`validation_error`: a parameter is missing, not an integer of at most 18 \
            digits, or out of range."),
        (status = 503, description = "`consistency_timeout`: the tree has not reached that size in time."),
    )
)]
async fn inclusion(State(state): State<AppState>, Params(q): Params) -> Result<Response, ApiError> {
    let position = required("position", count_param("position", q.get("position"))?)?;
    let (size, head) = within_head(&state, "tree_size", count_param("tree_size", q.get("tree_size"))?).await?;
    if position < 1 || position > size {
        return Err(ApiError::validation(format!("`position` must be from 1 to the tree size ({size})")));
    }
    reached(&state, size).await?;
    let (leaf, path) = ledger_infrastructure::tree::inclusion(&state.pool, position, size).await.map_err(tree_error)?;
    Ok(views::read(&inclusion_view(position, size, &leaf, &path), head))
}

#[utoipa::path(
    get,
    path = "/v1/audit/proofs/consistency",
    operation_id = "consistency_proof",
    tag = "audit",
    summary = "A consistency proof between two tree heads",
    description = "Proves that the tree of `from_size` is a prefix of the tree of `to_size` (RFC 9162, 2.1.4).",
    params(
        ("from_size" = i64, Query, description = "1 ≤ from_size ≤ to_size."),
        ("to_size" = i64, Query, description = "to_size ≤ the head."),
    ),
    responses(
        (status = 200, description = "The proof.", body = ledger_wire::ConsistencyProof),
        (status = 422, description = "`validation_error`: a parameter is missing, not an integer of at most 18 \
            digits, or out of range."),
        (status = 503, description = "`consistency_timeout`: the tree has not reached that size in time."),
    )
)]
async fn consistency(State(state): State<AppState>, Params(q): Params) -> Result<Response, ApiError> {
    let from = required("from_size", count_param("from_size", q.get("from_size"))?)?;
    let to = required("to_size", count_param("to_size", q.get("to_size"))?)?;
    let (to, head) = within_head(&state, "to_size", Some(to)).await?;
    if from < 1 || from > to {
        return Err(ApiError::validation(format!("`from_size` must be from 1 to `to_size` ({to})")));
    }
    reached(&state, to).await?;
    let proof = ledger_infrastructure::tree::consistency(&state.pool, from, to).await.map_err(tree_error)?;
    let proof =
        ledger_wire::ConsistencyProof { from_size: from, to_size: to, proof: proof.iter().map(hex::encode).collect() };
    Ok(views::read(&proof, head))
}

#[utoipa::path(
    get,
    path = "/v1/audit/keys",
    operation_id = "signing_keys",
    tag = "audit",
    summary = "The keys tree heads are signed with",
    description = "Needs no token. The first signs; the others are kept for heads signed before a rotation.",
    security(()),
    responses((status = 200, description = "The public keys.", body = ledger_wire::SigningKeys))
)]
pub async fn keys(State(state): State<AppState>) -> Response {
    axum::Json(signing_keys(&state.signer)).into_response()
}

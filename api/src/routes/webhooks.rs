//! Webhooks (operator or admin): register, list, delete. What they deliver, and how, is
//! `ledger_infrastructure::webhooks`. Webhook routes answer no `position` (API.md).

use crate::http::command::{CommandBody, respond, stored};
use crate::http::context::Principal;
use crate::http::error::ApiError;
use crate::http::extract::Segment;
use crate::http::operation::{self, Begun};
use crate::run::state::AppState;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use ledger_infrastructure::StoredResponse;
use ledger_infrastructure::webhooks::store::{self, Registered};
use ledger_infrastructure::webhooks::{self, NewWebhook};
use ledger_wire::EventType;
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/admin/webhooks", post(create).get(list)).route("/v1/admin/webhooks/{id}", delete(remove))
}

/// The longest URL a webhook may have.
pub const URL_BYTES_MAX: usize = 2048;

/// An `http` or `https` URL with a host.
fn endpoint(url: &str) -> Result<(), ApiError> {
    if url.len() > URL_BYTES_MAX {
        return Err(ApiError::validation(format!("`url` must be at most {URL_BYTES_MAX} bytes")));
    }
    let uri: Uri = url.parse().map_err(|_| ApiError::validation("`url` is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(ApiError::validation("`url` must be an http or https URL"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(ApiError::validation("`url` must name a host"));
    }
    Ok(())
}

/// The stored names back as wire types (names the service stored itself).
fn event_types(names: Option<Vec<String>>) -> Result<Option<Vec<EventType>>, ApiError> {
    names
        .map(|names| {
            names
                .into_iter()
                .map(|n| serde_json::from_value(serde_json::Value::String(n)))
                .collect::<Result<Vec<EventType>, _>>()
        })
        .transpose()
        .map_err(|e| ApiError::internal(&format!("a stored webhook has an unknown event type: {e}")))
}

#[utoipa::path(
    post,
    path = "/v1/admin/webhooks",
    operation_id = "create_webhook",
    tag = "webhooks",
    summary = "Register a webhook",
    description = "Operator or admin. Every event committed after the registration whose `type` is in \
        `event_types` (default: all) is POSTed to `url`, signed with `Ledger-Signature: t=<unix seconds>,v1=<hex \
        HMAC-SHA256(secret, \"<t>.<raw body>\")>`, in log order, at least once. The secret is in this response \
        (and its idempotent replay) only; `GET` never shows it.",
    request_body = ledger_wire::WebhookRequest,
    responses(
        (status = 201, description = "Registered.", body = ledger_wire::WebhookCreated),
        (status = 422, description = "`validation_error`: the URL is not http(s), carries credentials, or names a \
            host the host policy refuses (link-local and metadata addresses always; `LEDGER_WEBHOOK_ALLOW`, \
            `LEDGER_WEBHOOK_DENY`); an event type is unknown, or `event_types` is empty; or `LEDGER_WEBHOOKS_MAX` \
            webhooks are active already."),
    )
)]
async fn create(State(state): State<AppState>, principal: Principal, body: CommandBody) -> Result<Response, ApiError> {
    // A key used before answers as it did (or 422 for another body) before anything else.
    let key = match operation::begin(&state, &principal, &body).await? {
        Begun::Answered(replay) => return Ok(respond(with_secret(&state, replay).await?, true)),
        Begun::Run(key) => key,
    };
    let (request, types) = match registration(&state, &body) {
        Ok(valid) => valid,
        Err(e) => return Err(key.refuse(e).await),
    };
    let id = Uuid::now_v7();
    let secret = webhooks::new_secret();
    let created = ledger_wire::WebhookCreated {
        id,
        url: request.url.clone(),
        event_types: types.clone(),
        status: "active".into(),
        secret: None,
    };
    // The record keeps no secret (it is sealed in the webhook's row); a replay reads it
    // back from there, so a client that lost the first answer can still check signatures.
    let recorded = stored(201, &created);
    let new = NewWebhook {
        id,
        url: request.url,
        event_types: types.map(|t| t.into_iter().map(EventType::name).collect()),
        description: request.description.map(|d| d.0),
        secret: secret.clone(),
    };
    let limit = state.config.webhooks_max;
    match store::register(&state.pool, &state.master_key, &new, key.claim(), key.token(), &recorded, limit).await? {
        Registered::Created => {}
        // Our lease lapsed and a retry of this request took the key over: it registers.
        Registered::ClaimLost => return Err(ledger_infrastructure::CommandError::IdempotencyKeyInFlight.into()),
        Registered::Full => {
            let e = ApiError::validation(format!("at most {limit} webhooks may be active (LEDGER_WEBHOOKS_MAX)"));
            return Err(key.refuse(e).await);
        }
    }
    key.finished();
    Ok(respond(stored(201, &ledger_wire::WebhookCreated { secret: Some(secret), ..created }), false))
}

/// A stored registration answer with the webhook's secret read back (opened) from it.
async fn with_secret(state: &AppState, mut answer: StoredResponse) -> Result<StoredResponse, ApiError> {
    let id = answer.body["id"].as_str().and_then(|id| Uuid::parse_str(id).ok());
    if let (Some(id), true) = (id, answer.body["secret"].is_null()) {
        let secret = store::secret(&state.pool, &state.master_key, id)
            .await
            .map_err(|e| ApiError::internal(&format!("webhook {id}: {e}")))?;
        answer.body["secret"] = secret.map_or(serde_json::Value::Null, serde_json::Value::String);
    }
    Ok(answer)
}

/// A registration's request, checked: its URL (against the host policy too), and its
/// event types without repeats.
fn registration(
    state: &AppState,
    body: &CommandBody,
) -> Result<(ledger_wire::WebhookRequest, Option<Vec<EventType>>), ApiError> {
    let request: ledger_wire::WebhookRequest = crate::http::requests::parse(&body.json)?;
    endpoint(&request.url)?;
    state
        .webhook_policy
        .check_url(&request.url)
        .map_err(|refusal| ApiError::validation(format!("`url`: {refusal}")))?;
    let mut types = request.event_types.clone();
    if let Some(t) = types.as_mut() {
        if t.is_empty() {
            return Err(ApiError::validation("`event_types` must name at least one type (leave it out for all)"));
        }
        let mut seen = std::collections::HashSet::new();
        t.retain(|x| seen.insert(*x));
    }
    Ok((request, types))
}

#[utoipa::path(
    get,
    path = "/v1/admin/webhooks",
    operation_id = "list_webhooks",
    tag = "webhooks",
    summary = "The webhooks",
    description = "Operator or admin. The active webhooks, oldest first, with how far each has delivered.",
    responses((status = 200, description = "The webhooks.", body = ledger_wire::Webhooks))
)]
async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let rows = store::active(&state.pool).await?;
    let mut list = Vec::with_capacity(rows.len());
    for w in rows {
        list.push(ledger_wire::Webhook {
            id: w.id,
            url: w.url,
            event_types: event_types(w.event_types)?,
            status: w.status,
            delivered_position: w.delivered_position,
            failures: w.attempts,
            breaker: match w.breaker.as_str() {
                "open" => ledger_wire::BreakerState::Open,
                "half_open" => ledger_wire::BreakerState::HalfOpen,
                _ => ledger_wire::BreakerState::Closed,
            },
        });
    }
    Ok(Json(ledger_wire::Webhooks { webhooks: list }).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/admin/webhooks/{id}",
    operation_id = "delete_webhook",
    tag = "webhooks",
    summary = "Delete a webhook",
    description = "Operator or admin. Deliveries stop (a request in flight finishes). Deleting it again is 204 too.",
    params(("id" = Uuid, Path, description = "The webhook id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "`not_found`: no such webhook (or the id is not a UUID)."),
    )
)]
async fn remove(State(state): State<AppState>, Segment(raw): Segment) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found(format!("webhook {raw} not found"));
    let id = crate::http::validate::path_uuid(&raw, not_found)?;
    if !store::delete(&state.pool, id).await? {
        return Err(not_found());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

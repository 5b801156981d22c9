//! Operations (operator or admin): projection status, circuit breakers, the
//! dead-letter queue.

use crate::http::command::{CommandBody, Planned};
use crate::http::context::{Principal, RequestContext};
use crate::http::error::{ApiError, ErrorCode};
use crate::http::extract::{Params, Segment};
use crate::read::Consistency;
use crate::read::coherence::read_model_ready;
use crate::read::views;
use crate::run::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use ledger_domain::Command;
use ledger_domain::decide::ResolveDeadLetter;
use ledger_infrastructure::{Recorded, StoredResponse};
use ledger_projections::Projection;
use sha2::Digest;
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/projections", get(projections))
        .route("/v1/admin/circuit-breakers", get(breakers))
        .route("/v1/admin/dead-letters", get(dead_letters))
        .route("/v1/admin/dead-letters/{id}/redrive", post(redrive))
        .route("/v1/admin/dead-letters/{id}/discard", post(discard))
        .route("/v1/admin/tokens", post(create_token))
        .route("/v1/admin/projections/{name}/rebuild", post(rebuild))
}

/// Starts a blue-green rebuild in the background: 202, then progress in
/// `GET /v1/admin/projections`. A second rebuild of the same projection while one runs
/// (in any process) is 409.
#[utoipa::path(
    post,
    path = "/v1/admin/projections/{name}/rebuild",
    operation_id = "rebuild_projection",
    tag = "operations",
    summary = "Rebuild a projection",
    description = "Operator or admin. Rebuilds the read model from the log in the background (blue-green: the \
        live one keeps serving); progress in `GET /v1/admin/projections`.",
    params(("name" = ledger_wire::ProjectionName, Path, description = "The projection.")),
    request_body(content = Option<ledger_wire::EmptyRequest>, description = "Ignored; `{}` or no body."),
    responses(
        (status = 202, description = "The rebuild started.", body = ledger_wire::RebuildStarted),
        (status = 404, description = "`not_found`: no projection with that name."),
        (status = 409, description = "`version_conflict`: a rebuild of this projection is already running (in any \
            process)."),
    )
)]
async fn rebuild(
    State(state): State<AppState>,
    principal: Principal,
    Segment(name): Segment,
    body: CommandBody,
) -> Result<Response, ApiError> {
    let projection =
        Projection::from_name(&name).ok_or_else(|| ApiError::not_found(format!("no projection named {name}")))?;
    let key = match crate::http::operation::begin(&state, &principal, &body).await? {
        crate::http::operation::Begun::Answered(replay) => return Ok(crate::http::command::respond(replay, true)),
        crate::http::operation::Begun::Run(key) => key,
    };
    let lock = ledger_projections::rebuild::RebuildLock::acquire(&state.config.database_url, projection)
        .await
        .map_err(|e| match e {
            ledger_projections::rebuild::RebuildError::AlreadyRunning(_) => {
                ApiError::new(axum::http::StatusCode::CONFLICT, ErrorCode::VersionConflict, e.to_string())
            }
            other => ApiError::unavailable(&other),
        })?;
    let started = ledger_wire::RebuildStarted { name: views::projection_name(projection), status: "rebuilding".into() };
    let response = key.finish(crate::http::command::stored(202, &started)).await?;
    let background = state.clone();
    tokio::spawn(async move {
        match lock.rebuild(&background.pool, |_, _| {}).await {
            Ok(position) => {
                tracing::info!(projection = projection.name(), position, "projection rebuilt and switched");
                let applied = crate::read::coherence::Applied {
                    origin: background.instance_id,
                    projection: projection.name().to_owned(),
                    position,
                    from: None,
                    accounts: Vec::new(),
                    all: true,
                };
                crate::read::coherence::apply_announcement(&background, &applied, true).await;
                crate::read::coherence::announce(&background, &applied).await;
            }
            Err(e) => tracing::error!(projection = projection.name(), error = %e, "projection rebuild failed"),
        }
    });
    Ok(response)
}

/// Issues a token. The secret is in the first response only: the stored response
/// (replayed for the same Idempotency-Key) carries `"token": null`, because the
/// idempotency record must not keep the secret in plain text.
#[utoipa::path(
    post,
    path = "/v1/admin/tokens",
    operation_id = "create_token",
    tag = "operations",
    summary = "Issue a token",
    description = "Admin only. The secret is in this response only; it is stored hashed.",
    request_body = ledger_wire::TokenRequest,
    responses(
        (status = 201, description = "The token.", body = ledger_wire::TokenCreated),
        (status = 409, description = "`version_conflict`: a token with this name was issued already, or concurrent \
            commands kept conflicting; `idempotency_key_in_flight`: a request with this key is still executing."),
        (status = 422, description = "`validation_error`: `name` or `role` is missing or malformed."),
    )
)]
async fn create_token(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    body: CommandBody,
) -> Result<Response, ApiError> {
    let r: ledger_wire::TokenRequest = crate::http::requests::parse(&body.json)?;
    let (name, role) = (r.name.0, r.role);
    let ledgers = match r.ledgers {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(ApiError::validation("ledgers: an empty list would make a token no ledger accepts"));
        }
        Some(list) => {
            let mut names: Vec<String> = Vec::with_capacity(list.len());
            for ledger in list {
                let known = ledger.0 == ledger_infrastructure::ledgers::DEFAULT_LEDGER
                    || ledger_infrastructure::ledgers::find(&state.store, &ledger.0).await?.is_some();
                if !known {
                    return Err(ApiError::validation(format!("ledgers: no ledger is named {:?}", ledger.0)));
                }
                if !names.contains(&ledger.0) {
                    names.push(ledger.0);
                }
            }
            Some(names)
        }
    };
    let token = format!("ltk_{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let token_sha256 = crate::http::auth::token_hash(&token);
    let token_id = token_id(&name);
    let command = Command::IssueToken(ledger_domain::decide::IssueToken {
        token_id,
        name: name.clone(),
        role,
        token_sha256,
        ledgers,
    });
    // The id, name and role come from the request, which a replay repeats exactly.
    let created = ledger_wire::TokenCreated { id: token_id, name, role, token: None };
    let stored_form = created.clone();
    let render = move |_: &Recorded| crate::http::command::stored(201, &stored_form);
    let planned = crate::http::command::Planned::new(command, None, render);
    let (mut stored, replayed) = planned.answer(&state, &principal, &context, body).await?;
    if stored.status == 201 && !replayed {
        stored = crate::http::command::stored(201, &ledger_wire::TokenCreated { token: Some(token), ..created });
    }
    Ok(crate::http::command::respond(stored, replayed))
}

/// A token's stream id, derived from its name so each name is issued once.
pub fn token_id(name: &str) -> Uuid {
    let digest = sha2::Sha256::digest(format!("ledger-token:{name}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::new_v8(bytes)
}

#[utoipa::path(
    get,
    path = "/v1/admin/circuit-breakers",
    operation_id = "circuit_breakers",
    tag = "operations",
    summary = "Circuit breakers",
    description = "Operator or admin. The breakers around NATS publishing and the payment provider, in this \
        process, and each webhook's (`webhook:<id>`, as its delivering process last recorded it).",
    responses((status = 200, description = "Each breaker's state.", body = ledger_wire::Breakers))
)]
async fn breakers(State(state): State<AppState>) -> Result<Response, ApiError> {
    let head = state.store.head().await?;
    let mut breakers = vec![state.relay_breaker.snapshot(), state.provider_breaker.snapshot()];
    breakers.extend(ledger_infrastructure::webhooks::store::breakers(&state.pool).await?);
    let breakers = breakers.into_iter().map(views::breaker).collect();
    Ok(views::read(&ledger_wire::Breakers { breakers }, head))
}

#[utoipa::path(
    get,
    path = "/v1/admin/dead-letters",
    operation_id = "dead_letters",
    tag = "operations",
    summary = "Open dead letters",
    description = "Operator or admin. Payouts that exhausted their retries, and webhook events that exhausted \
        theirs (source `webhook:<id>`), oldest first.",
    params(ledger_wire::ConsistencyQuery),
    responses(
        (status = 200, description = "The open dead letters.", body = ledger_wire::DeadLetters),
        (status = 400, description = "`validation_error`: `consistency` or `min_position` is invalid."),
        (status = 503, description = "`consistency_timeout`: the read model did not reach `min_position` in time."),
    )
)]
async fn dead_letters(State(state): State<AppState>, Params(q): Params) -> Result<Response, ApiError> {
    let consistency = Consistency::from_query(&q)?;
    let ready = read_model_ready(&state, Projection::Transfers, consistency).await?;
    let (rows, position) = ledger_projections::queries::open_dead_letters(ready.pool).await?;
    let mut dead_letters: Vec<ledger_wire::DeadLetter> = rows.into_iter().map(views::dead_letter).collect();
    let webhooks = ledger_infrastructure::webhooks::store::open_dead_letters(ready.pool).await?;
    dead_letters.extend(webhooks.into_iter().map(views::webhook_dead_letter));
    dead_letters.sort_by_key(|d| (d.dead_lettered_at, d.id));
    Ok(views::read(&ledger_wire::DeadLetters { dead_letters }, position))
}

/// Redrives or discards a webhook's dead letter, if `raw` names one: no event is
/// recorded, the idempotency record keeps the answer for a replay.
async fn resolve_webhook_dead_letter(
    state: &AppState,
    principal: &Principal,
    body: &CommandBody,
    raw: &str,
    action: ledger_infrastructure::webhooks::DeadLetterAction,
) -> Result<Option<Response>, ApiError> {
    use ledger_infrastructure::webhooks::store::{is_dead_letter, resolve_dead_letter};
    use ledger_infrastructure::webhooks::{DeadLetterAction, Resolved};
    let Ok(id) = Uuid::parse_str(raw) else { return Ok(None) };
    if !is_dead_letter(&state.pool, id).await? {
        return Ok(None);
    }
    let key = match crate::http::operation::begin(state, principal, body).await? {
        crate::http::operation::Begun::Answered(replay) => {
            return Ok(Some(crate::http::command::respond(replay, true)));
        }
        crate::http::operation::Begun::Run(key) => key,
    };
    // The resolution and its answer commit together: a retry never finds one without the other.
    let mut tx = state.pool.begin().await?;
    let response = match resolve_dead_letter(&mut tx, id, action).await? {
        Resolved::Done { head } => {
            let status = match action {
                DeadLetterAction::Redrive => ledger_wire::DeadLetterOutcome::Redriven,
                DeadLetterAction::Discard => ledger_wire::DeadLetterOutcome::Discarded,
            };
            let body = ledger_wire::DeadLetterResolution { id, withdrawal_id: None, status, position: head };
            crate::http::command::stored(200, &body)
        }
        Resolved::NotOpen => {
            let e = ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::ValidationError,
                "the dead letter is not open any more",
            );
            StoredResponse { status: 422, body: e.body() }
        }
        Resolved::NotFound => {
            drop(tx);
            return Err(key.refuse(ApiError::not_found(format!("dead letter {raw} not found"))).await);
        }
    };
    if !ledger_infrastructure::EventStore::finish_claim(&mut *tx, key.claim(), key.token(), &response).await? {
        return Err(ledger_infrastructure::CommandError::IdempotencyKeyInFlight.into());
    }
    tx.commit().await?;
    key.finished();
    Ok(Some(crate::http::command::respond(response, false)))
}

/// The withdrawal of an open dead letter, from the read model caught up to the head.
async fn dead_letter_withdrawal(state: &AppState, raw: &str) -> Result<(Uuid, Uuid), ApiError> {
    let not_found = || ApiError::not_found(format!("dead letter {raw} not found"));
    let id = crate::http::validate::path_uuid(raw, not_found)?;
    read_model_ready(state, Projection::Transfers, Consistency::Strong).await?;
    let withdrawal =
        ledger_projections::queries::dead_letter_withdrawal(&state.pool, id).await?.ok_or_else(not_found)?;
    Ok((id, withdrawal))
}

/// The dead letter's and withdrawal's ids come from the path (a replay repeats it).
fn render_resolution(
    dead_letter_id: Uuid,
    withdrawal_id: Uuid,
    status: ledger_wire::DeadLetterOutcome,
) -> impl Fn(&Recorded) -> StoredResponse {
    move |recorded| {
        let body = ledger_wire::DeadLetterResolution {
            id: dead_letter_id,
            withdrawal_id: Some(withdrawal_id),
            status,
            position: recorded.position,
        };
        crate::http::command::stored(200, &body)
    }
}

#[utoipa::path(
    post,
    path = "/v1/admin/dead-letters/{id}/redrive",
    operation_id = "redrive_dead_letter",
    tag = "operations",
    summary = "Retry a dead-lettered payout",
    description = "Operator or admin. Retries the payout now.",
    params(("id" = Uuid, Path, description = "The dead letter id.")),
    request_body(content = Option<ledger_wire::EmptyRequest>, description = "Ignored; `{}` or no body."),
    responses(
        (status = 200, description = "Redriven.", body = ledger_wire::DeadLetterResolution),
        (status = 404, description = "`not_found`: no such dead letter (or the id is not a UUID)."),
        (status = 422, description = "`validation_error`: the dead letter is not open any more."),
    )
)]
async fn redrive(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    Segment(raw): Segment,
    body: CommandBody,
) -> Result<Response, ApiError> {
    let redrive = ledger_infrastructure::webhooks::DeadLetterAction::Redrive;
    if let Some(done) = resolve_webhook_dead_letter(&state, &principal, &body, &raw, redrive).await? {
        return Ok(done);
    }
    let (id, withdrawal_id) = dead_letter_withdrawal(&state, &raw).await?;
    let command = Command::RedrivePayout(ResolveDeadLetter { dead_letter_id: id, withdrawal_id });
    let render = render_resolution(id, withdrawal_id, ledger_wire::DeadLetterOutcome::Redriven);
    Planned::new(command, Some(id.to_string()), render).run(&state, &principal, &context, body).await
}

#[utoipa::path(
    post,
    path = "/v1/admin/dead-letters/{id}/discard",
    operation_id = "discard_dead_letter",
    tag = "operations",
    summary = "Give up a dead-lettered payout",
    description = "Operator or admin. Fails the withdrawal: the hold is released, the balance is unchanged.",
    params(("id" = Uuid, Path, description = "The dead letter id.")),
    request_body(content = Option<ledger_wire::EmptyRequest>, description = "Ignored; `{}` or no body."),
    responses(
        (status = 200, description = "Discarded.", body = ledger_wire::DeadLetterResolution),
        (status = 404, description = "`not_found`: no such dead letter (or the id is not a UUID)."),
        (status = 422, description = "`validation_error`: the dead letter is not open any more."),
    )
)]
async fn discard(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    Segment(raw): Segment,
    body: CommandBody,
) -> Result<Response, ApiError> {
    let discard = ledger_infrastructure::webhooks::DeadLetterAction::Discard;
    if let Some(done) = resolve_webhook_dead_letter(&state, &principal, &body, &raw, discard).await? {
        return Ok(done);
    }
    let (id, withdrawal_id) = dead_letter_withdrawal(&state, &raw).await?;
    let command = Command::DiscardPayout(ResolveDeadLetter { dead_letter_id: id, withdrawal_id });
    let render = render_resolution(id, withdrawal_id, ledger_wire::DeadLetterOutcome::Discarded);
    Planned::new(command, Some(id.to_string()), render).run(&state, &principal, &context, body).await
}

/// A worker that has not written for this long while behind is reported `stopped`.
const STALL_S: i64 = 10;

#[utoipa::path(
    get,
    path = "/v1/admin/projections",
    operation_id = "projections",
    tag = "operations",
    summary = "Projection status",
    description = "Operator or admin. Each read model's position, lag and status, and the log's head.",
    responses((status = 200, description = "The projections.", body = ledger_wire::Projections))
)]
async fn projections(State(state): State<AppState>) -> Result<Response, ApiError> {
    let (head, rows) = ledger_projections::queries::statuses(&state.pool).await?;
    let now = state.clock.now();
    let mut projections = Vec::with_capacity(rows.len());
    for row in rows {
        use ledger_wire::ProjectionState as S;
        let name = Projection::from_name(&row.name)
            .ok_or_else(|| ApiError::internal(&format!("unknown projection {:?} in the checkpoints", row.name)))?;
        let lag = head - row.position;
        let status = match row.status.as_str() {
            "rebuilding" => S::Rebuilding,
            _ if lag == 0 => S::Running,
            _ if (now - row.updated_at).num_seconds() <= STALL_S => S::CatchingUp,
            _ => S::Stopped,
        };
        let rebuild =
            row.rebuild_position.map(|position| ledger_wire::RebuildProgress { position, target: row.rebuild_target });
        projections.push(ledger_wire::ProjectionStatus {
            name: views::projection_name(name),
            position: row.position,
            lag_events: lag,
            status,
            updated_at: row.updated_at,
            rebuild,
        });
    }
    let (hits, misses, entries) = state.cache.stats();
    let account_cache = ledger_wire::CacheStats { hits, misses, entries };
    Ok(views::read(&ledger_wire::Projections { head, projections, account_cache }, head))
}

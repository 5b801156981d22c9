//! Ledgers (API.md "Ledgers"): the directory's routes, and how a request reaches its
//! ledger: `/v1/ledgers/{ledger}/…` is that ledger's router with the prefix taken off,
//! and every other `/v1/…` path is `default`'s.

use crate::http::command::{CommandBody, Planned};
use crate::http::context::{Principal, RequestContext};
use crate::http::error::{ApiError, ErrorCode};
use crate::http::extract::Segment;
use crate::run::ledgers::{Ledgers, Runtime};
use crate::run::state::AppState;
use axum::Router;
use axum::extract::{Extension, Request, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ledger_domain::Command;
use ledger_infrastructure::Recorded;
use ledger_infrastructure::ledgers::{self as directory, DEFAULT_LEDGER, LedgerRecord};
use std::sync::Arc;
use tower::ServiceExt;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/admin/ledgers", get(list).post(create)).route("/v1/admin/ledgers/{ledger}", get(show))
}

/// `/v1/ledgers/{ledger}/…`: authenticates (401 first, as on every route), finds the
/// ledger (404 `ledger_not_found`), readies it (503 while its shard does not answer),
/// and hands the request to its router as the unprefixed path, which authorizes the
/// token for that ledger (403) and its route.
pub async fn dispatch(Extension(ledgers): Extension<Arc<Ledgers>>, request: Request) -> Response {
    match route(&ledgers, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn route(ledgers: &Ledgers, request: Request) -> Result<Response, ApiError> {
    let principal = crate::http::auth::bearer(ledgers.home(), request.headers()).await?;
    let path = request.uri().path().to_owned();
    let tail = path.strip_prefix("/v1/ledgers/").unwrap_or_default();
    let (name, rest) = tail.split_once('/').unwrap_or((tail, ""));
    if !principal.may_use(name) {
        // A confined token learns nothing of ledgers it may not use, not even whether
        // they exist, and readies none of them.
        crate::http::auth::within_rate(ledgers.home(), &principal)?;
        return Err(ApiError::forbidden());
    }
    let Some(runtime) = ledgers.get(name).await? else {
        // A request the ledger's router never sees still costs its token a request, so
        // names that are no ledger's cannot be tried faster than the token's rate.
        crate::http::auth::within_rate(ledgers.home(), &principal)?;
        return Err(ApiError::new(StatusCode::NOT_FOUND, ErrorCode::LedgerNotFound, "no such ledger"));
    };
    // The deployment's routes are not a ledger's.
    if crate::http::auth::deployment_wide(&format!("/v1/{rest}")) {
        return Err(ApiError::not_found("no such route"));
    }
    // A ledger takes at most three quarters of the process's turns: one whose shard
    // hangs leaves the others theirs.
    let Ok(_turn) = runtime.state.ledger_permits.clone().try_acquire_owned() else {
        metrics::counter!("ledger_requests_shed_total", "bound" => "ledger").increment(1);
        return Err(ApiError::overloaded("this ledger is at its bound of requests in flight; retry later"));
    };
    ledgers.ready(&runtime).await?;
    let unprefixed = match request.uri().query() {
        Some(q) => format!("/v1/{rest}?{q}"),
        None => format!("/v1/{rest}"),
    };
    let (mut parts, body) = request.into_parts();
    parts.uri = unprefixed.parse::<Uri>().map_err(|_| ApiError::not_found("no such route"))?;
    // The ledger's router sees the request as if it had come to it first: the path
    // parameters this route captured must not add to those of the ledger's route
    // (axum accumulates them), so only the request's context is carried over.
    let context = parts.extensions.get::<RequestContext>().cloned();
    parts.extensions = axum::http::Extensions::new();
    if let Some(context) = context {
        parts.extensions.insert(context);
    }
    Ok(call(&runtime, Request::from_parts(parts, body)).await)
}

/// Every path no other route of the application matched: `default`'s.
pub async fn dispatch_default(Extension(ledgers): Extension<Arc<Ledgers>>, request: Request) -> Response {
    call(ledgers.default_runtime(), request).await
}

async fn call(runtime: &Runtime, request: Request) -> Response {
    match runtime.router.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

fn view(record: &LedgerRecord, head: Option<Option<i64>>) -> ledger_wire::LedgerView {
    ledger_wire::LedgerView {
        name: record.name.clone(),
        shard: record.shard.clone(),
        metadata: record.metadata.clone(),
        created_at: record.created_at,
        head,
    }
}

/// How long the directory waits for one ledger's head before showing it as `null`.
const HEAD_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A ledger's view with its head: `null` while its shard does not answer. Reads the
/// head only: listing ledgers starts none of their tasks in this process.
async fn with_head(runtime: &Runtime) -> ledger_wire::LedgerView {
    let head = tokio::time::timeout(HEAD_WAIT, runtime.state.store.head()).await.ok().and_then(Result::ok);
    view(&runtime.record, Some(head))
}

#[utoipa::path(
    get,
    path = "/v1/admin/ledgers",
    operation_id = "list_ledgers",
    tag = "ledgers",
    summary = "List ledgers",
    description = "Operator or admin, with a token valid for every ledger. `default` first, then in order of \
        creation; `head` is the position of each ledger's last event, `null` while its shard does not answer.",
    responses((status = 200, description = "Every ledger.", body = ledger_wire::Ledgers))
)]
async fn list(Extension(ledgers): Extension<Arc<Ledgers>>) -> Result<Response, ApiError> {
    let directory_head = ledgers.home().store.head().await?;
    let mut views = vec![with_head(ledgers.default_runtime()).await];
    let records = directory::list(&ledgers.home().store).await?;
    // The heads are read at once, each bounded: shards that do not answer cost the list
    // one `HEAD_WAIT`, not one per ledger.
    let heads = records.into_iter().map(|record| {
        let ledgers = ledgers.clone();
        async move {
            match ledgers.get(&record.name).await {
                Ok(Some(runtime)) => with_head(&runtime).await,
                // Its shard is not configured in this process: listed, with no head.
                _ => view(&record, Some(None)),
            }
        }
    });
    views.extend(futures::future::join_all(heads).await);
    Ok(crate::read::views::read(&ledger_wire::Ledgers { ledgers: views }, directory_head))
}

#[utoipa::path(
    get,
    path = "/v1/admin/ledgers/{ledger}",
    operation_id = "get_ledger",
    tag = "ledgers",
    summary = "Get a ledger",
    description = "Operator or admin, with a token valid for every ledger.",
    params(("ledger" = String, Path, description = "The ledger's name.")),
    responses(
        (status = 200, description = "The ledger.", body = ledger_wire::LedgerView),
        (status = 404, description = "`ledger_not_found`."),
    )
)]
async fn show(Extension(ledgers): Extension<Arc<Ledgers>>, Segment(name): Segment) -> Result<Response, ApiError> {
    let directory_head = ledgers.home().store.head().await?;
    let runtime = ledgers
        .get(&name)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, ErrorCode::LedgerNotFound, "no such ledger"))?;
    Ok(crate::read::views::read(&with_head(&runtime).await, directory_head))
}

#[utoipa::path(
    post,
    path = "/v1/admin/ledgers",
    operation_id = "create_ledger",
    tag = "ledgers",
    summary = "Create a ledger",
    description = "Admin only, with a token valid for every ledger. Places the ledger on `shard`, else on the \
        shard with the fewest ledgers, for its whole life; its schema is made there before it is recorded, so a \
        created ledger is usable at once.",
    request_body = ledger_wire::LedgerRequest,
    responses(
        (status = 201, description = "The ledger.", body = ledger_wire::LedgerView),
        (status = 409, description = "`version_conflict`: a ledger of this name exists; \
            `idempotency_key_in_flight`: a request with this key is still executing."),
        (status = 422, description = "`validation_error`: a malformed name or metadata, or an unknown shard."),
        (status = 503, description = "`unavailable`: the chosen shard does not answer; nothing was recorded."),
    )
)]
async fn create(
    State(state): State<AppState>,
    Extension(ledgers): Extension<Arc<Ledgers>>,
    principal: Principal,
    context: RequestContext,
    body: CommandBody,
) -> Result<Response, ApiError> {
    let r: ledger_wire::LedgerRequest = crate::http::requests::parse(&body.json)?;
    let name = r.name.0;
    let created = name.clone();
    let metadata = r.metadata.map(|m| m.0);
    let shards = &state.config.shards;
    let shard = match r.shard {
        Some(wanted) => shards
            .iter()
            .find(|s| s.name == wanted)
            .ok_or_else(|| ApiError::validation(format!("shard: no shard is named {wanted:?}")))?,
        None => least_used(shards, &directory::list(&state.store).await?),
    };
    if name == DEFAULT_LEDGER {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::VersionConflict,
            "the ledger default always exists",
        ));
    }
    let schema = directory::schema_for(&name);
    // A name in the directory is refused by the command (its stream exists), after a
    // replay of the same key has been answered; its schema is not touched again.
    if directory::find(&state.store, &name).await?.is_none() {
        directory::prepare(&shard.url, &schema).await.map_err(|e| {
            tracing::warn!(ledger = %name, shard = %shard.name, error = %e, "preparing a ledger's schema failed");
            ApiError::unavailable(&"the shard does not answer")
        })?;
    }
    let ledger_id = directory::ledger_id(&name);
    let command = Command::CreateLedger(ledger_domain::decide::CreateLedger {
        ledger_id,
        name: name.clone(),
        shard: shard.name.clone(),
        schema,
        metadata: metadata.clone(),
    });
    let shard_name = shard.name.clone();
    let render = move |recorded: &Recorded| {
        let record = LedgerRecord {
            name: name.clone(),
            shard: shard_name.clone(),
            schema: String::new(),
            metadata: metadata.clone(),
            created_at: recorded.recorded_at.unwrap_or_else(chrono::Utc::now),
        };
        crate::http::command::stored(201, &view(&record, None))
    };
    let planned = Planned::new(command, None, render);
    let (stored, replayed) = planned.answer(&state, &principal, &context, body).await?;
    if stored.status == 201
        && let Ok(Some(runtime)) = ledgers.get(&created).await
    {
        // Its tasks start now in this process rather than at its first request or
        // the next look at the directory; a failure here is retried by either.
        let _ = ledgers.ready(&runtime).await;
    }
    Ok(crate::http::command::respond(stored, replayed))
}

/// The shard with the fewest ledgers (`default` counts for the first), the first listed
/// among equals.
fn least_used<'a>(
    shards: &'a [ledger_infrastructure::ledgers::Shard],
    existing: &[LedgerRecord],
) -> &'a ledger_infrastructure::ledgers::Shard {
    let count = |name: &str| existing.iter().filter(|r| r.shard == name).count();
    shards
        .iter()
        .enumerate()
        .min_by_key(|(i, s)| (count(&s.name) + usize::from(*i == 0), *i))
        .map(|(_, s)| s)
        .expect("a configuration has at least one shard")
}

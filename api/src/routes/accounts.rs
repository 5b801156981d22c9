//! Accounts: open, close, read, and the account's own event stream.

use crate::http::error::{ApiError, ErrorCode};
use crate::http::extract::{Params, Segment};
use crate::http::requests::parse;
use crate::http::validate::{limit_param, path_uuid, position_param};
use crate::read::Consistency;
use crate::read::coherence::read_model_ready;
use crate::read::views;
use crate::routes::strong_state;
use crate::run::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use ledger_domain::Command;
use ledger_domain::Event;
use ledger_domain::decide::OpenAccount;
use ledger_infrastructure::{Recorded, StoredResponse};
use ledger_projections::Projection;
use ledger_wire::{EmptyRequest, OpenAccountRequest};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/accounts", get(by_owner))
        .route("/v1/accounts/{id}", get(read))
        .route("/v1/accounts/{id}/events", get(events))
        .route("/v1/accounts/{id}/transactions", get(transactions))
        .route("/v1/accounts/{id}/balance", get(balance))
}

fn account_not_found(raw: &str) -> ApiError {
    ApiError::new(axum::http::StatusCode::NOT_FOUND, ErrorCode::AccountNotFound, format!("account {raw} not found"))
}

/// Renders the customer account a command opened or closed, with the given status.
fn render_account(status: u16) -> impl Fn(&Recorded) -> StoredResponse {
    move |recorded| {
        let account_id = recorded
            .events
            .iter()
            .find_map(|e| match e {
                Event::AccountOpened(o) if !o.system => Some(o.account_id),
                Event::AccountClosed(c) => Some(c.account_id),
                _ => None,
            })
            .expect("an account command records its account's event");
        let state = recorded.state();
        let account = state.account(account_id).expect("the command touched this account");
        crate::http::command::stored(status, &views::account(account, state.version(account_id), recorded.position))
    }
}

#[utoipa::path(
    post,
    path = "/v1/accounts",
    operation_id = "open_account",
    tag = "accounts",
    summary = "Open an account",
    description = "Opens an account in one currency; the currency's system account is opened with the first one.",
    request_body = ledger_wire::OpenAccountRequest,
    responses(
        (status = 201, description = "The account, with the `position` of its event.", body = ledger_wire::Account),
        (status = 409, description = "`version_conflict`: a stream with the given `id` exists already, or concurrent \
            commands kept conflicting; `idempotency_key_in_flight`: a request with this key is still executing."),
        (status = 422, description = "`validation_error`: a field is missing or malformed (`currency`, `owner`, \
            `overdraft_limit`, `id`, `metadata`), or the body is not an object."),
    )
)]
pub fn plan_open(json: &serde_json::Value) -> Result<crate::http::command::Planned, ApiError> {
    let r: OpenAccountRequest = parse(json)?;
    let (id, minted) = crate::http::command::given_or_minted(r.id.map(|id| id.0));
    let command = Command::OpenAccount(OpenAccount {
        account_id: id,
        currency: r.currency,
        owner: r.owner.map(|t| t.0),
        overdraft_limit: r.overdraft_limit.map_or(ledger_domain::Money::ZERO, |l| l.0),
        metadata: r.metadata.map(|m| m.0),
        subject: Some(r.subject.map_or_else(|| id.to_string(), |s| s.0)),
    });
    Ok(crate::http::command::Planned::new(command, None, render_account(201)).minted(minted))
}

#[utoipa::path(
    post,
    path = "/v1/accounts/{id}/close",
    operation_id = "close_account",
    tag = "accounts",
    summary = "Close an account",
    description = "Closes an account whose balance and pending holds are 0.",
    params(("id" = Uuid, Path, description = "The account id.")),
    request_body(content = Option<ledger_wire::EmptyRequest>, description = "`{}` or no body."),
    responses(
        (status = 200, description = "The closed account (`\"status\":\"closed\"`).", body = ledger_wire::Account),
        (status = 404, description = "`account_not_found`: no such account (or the id is not a UUID)."),
        (status = 422, description = "`account_not_empty`: the balance or the pending holds are not 0; \
            `account_closed`: it is closed already; `validation_error`: a system account, or the body is not an object."),
    )
)]
pub fn plan_close(raw: &str, json: &serde_json::Value) -> Result<crate::http::command::Planned, ApiError> {
    let account_id = path_uuid(raw, || account_not_found(raw))?;
    let _: EmptyRequest = parse(json)?;
    let command = Command::CloseAccount { account_id };
    Ok(crate::http::command::Planned::new(command, None, render_account(200)))
}

#[utoipa::path(
    get,
    path = "/v1/accounts/{id}",
    operation_id = "get_account",
    tag = "accounts",
    summary = "Read an account",
    params(("id" = Uuid, Path, description = "The account id."), ledger_wire::ConsistencyQuery),
    responses(
        (status = 200, description = "The account.", body = ledger_wire::Account, headers(
            ("X-Ledger-Stale" = String, description = "`true` when Postgres is unavailable and this eventual read \
                was answered from the cache.")
        )),
        (status = 400, description = "`validation_error`: `consistency` or `min_position` is invalid."),
        (status = 404, description = "`account_not_found`: no such account (or the id is not a UUID)."),
        (status = 503, description = "`consistency_timeout`: the read model did not reach `min_position` in time."),
    )
)]
async fn read(State(state): State<AppState>, Segment(raw): Segment, Params(q): Params) -> Result<Response, ApiError> {
    let id = path_uuid(&raw, || account_not_found(&raw))?;
    let consistency = Consistency::from_query(&q)?;
    if consistency == Consistency::Strong {
        let (ledger, head) = strong_state(&state, &[id]).await?;
        let account = ledger.account(id).ok_or_else(|| account_not_found(&raw))?;
        return Ok(views::read(&views::account(account, ledger.version(id), head), head));
    }
    let ready = read_model_ready(&state, Projection::Accounts, consistency).await?;
    if let Some((json, position)) = state.cache.get(id, ready.min).await {
        return Ok(views::read_json(json, position));
    }
    let (view, position) = ledger_projections::queries::account(ready.pool, id).await?;
    let Some(view) = view else {
        // Not in the read model yet (it lags): an id the service returned is never 404,
        // so the answer comes from the log.
        let (ledger, head) = strong_state(&state, &[id]).await?;
        let account = ledger.account(id).ok_or_else(|| account_not_found(&raw))?;
        return Ok(views::read(&views::account(account, ledger.version(id), head), head));
    };
    // Written once, for the cache and for this answer.
    let json = views::account_json(&views::account_row(view))?;
    state.cache.insert(id, json.clone(), position).await;
    Ok(views::read_json(json, position))
}

#[utoipa::path(
    get,
    path = "/v1/accounts",
    operation_id = "accounts_by_owner",
    tag = "accounts",
    summary = "Find accounts by owner",
    description = "Indexed look-up of the accounts with the given `owner` (at most 1000).",
    params(ledger_wire::OwnerQuery, ledger_wire::ConsistencyQuery),
    responses(
        (status = 200, description = "The owner's accounts.", body = ledger_wire::AccountList),
        (status = 400, description = "`validation_error`: `owner` is missing or empty, or `consistency` or \
            `min_position` is invalid."),
        (status = 503, description = "`consistency_timeout`: the read model did not reach `min_position` in time."),
    )
)]
async fn by_owner(State(state): State<AppState>, Params(q): Params) -> Result<Response, ApiError> {
    let owner = q.get("owner").filter(|o| !o.is_empty()).ok_or_else(|| ApiError::bad_request("`owner` is required"))?;
    let ready = read_model_ready(&state, Projection::Accounts, Consistency::from_query(&q)?).await?;
    // The look-up compares a keyed hash, never the value (API.md v1.2 "Personal data"),
    // on the primary; the views it names are read where eventual reads go.
    let limit = ledger_wire::limits::OWNER_ACCOUNTS_MAX;
    let sealed =
        state.privacy.sealed_owners(owner, limit, Some(ready.pool)).await.map_err(crate::http::privacy::key_error)?;
    let (rows, position) = ledger_projections::queries::accounts_by_owner(ready.pool, &sealed, limit).await?;
    let accounts = rows.into_iter().map(views::account_row).collect();
    Ok(views::read(&ledger_wire::AccountList { accounts }, position))
}

#[utoipa::path(
    get,
    path = "/v1/accounts/{id}/transactions",
    operation_id = "account_transactions",
    tag = "accounts",
    summary = "An account's statement",
    description = "The account's entries, newest first; `amount` is signed from this account's view.",
    params(("id" = Uuid, Path, description = "The account id."), ledger_wire::TransactionsQuery, ledger_wire::ConsistencyQuery),
    responses(
        (status = 200, description = "One page of entries.", body = ledger_wire::TransactionsPage),
        (status = 400, description = "`validation_error`: `limit`, `cursor`, `consistency` or `min_position` is invalid."),
        (status = 404, description = "`account_not_found`: no such account (or the id is not a UUID)."),
        (status = 503, description = "`consistency_timeout`: the read model did not reach `min_position` in time."),
    )
)]
async fn transactions(
    State(state): State<AppState>,
    Segment(raw): Segment,
    Params(q): Params,
) -> Result<Response, ApiError> {
    let id = path_uuid(&raw, || account_not_found(&raw))?;
    let limit = limit_param(q.get("limit").map(String::as_str), 50, ledger_wire::limits::PAGE_MAX)?;
    let cursor = match q.get("cursor") {
        None => None,
        Some(c) => Some(c.parse::<i64>().map_err(|_| ApiError::bad_request("`cursor` is not a cursor from this API"))?),
    };
    let consistency = Consistency::from_query(&q)?;
    let ready = read_model_ready(&state, Projection::Accounts, consistency).await?;
    // A page after a cursor is read where the read model has reached the cursor, so no
    // entry between it and a lagging replica's position is skipped.
    let pool = match (consistency, cursor) {
        (Consistency::Strong, _) | (_, None) => ready.pool,
        (_, Some(c)) => state.read_pool(Projection::Accounts, ready.min.max(c)),
    };
    let (entries, position) = ledger_projections::queries::entries(pool, id, cursor, limit).await?;
    // An unknown account is 404 with or without a cursor; a known one's last page is
    // empty, and so is the page of one the read model does not have yet (the log has it).
    if entries.is_empty()
        && ledger_projections::queries::account(ready.pool, id).await?.0.is_none()
        && strong_state(&state, &[id]).await?.0.account(id).is_none()
    {
        return Err(account_not_found(&raw));
    }
    let next_cursor = if entries.len() as i64 == limit { entries.last().map(|e| e.position.to_string()) } else { None };
    let entries = entries.into_iter().map(views::entry).collect::<Result<_, _>>()?;
    Ok(views::read(&ledger_wire::TransactionsPage { entries, next_cursor }, position))
}

#[utoipa::path(
    get,
    path = "/v1/accounts/{id}/events",
    operation_id = "account_events",
    tag = "accounts",
    summary = "An account's event stream",
    description = "The account's own events in version order, from the log (replay).",
    params(("id" = Uuid, Path, description = "The account id."), ledger_wire::StreamEventsQuery),
    responses(
        (status = 200, description = "One page of the stream.", body = ledger_wire::StreamEventsPage),
        (status = 400, description = "`validation_error`: `from_version` or `limit` is invalid."),
        (status = 404, description = "`account_not_found`: no such stream (or the id is not a UUID)."),
    )
)]
async fn events(State(state): State<AppState>, Segment(raw): Segment, Params(q): Params) -> Result<Response, ApiError> {
    let id = path_uuid(&raw, || account_not_found(&raw))?;
    let from_version = position_param("from_version", q.get("from_version").map(String::as_str))?.unwrap_or(1);
    let limit = limit_param(q.get("limit").map(String::as_str), 100, ledger_wire::limits::PAGE_MAX)?;
    let head = state.store.head().await?;
    // Only an account's stream is served here: a token's or a run's is not an account.
    let first = state.store.read_stream(id, 1, 1).await?;
    if first.first().is_none_or(|e| e.event_type != "AccountOpened") {
        return Err(account_not_found(&raw));
    }
    let events = state.store.read_stream(id, from_version.max(1), limit).await?;
    let next_from_version = events.last().map(|e| e.version + 1);
    let events = events.into_iter().map(views::recorded_event).collect::<Result<_, _>>()?;
    Ok(views::read(&ledger_wire::StreamEventsPage { events, next_from_version }, head))
}

/// The balance as it was at a position or a time, folded from the log (from the
/// latest snapshot before it). Before the account existed: 404 `account_not_found`.
#[utoipa::path(
    get,
    path = "/v1/accounts/{id}/balance",
    operation_id = "account_balance_at",
    tag = "accounts",
    summary = "An account's balance in the past",
    description = "The balance as it was at a time (`as_of`) or a log position (`at_position`), at most one of \
        them; with `effective_at`, as of that business time: every posting effective at or before it, recorded \
        up to `as_of`/`at_position` (default: the head). One of the three is required. Computed from the event \
        log (and its snapshots).",
    params(("id" = Uuid, Path, description = "The account id."), ledger_wire::BalanceQuery),
    responses(
        (status = 200, description = "The balance then.", body = ledger_wire::HistoricalBalance),
        (status = 400, description = "`validation_error`: neither or both of `as_of` and `at_position`, `as_of` is \
            not RFC 3339, or `at_position` is negative."),
        (status = 422, description = "`validation_error`: `at_position` is beyond the head."),
        (status = 404, description = "`account_not_found`: the account did not exist at that point (or the id is \
            not a UUID)."),
    )
)]
async fn balance(
    State(state): State<AppState>,
    Segment(raw): Segment,
    Params(q): Params,
) -> Result<Response, ApiError> {
    let id = path_uuid(&raw, || account_not_found(&raw))?;
    let head = state.store.head().await?;
    let effective = match q.get("effective_at") {
        None => None,
        Some(t) => Some(
            crate::http::validate::timestamp(t)
                .ok_or_else(|| ApiError::bad_request("`effective_at` must be an RFC 3339 timestamp"))?,
        ),
    };
    let at = match (q.get("at_position"), q.get("as_of")) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give either `as_of` or `at_position`, not both")),
        // `effective_at` alone: with everything recorded so far.
        (None, None) if effective.is_some() => head,
        (None, None) => return Err(ApiError::bad_request("`as_of`, `at_position` or `effective_at` is required")),
        (Some(p), None) => {
            let p = position_param("at_position", Some(p))?.unwrap_or(0);
            if p > head {
                return Err(ApiError::validation(format!("`at_position` {p} is beyond the head {head}")));
            }
            p
        }
        (None, Some(t)) => {
            let t = crate::http::validate::timestamp(t)
                .ok_or_else(|| ApiError::bad_request("`as_of` must be an RFC 3339 timestamp"))?;
            state.store.position_at(t).await?
        }
    };
    let use_snapshots = state.config.snapshot_every > 0;
    let (stream, version) = match effective {
        None => {
            let (stream, _) = ledger_infrastructure::snapshots::state_at(&state.pool, id, at, use_snapshots).await?;
            let version = stream.version;
            (stream, version)
        }
        Some(t) => ledger_infrastructure::snapshots::effective_state_at(&state.pool, id, at, t, use_snapshots).await?,
    };
    let ledger_domain::Aggregate::Account(account) = &stream.aggregate else {
        return Err(account_not_found(&raw));
    };
    let body = ledger_wire::HistoricalBalance {
        id,
        balance: account.balance.minor_units(),
        available: account.available().minor_units(),
        pending_holds: account.pending_holds.minor_units(),
        version,
        as_of_position: at,
        effective_at: effective,
    };
    Ok(views::read(&body, at))
}

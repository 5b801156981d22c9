//! Transactions (API.md v1.1): many postings recorded as one event, their reversal, and
//! the indexed query over them. Every transfer is also a one-posting transaction with
//! the same id, read and queried here like the others.

use crate::http::error::ApiError;
use crate::http::extract::{Params, Segment};
use crate::http::requests::parse;
use crate::http::validate::{limit_param, path_uuid, position_param};
use crate::read::coherence::read_model_ready;
use crate::read::{Consistency, views};
use crate::routes::{created, strong_state};
use crate::run::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use chrono::{DateTime, Utc};
use ledger_domain::decide::{Condition, PostTransaction, ReverseTransaction};
use ledger_domain::{Command, Event, Leg, Money};
use ledger_infrastructure::{Recorded, StoredResponse};
use ledger_projections::Projection;
use ledger_projections::queries::TransactionFilter;
use ledger_wire::{ReverseRequest, TransactionRequest};
use std::collections::HashMap;
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/transactions", get(search)).route("/v1/transactions/{id}", get(read))
}

/// Renders the transaction a command posted (a transaction, or a transfer when a
/// transfer was reversed through this route).
fn render_transaction(recorded: &Recorded) -> StoredResponse {
    let recorded_at = recorded.recorded_at.unwrap_or(DateTime::UNIX_EPOCH);
    let state = recorded.state();
    let view = recorded
        .events
        .iter()
        .find_map(|e| match e {
            Event::TransactionPosted(t) => {
                state.transaction(t.transaction_id).map(|t| views::transaction(t, recorded_at, recorded.position))
            }
            Event::TransferPosted(t) => {
                state.transfer(t.transfer_id).map(|t| views::transfer_as_transaction(t, recorded_at, recorded.position))
            }
            _ => None,
        })
        .expect("a transaction command records its transaction");
    crate::http::command::stored(201, &view)
}

#[utoipa::path(
    post,
    path = "/v1/transactions",
    operation_id = "post_transaction",
    tag = "transactions",
    summary = "Post a transaction",
    description = "1–100 postings recorded as one event at one log position, checked as a whole: postings apply \
        in order, and after the last one no account the transaction takes money from may be below its overdraft \
        limit. Postings may use different currencies, never system accounts.",
    request_body = ledger_wire::TransactionRequest,
    responses(
        (status = 201, description = "The transaction, with the `position` of its event.", body = ledger_wire::Transaction),
        (status = 404, description = "`account_not_found`: a posting's or a condition's account does not exist."),
        (status = 409, description = "`version_conflict`: the id exists, or a condition's `expected_version` is not \
            the account's version."),
        (status = 422, description = "`insufficient_funds` (the problem's `account_id` names the first account, in \
            posting order, that would end below its limit); `condition_failed`; `currency_mismatch`; \
            `account_closed`; `same_account`; `validation_error`: a field is missing or malformed, 0 or more than \
            100 postings, a system account, `effective_at` outside the backdating window, or a balance would \
            overflow."),
    )
)]
pub fn plan_create(state: &AppState, json: &serde_json::Value) -> Result<crate::http::command::Planned, ApiError> {
    let r: TransactionRequest = parse(json)?;
    let postings =
        r.postings.0.iter().map(|p| Leg { from: p.from, to: p.to, amount: p.amount, currency: p.currency }).collect();
    let conditions = r
        .conditions
        .map(|c| c.0)
        .unwrap_or_default()
        .into_iter()
        .map(|c| Condition {
            account_id: c.account_id,
            expected_version: c.expected_version.map(i64::from),
            available_at_least: c.available_at_least.map(Money::new),
        })
        .collect();
    let (id, minted) = crate::http::command::given_or_minted(r.id.map(|id| id.0));
    let command = Command::PostTransaction(PostTransaction {
        transaction_id: id,
        postings,
        reference: r.reference.map(|t| t.0),
        metadata: r.metadata.map(|m| m.0),
        effective_at: crate::http::validate::effective_at(state, r.effective_at)?,
        conditions,
    });
    Ok(crate::http::command::Planned::new(command, None, render_transaction).minted(minted))
}

#[utoipa::path(
    post,
    path = "/v1/transactions/{id}/reverse",
    operation_id = "reverse_transaction",
    tag = "transactions",
    summary = "Reverse a transaction",
    description = "Posts a new transaction with every posting swapped and `reverses` = id, checked like any other; \
        the original stays in the log. A transfer's id reverses the transfer.",
    params(("id" = Uuid, Path, description = "The transaction to reverse.")),
    request_body = ledger_wire::ReverseRequest,
    responses(
        (status = 201, description = "The reversing transaction, with the `position` of its event.", body = ledger_wire::Transaction),
        (status = 404, description = "`not_found`: no such transaction (or the id is not a UUID)."),
        (status = 422, description = "`already_reversed`; `insufficient_funds`: an account that received money \
            cannot give it back; `account_closed`; `validation_error`: `reason` is missing or malformed, or a \
            balance would overflow."),
    )
)]
pub fn plan_reverse(raw: &str, json: &serde_json::Value) -> Result<crate::http::command::Planned, ApiError> {
    let transaction_id = path_uuid(raw, || ApiError::not_found(format!("transaction {raw} not found")))?;
    let r: ReverseRequest = parse(json)?;
    let reversal_id = Uuid::now_v7();
    let command = Command::ReverseTransaction(ReverseTransaction { reversal_id, transaction_id, reason: r.reason.0 });
    let causation = Some(transaction_id.to_string());
    Ok(crate::http::command::Planned::new(command, causation, render_transaction).minted(Some(reversal_id)))
}

/// The transaction (or transfer) from the write side, as a transaction view.
async fn from_log(state: &AppState, id: Uuid) -> Result<Option<(ledger_wire::Transaction, i64)>, ApiError> {
    let (ledger, head) = strong_state(state, &[id]).await?;
    if let Some(t) = ledger.transaction(id) {
        let (recorded_at, position) = created(state, id).await?;
        return Ok(Some((views::transaction(t, recorded_at, position), head)));
    }
    if let Some(t) = ledger.transfer(id) {
        let (recorded_at, position) = created(state, id).await?;
        return Ok(Some((views::transfer_as_transaction(t, recorded_at, position), head)));
    }
    Ok(None)
}

#[utoipa::path(
    get,
    path = "/v1/transactions/{id}",
    operation_id = "get_transaction",
    tag = "transactions",
    summary = "Read a transaction",
    description = "A transaction, or a transfer as the one-posting transaction it also is.",
    params(("id" = Uuid, Path, description = "The transaction id."), ledger_wire::ConsistencyQuery),
    responses(
        (status = 200, description = "The transaction's current state.", body = ledger_wire::Transaction),
        (status = 400, description = "`validation_error`: `consistency` or `min_position` is invalid."),
        (status = 404, description = "`not_found`: no such transaction (or the id is not a UUID)."),
        (status = 503, description = "`consistency_timeout`: the read model did not reach `min_position` in time."),
    )
)]
async fn read(State(state): State<AppState>, Segment(raw): Segment, Params(q): Params) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found(format!("transaction {raw} not found"));
    let id = path_uuid(&raw, not_found)?;
    let consistency = Consistency::from_query(&q)?;
    if consistency != Consistency::Strong {
        let ready = read_model_ready(&state, Projection::Transfers, consistency).await?;
        if let (Some(row), position) = ledger_projections::queries::transaction(ready.pool, id).await? {
            return Ok(views::read(&views::transaction_row(row)?, position));
        }
    }
    // Strong, or not in the read model yet: an id the service returned is never 404.
    let (view, head) = from_log(&state, id).await?.ok_or_else(not_found)?;
    Ok(views::read(&view, head))
}

/// A time filter of the query.
fn time(q: &HashMap<String, String>, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    q.get(name)
        .map(|raw| {
            crate::http::validate::timestamp(raw)
                .ok_or_else(|| ApiError::bad_request(format!("`{name}` must be an RFC 3339 timestamp")))
        })
        .transpose()
}

/// The filters of a query string: the named ones and up to 5 `metadata.KEY=VALUE`.
fn filter(q: &HashMap<String, String>) -> Result<TransactionFilter, ApiError> {
    let account_id = match q.get("account_id") {
        None => None,
        Some(s) => Some(Uuid::parse_str(s).map_err(|_| ApiError::bad_request("`account_id` must be a UUID"))?),
    };
    let mut metadata: Vec<(String, String)> =
        q.iter().filter_map(|(k, v)| k.strip_prefix("metadata.").map(|key| (key.to_owned(), v.clone()))).collect();
    metadata.sort();
    let max = ledger_wire::limits::METADATA_FILTERS_MAX;
    if metadata.len() > max {
        return Err(ApiError::bad_request(format!("at most {max} `metadata.KEY` filters are accepted")));
    }
    // Personal values are sealed and are an account's only (API.md v1.2 "Personal data").
    if let Some((key, _)) = metadata.iter().find(|(k, _)| ledger_domain::is_personal_key(k)) {
        return Err(ApiError::validation(format!("`metadata.{key}`: `pii.` keys cannot be filtered on")));
    }
    if let Some((key, _)) =
        metadata.iter().find(|(k, _)| ledger_wire::fields::metadata_refusal(&serde_json::json!({ k: 0 })).is_some())
    {
        return Err(ApiError::bad_request(format!("`metadata.{key}`: keys are 1 to 64 characters of [A-Za-z0-9_.-]")));
    }
    Ok(TransactionFilter {
        account_id,
        reference: q.get("reference").cloned(),
        metadata,
        recorded_from: time(q, "recorded_from")?,
        recorded_to: time(q, "recorded_to")?,
        effective_from: time(q, "effective_from")?,
        effective_to: time(q, "effective_to")?,
        before: position_param("cursor", q.get("cursor").map(String::as_str))?,
        limit: limit_param(q.get("limit").map(String::as_str), 50, ledger_wire::limits::PAGE_MAX)?,
    })
}

#[utoipa::path(
    get,
    path = "/v1/transactions",
    operation_id = "search_transactions",
    tag = "transactions",
    summary = "Query transactions",
    description = "Transactions (transfers included) matching every filter given, newest first by position. \
        `metadata.KEY=VALUE` (up to 5, e.g. `metadata.order=42`) matches a top-level metadata key whose value is \
        that string, or that integer written in decimal. Every filter is served by an index. `consistency=strong` \
        means the read model has applied at least the head as of the request.",
    params(ledger_wire::TransactionSearch, ledger_wire::ConsistencyQuery),
    responses(
        (status = 200, description = "One page of transactions.", body = ledger_wire::TransactionList),
        (status = 400, description = "`validation_error`: a filter, `limit`, `cursor`, `consistency` or \
            `min_position` is malformed, or more than 5 metadata filters."),
        (status = 422, description = "`validation_error`: a `metadata.pii.…` filter (personal values are sealed \
            and cannot be searched)."),
        (status = 503, description = "`consistency_timeout`: the read model did not reach `min_position` (or the \
            head) in time."),
    )
)]
async fn search(State(state): State<AppState>, Params(q): Params) -> Result<Response, ApiError> {
    let filter = filter(&q)?;
    let consistency = Consistency::from_query(&q)?;
    let ready = read_model_ready(&state, Projection::Transfers, consistency).await?;
    // A page after a cursor is read where the read model has reached the cursor.
    let pool = match (consistency, filter.before) {
        (Consistency::Strong, _) | (_, None) => ready.pool,
        (_, Some(c)) => state.read_pool(Projection::Transfers, ready.min.max(c)),
    };
    let (rows, position) = ledger_projections::queries::transactions(pool, &filter).await?;
    let next_cursor =
        if rows.len() as i64 == filter.limit { rows.last().map(|t| t.position.to_string()) } else { None };
    let transactions = rows.into_iter().map(views::transaction_row).collect::<Result<_, _>>()?;
    Ok(views::read(&ledger_wire::TransactionList { transactions, next_cursor }, position))
}

//! `POST /v1/bulk` (API.md v1.1 "Bulk"): up to 1,000 command requests in one. Each
//! item is planned by its own route's code (`Planned`), so it is parsed, answered and
//! replayed exactly as if sent alone. Non-atomic items go to the writer together, in
//! order, and are group-committed like any concurrent commands; an atomic bulk is one
//! writer group: all items in one database transaction, or nothing stored. The bulk's
//! own `Idempotency-Key` replays its whole response.

use crate::http::command::{CommandBody, Planned, Prepared, finish};
use crate::http::context::{Principal, RequestContext};
use crate::http::error::ApiError;
use crate::http::operation::{self, Begun};
use crate::http::requests::parse_owned;
use crate::run::state::AppState;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use ledger_infrastructure::{CommandError, GroupError, StoredResponse};
use ledger_wire::ErrorCode;
use ledger_wire::{BulkRequest, BulkResponse, BulkResult};
use serde_json::Value;
use std::collections::HashSet;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/bulk", post(bulk))
}

/// Bulks are bounded twice (issue 26), and neither bound lets one client hold what the
/// others need. Per principal, at most `LEDGER_BULK_CONCURRENCY_MAX` bulks are in flight,
/// reading their bodies included (more: 429 `rate_limited`), so a client's slow uploads
/// hold only its own turns and the raw bodies held are bounded per principal. Per
/// process, at most that many bulks are parsed and run at once, the memory-hungry part
/// (another waits `LEDGER_BULK_WAIT_MS` for a turn, then 503 `unavailable`).
/// One of the principal's bulk turns, or the 429 that refuses it.
fn enter(state: &AppState, principal: &Principal) -> Result<crate::http::shed::Turn, ApiError> {
    // Bounds of the process and of the token, whatever ledger the bulk runs in.
    state.shared.bulk_principals.take(&principal.name, state.config.bulk_concurrency_max).ok_or_else(|| {
        metrics::counter!("ledger_bulks_shed_total", "bound" => "principal").increment(1);
        let detail = "this token has as many bulks in flight as it may; retry later";
        ApiError {
            retry_after_s: Some(1),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited, detail)
        }
    })
}

/// A turn to parse and run a bulk whose body has been read.
async fn turn(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    let permits = state.shared.bulk_permits.clone();
    match tokio::time::timeout(state.config.bulk_wait, permits.acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => {
            metrics::counter!("ledger_bulks_shed_total", "bound" => "process").increment(1);
            Err(ApiError::overloaded("too many bulks are running; retry later"))
        }
    }
}

/// Reads a refused request's body only to drop it (bounded in bytes and time), so that
/// a client still sending gets the answer instead of a broken connection.
async fn drain(state: &AppState, request: Request) {
    let mut body = request.into_body().into_data_stream();
    let mut drained = 0usize;
    let drain = async {
        while let Some(Ok(chunk)) = futures::StreamExt::next(&mut body).await {
            drained += chunk.len();
            if drained > ledger_wire::limits::BULK_BYTES_MAX {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(state.config.bulk_wait, drain).await;
}

/// The plan of one item: its route's own code, run on its body, which is held to the
/// body limit of that route (`LEDGER_BODY_BYTES_MAX`) as if it had been sent alone.
fn plan(state: &AppState, path: &str, json: &Value) -> Result<Planned, ApiError> {
    let limit = state.config.body_bytes_max;
    if serialized_len(json) > limit {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            ledger_wire::ErrorCode::PayloadTooLarge,
            format!("an item's body must be at most {limit} bytes"),
        ));
    }
    match crate::routes::commands::matching(path) {
        // An id names what it would in the route's own URL.
        Some((route, raw)) => (route.plan)(state, &crate::http::extract::raw_segment(raw)?, json),
        None => Err(ApiError::validation(format!("`{path}` is not a command route"))),
    }
}

/// The length of a value's compact serialization, counted without building it.
fn serialized_len(json: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, json).map_or(usize::MAX, |()| count.0)
}

/// One item, checked as a bulk's item: a command route, a valid key, an object body.
struct Item {
    body: CommandBody,
    path: String,
}

/// Checks every item before any runs (a malformed bulk is refused whole). An item may
/// not use the bulk's own key: the bulk holds it while it runs.
fn items(items: Vec<ledger_wire::BulkItem>, bulk_key: &str) -> Result<Vec<Item>, ApiError> {
    let max = ledger_wire::limits::BULK_ITEMS_MAX;
    if items.is_empty() || items.len() > max {
        return Err(ApiError::validation(format!("`items` must hold 1 to {max} items, not {}", items.len())));
    }
    let mut keys = HashSet::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        if item.method != "POST" {
            return Err(ApiError::validation(format!("`items[{i}].method` must be POST")));
        }
        if item.path.starts_with("/v1/ledgers/") {
            return Err(ApiError::validation(format!(
                "`items[{i}].path` has a ledger prefix: a bulk runs in the ledger it is sent to, and its items name \
                 the unprefixed route (`/v1/transfers`)"
            )));
        }
        if crate::routes::commands::matching(&item.path).is_none() {
            return Err(ApiError::validation(format!(
                "`items[{i}].path` {:?} is not a command route of this contract (POST under /v1, outside /v1/admin \
                 and /v1/bulk)",
                item.path
            )));
        }
        if !crate::http::context::printable(&item.idempotency_key) {
            return Err(ApiError::validation(format!(
                "`items[{i}].idempotency_key` must be 1 to 255 printable ASCII characters"
            )));
        }
        if item.idempotency_key == bulk_key {
            return Err(ApiError::validation(format!("`items[{i}].idempotency_key` is the bulk's own key")));
        }
        if !keys.insert(item.idempotency_key.clone()) {
            return Err(ApiError::validation(format!("`items[{i}].idempotency_key` is used by an earlier item")));
        }
        let json = item.body.unwrap_or_else(|| Value::Object(Default::default()));
        out.push(Item { body: CommandBody::new("POST", &item.path, json, item.idempotency_key), path: item.path });
    }
    Ok(out)
}

fn result(stored: StoredResponse, replayed: bool) -> BulkResult {
    BulkResult { status: stored.status, body: stored.body, replayed }
}

/// A bulk's answer as JSON, each item's body moved into it (`serde_json::to_value`
/// would copy every tree: a thousand views per bulk).
fn response_body(response: BulkResponse) -> Value {
    let results = response.results.into_iter().map(|BulkResult { status, body, replayed }| {
        let mut item = serde_json::Map::new();
        item.insert("status".to_owned(), status.into());
        item.insert("body".to_owned(), body);
        item.insert("replayed".to_owned(), replayed.into());
        Value::Object(item)
    });
    let mut answer = serde_json::Map::new();
    answer.insert("results".to_owned(), Value::Array(results.collect()));
    Value::Object(answer)
}

fn problem(e: &ApiError) -> BulkResult {
    BulkResult { status: e.status.as_u16(), body: e.body(), replayed: false }
}

#[utoipa::path(
    post,
    path = "/v1/bulk",
    operation_id = "bulk",
    tag = "bulk",
    summary = "Many commands in one request",
    description = "1–1,000 items, each a command route of this contract with its own idempotency key (body at \
        most 4 MiB). `atomic: false`: each item runs as if sent alone, in item order, each seeing the effects of \
        those before it; 200 with every item's status and body. `atomic: true`: every item commits in one \
        database transaction, or none does: 422 with the first failing item's problem and `failed_index`, and \
        nothing is stored. The bulk's own `Idempotency-Key` replays the whole response.",
    request_body = ledger_wire::BulkRequest,
    responses(
        (status = 200, description = "Each item's answer, in item order.", body = ledger_wire::BulkResponse),
        (status = 413, description = "`payload_too_large`: the body is over 4 MiB."),
        (status = 422, description = "`validation_error`: a malformed bulk (0 or more than 1,000 items, an item \
            that is not a command route, a malformed or repeated item key); for `atomic: true`, the first failing \
            item's problem with `failed_index`."),
    )
)]
async fn bulk(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    request: Request,
) -> Result<Response, ApiError> {
    let _in_flight = match enter(&state, &principal) {
        Ok(in_flight) => in_flight,
        Err(e) => {
            drain(&state, request).await;
            return Err(e);
        }
    };
    // A bulk carries up to 1,000 commands: its body may be larger than one command's.
    let mut body = CommandBody::read(request, ledger_wire::limits::BULK_BYTES_MAX).await?.keyed(&state).await?;
    let _turn = turn(&state).await?;
    let key = match operation::begin(&state, &principal, &body).await? {
        Begun::Answered(replay) => return Ok(crate::http::command::respond(replay, true)),
        Begun::Run(key) => key,
    };
    let json = std::mem::take(&mut body.json);
    let mut items = match parse_owned(json).and_then(|r: BulkRequest| Ok((items(r.items, &body.key)?, r.atomic))) {
        Ok(items) => items,
        Err(e) => return Err(key.refuse(e).await),
    };
    for item in &mut items.0 {
        item.body = std::mem::replace(&mut item.body, CommandBody::new("POST", "", Value::Null, String::new()))
            .keyed(&state)
            .await?;
    }
    let (answer, settled) = match items {
        (items, true) => atomic(&state, &principal, &context, items).await?,
        (items, false) => {
            let results = separate(&state, &principal, &context, items).await;
            // An item that failed on our side (5xx) or met a transient refusal (409:
            // its key in flight, or conflicts that outlasted the retries) may end
            // otherwise on a retry with the bulk's key: the bulk's answer is kept only
            // once every item has a final one.
            let settled = results.results.iter().all(|r| r.status < 500 && r.status != 409);
            (StoredResponse { status: 200, body: response_body(results) }, settled)
        }
    };
    if settled { key.finish(answer).await } else { Ok(key.unstored(answer).await) }
}

/// Non-atomic: every item handed to the writer in one submission, in order: it decides
/// them in that order, each against the state the ones before it left, and appends them
/// in one batch (one commit); each is answered, refused or replayed as if sent alone.
async fn separate(state: &AppState, principal: &Principal, context: &RequestContext, items: Vec<Item>) -> BulkResponse {
    let mut results: Vec<Option<BulkResult>> = Vec::with_capacity(items.len());
    let mut prepared = Vec::with_capacity(items.len());
    let mut renders = Vec::with_capacity(items.len());
    // By value: an item's body is not needed once its command is planned.
    for item in items {
        let ready = match plan(state, &item.path, &item.body.json) {
            Ok(p) => p.sealed(state).await.and_then(|p| p.prepare(state, principal, context, &item.body)),
            Err(e) => Err(e),
        };
        match ready {
            Ok((ready, render)) => {
                results.push(None);
                prepared.push(ready);
                renders.push(render);
            }
            Err(e) => results.push(Some(problem(&e))),
        }
    }
    let (requests, guards): (Vec<_>, Vec<_>) = prepared.into_iter().map(Prepared::into_parts).unzip();
    let replies = state.bus.execute_many(requests).await;
    let mut answers = Vec::with_capacity(replies.len());
    for (reply, render) in replies.into_iter().zip(renders) {
        answers.push(match finish(state, reply, render).await {
            Ok((stored, replayed)) => result(stored, replayed),
            Err(e) => problem(&e),
        });
    }
    // The keys stay in flight until every item has its answer.
    drop(guards);
    let mut answers = answers.into_iter();
    let results = results.into_iter().map(|r| r.or_else(|| answers.next()).expect("one answer per prepared item"));
    BulkResponse { results: results.collect() }
}

/// Atomic: one writer group, all or nothing. Returns the bulk's answer (200 with every
/// item's, or 422 with the first failing item's problem and its index) and whether it
/// is final.
async fn atomic(
    state: &AppState,
    principal: &Principal,
    context: &RequestContext,
    items: Vec<Item>,
) -> Result<(StoredResponse, bool), ApiError> {
    // The bulk answers 422 whatever the item's own status, with the item's code.
    let failed = |index: usize, e: ApiError| {
        let status = axum::http::StatusCode::UNPROCESSABLE_ENTITY;
        let e = ApiError { failed_index: Some(index), status, ..e };
        StoredResponse { status: 422, body: e.body() }
    };
    let mut requests = Vec::with_capacity(items.len());
    let mut renders = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let planned = match plan(state, &item.path, &item.body.json) {
            Ok(p) => p,
            Err(e) => return Ok((failed(index, e), true)),
        };
        // Sealing fails only for a dependency (or a key that does not open): not the
        // bulk's answer, an error retried with the same key.
        let planned = planned.sealed(state).await?;
        let (request, render) = planned.request(state, principal, context, &item.body);
        requests.push(request);
        renders.push(render);
    }
    match state.bus.execute_atomic(requests).await {
        Ok(replies) => {
            let mut results = Vec::with_capacity(replies.len());
            for (reply, render_item) in replies.into_iter().zip(renders) {
                let answer = crate::http::command::whole(state, reply.answer).await?;
                results.push(result(crate::http::command::rendered(&answer, &render_item), reply.replayed));
            }
            Ok((StoredResponse { status: 200, body: response_body(BulkResponse { results }) }, true))
        }
        Err(GroupError::Rejected { index, error }) => Ok((failed(index, ApiError::from(&error)), true)),
        Err(GroupError::Command { index, error }) => {
            // A key in flight may be free on a retry: that answer is not the bulk's for good.
            let settled = !matches!(error, CommandError::IdempotencyKeyInFlight);
            match ApiError::from(error) {
                // Only a refusal is the bulk's answer; a failure of ours or a dependency's
                // is an error, retried with the same key.
                e if e.status.is_client_error() => Ok((failed(index, e), settled)),
                e => Err(e),
            }
        }
        Err(GroupError::Failed(e)) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_built_by_moving_bodies_is_the_wire_type_serialized() {
        let response = BulkResponse {
            results: vec![
                BulkResult {
                    status: 201,
                    body: serde_json::json!({ "id": "x", "amount": 5, "nested": [1, {"a": null}] }),
                    replayed: false,
                },
                BulkResult { status: 422, body: serde_json::json!({ "code": "insufficient_funds" }), replayed: true },
            ],
        };
        let expected = serde_json::to_value(&response).expect("serializes");
        assert_eq!(response_body(response), expected);
    }
}

//! Two-phase holds (API.md v1.1 "Holds"): place, capture (all or part), void, read.
//! Expiry is recorded by the workers (`ledger_projections::expiry`); a capture is
//! decided at the time carried in its command, so one at or after `expires_at` is
//! refused even before the expiry is recorded.

use crate::http::error::ApiError;
use crate::http::extract::{Params, Segment};
use crate::http::requests::parse;
use crate::http::validate::path_uuid;
use crate::read::coherence::read_model_ready;
use crate::read::{Consistency, views};
use crate::routes::strong_state;
use crate::run::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use ledger_domain::Command;
use ledger_domain::decide::{CaptureHold, PlaceHold, VoidHold};
use ledger_infrastructure::{Recorded, StoredResponse};
use ledger_projections::Projection;
use ledger_wire::{CaptureRequest, EmptyRequest, HoldRequest};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/holds/{id}", get(read))
}

/// Renders the hold a command touched, with the given status code.
fn render_hold(status: u16) -> impl Fn(&Recorded) -> StoredResponse {
    move |recorded| {
        let hold_id = recorded
            .events
            .iter()
            .find_map(|e| match e {
                ledger_domain::Event::HoldPlaced(h) => Some(h.hold_id),
                ledger_domain::Event::HoldCaptured(h) => Some(h.hold_id),
                ledger_domain::Event::HoldVoided(h) | ledger_domain::Event::HoldExpired(h) => Some(h.hold_id),
                _ => None,
            })
            .expect("a hold command records its hold's event");
        let state = recorded.state();
        let hold = state.hold(hold_id).expect("the command touched this hold");
        crate::http::command::stored(status, &views::hold(hold, recorded.position))
    }
}

fn not_found(raw: &str) -> ApiError {
    ApiError::not_found(format!("hold {raw} not found"))
}

#[utoipa::path(
    post,
    path = "/v1/holds",
    operation_id = "place_hold",
    tag = "holds",
    summary = "Place a hold",
    description = "Reserves `amount` of `account_id` for `to`: `available` drops by `amount`, `balance` does not. \
        Checked like a transfer of `amount`. At `expires_at` the service records the expiry within 5 s.",
    request_body = ledger_wire::HoldRequest,
    responses(
        (status = 201, description = "The pending hold, with the `position` of its event.", body = ledger_wire::Hold),
        (status = 404, description = "`account_not_found`: `account_id` or `to` does not exist."),
        (status = 409, description = "`version_conflict`: a hold with this id exists."),
        (status = 422, description = "`insufficient_funds`; `currency_mismatch`; `account_closed`; `same_account`; \
            `validation_error`: a field is missing or malformed, `expires_at` is not in the future, or a system \
            account."),
    )
)]
pub fn plan_place(state: &AppState, json: &serde_json::Value) -> Result<crate::http::command::Planned, ApiError> {
    let r: HoldRequest = parse(json)?;
    let expires_at = r.expires_at.map(|t| chrono::SubsecRound::trunc_subsecs(t.0, 6));
    if expires_at.is_some_and(|t| t <= state.clock.now()) {
        return Err(ApiError::validation("`expires_at` must be in the future"));
    }
    let (id, minted) = crate::http::command::given_or_minted(r.id.map(|id| id.0));
    let command = Command::PlaceHold(PlaceHold {
        hold_id: id,
        account_id: r.account_id,
        to: r.to,
        amount: r.amount,
        currency: r.currency,
        expires_at,
        reference: r.reference.map(|t| t.0),
        metadata: r.metadata.map(|m| m.0),
    });
    Ok(crate::http::command::Planned::new(command, None, render_hold(201)).minted(minted))
}

#[utoipa::path(
    post,
    path = "/v1/holds/{id}/capture",
    operation_id = "capture_hold",
    tag = "holds",
    summary = "Capture a hold",
    description = "Moves `amount` (default: all of the hold) from `account_id` to `to`; the rest is released.",
    params(("id" = Uuid, Path, description = "The hold.")),
    request_body(content = Option<ledger_wire::CaptureRequest>, description = "`{}` or no body captures all of it."),
    responses(
        (status = 200, description = "The captured hold.", body = ledger_wire::Hold),
        (status = 404, description = "`not_found`: no such hold (or the id is not a UUID)."),
        (status = 422, description = "`hold_not_pending`: captured, voided or expired already; `hold_expired`: at or \
            after `expires_at`, even before the expiry is recorded; `account_closed`; `validation_error`: `amount` \
            is more than the hold, or `effective_at` outside the backdating window."),
    )
)]
pub fn plan_capture(
    state: &AppState,
    raw: &str,
    json: &serde_json::Value,
) -> Result<crate::http::command::Planned, ApiError> {
    let hold_id = path_uuid(raw, || not_found(raw))?;
    let r: CaptureRequest = parse(json)?;
    let command = Command::CaptureHold(CaptureHold {
        hold_id,
        amount: r.amount,
        effective_at: crate::http::validate::effective_at(state, r.effective_at)?,
        now: state.clock.now(),
    });
    Ok(crate::http::command::Planned::new(command, Some(hold_id.to_string()), render_hold(200)))
}

#[utoipa::path(
    post,
    path = "/v1/holds/{id}/void",
    operation_id = "void_hold",
    tag = "holds",
    summary = "Void a hold",
    description = "Releases all of the hold.",
    params(("id" = Uuid, Path, description = "The hold.")),
    request_body(content = Option<ledger_wire::EmptyRequest>, description = "`{}` or no body."),
    responses(
        (status = 200, description = "The voided hold.", body = ledger_wire::Hold),
        (status = 404, description = "`not_found`: no such hold (or the id is not a UUID)."),
        (status = 422, description = "`hold_not_pending`: captured, voided or expired already."),
    )
)]
pub fn plan_void(raw: &str, json: &serde_json::Value) -> Result<crate::http::command::Planned, ApiError> {
    let hold_id = path_uuid(raw, || not_found(raw))?;
    let _: EmptyRequest = parse(json)?;
    let command = Command::VoidHold(VoidHold { hold_id });
    Ok(crate::http::command::Planned::new(command, Some(hold_id.to_string()), render_hold(200)))
}

#[utoipa::path(
    get,
    path = "/v1/holds/{id}",
    operation_id = "get_hold",
    tag = "holds",
    summary = "Read a hold",
    params(("id" = Uuid, Path, description = "The hold id."), ledger_wire::ConsistencyQuery),
    responses(
        (status = 200, description = "The hold's current state.", body = ledger_wire::Hold),
        (status = 400, description = "`validation_error`: `consistency` or `min_position` is invalid."),
        (status = 404, description = "`not_found`: no such hold (or the id is not a UUID)."),
        (status = 503, description = "`consistency_timeout`: the read model did not reach `min_position` in time."),
    )
)]
async fn read(State(state): State<AppState>, Segment(raw): Segment, Params(q): Params) -> Result<Response, ApiError> {
    let id = path_uuid(&raw, || not_found(&raw))?;
    let consistency = Consistency::from_query(&q)?;
    if consistency != Consistency::Strong {
        let ready = read_model_ready(&state, Projection::Transfers, consistency).await?;
        if let (Some(row), position) = ledger_projections::queries::hold(ready.pool, id).await? {
            return Ok(views::read(&views::hold_row(row)?, position));
        }
    }
    // Strong, or not in the read model yet: an id the service returned is never 404.
    let (ledger, head) = strong_state(&state, &[id]).await?;
    let hold = ledger.hold(id).ok_or_else(|| not_found(&raw))?;
    let last = state.store.read_stream(id, ledger.version(id), 1).await?;
    let position = last.first().map_or(head, |e| e.position);
    Ok(views::read(&views::hold(hold, position), head))
}

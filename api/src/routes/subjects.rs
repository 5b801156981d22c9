//! Erasing a subject's personal data (API.md v1.2 "Personal data"; docs/PRIVACY.md).

use crate::http::command::{CommandBody, Planned};
use crate::http::context::{Principal, RequestContext};
use crate::http::error::ApiError;
use crate::http::extract::Segment;
use crate::run::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use ledger_domain::decide::EraseSubject;
use ledger_domain::{Command, Event, subject_stream_id};
use ledger_infrastructure::{Recorded, StoredResponse};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/admin/subjects/{subject}/erase", post(erase))
}

fn subject_not_found() -> ApiError {
    ApiError::not_found("no account has this subject")
}

/// The answer of an erasure recorded at `position`.
fn erasure(
    subject: &str,
    accounts: Vec<uuid::Uuid>,
    at: chrono::DateTime<chrono::Utc>,
    position: i64,
) -> StoredResponse {
    let body = ledger_wire::SubjectErasure { subject: subject.to_owned(), accounts, erased_at: at, position };
    crate::http::command::stored(200, &body)
}

/// The subject's last erasure, as recorded in the log.
async fn last_erasure(state: &AppState, subject: &str) -> Result<Option<StoredResponse>, ApiError> {
    let row: Option<(i64, chrono::DateTime<chrono::Utc>, serde_json::Value)> = sqlx::query_as(
        "select e.position, e.recorded_at, e.data from stream_entries s join events e on e.position = s.position
         where s.stream_id = $1 and e.type = 'SubjectErased' order by s.version desc limit 1",
    )
    .bind(subject_stream_id(subject))
    .fetch_optional(&state.pool)
    .await?;
    let Some((position, at, data)) = row else { return Ok(None) };
    let event = Event::from_parts("SubjectErased", data).map_err(|e| ApiError::internal(&e))?;
    let Event::SubjectErased(e) = event else { return Ok(None) };
    Ok(Some(erasure(subject, e.accounts, at, position)))
}

#[utoipa::path(
    post,
    path = "/v1/admin/subjects/{subject}/erase",
    operation_id = "erase_subject",
    tag = "operations",
    summary = "Erase a subject's personal data",
    description = "Admin only. Destroys the subject's key and records one `SubjectErased` event: the `owner` and \
        `pii.` metadata of its accounts are gone from every answer, while balances, postings and the audit chain \
        are unchanged. A second erasure answers the first's accounts.",
    params(("subject" = String, Path, description = "The subject (1–128 characters of `[A-Za-z0-9_.:@-]`).")),
    request_body = ledger_wire::EraseSubjectRequest,
    responses(
        (status = 200, description = "The erasure.", body = ledger_wire::SubjectErasure),
        (status = 404, description = "`not_found`: no account has this subject."),
        (status = 409, description = "`idempotency_key_in_flight`: a request with this key is still executing; \
            `version_conflict`: concurrent commands kept conflicting."),
        (status = 422, description = "`validation_error`: `reason` is missing or malformed."),
    )
)]
pub(crate) async fn erase(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    Segment(subject): Segment,
    body: CommandBody,
) -> Result<Response, ApiError> {
    if !ledger_wire::valid_subject(&subject) {
        return Err(subject_not_found());
    }
    let r: ledger_wire::EraseSubjectRequest = crate::http::requests::parse(&body.json)?;
    let command = Command::EraseSubject(EraseSubject { subject: subject.clone(), reason: r.reason.0 });
    let named = subject.clone();
    let render = move |recorded: &Recorded| {
        let accounts = recorded
            .events
            .iter()
            .find_map(|e| match e {
                Event::SubjectErased(e) => Some(e.accounts.clone()),
                _ => None,
            })
            .expect("an erasure records its event");
        erasure(&named, accounts, recorded.recorded_at.unwrap_or_default(), recorded.position)
    };
    let (mut stored, replayed) = Planned::new(command, None, render).answer(&state, &principal, &context, body).await?;
    // The one conflict an erasure's decision has: the subject was erased already (by an
    // erasure before this one, or one decided just before it): its answer is that one's.
    if stored.status == 409 {
        stored = last_erasure(&state, &subject).await?.ok_or_else(subject_not_found)?;
    }
    if stored.status == 200 {
        // Processes may still reveal the subject under a key they read before it was
        // destroyed, for at most `KEY_LEASE`: the erasure answers once none can. A
        // replay waits too (it may come while the first answer is still waiting).
        tokio::time::sleep(ledger_infrastructure::privacy::ERASURE_SETTLE).await;
    }
    Ok(crate::http::command::respond(stored, replayed))
}

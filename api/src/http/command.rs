//! Running a command from an HTTP request: the Idempotency-Key rules of API.md, the
//! request body (bounded, parsed, fingerprinted), and the hand-off to the writer.

use crate::http::context::{Principal, RequestContext};
use crate::http::error::{ApiError, ErrorCode};
use crate::run::state::AppState;
use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ledger_domain::Command;
use ledger_infrastructure::hash::canonical_json;
use ledger_infrastructure::{
    CommandReply, CommandRequest, EventMetadata, IdempotencyClaim, Outcome, Recorded, Stored, StoredResponse,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// A command request: its JSON body (bounded by `body_bytes_max`) and what identifies
/// it for idempotency.
pub struct CommandBody {
    pub json: Value,
    pub fingerprint: Vec<u8>,
    pub key: String,
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let raw = headers.get(IDEMPOTENCY_KEY).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::IdempotencyKeyMissing,
            "the Idempotency-Key header is required",
        )
    })?;
    let key = raw.to_str().ok().filter(|k| crate::http::context::printable(k));
    key.map(str::to_owned)
        .ok_or_else(|| ApiError::bad_request("Idempotency-Key must be 1 to 255 printable ASCII characters"))
}

impl FromRequest<AppState> for CommandBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        CommandBody::read(request, state.config.body_bytes_max).await?.keyed(state).await
    }
}

impl CommandBody {
    /// Reads a command's request: its key (checked first), then its body, at most
    /// `limit` bytes (413 `payload_too_large` past it).
    pub async fn read(request: Request, limit: usize) -> Result<CommandBody, ApiError> {
        let key = idempotency_key(request.headers())?;
        let method: Method = request.method().clone();
        let path = request.uri().path().to_owned();
        let bytes = axum::body::to_bytes(Body::new(request.into_body()), limit).await.map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                format!("the body must be at most {limit} bytes"),
            )
        })?;
        let json: Value = if bytes.is_empty() {
            Value::Object(Default::default())
        } else {
            crate::http::validate::parse_json(&bytes).map_err(crate::http::validate::body_rejection)?
        };
        Ok(CommandBody::new(method.as_str(), &path, json, key))
    }

    /// The body with its fingerprint keyed when it holds personal values (an `owner`
    /// or `pii.` member anywhere): HMAC-SHA-256 of the plain fingerprint under the
    /// ledger's look-up key, so the idempotency record keeps no unkeyed digest a
    /// guessed value could be checked against (docs/PRIVACY.md).
    pub async fn keyed(mut self, state: &AppState) -> Result<CommandBody, ApiError> {
        if ledger_infrastructure::privacy::has_personal_members(&self.json) {
            self.fingerprint =
                state.privacy.keyed_fingerprint(&self.fingerprint).await.map_err(crate::http::privacy::key_error)?;
        }
        Ok(self)
    }

    /// A command's body and key, fingerprinted: sha256 of `"{method} {path}\n"` and the
    /// body's canonical JSON.
    pub fn new(method: &str, path: &str, json: Value, key: String) -> CommandBody {
        let mut canonical = format!("{method} {path}\n");
        canonical_json(&json, &mut canonical);
        let fingerprint = Sha256::digest(canonical.as_bytes()).to_vec();
        CommandBody { json, fingerprint, key }
    }
}

/// Removes an in-flight key when the request ends, however it ends.
pub struct InFlightGuard<'a> {
    state: &'a AppState,
    key: (String, String),
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.state.in_flight.lock() {
            set.remove(&self.key);
        }
    }
}

/// The idempotency record a request will write.
pub fn claim(state: &AppState, principal: &Principal, body: &CommandBody) -> IdempotencyClaim {
    IdempotencyClaim {
        principal: principal.name.clone(),
        key: body.key.clone(),
        fingerprint: body.fingerprint.clone(),
        expires_at: state.clock.now()
            + chrono::Duration::from_std(state.config.idempotency_ttl).unwrap_or(chrono::Duration::hours(24)),
    }
}

/// How a route answers a recorded command: from its outcome alone (never from values
/// made up for this request, such as a freshly generated id), so a replay rendered from
/// the stored outcome is the first answer again.
pub trait RenderRecorded: Fn(&Recorded) -> StoredResponse {}
impl<F: Fn(&Recorded) -> StoredResponse> RenderRecorded for F {}

/// The response to an outcome: `recorded` renders what was appended; a broken rule is
/// its problem document.
pub fn render(outcome: &Outcome, recorded: impl RenderRecorded) -> StoredResponse {
    match outcome {
        Outcome::Recorded(r) => {
            // The command is committed: a renderer's bug must not turn that into an error
            // a client would retry with a new key (and so execute twice).
            let rendered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| recorded(r)));
            rendered.unwrap_or_else(|_| {
                tracing::error!(position = r.position, "rendering a recorded command failed; answering its position");
                StoredResponse { status: 200, body: serde_json::json!({ "position": r.position }) }
            })
        }
        Outcome::Rejected(e) => rejection(e),
    }
}

/// A response body as stored for replay. The wire types always serialize; a failure
/// would be a bug, caught by `render` (the command is then answered with its position).
pub fn stored(status: u16, body: &impl serde::Serialize) -> StoredResponse {
    StoredResponse { status, body: serde_json::to_value(body).expect("wire types serialize") }
}

/// How a route renders a recorded command (see [`RenderRecorded`]).
pub type Render = Box<dyn Fn(&Recorded) -> StoredResponse + Send + Sync>;

/// What a command route runs for a request: the command, what caused it, and how its
/// outcome is answered. The route's handler and `POST /v1/bulk` run the same plan, and
/// [`Planned::run`] is the one way a route's command is run.
pub struct Planned {
    pub command: Command,
    pub causation: Option<String>,
    pub render: Render,
    /// The id of the stream the command creates, when the route minted it (not when the
    /// client chose it): the writer need not look for it in the log.
    pub fresh_stream: Option<uuid::Uuid>,
    /// The owner look-up's row of the account the command opens, once sealed.
    pub owner_index: Option<ledger_infrastructure::privacy::OwnerIndexRow>,
}

impl Planned {
    pub fn new(
        command: Command,
        causation: Option<String>,
        render: impl Fn(&Recorded) -> StoredResponse + Send + Sync + 'static,
    ) -> Planned {
        Planned { command, causation, render: Box::new(render), fresh_stream: None, owner_index: None }
    }

    /// Marks the stream id this route has just minted, if it did (see `fresh_stream`).
    pub fn minted(self, id: Option<uuid::Uuid>) -> Planned {
        Planned { fresh_stream: id, ..self }
    }

    /// Seals the command's personal values (an account's `owner` and `pii.` metadata)
    /// under its subject's key: what every route and bulk item does before the writer
    /// sees a command, which refuses anything personal in clear.
    pub async fn sealed(mut self, state: &AppState) -> Result<Planned, ApiError> {
        if let Command::OpenAccount(c) = &mut self.command {
            self.owner_index = state.privacy.seal_opening(c).await.map_err(crate::http::privacy::key_error)?;
        }
        Ok(self)
    }

    /// Runs the command once per idempotency key and answers with its (possibly
    /// stored) response.
    pub async fn run(
        self,
        state: &AppState,
        principal: &Principal,
        context: &RequestContext,
        body: CommandBody,
    ) -> Result<Response, ApiError> {
        let (stored, replayed) = self.answer(state, principal, context, body).await?;
        Ok(respond(stored, replayed))
    }

    /// Like [`Planned::run`], returning the stored response and whether it is a replay.
    pub async fn answer(
        self,
        state: &AppState,
        principal: &Principal,
        context: &RequestContext,
        body: CommandBody,
    ) -> Result<(StoredResponse, bool), ApiError> {
        let (prepared, render) = self.prepare(state, principal, context, &body)?;
        let reply = state.bus.execute(prepared.request).await;
        // The key stops being in flight once the answer (committed, so replayable) is in.
        drop(prepared.guard);
        finish(state, reply, render).await
    }

    /// Marks the key in flight and builds the writer's request; the render answers it.
    pub fn prepare<'a>(
        self,
        state: &'a AppState,
        principal: &Principal,
        context: &RequestContext,
        body: &CommandBody,
    ) -> Result<(Prepared<'a>, Render), ApiError> {
        // Stored responses are looked up by the writer, once per batch of commands.
        let guard = in_flight(state, principal, body)?;
        let (request, render) = self.request(state, principal, context, body);
        Ok((Prepared { request, guard }, render))
    }

    /// The writer's request for this plan: its metadata and idempotency record (no
    /// in-flight check; [`Planned::prepare`] adds it), and the render.
    pub fn request(
        self,
        state: &AppState,
        principal: &Principal,
        context: &RequestContext,
        body: &CommandBody,
    ) -> (CommandRequest, Render) {
        let request = CommandRequest {
            command: self.command,
            metadata: EventMetadata {
                actor: principal.name.clone(),
                request_id: Some(context.request_id.clone()),
                correlation_id: Some(context.correlation_id.clone()),
                causation_id: self.causation,
                idempotency_key: Some(body.key.clone()),
            },
            idempotency: Some(claim(state, principal, body)),
            fresh_stream: self.fresh_stream,
            owner_index: self.owner_index,
        };
        (request, self.render)
    }
}

/// A command ready for the writer. Its key counts as in flight (a second request with
/// it is answered 409) until this is dropped, after its answer.
pub struct Prepared<'a> {
    pub request: CommandRequest,
    guard: InFlightGuard<'a>,
}

/// Marks the request's key in flight in this process until the guard is dropped:
/// 409 `idempotency_key_in_flight` if it already is.
pub fn in_flight<'a>(
    state: &'a AppState,
    principal: &Principal,
    body: &CommandBody,
) -> Result<InFlightGuard<'a>, ApiError> {
    let scoped = (principal.name.clone(), body.key.clone());
    let mut set = state.in_flight.lock().map_err(|_| ApiError::internal(&"in-flight set poisoned"))?;
    if !set.insert(scoped.clone()) {
        return Err(ledger_infrastructure::CommandError::IdempotencyKeyInFlight.into());
    }
    Ok(InFlightGuard { state, key: scoped })
}

/// A stream's id as the client gave it, or minted here; the second value is the id
/// when minted (a stream that cannot be in the log yet: `Planned::minted`).
pub fn given_or_minted(given: Option<uuid::Uuid>) -> (uuid::Uuid, Option<uuid::Uuid>) {
    match given {
        Some(id) => (id, None),
        None => {
            let id = uuid::Uuid::now_v7();
            (id, Some(id))
        }
    }
}

impl<'a> Prepared<'a> {
    /// The request, and the guard to drop once it is answered.
    pub fn into_parts(self) -> (CommandRequest, impl Drop + 'a) {
        (self.request, self.guard)
    }
}

/// Renders the writer's answer (the outcome, or the stored outcome of a replay) and
/// counts it.
pub async fn finish(
    state: &AppState,
    mut reply: Result<CommandReply, ledger_infrastructure::CommandError>,
    recorded: impl RenderRecorded,
) -> Result<(StoredResponse, bool), ApiError> {
    if let Ok(r) = &mut reply {
        r.answer = whole(state, std::mem::replace(&mut r.answer, Stored::Reference(Default::default()))).await?;
    }
    let reply = reply.map(|reply| (rendered(&reply.answer, &recorded), reply.replayed));
    let code = match &reply {
        Ok((_, true)) => "replayed",
        Ok((response, false)) => response.body["code"].as_str().unwrap_or("ok"),
        Err(ledger_infrastructure::CommandError::IdempotencyKeyReused) => "idempotency_key_reused",
        Err(ledger_infrastructure::CommandError::IdempotencyKeyInFlight) => "idempotency_key_in_flight",
        Err(ledger_infrastructure::CommandError::VersionConflict(_)) => "version_conflict",
        Err(_) => "unavailable",
    };
    metrics::counter!("ledger_command_outcomes_total", "code" => code.to_owned()).increment(1);
    let (response, replayed) = reply?;
    if replayed {
        metrics::counter!("ledger_idempotency_replays_total").increment(1);
    }
    Ok((response, replayed))
}

/// An answer as the API renders it: a reference read back from the log (records keep
/// only where a command's events are); an outcome stored before outcomes kept their
/// time, given the time of its position.
pub async fn whole(state: &AppState, answer: Stored) -> Result<Stored, ApiError> {
    match answer {
        Stored::Reference(r) => Ok(Stored::Outcome(state.store.resolve(r).await?)),
        Stored::Outcome(Outcome::Recorded(mut r)) if r.recorded_at.is_none() && r.position > 0 => {
            r.recorded_at = state.store.recorded_at(r.position).await?;
            Ok(Stored::Outcome(Outcome::Recorded(r)))
        }
        other => Ok(other),
    }
}

/// The response to a whole answer (see [`whole`]).
pub fn rendered(answer: &Stored, recorded: impl RenderRecorded) -> StoredResponse {
    match answer {
        Stored::Outcome(outcome) => render(outcome, recorded),
        Stored::Response(stored) => stored.clone(),
        Stored::Reference(r) => {
            let e = ApiError::internal(&format!("a reference at {} was not read back before rendering", r.position));
            StoredResponse { status: 500, body: e.body() }
        }
    }
}

/// Turns a stored response into an HTTP response.
pub fn respond(stored: StoredResponse, replayed: bool) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if status.is_success() { "application/json" } else { "application/problem+json" };
    let mut response = (status, stored.body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if replayed {
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

/// The stored form of a business rejection.
pub fn rejection(error: &ledger_domain::DomainError) -> StoredResponse {
    let api = ApiError::from(error);
    StoredResponse { status: api.status.as_u16(), body: api.body() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renderer_bug_still_answers_the_recorded_command() {
        let outcome =
            Outcome::Recorded(Recorded { position: 42, events: Vec::new(), streams: Vec::new(), recorded_at: None });
        let answer = render(&outcome, |_: &Recorded| -> StoredResponse { panic!("a renderer bug") });
        assert_eq!((answer.status, answer.body), (200, serde_json::json!({ "position": 42 })));
        let rejected = Outcome::Rejected(ledger_domain::DomainError::SameAccount);
        assert_eq!(render(&rejected, |_: &Recorded| unreachable!()).status, 422);
    }
}

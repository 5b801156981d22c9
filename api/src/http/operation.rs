//! The idempotency protocol of operations: requests that are not one command (a bulk,
//! a webhook's registration, a rebuild, a reconciliation, a webhook dead letter's
//! redrive or discard). The key is claimed in Postgres before anything runs, visibly to
//! every process ([`begin`]); the holder stores its final answer ([`OperationKey::finish`],
//! or in the operation's own transaction), answers a transient outcome without storing
//! it ([`OperationKey::unstored`]), or gives the key back if nothing ran
//! ([`OperationKey::refuse`]). A holder dropped any other way (an error, a cancelled
//! request) releases its lease at once; the key stays bound to its fingerprint, so only
//! a retry of the same request can take it over. Commands need none of this: their
//! record commits with their events, under the primary key of `idempotency_keys`.

use crate::http::command::{CommandBody, claim, respond};
use crate::http::context::Principal;
use crate::http::error::ApiError;
use crate::run::state::AppState;
use axum::response::Response;
use ledger_infrastructure::store::KeyClaim;
use ledger_infrastructure::{CommandError, EventStore, IdempotencyClaim, Stored, StoredResponse};
use std::time::Duration;
use uuid::Uuid;

/// What claiming an operation's key came to.
pub enum Begun {
    /// The key is this request's: run the operation.
    Run(OperationKey),
    /// The key's request finished before: its stored answer, to replay (with
    /// `Idempotent-Replayed: true`, `command::respond(answer, true)`).
    Answered(StoredResponse),
}

/// An operation's claim on its key, held while it runs.
pub struct OperationKey {
    store: EventStore,
    claim: IdempotencyClaim,
    token: Uuid,
    settled: bool,
}

/// How long a claim holds its key without an answer: longer than a request may run
/// (`LEDGER_REQUEST_TIMEOUT_MS`), so a lapsed lease means its holder is gone.
fn lease(state: &AppState) -> Duration {
    state.config.request_timeout + Duration::from_secs(5)
}

/// Claims the request's key, or answers from what the key already holds: the stored
/// answer (replayed), 409 `idempotency_key_in_flight` while a request with the same
/// body runs, 422 `idempotency_key_reused` for another body.
pub async fn begin(state: &AppState, principal: &Principal, body: &CommandBody) -> Result<Begun, ApiError> {
    let claim = claim(state, principal, body);
    match state.store.claim_key(&claim, lease(state)).await? {
        KeyClaim::Taken(token) => {
            Ok(Begun::Run(OperationKey { store: state.store.clone(), claim, token, settled: false }))
        }
        KeyClaim::Done(Stored::Response(stored)) => Ok(Begun::Answered(stored)),
        // Commands and operations have different paths, so never the same fingerprint.
        KeyClaim::Done(Stored::Outcome(_) | Stored::Reference(_)) => {
            Err(ApiError::internal(&"an operation's key holds a command's outcome"))
        }
        KeyClaim::InFlight => Err(CommandError::IdempotencyKeyInFlight.into()),
        KeyClaim::Reused => Err(CommandError::IdempotencyKeyReused.into()),
    }
}

impl OperationKey {
    /// The record this claim turns into.
    pub fn claim(&self) -> &IdempotencyClaim {
        &self.claim
    }

    /// The holder's token, for an operation that stores its answer in its own
    /// transaction (`EventStore::finish_claim`); then call [`OperationKey::finished`].
    pub fn token(&self) -> Uuid {
        self.token
    }

    /// The operation stored its answer itself.
    pub fn finished(mut self) {
        self.settled = true;
    }

    /// Stores the final answer and answers with it. If the claim was taken over (its
    /// lease lapsed and a retry of the same request holds the key), nothing is stored and
    /// 409 `idempotency_key_in_flight` is answered: the caller must not go on with work
    /// that only the answer's holder may start (the retry does it).
    pub async fn finish(mut self, answer: StoredResponse) -> Result<Response, ApiError> {
        self.settled = true;
        if !EventStore::finish_claim(self.store.pool(), &self.claim, self.token, &answer).await? {
            tracing::warn!(key = %self.claim.key, "an operation finished after its claim was taken over");
            return Err(CommandError::IdempotencyKeyInFlight.into());
        }
        Ok(respond(answer, false))
    }

    /// Answers without storing (an outcome a retry may change: an item of a bulk that
    /// met a conflict or an outage); the key is released for a retry of this request.
    pub async fn unstored(mut self, answer: StoredResponse) -> Response {
        self.settled = true;
        if let Err(e) = self.store.release_claim(&self.claim, self.token).await {
            tracing::warn!(error = %e, "releasing an idempotency claim failed; its lease lapses instead");
        }
        respond(answer, false)
    }

    /// Nothing of the operation ran (its request was refused as malformed): the key is
    /// given back, so the client may use it again for a corrected request.
    pub async fn refuse(mut self, error: ApiError) -> ApiError {
        self.settled = true;
        if let Err(e) = self.store.drop_claim(&self.claim, self.token).await {
            tracing::warn!(error = %e, "giving back an idempotency claim failed; its lease lapses instead");
        }
        error
    }
}

impl Drop for OperationKey {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // An error or a cancelled request: the lease ends now rather than when it lapses.
        let (store, claim, token) = (self.store.clone(), self.claim.clone(), self.token);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = store.release_claim(&claim, token).await {
                    tracing::warn!(error = %e, "releasing an idempotency claim failed; its lease lapses instead");
                }
            });
        }
    }
}

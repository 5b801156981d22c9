//! The one error type of the simulator and how each variant is answered over HTTP:
//! a JSON body `{"error": "<stable code>", "message": "<text>"}` with the status code
//! the contract gives it meaning by (4xx permanent, 5xx transient).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::faults::FaultsError;

/// An error answered by the simulator, named after the rule that was broken or the
/// fault that was injected.
#[derive(Debug, Clone, PartialEq)]
pub enum SimError {
    /// `POST /payouts` came without a usable `Idempotency-Key` header.
    MissingIdempotencyKey,
    /// The body is not JSON of the expected shape.
    MalformedJson {
        /// What the parser said.
        detail: String,
    },
    /// The payout's reference is empty.
    ReferenceEmpty,
    /// The amount is not a positive integer of minor units.
    AmountNotPositive {
        /// The amount as sent (JSON text).
        amount: String,
    },
    /// The currency is not three upper-case letters.
    CurrencyInvalid {
        /// The currency as sent.
        currency: String,
    },
    /// A query parameter is missing or malformed.
    MalformedQuery {
        /// Which parameter and why.
        detail: String,
    },
    /// A `Faults` value with a rate outside `[0, 1]`.
    FaultsInvalid(FaultsError),
    /// The idempotency key was used before with a different body.
    IdempotencyConflict {
        /// The reused key.
        key: String,
    },
    /// Injected: a permanent refusal of a new payout; nothing was recorded.
    SimulatedPermanentError,
    /// No visible payout has this provider reference.
    PayoutNotFound {
        /// The reference asked for.
        provider_ref: String,
    },
    /// No payout was recorded for this caller reference.
    ReferenceNotFound {
        /// The reference asked for.
        reference: String,
    },
    /// Injected: the provider is down or failed this call.
    SimulatedUnavailable {
        /// Seconds for `Retry-After`, when configured.
        retry_after_s: Option<u64>,
    },
    /// Injected: the provider hung and a gateway gave up.
    SimulatedTimeout,
    /// Injected: the payout was recorded but the response was lost.
    SimulatedResponseLost,
}

impl SimError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            SimError::MissingIdempotencyKey
            | SimError::MalformedJson { .. }
            | SimError::ReferenceEmpty
            | SimError::AmountNotPositive { .. }
            | SimError::CurrencyInvalid { .. }
            | SimError::MalformedQuery { .. }
            | SimError::FaultsInvalid(_) => StatusCode::BAD_REQUEST,
            SimError::IdempotencyConflict { .. } => StatusCode::CONFLICT,
            SimError::SimulatedPermanentError => StatusCode::UNPROCESSABLE_ENTITY,
            SimError::PayoutNotFound { .. } | SimError::ReferenceNotFound { .. } => StatusCode::NOT_FOUND,
            SimError::SimulatedUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            SimError::SimulatedTimeout => StatusCode::GATEWAY_TIMEOUT,
            SimError::SimulatedResponseLost => StatusCode::BAD_GATEWAY,
        }
    }

    /// The stable machine-readable code in the body's `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            SimError::MissingIdempotencyKey => "missing_idempotency_key",
            SimError::MalformedJson { .. } => "malformed_json",
            SimError::ReferenceEmpty => "invalid_reference",
            SimError::AmountNotPositive { .. } => "invalid_amount",
            SimError::CurrencyInvalid { .. } => "invalid_currency",
            SimError::MalformedQuery { .. } => "invalid_query",
            SimError::FaultsInvalid(_) => "invalid_faults",
            SimError::IdempotencyConflict { .. } => "idempotency_conflict",
            SimError::SimulatedPermanentError => "simulated_permanent_error",
            SimError::PayoutNotFound { .. } | SimError::ReferenceNotFound { .. } => "not_found",
            SimError::SimulatedUnavailable { .. } => "simulated_unavailable",
            SimError::SimulatedTimeout => "simulated_timeout",
            SimError::SimulatedResponseLost => "simulated_response_lost",
        }
    }
}

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SimError::MissingIdempotencyKey => write!(f, "the Idempotency-Key header is required"),
            SimError::MalformedJson { detail } => write!(f, "malformed JSON body: {detail}"),
            SimError::ReferenceEmpty => write!(f, "reference must not be empty"),
            SimError::AmountNotPositive { amount } => {
                write!(f, "amount must be a positive integer of minor units, got {amount}")
            }
            SimError::CurrencyInvalid { currency } => {
                write!(f, "currency must be three upper-case letters, got {currency:?}")
            }
            SimError::MalformedQuery { detail } => write!(f, "{detail}"),
            SimError::FaultsInvalid(e) => write!(f, "{e}"),
            SimError::IdempotencyConflict { key } => {
                write!(f, "idempotency key {key:?} was already used with a different body")
            }
            SimError::SimulatedPermanentError => write!(f, "simulated permanent error"),
            SimError::PayoutNotFound { provider_ref } => write!(f, "no payout {provider_ref:?}"),
            SimError::ReferenceNotFound { reference } => write!(f, "no payout with reference {reference:?}"),
            SimError::SimulatedUnavailable { .. } => write!(f, "simulated outage; retry later"),
            SimError::SimulatedTimeout => write!(f, "simulated timeout"),
            SimError::SimulatedResponseLost => write!(f, "simulated lost response"),
        }
    }
}

impl std::error::Error for SimError {}

impl From<FaultsError> for SimError {
    fn from(e: FaultsError) -> SimError {
        SimError::FaultsInvalid(e)
    }
}

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": self.code(), "message": self.to_string() }));
        let mut response = (self.status(), body).into_response();
        if let SimError::SimulatedUnavailable { retry_after_s: Some(seconds) } = self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

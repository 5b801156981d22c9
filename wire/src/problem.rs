//! Errors on the wire: the stable codes of API.md and the RFC 9457 problem document
//! every error answer carries.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The stable error codes of API.md: clients match on these, never on `detail`. The
/// one list of them: problem documents and the OpenAPI schema both come from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    ValidationError,
    Unauthorized,
    Forbidden,
    NotFound,
    AccountNotFound,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    IdempotencyKeyInFlight,
    InsufficientFunds,
    CurrencyMismatch,
    AccountClosed,
    SameAccount,
    AccountNotEmpty,
    AlreadyReversed,
    VersionConflict,
    ConsistencyTimeout,
    PayloadTooLarge,
    Unavailable,
    Internal,
    ConditionFailed,
    HoldNotPending,
    HoldExpired,
    RateLimited,
    LedgerNotFound,
    PeriodClosed,
}

impl ErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ValidationError => "validation_error",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AccountNotFound => "account_not_found",
            ErrorCode::IdempotencyKeyMissing => "idempotency_key_missing",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::IdempotencyKeyInFlight => "idempotency_key_in_flight",
            ErrorCode::InsufficientFunds => "insufficient_funds",
            ErrorCode::CurrencyMismatch => "currency_mismatch",
            ErrorCode::AccountClosed => "account_closed",
            ErrorCode::SameAccount => "same_account",
            ErrorCode::AccountNotEmpty => "account_not_empty",
            ErrorCode::AlreadyReversed => "already_reversed",
            ErrorCode::VersionConflict => "version_conflict",
            ErrorCode::ConsistencyTimeout => "consistency_timeout",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::ConditionFailed => "condition_failed",
            ErrorCode::HoldNotPending => "hold_not_pending",
            ErrorCode::HoldExpired => "hold_expired",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::LedgerNotFound => "ledger_not_found",
            ErrorCode::PeriodClosed => "period_closed",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An RFC 9457 problem document (`application/problem+json`): every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// `urn:ledger:problem:<code>`.
    #[serde(rename = "type")]
    #[schema(example = "urn:ledger:problem:insufficient_funds")]
    pub problem_type: String,
    /// The HTTP reason phrase of `status`.
    #[schema(example = "Unprocessable Entity")]
    pub title: String,
    /// The HTTP status code.
    #[schema(example = 422, minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong, for humans; 5xx details say nothing internal.
    pub detail: String,
    pub code: ErrorCode,
    /// For `insufficient_funds`: the first account, in posting order, that would end
    /// below its limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub account_id: Option<uuid::Uuid>,
    /// For an atomic bulk that failed: the index of the first failing item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub failed_index: Option<usize>,
}

impl Problem {
    pub fn new(status: u16, title: &str, code: ErrorCode, detail: &str) -> Problem {
        Problem {
            problem_type: format!("urn:ledger:problem:{code}"),
            title: title.to_owned(),
            status,
            detail: detail.to_owned(),
            code,
            account_id: None,
            failed_index: None,
        }
    }
}

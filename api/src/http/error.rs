//! The one error type of the HTTP layer. Every error leaves as an RFC 9457 problem
//! document with a stable `code`; 5xx bodies say nothing internal (the cause is logged).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ledger_domain::DomainError;
use ledger_infrastructure::CommandError;
use ledger_wire::Problem;

pub use ledger_wire::ErrorCode;

/// An error answered to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub detail: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after_s: Option<u64>,
    /// The account a rule names (the problem body's top-level `account_id`).
    pub account_id: Option<uuid::Uuid>,
    /// The failing item of an atomic bulk.
    pub failed_index: Option<usize>,
    /// A dependency failed (Postgres, the writer): the Postgres breaker counts it. A 503
    /// that sheds load says nothing of Postgres and is not counted.
    pub dependency_failed: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            detail: detail.into(),
            retry_after_s: None,
            account_id: None,
            failed_index: None,
            dependency_failed: false,
        }
    }

    pub fn validation(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::ValidationError, detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::ValidationError, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, detail)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "a valid bearer token is required")
    }

    pub fn forbidden() -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, "this token's role does not allow this request")
    }

    /// A dependency failed: the cause is logged here and never shown to the client.
    pub fn unavailable(cause: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "dependency unavailable");
        ApiError {
            retry_after_s: Some(1),
            dependency_failed: true,
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "a dependency is unavailable; retry later",
            )
        }
    }

    /// A bound on in-flight work is reached: the request is refused at once, before it
    /// costs anything, with `Retry-After` (not a dependency failure).
    pub fn overloaded(detail: impl Into<String>) -> ApiError {
        ApiError {
            retry_after_s: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, detail)
        }
    }

    pub fn internal(cause: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "internal error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, "internal error")
    }

    /// The problem document.
    pub fn problem(&self) -> Problem {
        let title = self.status.canonical_reason().unwrap_or("error");
        Problem {
            account_id: self.account_id,
            failed_index: self.failed_index,
            ..Problem::new(self.status.as_u16(), title, self.code, &self.detail)
        }
    }

    /// The problem document as JSON.
    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(self.problem()).unwrap_or_default()
    }
}

/// Maps a broken business rule to its status and stable code.
impl From<&DomainError> for ApiError {
    fn from(e: &DomainError) -> ApiError {
        use DomainError as D;
        let (status, code) = match e {
            D::AccountNotFound { .. } => (StatusCode::NOT_FOUND, ErrorCode::AccountNotFound),
            D::TransferNotFound { .. } | D::WithdrawalNotFound { .. } | D::TransactionNotFound { .. } => {
                (StatusCode::NOT_FOUND, ErrorCode::NotFound)
            }
            D::AlreadyExists { .. } | D::UnexpectedVersion { .. } => (StatusCode::CONFLICT, ErrorCode::VersionConflict),
            D::ConditionFailed { .. } => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::ConditionFailed),
            D::PeriodClosed { .. } => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::PeriodClosed),
            D::HoldNotFound { .. } | D::SubjectNotFound => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            // The erase route answers a repeated erasure with the first one's answer.
            D::SubjectAlreadyErased { .. } => (StatusCode::CONFLICT, ErrorCode::VersionConflict),
            D::HoldNotPending { .. } => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::HoldNotPending),
            D::HoldExpired { .. } => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::HoldExpired),
            D::InsufficientFunds { .. } => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InsufficientFunds),
            D::CurrencyMismatch { .. } => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::CurrencyMismatch),
            D::AccountClosed { .. } => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::AccountClosed),
            D::SameAccount => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::SameAccount),
            D::AccountNotEmpty { .. } => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::AccountNotEmpty),
            D::AlreadyReversed { .. } => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::AlreadyReversed),
            D::BalanceOverflow { .. }
            | D::NegativeOverdraftLimit(_)
            | D::SystemAccount { .. }
            | D::WithdrawalNotPending { .. }
            | D::DeadLetterNotOpen { .. }
            | D::ReconciliationNotStarted { .. }
            | D::ReservedId { .. }
            | D::PostingsCount { .. }
            | D::CaptureExceedsHold { .. }
            | D::HoldNotDue { .. }
            | D::SubjectAccountsLimit { .. }
            | D::PeriodNotAfter { .. } => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::ValidationError),
        };
        let account_id = match e {
            D::InsufficientFunds { account_id, .. } => *account_id,
            _ => None,
        };
        ApiError { account_id, ..ApiError::new(status, code, e.to_string()) }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> ApiError {
        match e {
            CommandError::IdempotencyKeyReused => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was used with a different request",
            ),
            CommandError::IdempotencyKeyInFlight => ApiError {
                retry_after_s: Some(1),
                ..ApiError::new(
                    StatusCode::CONFLICT,
                    ErrorCode::IdempotencyKeyInFlight,
                    "a request with this Idempotency-Key is still executing",
                )
            },
            CommandError::VersionConflict(n) => ApiError {
                retry_after_s: Some(1),
                ..ApiError::new(
                    StatusCode::CONFLICT,
                    ErrorCode::VersionConflict,
                    format!("concurrent updates conflicted {n} times; retry"),
                )
            },
            CommandError::Unavailable(cause) => ApiError::unavailable(&cause),
            CommandError::ShuttingDown => ApiError::unavailable(&"the command writer is shutting down"),
            CommandError::Internal => ApiError::internal(&"the command met an internal error and was not recorded"),
            CommandError::AheadOfLog(now) => ApiError::validation(format!(
                "a time in the request (`closes_at` must be past, `effective_at` at most 60 s ahead) is ahead of the \
                 ledger's time {}; nothing was recorded",
                now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            )),
            CommandError::SubjectKeyDestroyed => ApiError {
                retry_after_s: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    "the account's subject was erased while this request was in flight; nothing was recorded: retry",
                )
            },
        }
    }
}

/// A database error is a dependency failure (503, counted by the breaker) only when the
/// database is unavailable; caused by the request's data it is 422, caused by a bug of
/// ours 500, and neither counts for the breaker.
impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        use ledger_infrastructure::store::{DbFault, db_fault};
        match db_fault(&e) {
            DbFault::Input => {
                tracing::warn!(error = %e, "the database refused a value of the request");
                ApiError::validation("a value of the request is outside what the ledger can store or look up")
            }
            DbFault::Bug => ApiError::internal(&e),
            DbFault::Unavailable => ApiError::unavailable(&e),
        }
    }
}

impl From<ledger_infrastructure::store::StoreError> for ApiError {
    fn from(e: ledger_infrastructure::store::StoreError) -> ApiError {
        match e {
            ledger_infrastructure::store::StoreError::Database(e) => e.into(),
            other => ApiError::internal(&other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = problem_response(self.status, &self.body(), self.retry_after_s);
        if self.dependency_failed {
            response.extensions_mut().insert(crate::http::guard::DependencyFailed);
        }
        response
    }
}

/// A problem+json response with the given body.
pub fn problem_response(status: StatusCode, body: &serde_json::Value, retry_after_s: Option<u64>) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    if let Some(s) = retry_after_s {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    response
}

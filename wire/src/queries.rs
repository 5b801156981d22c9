//! The query parameters of the read routes, as the OpenAPI document describes them
//! and the client sends them. The server parses them itself, strictly (an unknown,
//! repeated or malformed parameter is 400), in `ledger_api::extract`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

// ---- Query parameters ----

/// How a read wants to see the ledger (API.md "Consistency").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// From the read model (and cache); may lag.
    Eventual,
    /// From the write side: reflects every command acknowledged before the request.
    Strong,
}

/// Read consistency of read-model queries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsistencyQuery {
    /// `eventual` (default) answers from the read model and may lag; `strong` reflects
    /// every command acknowledged before the request.
    #[param(inline)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
    /// Wait until the read model has applied this log position (at most
    /// `LEDGER_CONSISTENCY_WAIT_MS`, else 503 `consistency_timeout`).
    #[param(minimum = 0)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_position: Option<i64>,
}

/// `GET /v1/accounts`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OwnerQuery {
    /// The owner to look up (required, non-empty).
    #[param(min_length = 1, example = "alice@example.com")]
    pub owner: String,
}

/// `GET /v1/accounts/{id}/transactions`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TransactionsQuery {
    /// Page size, 1–1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `GET /v1/accounts/{id}/events`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamEventsQuery {
    /// The first version to return (default 1).
    #[param(minimum = 0)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_version: Option<i64>,
    /// Page size, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// `GET /v1/accounts/{id}/balance`: exactly one of the two.
#[derive(Clone, Debug, Default, PartialEq, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BalanceQuery {
    /// A time (RFC 3339): the balance after every event recorded up to then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<DateTime<Utc>>,
    /// A business time (RFC 3339): only postings effective at or before it count;
    /// combined with `as_of` or `at_position`, as known then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_at: Option<DateTime<Utc>>,
    /// A log position, at most the head.
    #[param(minimum = 0)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_position: Option<i64>,
}

/// `GET /v1/events`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Return events after this position (default 0).
    #[param(minimum = 0)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<i64>,
    /// Page size, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// `GET /v1/audit`: all filters are optional and combine with "and".
#[derive(Clone, Debug, Default, PartialEq, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// The token name that caused the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<Uuid>,
    /// Recorded at or after (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<DateTime<Utc>>,
    /// Recorded before (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<DateTime<Utc>>,
    /// Page size, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `GET /v1/transactions`: all filters optional, combined with AND; newest first. Up
/// to 5 `metadata.KEY=VALUE` filters match a top-level key whose value is that string,
/// or that integer written in decimal.
#[derive(Clone, Debug, Default, PartialEq, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TransactionSearch {
    /// Transactions with a posting from or to this account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Recorded at or after (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_from: Option<DateTime<Utc>>,
    /// Recorded before (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_to: Option<DateTime<Utc>>,
    /// Effective at or after (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_from: Option<DateTime<Utc>>,
    /// Effective before (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_to: Option<DateTime<Utc>>,
    /// Page size, 1–1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// `metadata.KEY=VALUE` filters (at most 5): sent as such, not as one parameter.
    #[serde(skip)]
    #[param(ignore)]
    pub metadata: Vec<(String, String)>,
}

/// `GET /v1/admin/reconciliations`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReconciliationListQuery {
    /// How many runs, 1–20 (default 10).
    pub limit: Option<i64>,
}

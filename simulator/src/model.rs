//! The data the simulator speaks: payout requests and records, statement entries,
//! record overrides and call statistics, exactly as they travel as JSON.
//!
//! This module owns parsing and validating a payout request; it knows nothing of
//! HTTP, locks or fault injection.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::SimError;

/// The outcome the provider recorded for a payout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayoutStatus {
    /// The money left.
    Settled,
    /// The provider refused the payout; no money left.
    Rejected,
}

/// A payout as the provider records it, and as `POST /payouts` and
/// `GET /payouts/{provider_ref}` answer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payout {
    /// The provider's id for the payout: `prv_` followed by a simple UUID v7.
    pub provider_ref: String,
    /// The caller's reference (the ledger's withdrawal id).
    pub reference: String,
    /// Amount in minor units.
    pub amount: i64,
    /// ISO 4217 code, three upper-case letters.
    pub currency: String,
    /// Where the money went, as the caller named it.
    pub destination: String,
    /// Settled or rejected.
    pub status: PayoutStatus,
    /// Why the payout was rejected, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the provider recorded the outcome (UTC, microsecond precision).
    pub settled_at: DateTime<Utc>,
}

/// One line of `GET /statement`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementEntry {
    /// The provider's id for the payout.
    pub provider_ref: String,
    /// The caller's reference (the ledger's withdrawal id).
    pub reference: String,
    /// Amount in minor units.
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Settled or rejected.
    pub status: PayoutStatus,
    /// When the provider recorded the outcome.
    pub settled_at: DateTime<Utc>,
}

impl From<&Payout> for StatementEntry {
    fn from(payout: &Payout) -> StatementEntry {
        StatementEntry {
            provider_ref: payout.provider_ref.clone(),
            reference: payout.reference.clone(),
            amount: payout.amount,
            currency: payout.currency.clone(),
            status: payout.status,
            settled_at: payout.settled_at,
        }
    }
}

/// The body of `GET /statement`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Statement {
    /// Entries whose `settled_at` lies in the requested window, oldest first.
    pub entries: Vec<StatementEntry>,
}

/// A change to what the provider's record says about a reference, for
/// reconciliation tests (`POST /_sim/payouts/{reference}/override`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayoutOverride {
    /// The amount the record now says was paid (must be positive).
    #[serde(default)]
    pub amount: Option<i64>,
    /// The status the record now says.
    #[serde(default)]
    pub status: Option<PayoutStatus>,
    /// `true` hides the record from the statement and from `GET /payouts/{provider_ref}`
    /// ("no record at the provider"); `false` shows it again. The idempotency key stays
    /// remembered, so a replay still never pays twice.
    #[serde(default)]
    pub remove: Option<bool>,
}

/// What the simulator has seen and done (`GET /_sim/stats`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Every request to a contract route, counted on arrival (before any fault).
    pub calls: u64,
    /// Every `POST /payouts` request, counted on arrival.
    pub payout_calls: u64,
    /// Distinct recorded payouts (removed ones included).
    pub payouts: u64,
    /// Reference → times money was paid for it. Anything above 1 is a double payment.
    /// References whose payouts were only ever rejected appear with 0.
    pub paid: BTreeMap<String, u64>,
}

impl Stats {
    /// References for which money was paid more than once; empty when all is well.
    pub fn double_paid(&self) -> Vec<&str> {
        self.paid.iter().filter(|(_, count)| **count > 1).map(|(reference, _)| reference.as_str()).collect()
    }
}

/// A validated `POST /payouts` body. Two requests under one idempotency key must be
/// equal, field by field, to count as the same payout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PayoutRequest {
    pub reference: String,
    pub amount: i64,
    pub currency: String,
    pub destination: String,
}

/// The body as sent, before validation; `amount` stays raw so that `1.5`, `"10"` and
/// `-3` are all reported as an invalid amount rather than as malformed JSON.
#[derive(Deserialize)]
struct RawPayoutRequest {
    reference: String,
    amount: serde_json::Value,
    currency: String,
    destination: String,
}

impl PayoutRequest {
    /// Parses and validates a request body.
    pub fn from_json(body: &[u8]) -> Result<PayoutRequest, SimError> {
        let raw: RawPayoutRequest =
            serde_json::from_slice(body).map_err(|e| SimError::MalformedJson { detail: e.to_string() })?;
        if raw.reference.trim().is_empty() {
            return Err(SimError::ReferenceEmpty);
        }
        let amount = match raw.amount.as_i64() {
            Some(amount) if amount > 0 => amount,
            _ => return Err(SimError::AmountNotPositive { amount: raw.amount.to_string() }),
        };
        if !is_currency_code(&raw.currency) {
            return Err(SimError::CurrencyInvalid { currency: raw.currency });
        }
        Ok(PayoutRequest { reference: raw.reference, amount, currency: raw.currency, destination: raw.destination })
    }
}

/// Three ASCII upper-case letters, like `EUR`.
pub(crate) fn is_currency_code(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(amount: &str, currency: &str) -> String {
        format!(r#"{{"reference":"w1","amount":{amount},"currency":"{currency}","destination":"NL00"}}"#)
    }

    #[test]
    fn a_valid_request_parses() {
        let request = PayoutRequest::from_json(body("100", "EUR").as_bytes()).expect("valid request");
        assert_eq!(request.amount, 100);
        assert_eq!(request.currency, "EUR");
    }

    #[test]
    fn amounts_that_are_not_positive_integers_are_refused() {
        for amount in ["0", "-1", "1.5", "\"10\"", "null", "1e2", "9223372036854775808"] {
            let result = PayoutRequest::from_json(body(amount, "EUR").as_bytes());
            assert!(matches!(result, Err(SimError::AmountNotPositive { .. })), "amount {amount}");
        }
    }

    #[test]
    fn currencies_that_are_not_three_upper_case_letters_are_refused() {
        for currency in ["eur", "EURO", "EU", "", "E1R", "ÉUR"] {
            let result = PayoutRequest::from_json(body("1", currency).as_bytes());
            assert!(matches!(result, Err(SimError::CurrencyInvalid { .. })), "currency {currency}");
        }
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for text in ["", "{", "[]", r#"{"reference":"w1","amount":1,"currency":"EUR"}"#] {
            let result = PayoutRequest::from_json(text.as_bytes());
            assert!(matches!(result, Err(SimError::MalformedJson { .. })), "body {text}");
        }
    }

    #[test]
    fn statuses_travel_in_lower_case() {
        assert_eq!(serde_json::to_string(&PayoutStatus::Rejected).expect("serializable"), r#""rejected""#);
    }
}

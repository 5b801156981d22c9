//! The payment provider client (`shared/spec/PROVIDER.md`): one call per method, each
//! bounded by a timeout, classifying every outcome as a payout, a permanent rejection
//! or a transient failure (408, 429, 5xx, connection errors, timeouts). Statement lines
//! and look-up answers are read one by one into the domain's terms (`lines`); what
//! cannot be read is kept with its defect, for reconciliation to flag.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::time::Duration;
use uuid::Uuid;

mod lines;

pub use lines::{LINE_BYTES_MAX, ProviderLine, TEXT_BYTES_MAX};

/// A payout as the provider reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payout {
    pub provider_ref: String,
    pub status: PayoutStatus,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayoutStatus {
    Settled,
    Rejected,
}

/// Why a provider call gave no payout.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying later (honour `retry_after` when given).
    #[error("transient provider failure: {detail}")]
    Transient { detail: String, retry_after: Option<Duration> },
    /// The provider refused the request for good.
    #[error("provider rejected the request ({status}): {detail}")]
    Permanent { status: u16, detail: String },
}

/// HTTP client of one provider.
#[derive(Clone, Debug)]
pub struct ProviderClient {
    http: reqwest::Client,
    base_url: String,
}

#[derive(Serialize)]
struct PayoutRequest<'a> {
    reference: Uuid,
    amount: i64,
    currency: &'a str,
    destination: &'a str,
}

/// The statement's envelope. Each entry stays raw text until it is read on its own,
/// so one bad entry (even a number beyond `f64`) spoils only itself.
#[derive(Deserialize)]
struct Statement {
    entries: Vec<Box<RawValue>>,
}

impl ProviderClient {
    pub fn new(base_url: &str, timeout: Duration) -> ProviderClient {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .expect("a client without TLS always builds");
        ProviderClient { http, base_url: base_url.trim_end_matches('/').to_owned() }
    }

    /// `POST /payouts` with `Idempotency-Key` = the withdrawal id.
    pub async fn pay(
        &self,
        withdrawal_id: Uuid,
        amount: i64,
        currency: &str,
        destination: &str,
    ) -> Result<Payout, ProviderError> {
        let body = PayoutRequest { reference: withdrawal_id, amount, currency, destination };
        let response = self
            .http
            .post(format!("{}/payouts", self.base_url))
            .header("Idempotency-Key", withdrawal_id.to_string())
            .json(&body)
            .send()
            .await
            .map_err(transient)?;
        let payout: Payout = decode(response).await?;
        Ok(Payout {
            provider_ref: provider_text(&payout.provider_ref),
            status: payout.status,
            reason: payout.reason.as_deref().map(provider_text),
        })
    }

    /// `GET /payouts/{provider_ref}`; `Ok(None)` when the provider has no such payout.
    /// An answer that is JSON but not a readable payout is a line with a defect.
    pub async fn payout(&self, provider_ref: &str) -> Result<Option<ProviderLine>, ProviderError> {
        let response =
            self.http.get(format!("{}/payouts/{provider_ref}", self.base_url)).send().await.map_err(transient)?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let raw: Box<RawValue> = decode(response).await?;
        Ok(Some(lines::read(&raw, lines::Shape::LookUp)))
    }

    /// `GET /statement?from&to`: every entry, read one by one (PROVIDER.md v1.1: no
    /// line, however malformed, may stop a run). A body that is not a JSON object with
    /// an `entries` array is a failed call.
    pub async fn statement(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Vec<ProviderLine>, ProviderError> {
        let response = self
            .http
            .get(format!(
                "{}/statement?from={}&to={}",
                self.base_url,
                // RFC 3339 with a `Z` suffix: no character that needs escaping in a query.
                from.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                to.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            ))
            .send()
            .await
            .map_err(transient)?;
        let statement: Statement = decode(response).await?;
        Ok(statement.entries.iter().map(|raw| lines::read(raw, lines::Shape::StatementLine)).collect())
    }
}

fn transient(e: reqwest::Error) -> ProviderError {
    ProviderError::Transient { detail: provider_text(&e.to_string()), retry_after: None }
}

/// Longest text taken from a provider's answer into an event or a table, in bytes.
pub const PROVIDER_TEXT_BYTES_MAX: usize = 1024;

/// Text from the provider as the ledger may record it: control characters (U+0000
/// among them, which Postgres refuses) replaced by U+FFFD, at most
/// [`PROVIDER_TEXT_BYTES_MAX`] bytes. Whatever a provider answers, recording it can
/// neither fail nor grow an event without bound.
pub fn provider_text(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len().min(PROVIDER_TEXT_BYTES_MAX));
    for c in raw.chars().map(|c| if c.is_control() { '\u{FFFD}' } else { c }) {
        if out.len() + c.len_utf8() > PROVIDER_TEXT_BYTES_MAX {
            break;
        }
        out.push(c);
    }
    out
}

async fn decode<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> Result<T, ProviderError> {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    if status.is_success() {
        return response.json::<T>().await.map_err(transient);
    }
    let detail = provider_text(&format!("HTTP {status}: {}", response.text().await.unwrap_or_default()));
    let code = status.as_u16();
    if code == 408 || code == 429 || status.is_server_error() {
        Err(ProviderError::Transient { detail, retry_after })
    } else {
        Err(ProviderError::Permanent { status: code, detail })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_text_is_always_storable_and_bounded() {
        assert_eq!(provider_text("bad\u{0}request\n"), "bad\u{FFFD}request\u{FFFD}");
        let long = "é".repeat(PROVIDER_TEXT_BYTES_MAX);
        let cut = provider_text(&long);
        assert!(cut.len() <= PROVIDER_TEXT_BYTES_MAX && cut.chars().all(|c| c == 'é'));
        let value = serde_json::Value::String(provider_text("x\u{0}\u{7f}\u{1b}y"));
        assert!(crate::hash::check_storable(&value).is_ok());
    }
}

//! The payment provider client (`shared/spec/PROVIDER.md`): one call per method, each
//! bounded by a timeout, classifying every outcome as a payout, a permanent rejection
//! or a transient failure (408, 429, 5xx, connection errors, timeouts).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

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

/// A payout looked up by its provider reference (the amount when the provider says).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutLookup {
    pub provider_ref: String,
    pub status: PayoutStatus,
    #[serde(default)]
    pub amount: Option<i64>,
}

/// One line of the provider's statement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementEntry {
    pub provider_ref: String,
    pub reference: String,
    pub amount: i64,
    pub currency: String,
    pub status: PayoutStatus,
    pub settled_at: DateTime<Utc>,
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

#[derive(Deserialize)]
struct Statement {
    entries: Vec<StatementEntry>,
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
        decode(response).await
    }

    /// `GET /payouts/{provider_ref}`; `Ok(None)` when the provider has no such payout.
    pub async fn payout(&self, provider_ref: &str) -> Result<Option<PayoutLookup>, ProviderError> {
        let response =
            self.http.get(format!("{}/payouts/{provider_ref}", self.base_url)).send().await.map_err(transient)?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        decode(response).await.map(Some)
    }

    /// `GET /statement?from&to`.
    pub async fn statement(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StatementEntry>, ProviderError> {
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
        Ok(statement.entries)
    }
}

fn transient(e: reqwest::Error) -> ProviderError {
    ProviderError::Transient { detail: e.to_string(), retry_after: None }
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
    let detail = format!("HTTP {status}: {}", response.text().await.unwrap_or_default());
    let code = status.as_u16();
    if code == 408 || code == 429 || status.is_server_error() {
        Err(ProviderError::Transient { detail, retry_after })
    } else {
        Err(ProviderError::Permanent { status: code, detail })
    }
}

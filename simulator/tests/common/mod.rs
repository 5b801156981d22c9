//! Shared harness for the simulator's HTTP tests: a real server on 127.0.0.1:0 and a
//! reqwest client, plus helpers for the calls every test makes.

#![allow(clippy::unwrap_used, dead_code)]

use chrono::{DateTime, SecondsFormat, Utc};
use ledger_provider_sim::{Faults, Payout, SimHandle, Simulator, Statement, Stats};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

pub struct Harness {
    pub handle: SimHandle,
    pub client: reqwest::Client,
}

/// A simulator with `faults` and seed 1, served on a free local port.
pub async fn start(faults: Faults) -> Harness {
    let handle = Simulator::new(faults, 1).start_local().await.unwrap();
    Harness { handle, client: reqwest::Client::new() }
}

/// A valid payout body for `reference`.
pub fn payout_body(reference: &str, amount: i64) -> Value {
    json!({ "reference": reference, "amount": amount, "currency": "EUR", "destination": "NL91ABNA0417164300" })
}

/// RFC 3339 in UTC with a `Z`, so it needs no percent-encoding in a query string.
pub fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl Harness {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.handle.url())
    }

    /// `POST /payouts` with the key as both Idempotency-Key and reference.
    pub async fn pay(&self, key: &str, amount: i64) -> Response {
        self.post_payout(Some(key), &payout_body(key, amount)).await
    }

    pub async fn post_payout(&self, key: Option<&str>, body: &Value) -> Response {
        let mut request = self.client.post(self.url("/payouts")).json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.unwrap()
    }

    /// `POST /payouts` that must answer `status`; returns the payout.
    pub async fn pay_expecting(&self, key: &str, amount: i64, status: StatusCode) -> Payout {
        let response = self.pay(key, amount).await;
        assert_eq!(response.status(), status);
        response.json().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn statement(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Statement {
        let response = self.get(&format!("/statement?from={}&to={}", rfc3339(from), rfc3339(to))).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// Stats read over HTTP, the way an out-of-process test would.
    pub async fn stats(&self) -> Stats {
        let response = self.get("/_sim/stats").await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    pub async fn put_faults(&self, faults: &Value) -> Response {
        self.client.put(self.url("/_sim/faults")).json(faults).send().await.unwrap()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client.post(self.url(path)).json(body).send().await.unwrap()
    }
}

/// The `error` code of a JSON error response.
pub async fn error_code(response: Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["error"].as_str().unwrap().to_owned()
}

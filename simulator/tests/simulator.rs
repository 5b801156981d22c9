//! The simulator over real HTTP: idempotency, every injected fault, input
//! validation, the statement and its overrides, and the call statistics.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use chrono::{Duration as TimeDelta, Utc};
use common::{Harness, error_code, payout_body, start};
use ledger_provider_sim::{Faults, Payout, PayoutStatus, StatementEntry};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_replay_returns_the_same_payout_and_pays_once() {
    let sim = start(Faults::default()).await;
    let first = sim.pay_expecting("w1", 1500, StatusCode::CREATED).await;
    assert!(first.provider_ref.starts_with("prv_") && first.provider_ref.len() == 36, "{}", first.provider_ref);
    assert_eq!((first.status, first.reason.as_deref(), first.amount), (PayoutStatus::Settled, None, 1500));
    let again = sim.pay_expecting("w1", 1500, StatusCode::OK).await;
    assert_eq!(again, first);
    let fetched: Payout = sim.get(&format!("/payouts/{}", first.provider_ref)).await.json().await.unwrap();
    assert_eq!(fetched, first);
    let stats = sim.stats().await;
    assert_eq!((stats.payouts, stats.payout_calls, stats.paid.get("w1").copied()), (1, 2, Some(1)));
}

#[tokio::test]
async fn the_same_key_with_another_body_is_a_conflict() {
    let sim = start(Faults::default()).await;
    sim.pay_expecting("w1", 1500, StatusCode::CREATED).await;
    let response = sim.post_payout(Some("w1"), &payout_body("w1", 1501)).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(response).await, "idempotency_conflict");
    assert_eq!(sim.stats().await.paid.get("w1").copied(), Some(1));
}

#[tokio::test]
async fn an_error_rate_of_one_answers_503_with_retry_after_and_pays_nothing() {
    let sim = start(Faults { error_rate: 1.0, retry_after_s: Some(3), ..Faults::default() }).await;
    let response = sim.pay("w1", 100).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers().get("retry-after").unwrap(), "3");
    assert_eq!(error_code(response).await, "simulated_unavailable");
    let stats = sim.stats().await;
    assert_eq!((stats.calls, stats.payouts), (1, 0));
    assert!(stats.paid.is_empty());
}

#[tokio::test]
async fn a_lost_response_is_paid_and_a_retry_returns_the_payout() {
    let sim = start(Faults { drop_response_rate: 1.0, ..Faults::default() }).await;
    let response = sim.pay("w1", 100).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(sim.stats().await.paid.get("w1").copied(), Some(1));
    let payout = sim.pay_expecting("w1", 100, StatusCode::OK).await;
    assert_eq!((payout.reference.as_str(), payout.status), ("w1", PayoutStatus::Settled));
    let stats = sim.stats().await;
    assert_eq!((stats.payouts, stats.paid.get("w1").copied()), (1, Some(1)));
}

#[tokio::test]
async fn a_reject_rate_of_one_records_rejections() {
    let sim = start(Faults { reject_rate: 1.0, ..Faults::default() }).await;
    let payout = sim.pay_expecting("w1", 100, StatusCode::CREATED).await;
    assert_eq!((payout.status, payout.reason.as_deref()), (PayoutStatus::Rejected, Some("simulated rejection")));
    let stats = sim.stats().await;
    assert_eq!((stats.payouts, stats.paid.get("w1").copied()), (1, Some(0)));
}

#[tokio::test]
async fn a_permanent_error_answers_422_and_records_nothing() {
    let sim = start(Faults { permanent_error_rate: 1.0, ..Faults::default() }).await;
    let response = sim.pay("w1", 100).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(response).await, "simulated_permanent_error");
    assert_eq!(sim.stats().await.payouts, 0);
}

#[tokio::test]
async fn a_timeout_hangs_then_answers_504_and_records_nothing() {
    let sim = start(Faults { timeout_rate: 1.0, hang_ms: 50, ..Faults::default() }).await;
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(20)).build().unwrap();
    let request = impatient.post(sim.url("/payouts")).header("Idempotency-Key", "w1").json(&payout_body("w1", 100));
    let error = request.send().await.expect_err("the simulator hangs longer than the client waits");
    assert!(error.is_timeout(), "{error}");
    let started = Instant::now();
    assert_eq!(sim.pay("w1", 100).await.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(sim.stats().await.payouts, 0);
}

#[tokio::test]
async fn latency_is_added_to_every_call() {
    let sim = start(Faults { latency_ms: 30, ..Faults::default() }).await;
    let started = Instant::now();
    sim.pay_expecting("w1", 100, StatusCode::CREATED).await;
    assert!(started.elapsed() >= Duration::from_millis(30));
}

#[tokio::test]
async fn down_answers_503_on_every_contract_route_but_not_on_admin_routes() {
    let sim = start(Faults::default()).await;
    let payout = sim.pay_expecting("w1", 100, StatusCode::CREATED).await;
    assert_eq!(sim.put_faults(&json!({ "down": true })).await.status(), StatusCode::OK);
    let now = Utc::now();
    let statement = format!("/statement?from={}&to={}", common::rfc3339(now), common::rfc3339(now));
    for path in [format!("/payouts/{}", payout.provider_ref), statement] {
        assert_eq!(sim.get(&path).await.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
    }
    assert_eq!(sim.pay("w1", 100).await.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(sim.get("/_sim/faults").await.status(), StatusCode::OK);
    assert_eq!(sim.put_faults(&json!({})).await.status(), StatusCode::OK);
    assert_eq!(sim.pay_expecting("w1", 100, StatusCode::OK).await, payout);
}

#[tokio::test]
async fn bad_input_answers_400_with_a_json_error() {
    let sim = start(Faults::default()).await;
    let cases = [
        (None, payout_body("w1", 100), "missing_idempotency_key"),
        (Some(" "), payout_body("w1", 100), "missing_idempotency_key"),
        (Some("w1"), json!({ "reference": "w1", "amount": 100 }), "malformed_json"),
        (
            Some("w1"),
            json!({ "reference": "", "amount": 1, "currency": "EUR", "destination": "x" }),
            "invalid_reference",
        ),
    ];
    for (key, body, code) in cases {
        let response = sim.post_payout(key, &body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error_code(response).await, code, "{body}");
    }
    for amount in [json!(0), json!(-5), json!(1.5), json!("10"), json!(null)] {
        let body = json!({ "reference": "w1", "amount": amount, "currency": "EUR", "destination": "x" });
        assert_eq!(error_code(sim.post_payout(Some("w1"), &body).await).await, "invalid_amount", "{body}");
    }
    for currency in ["eur", "EURO", "E1R"] {
        let body = json!({ "reference": "w1", "amount": 1, "currency": currency, "destination": "x" });
        assert_eq!(error_code(sim.post_payout(Some("w1"), &body).await).await, "invalid_currency", "{body}");
    }
    let raw = sim.client.post(sim.url("/payouts")).header("Idempotency-Key", "w1").body("{not json");
    assert_eq!(error_code(raw.send().await.unwrap()).await, "malformed_json");
    for query in ["", "?from=2026-01-01T00:00:00Z", "?from=yesterday&to=2026-01-01T00:00:00Z"] {
        let response = sim.get(&format!("/statement{query}")).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(error_code(response).await, "invalid_query");
    }
    let response = sim.put_faults(&json!({ "error_rate": 2.0 })).await;
    assert_eq!((response.status(), error_code(response).await.as_str()), (StatusCode::BAD_REQUEST, "invalid_faults"));
    assert_eq!(sim.stats().await.payouts, 0);
    assert_eq!(sim.get("/payouts/prv_unknown").await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_statement_holds_entries_settled_in_the_half_open_window() {
    let sim = start(Faults::default()).await;
    let payout = sim.pay_expecting("w1", 100, StatusCode::CREATED).await;
    let at = payout.settled_at;
    let micro = TimeDelta::microseconds(1);
    let entries = sim.statement(at, at + micro).await.entries;
    assert_eq!(entries, vec![StatementEntry::from(&payout)]);
    assert!(sim.statement(at - TimeDelta::seconds(1), at).await.entries.is_empty());
    assert!(sim.statement(at + micro, at + TimeDelta::hours(1)).await.entries.is_empty());
    let plus_offset = (at - TimeDelta::hours(1)).with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap());
    let unencoded = format!("/statement?from={}&to={}", plus_offset.to_rfc3339(), common::rfc3339(at + micro));
    assert_eq!(sim.get(&unencoded).await.json::<serde_json::Value>().await.unwrap()["entries"][0]["reference"], "w1");
}

#[tokio::test]
async fn overrides_and_extra_entries_show_in_the_statement() {
    let sim = start(Faults::default()).await;
    let a = sim.pay_expecting("wa", 100, StatusCode::CREATED).await;
    let b = sim.pay_expecting("wb", 200, StatusCode::CREATED).await;
    let c = sim.pay_expecting("wc", 300, StatusCode::CREATED).await;
    for (reference, change) in
        [("wa", json!({ "amount": 90 })), ("wb", json!({ "status": "rejected" })), ("wc", json!({ "remove": true }))]
    {
        let response = sim.post_json(&format!("/_sim/payouts/{reference}/override"), &change).await;
        assert_eq!(response.status(), StatusCode::OK, "{reference}");
    }
    let unknown = sim.post_json("/_sim/payouts/nope/override", &json!({ "amount": 1 })).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let extra = StatementEntry {
        provider_ref: "prv_extra".to_owned(),
        reference: "w-unknown".to_owned(),
        amount: 700,
        currency: "EUR".to_owned(),
        status: PayoutStatus::Settled,
        settled_at: c.settled_at,
    };
    let response = sim.post_json("/_sim/statement/extra", &serde_json::to_value(&extra).unwrap()).await;
    assert_eq!(response.status(), StatusCode::CREATED);

    let entries = sim.statement(a.settled_at, c.settled_at + TimeDelta::seconds(1)).await.entries;
    let summary: Vec<(&str, i64, PayoutStatus)> =
        entries.iter().map(|e| (e.reference.as_str(), e.amount, e.status)).collect();
    assert_eq!(
        summary,
        vec![
            ("wa", 90, PayoutStatus::Settled),
            ("wb", 200, PayoutStatus::Rejected),
            ("w-unknown", 700, PayoutStatus::Settled)
        ]
    );
    assert_eq!(sim.get(&format!("/payouts/{}", c.provider_ref)).await.status(), StatusCode::NOT_FOUND);
    let b_now: Payout = sim.get(&format!("/payouts/{}", b.provider_ref)).await.json().await.unwrap();
    assert_eq!(b_now.status, PayoutStatus::Rejected);
    assert_eq!(
        sim.pay_expecting("wc", 300, StatusCode::OK).await.provider_ref,
        c.provider_ref,
        "removed, not forgotten"
    );
    assert_eq!(sim.stats().await.paid.values().sum::<u64>(), 3, "overrides do not rewrite what was paid");
}

#[tokio::test]
async fn stats_count_contract_calls_on_arrival_and_ignore_admin_calls() {
    let sim = start(Faults::default()).await;
    let payout = sim.pay_expecting("w1", 100, StatusCode::CREATED).await;
    sim.pay_expecting("w2", 100, StatusCode::CREATED).await;
    sim.pay_expecting("w1", 100, StatusCode::OK).await;
    sim.get(&format!("/payouts/{}", payout.provider_ref)).await;
    sim.statement(payout.settled_at, payout.settled_at).await;
    sim.handle.simulator.set_faults(Faults { down: true, ..Faults::default() });
    sim.pay("w3", 100).await;
    sim.get("/_sim/faults").await;
    let stats = sim.stats().await;
    assert_eq!((stats.calls, stats.payout_calls, stats.payouts), (6, 4, 2));
    assert_eq!(stats, sim.handle.simulator.stats());
    assert_eq!(serde_json::to_value(&stats).unwrap()["paid"], json!({ "w1": 1, "w2": 1 }));
}

#[tokio::test]
async fn concurrent_retries_of_one_key_pay_exactly_once() {
    let faults = Faults { error_rate: 0.3, drop_response_rate: 0.5, ..Faults::default() };
    let sim = start(faults).await;
    let url = sim.url("/payouts");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (client, url) = (sim.client.clone(), url.clone());
        tasks.spawn(async move {
            let request = client.post(url).header("Idempotency-Key", "w1").json(&payout_body("w1", 100));
            request.send().await.unwrap().status()
        });
    }
    let statuses: Vec<StatusCode> = tasks.join_all().await;
    assert!(statuses.iter().all(|s| [200, 201, 502, 503].contains(&s.as_u16())), "{statuses:?}");
    let mut answered = false;
    for _ in 0..50 {
        let status = sim.pay("w1", 100).await.status();
        if status.is_success() {
            answered = true;
            break;
        }
    }
    assert!(answered, "no retry got through in 50 attempts at a 30% error rate");
    let stats = sim.stats().await;
    assert_eq!((stats.payouts, stats.paid.get("w1").copied()), (1, Some(1)));
    assert!(stats.double_paid().is_empty());
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let sim = start(Faults::default()).await;
    let url = sim.url("/_sim/stats");
    let Harness { handle, client } = sim;
    handle.shutdown().await.unwrap();
    assert!(client.get(url).send().await.is_err());
}

#[tokio::test]
async fn raw_statement_lines_are_listed_as_written_until_cleared() {
    let sim = start(Faults::default()).await;
    let paid = sim.pay_expecting("w1", 100, StatusCode::CREATED).await;
    let window = format!(
        "/statement?from={}&to={}",
        common::rfc3339(paid.settled_at),
        common::rfc3339(paid.settled_at + TimeDelta::seconds(1))
    );
    for text in [r#"{"reference":"w1","amount":1.5}"#, "42", r#"{"amount":1e400}"#] {
        let response = sim.client.post(sim.url("/_sim/statement/raw")).body(text).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let body = sim.get(&window).await.text().await.unwrap();
    assert!(body.starts_with(r#"{"entries":[{"provider_ref":""#), "{body}");
    assert!(body.ends_with(r#",{"reference":"w1","amount":1.5},42,{"amount":1e400}]}"#), "{body}");

    // Text that is not JSON spoils the whole statement, as a provider's garbage would.
    sim.handle.simulator.add_raw_statement_line("{\"reference\": ");
    let garbage = sim.get(&window).await.text().await.unwrap();
    assert!(serde_json::from_str::<serde_json::Value>(&garbage).is_err(), "{garbage}");

    let cleared = sim.client.delete(sim.url("/_sim/statement/raw")).send().await.unwrap();
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    let entries = sim.statement(paid.settled_at, paid.settled_at + TimeDelta::seconds(1)).await.entries;
    assert_eq!(entries.len(), 1);
}

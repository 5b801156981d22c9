//! Clock (issue 31): a process whose wall clock is wrong decides with the database's
//! time. Two more `ledger serve` processes of the same deployment run under libfaketime
//! (`LD_PRELOAD`, installed by `scripts/test`), one 2 hours ahead and one 10 minutes
//! behind; the honest one is the test's own. Before the ledger's clock, the fast one
//! expired every pending hold at once and stamped every later event 2 hours ahead.

use ledger_tests::procs::{LedgerProcess, base_env, free_port};
use ledger_tests::{ADMIN_TOKEN, TestApp, eventually, test_config};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

async fn skewed(config: &ledger_infrastructure::Config, offset: &str) -> LedgerProcess {
    assert!(std::path::Path::new(FAKETIME).exists(), "{FAKETIME} is missing: scripts/test installs faketime");
    let mut env = base_env(config);
    env.push(("LD_PRELOAD", FAKETIME.to_owned()));
    env.push(("FAKETIME", offset.to_owned()));
    // Monotonic time stays true (libfaketime's default would shift it too).
    env.push(("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()));
    LedgerProcess::start(&env, free_port()).await
}

async fn post(base: &str, path: &str, body: Value) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .header("idempotency-key", Uuid::new_v4().to_string())
        .json(&body)
        .send()
        .await
        .expect("sent");
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processes_whose_clocks_are_wrong_decide_with_the_databases_time() {
    let config = test_config();
    let app = TestApp::spawn_with(config.clone()).await;
    let ahead = skewed(&config, "+2h").await;
    let behind = skewed(&config, "-10m").await;
    let started = chrono::Utc::now();
    let (a, b) = (app.open_account("EUR", 0).await, app.open_account("EUR", 0).await);
    app.deposit(a, 1_000, "EUR").await;
    let hold = |base: String, seconds: i64| async move {
        let expires = (chrono::Utc::now() + chrono::Duration::seconds(seconds)).to_rfc3339();
        let body = json!({ "account_id": a, "to": b, "amount": 100, "currency": "EUR", "expires_at": expires });
        let (status, hold) = post(&base, "/v1/holds", body).await;
        assert_eq!(status, StatusCode::CREATED, "{hold}");
        hold["id"].as_str().expect("an id").to_owned()
    };
    // Two holds due in 40 s; the fast process captures one of them.
    let (h1, h2) = (hold(app.base.clone(), 40).await, hold(app.base.clone(), 40).await);
    let (status, captured) = post(&ahead.base, &format!("/v1/holds/{h1}/capture"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "a hold due in 40 s is capturable through a fast clock too: {captured}");
    // The fast process's expiry worker runs every second: several passes, no expiry.
    // Deliberate: a window in which nothing may happen (no condition to poll for).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let status_of = |id: String| {
        let app = app.clone_handle();
        async move { app.get(&format!("/v1/holds/{id}?consistency=strong")).await.body["status"].clone() }
    };
    assert_eq!(status_of(h2.clone()).await, json!("pending"), "a fast clock expires nothing early");
    // A hold due in 2 s, placed through the slow process (its own clock says it is due
    // in 10 minutes and 2 s), expires on time.
    let h3 = hold(behind.base.clone(), 2).await;
    eventually("the hold due in 2 s expires", 20, || async { status_of(h3.clone()).await == json!("expired") }).await;
    // Every event is stamped with the database's time: none 2 hours ahead, none behind.
    let log = app.get("/v1/events?after=0&limit=1000").await.body["events"].as_array().cloned().expect("the log");
    let latest = chrono::Utc::now() + chrono::Duration::seconds(5);
    for e in &log {
        let at = chrono::DateTime::parse_from_rfc3339(e["recorded_at"].as_str().expect("a time")).expect("rfc 3339");
        assert!(at >= started - chrono::Duration::seconds(5) && at <= latest, "{}: recorded at {at}", e["type"]);
    }
    let expired = log.iter().find(|e| e["type"] == "HoldExpired").expect("the expiry is in the log");
    let hold_view = app.get(&format!("/v1/holds/{h3}?consistency=strong")).await.body;
    assert!(
        expired["recorded_at"].as_str() >= hold_view["expires_at"].as_str(),
        "recorded at or after its expiry: {expired} {hold_view}"
    );
    drop((ahead, behind));
}

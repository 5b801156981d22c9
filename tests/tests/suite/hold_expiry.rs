//! Hold expiry across processes (API.md v1.1 "Holds"): recorded exactly once however
//! many worker processes run it, and at start-up for holds that expired while the
//! service was down (a `kill -9` across the `expires_at` instant). Real `ledger`
//! processes on one database and NATS prefix.

use ledger_tests::procs::{LedgerProcess, base_env, free_port};
use ledger_tests::{ADMIN_TOKEN, eventually, test_config};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

async fn post(client: &reqwest::Client, base: &str, path: &str, body: Value) -> Value {
    let r = client
        .post(format!("{base}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .header("idempotency-key", Uuid::new_v4().to_string())
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.expect("json")
}

/// An account funded with `amount`, and a second one to hold funds for.
async fn accounts(client: &reqwest::Client, base: &str, amount: i64) -> (Uuid, Uuid) {
    let id = |v: Value| v["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()).expect("an id");
    let a = id(post(client, base, "/v1/accounts", json!({ "currency": "EUR" })).await);
    let b = id(post(client, base, "/v1/accounts", json!({ "currency": "EUR" })).await);
    post(client, base, "/v1/deposits", json!({ "account_id": a, "amount": amount, "currency": "EUR" })).await;
    (a, b)
}

/// Each hold's number of `HoldExpired` events.
async fn expiries(pool: &PgPool, holds: &[Uuid]) -> Vec<i64> {
    let mut out = Vec::new();
    for h in holds {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from stream_entries s join events e on e.position = s.position
             where s.stream_id = $1 and e.type = 'HoldExpired'",
        )
        .bind(h)
        .fetch_one(pool)
        .await
        .expect("count");
        out.push(n);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_expire_each_hold_exactly_once() {
    let config = test_config();
    ledger_infrastructure::connect_and_migrate(&config).await.expect("database");
    let env = base_env(&config);
    let api = LedgerProcess::start_mode("api", &env, Some(free_port())).await;
    let _w1 = LedgerProcess::start_mode("worker", &env, None).await;
    let _w2 = LedgerProcess::start_mode("worker", &env, None).await;
    let pool = PgPool::connect(&config.database_url).await.expect("pool");
    let client = reqwest::Client::new();
    let (a, b) = accounts(&client, &api.base, 1_000).await;
    let expires_at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let mut holds = Vec::new();
    for _ in 0..20 {
        let h = post(
            &client,
            &api.base,
            "/v1/holds",
            json!({ "account_id": a, "to": b, "amount": 10, "currency": "EUR", "expires_at": expires_at }),
        )
        .await;
        holds.push(Uuid::parse_str(h["id"].as_str().expect("an id")).expect("a uuid"));
    }
    eventually("every hold expired", 20, || async { expiries(&pool, &holds).await.iter().all(|n| *n >= 1) }).await;
    // A deliberate pause, not a poll: each worker runs a round every second, so two
    // seconds are two more rounds of each, any of which would record a second expiry.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(expiries(&pool, &holds).await, vec![1; 20], "exactly once each");
    let account: Value = client
        .get(format!("{}/v1/accounts/{a}?consistency=strong", api.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!((account["available"].clone(), account["pending_holds"].clone()), (json!(1_000), json!(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_that_expired_while_the_service_was_down_expire_at_start_up() {
    let config = test_config();
    ledger_infrastructure::connect_and_migrate(&config).await.expect("database");
    let env = base_env(&config);
    let mut ledger = LedgerProcess::start(&env, free_port()).await;
    let pool = PgPool::connect(&config.database_url).await.expect("pool");
    let client = reqwest::Client::new();
    let (a, b) = accounts(&client, &ledger.base, 500).await;
    let expires = chrono::Utc::now() + chrono::Duration::seconds(3);
    let mut holds = Vec::new();
    for _ in 0..5 {
        let h = post(
            &client,
            &ledger.base,
            "/v1/holds",
            json!({ "account_id": a, "to": b, "amount": 50, "currency": "EUR", "expires_at": expires.to_rfc3339() }),
        )
        .await;
        holds.push(Uuid::parse_str(h["id"].as_str().expect("an id")).expect("a uuid"));
    }
    // Down across the expiry instant, without a chance to clean up: the pause is the
    // fault's duration (until a second after `expires_at`).
    ledger.kill9().await;
    tokio::time::sleep((expires - chrono::Utc::now()).to_std().unwrap_or_default() + std::time::Duration::from_secs(1))
        .await;
    assert_eq!(expiries(&pool, &holds).await, vec![0; 5], "nothing ran while it was down");
    ledger.restart().await;
    eventually("the holds expire at start-up", 15, || async { expiries(&pool, &holds).await.iter().all(|n| *n >= 1) })
        .await;
    // Deliberate: one more expiry round, which would record a second expiry.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(expiries(&pool, &holds).await, vec![1; 5], "exactly once each");
}

//! Operability: metrics, failing fast while Postgres is down (and recovering), and a
//! graceful SIGTERM under load that loses no acknowledged command.

use futures::future::join_all;
use ledger_infrastructure::breaker::BreakerState;
use ledger_tests::procs::{LedgerProcess, PgCluster, base_env, free_port};
use ledger_tests::{ADMIN_TOKEN, TestApp, eventually, test_config};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashSet;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_requests_commands_lags_and_dependencies() {
    let app = TestApp::spawn().await;
    let a = app.open_account("EUR", 0).await;
    let p = app.deposit(a, 10, "EUR").await.body["position"].as_i64().expect("position");
    app.get(&format!("/v1/accounts/{a}?min_position={p}")).await;
    app.get(&format!("/v1/accounts/{a}")).await;
    let body = json!({ "account_id": a, "amount": 5, "currency": "EUR" });
    app.post("/v1/deposits", "replayed-key", &body).await;
    app.post("/v1/deposits", "replayed-key", &body).await;
    let text = app.client.get(format!("{}/metrics", app.base)).send().await.expect("sent").text().await.expect("text");
    for series in [
        "ledger_http_requests_total{",
        "ledger_http_request_duration_seconds_bucket{",
        "route=\"/v1/accounts/{id}\"",
        "ledger_command_outcomes_total{code=\"ok\"}",
        "ledger_append_batch_size_bucket",
        "ledger_idempotency_replays_total",
        "ledger_relay_lag_events",
        "ledger_projection_lag_events{projection=\"accounts\"}",
        "ledger_projection_lag_seconds{projection=\"transfers\"}",
        "ledger_cache_hits",
        "ledger_cache_misses",
        "ledger_circuit_breaker_state{name=\"payment-provider\"}",
        "ledger_circuit_breaker_state{name=\"postgres\"}",
        "ledger_dead_letters_open",
        "ledger_db_pool_connections",
    ] {
        assert!(text.contains(series), "/metrics lacks {series}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_postgres_down_commands_fail_fast_and_cached_reads_answer_stale() {
    let pg = PgCluster::start();
    let mut config = test_config();
    config.database_url = pg.url("ledger");
    config.db_acquire_timeout = std::time::Duration::from_millis(300);
    let app = TestApp::spawn_with(config).await;
    let a = app.open_account("EUR", 0).await;
    let b = app.open_account("EUR", 0).await;
    let p = app.deposit(a, 100, "EUR").await.body["position"].as_i64().expect("position");
    let warm = app.get(&format!("/v1/accounts/{a}?min_position={p}")).await;
    assert_eq!(warm.status, StatusCode::OK);
    app.get(&format!("/v1/accounts/{a}")).await;

    pg.crash();
    let ready = app.client.get(format!("{}/health/ready", app.base)).send().await.expect("sent");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE, "not ready without Postgres");
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = app.transfer(a, b, 1, "EUR").await;
        assert_eq!((r.status, r.code()), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"), "{r:?}");
        assert!(r.header("retry-after").is_some());
        assert!(!r.body["detail"].as_str().unwrap_or("").contains("sqlx"), "no internal detail in 5xx bodies");
        statuses.push(r.status);
    }
    assert_eq!(
        app.state.db_breaker.state(),
        BreakerState::Open,
        "the breaker opened: later requests fail without waiting"
    );
    let stale = app.get(&format!("/v1/accounts/{a}")).await;
    assert_eq!(stale.status, StatusCode::OK, "a cached read still answers: {stale:?}");
    assert_eq!(stale.header("x-ledger-stale"), Some("true"));
    assert_eq!(stale.body["balance"], json!(100));
    // Whether its owner's key still exists cannot be asked: the owner is withheld.
    assert_eq!((&stale.body["owner"], stale.header("x-ledger-personal-withheld")), (&Value::Null, Some("true")));
    let strong = app.get(&format!("/v1/accounts/{a}?consistency=strong")).await;
    assert_eq!(strong.status, StatusCode::SERVICE_UNAVAILABLE);

    pg.resume();
    eventually("commands succeed again", 30, || async {
        app.transfer(a, b, 1, "EUR").await.status == StatusCode::CREATED
    })
    .await;
    assert_eq!(app.state.db_breaker.state(), BreakerState::Closed);
    let view = app.account(a).await;
    let moved = 100 - view["balance"].as_i64().expect("balance");
    let transfers: i64 = sqlx::query_scalar("select count(*) from events where type = 'TransferPosted'")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(moved, transfers, "only acknowledged transfers moved money");
    app.fold_log().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_keeps_every_acknowledged_command() {
    let config = test_config();
    ledger_infrastructure::connect_and_migrate(&config).await.expect("database");
    let port = free_port();
    let env = base_env(&config);
    let mut process = LedgerProcess::start(&env, port).await;
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let (client, url) = (client.clone(), format!("{}{path}", process.base));
        async move {
            let r = client
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .header("idempotency-key", Uuid::new_v4().to_string())
                .json(&body)
                .send()
                .await
                .ok()?;
            let status = r.status();
            Some((status, r.json::<Value>().await.unwrap_or(Value::Null)))
        }
    };
    let (_, a) = post("/v1/accounts", json!({ "currency": "EUR" })).await.expect("open");
    let (_, b) = post("/v1/accounts", json!({ "currency": "EUR" })).await.expect("open");
    post("/v1/deposits", json!({ "account_id": a["id"], "amount": 1_000_000, "currency": "EUR" }))
        .await
        .expect("deposit");
    let load = (0..8).map(|_| {
        let (a, b) = (a["id"].clone(), b["id"].clone());
        let post = &post;
        async move {
            let mut acknowledged = Vec::new();
            for _ in 0..200 {
                match post("/v1/transfers", json!({ "from": a, "to": b, "amount": 1, "currency": "EUR" })).await {
                    Some((status, body)) if status.is_success() => {
                        acknowledged.push(body["id"].as_str().expect("id").to_owned())
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            acknowledged
        }
    });
    let signal = async {
        eventually("load is running", 30, || async {
            sqlx::query_scalar::<_, i64>("select count(*) from events where type = 'TransferPosted'")
                .fetch_one(&sqlx::PgPool::connect(&config.database_url).await.expect("pool"))
                .await
                .is_ok_and(|n| n > 50)
        })
        .await;
        process.signal("TERM");
    };
    let (acknowledged, ()) = tokio::join!(join_all(load), signal);
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), process.child.wait()).await;
    let status = status.expect("exited within the deadline").expect("exit status");
    assert!(status.success(), "graceful exit: {status:?}");
    let acknowledged: HashSet<String> = acknowledged.into_iter().flatten().collect();
    assert!(!acknowledged.is_empty());
    let pool = sqlx::PgPool::connect(&config.database_url).await.expect("pool");
    let recorded: HashSet<String> =
        sqlx::query_scalar::<_, String>("select data ->> 'transfer_id' from events where type = 'TransferPosted'")
            .fetch_all(&pool)
            .await
            .expect("transfers")
            .into_iter()
            .collect();
    assert!(acknowledged.is_subset(&recorded), "every 2xx is in the log");
    let store = ledger_infrastructure::EventStore::new(pool);
    let mut ledger = ledger_domain::Ledger::new();
    for e in store.read_all(0, 100_000).await.expect("log") {
        ledger.apply(&e.event().expect("decodes"));
    }
    assert!(ledger.balance_sums().values().all(|s| *s == 0), "nothing half-applied");
}

#[tokio::test]
async fn a_worker_serves_its_metrics() {
    let mut config = test_config();
    config.metrics_addr = Some("127.0.0.1:0".to_owned());
    let worker = TestApp::spawn_mode(config, ledger_api::run::serve::Mode::Worker).await;
    let text =
        worker.client.get(format!("{}/metrics", worker.base)).send().await.expect("sent").text().await.expect("text");
    assert!(text.contains("ledger_projection_lag_events"), "{text}");
    assert!(text.contains("ledger_circuit_breaker_state{name=\"nats-relay\"}"), "{text}");
    let v1 = worker.client.get(format!("{}/v1/events", worker.base)).send().await.expect("sent");
    assert_eq!(v1.status(), StatusCode::NOT_FOUND, "a worker serves no API");
}

//! `DATABASE_READ_URL`: eventual reads and queries from a real streaming replica
//! (`pg_basebackup -R` of a private primary), strong reads and commands from the
//! primary only, `min_position` never answered from a replica that has not replayed
//! that far, and eventual reads that outlive the primary.

use ledger_infrastructure::Config;
use ledger_infrastructure::breaker::BreakerState;
use ledger_projections::Projection;
use ledger_tests::procs::PgCluster;
use ledger_tests::{TestApp, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eventual_reads_come_from_the_replica_and_outlive_the_primary() {
    let primary = PgCluster::start();
    let replica = PgCluster::replica_of(&primary);
    let name = format!("ledger_replica_{}", Uuid::new_v4().simple());
    let mut config = Config::for_tests(&primary.url(&name), &name);
    config.database_read_url = Some(replica.url(&name));
    config.db_acquire_timeout = Duration::from_millis(500);
    config.db_breaker_cooldown = Duration::from_secs(60);
    let mut app = TestApp::spawn_with(config).await;
    let owner = format!("owner-{}", Uuid::new_v4().simple());
    let opened =
        app.post("/v1/accounts", &Uuid::new_v4().to_string(), &json!({ "currency": "EUR", "owner": owner })).await;
    assert_eq!(opened.status, StatusCode::CREATED, "{opened:?}");
    let a = opened.id();
    let first = app.deposit(a, 100, "EUR").await.body["position"].as_i64().expect("position");
    let statement = |query: String| {
        let app = app.clone_handle();
        async move { app.get(&format!("/v1/accounts/{a}/transactions{query}")).await }
    };
    eventually("the replica answers and has replayed the first deposit", 30, || async {
        let replica = app.state.replica.as_ref().expect("a replica is configured");
        replica.healthy() && replica.positions.current(Projection::Accounts) >= first
    })
    .await;

    // Replay paused: the replica stands still at the first deposit.
    let replica_pool = PgPool::connect(&replica.url(&name)).await.expect("replica");
    sqlx::query("select pg_wal_replay_pause()").execute(&replica_pool).await.expect("pause replay");
    let second = app.deposit(a, 50, "EUR").await.body["position"].as_i64().expect("position");
    eventually("the primary's projection applies the second deposit", 30, || async {
        app.checkpoint("accounts").await >= second
    })
    .await;
    let eventual = statement(String::new()).await;
    assert_eq!(eventual.status, StatusCode::OK);
    assert_eq!(eventual.body["entries"].as_array().map(Vec::len), Some(1), "eventual reads come from the replica");
    let reflected: i64 = eventual.header("x-ledger-position").and_then(|p| p.parse().ok()).expect("a position");
    assert!(reflected < second, "the replica's answer says how far it has replayed: {reflected}");
    let by_owner = app.get(&format!("/v1/accounts?owner={owner}")).await;
    assert_eq!(by_owner.body["accounts"][0]["balance"], json!(100), "queries come from the replica");
    // What the replica has not replayed is read from the primary, never older.
    let fresh = statement(format!("?min_position={second}")).await;
    assert_eq!(fresh.status, StatusCode::OK, "{fresh:?}");
    assert_eq!(fresh.body["entries"].as_array().map(Vec::len), Some(2), "min_position is never answered stale");
    let fresh = app.get(&format!("/v1/accounts/{a}?min_position={second}")).await;
    assert_eq!(fresh.body["balance"], json!(150), "{fresh:?}");
    assert_eq!(app.account(a).await["balance"], json!(150), "strong reads come from the primary");
    let owner_fresh = app.get(&format!("/v1/accounts?owner={owner}&min_position={second}")).await;
    assert_eq!(owner_fresh.body["accounts"][0]["balance"], json!(150));
    sqlx::query("select pg_wal_replay_resume()").execute(&replica_pool).await.expect("resume replay");
    eventually("the replica catches up", 30, || async {
        statement(String::new()).await.body["entries"].as_array().is_some_and(|e| e.len() == 2)
    })
    .await;

    // The primary stops: commands and strong reads answer 503, eventual reads go on
    // from the replica, marked stale once the breaker has opened.
    primary.crash();
    let refused = app.deposit(a, 1, "EUR").await;
    assert_eq!((refused.status, refused.code()), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"), "{refused:?}");
    eventually("the Postgres breaker opens", 30, || async {
        let r = app.deposit(a, 1, "EUR").await;
        r.status == StatusCode::SERVICE_UNAVAILABLE && app.state.db_breaker.state() == BreakerState::Open
    })
    .await;
    let strong = app.get(&format!("/v1/accounts/{a}?consistency=strong")).await;
    assert_eq!((strong.status, strong.code()), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"), "{strong:?}");
    let stale = statement(String::new()).await;
    assert_eq!(stale.status, StatusCode::OK, "{stale:?}");
    assert_eq!(stale.body["entries"].as_array().map(Vec::len), Some(2));
    assert_eq!(stale.header("x-ledger-stale"), Some("true"));
    let stale = app.get(&format!("/v1/accounts?owner={owner}")).await;
    assert_eq!((stale.status, stale.body["accounts"][0]["balance"].clone()), (StatusCode::OK, json!(150)), "{stale:?}");
    assert_eq!(stale.header("x-ledger-stale"), Some("true"));
    assert_eq!(
        stale.body["accounts"][0]["owner"],
        Value::Null,
        "found through the replica's index, its owner withheld"
    );
    assert_eq!(stale.header("x-ledger-personal-withheld"), Some("true"));
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body["dependencies"]["postgres_replica"], json!("up"), "{:?}", ready.body);
    replica_pool.close().await;
    app.stop().await;
    drop(replica);
}

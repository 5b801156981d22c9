//! The Postgres breaker and the pool's session limits against the real service: a
//! probe request dropped before it answers (the client hung up, or the request
//! time-out fired) releases the probe, so a later request closes the breaker; every
//! pool connection runs under `statement_timeout`, `lock_timeout` and
//! `idle_in_transaction_session_timeout`, and migrations do not.

use ledger_infrastructure::Config;
use ledger_infrastructure::breaker::BreakerState;
use ledger_tests::{ADMIN_TOKEN, TestApp, eventually, test_config};
use reqwest::StatusCode;
use sqlx::Connection;
use std::time::Duration;
use uuid::Uuid;

/// Far beyond the log's head: a read asking for it waits the whole `consistency_wait`
/// in the handler, past the guard, without touching Postgres.
const UNREACHED_POSITION: i64 = 1_000_000_000;

/// A config whose `min_position` reads wait a minute (longer than any test here).
fn blocking_reads_config() -> Config {
    let mut config = test_config();
    config.consistency_wait = Duration::from_secs(60);
    config
}

/// Opens the db breaker (as dependency failures would) and waits out its cool-down;
/// leaves it half-open with the probe slot free.
async fn half_open_db_breaker(app: &TestApp) {
    let breaker = &app.state.db_breaker;
    for _ in 0..100 {
        if breaker.state() != BreakerState::Closed {
            break;
        }
        breaker.acquire().expect("closed").failure();
    }
    assert_eq!(breaker.state(), BreakerState::Open, "failures past the threshold open it");
    // Taking a permit and dropping it at once releases it with no verdict, so polling
    // like this leaves the breaker half-open with no probe out.
    eventually("the db breaker's cool-down passed", 15, || async { breaker.acquire().is_ok() }).await;
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    assert!(!breaker.probe_in_flight());
}

/// A request that waits in the handler (holding the guard's permit) for a minute.
fn blocking_read(app: &TestApp, account: Uuid) -> reqwest::RequestBuilder {
    app.client
        .get(format!("{}/v1/accounts/{account}?min_position={UNREACHED_POSITION}", app.base))
        .bearer_auth(ADMIN_TOKEN)
}

/// After the probe was released: the next request probes, succeeds and closes the breaker.
async fn assert_next_request_closes_the_breaker(app: &TestApp, account: Uuid) {
    let read = app.get(&format!("/v1/accounts/{account}?consistency=strong")).await;
    assert_eq!(read.status, StatusCode::OK, "the next request is let through as the probe: {read:?}");
    assert_eq!(app.state.db_breaker.state(), BreakerState::Closed, "its success closed the breaker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_probe_whose_client_hangs_up_does_not_leave_the_db_breaker_half_open() {
    let app = TestApp::spawn_with(blocking_reads_config()).await;
    let account = app.open_account("EUR", 0).await;
    half_open_db_breaker(&app).await;

    let probe = blocking_read(&app, account).send();
    tokio::select! {
        r = probe => panic!("the probe should still be waiting in the handler, got {r:?}"),
        () = eventually("the request took the probe", 10, || async { app.state.db_breaker.probe_in_flight() }) => {}
    }
    // Leaving the select dropped the request future: the client closed its connection
    // while the server was still handling the request.
    eventually("the server dropped the abandoned request and its permit", 10, || async {
        !app.state.db_breaker.probe_in_flight()
    })
    .await;
    assert_eq!(app.state.db_breaker.state(), BreakerState::HalfOpen, "no verdict from a dropped request");
    assert_next_request_closes_the_breaker(&app, account).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_probe_cut_by_the_request_timeout_does_not_leave_the_db_breaker_half_open() {
    let mut config = blocking_reads_config();
    // The fault: the server gives every request one second.
    config.request_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_with(config).await;
    let account = app.open_account("EUR", 0).await;
    half_open_db_breaker(&app).await;

    let timed_out = blocking_read(&app, account).send().await.expect("answered");
    assert_eq!(timed_out.status(), StatusCode::SERVICE_UNAVAILABLE, "the time-out answers for the handler");
    assert!(!app.state.db_breaker.probe_in_flight(), "the timed-out request released the probe");
    assert_eq!(app.state.db_breaker.state(), BreakerState::HalfOpen, "no verdict from a dropped request");
    assert_next_request_closes_the_breaker(&app, account).await;
}

async fn show(conn: &mut sqlx::PgConnection, setting: &str) -> String {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("show {setting}"))).fetch_one(conn).await.expect("show")
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_connections_carry_the_statement_lock_and_idle_transaction_limits() {
    let mut config = test_config();
    config.db_statement_timeout = Duration::from_millis(1500);
    config.db_lock_timeout = Duration::from_millis(700);
    config.db_idle_in_transaction_timeout = Duration::from_secs(45);
    let app = TestApp::spawn_with(config).await;

    // Several connections held at once, so each is a different session.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(app.pool.acquire().await.expect("a pool connection"));
    }
    for conn in &mut held {
        assert_eq!(show(conn, "statement_timeout").await, "1500ms");
        assert_eq!(show(conn, "lock_timeout").await, "700ms");
        assert_eq!(show(conn, "idle_in_transaction_session_timeout").await, "45s");
    }
    drop(held);

    // Postgres enforces them: a long statement is cancelled (pg_sleep is the fault's
    // duration; the timeout ends it well before) ...
    let slow = sqlx::query("select pg_sleep(30)").execute(&app.pool).await.expect_err("cancelled");
    assert_eq!(sqlstate(&slow).as_deref(), Some("57014"), "query_canceled: {slow}");
    // ... and so is a wait for the head-row lock that every append takes.
    let mut holder = app.pool.begin().await.expect("tx");
    sqlx::query("select position from log_head for update").fetch_one(&mut *holder).await.expect("lock taken");
    let waited =
        sqlx::query("select position from log_head for update").fetch_one(&app.pool).await.expect_err("lock wait");
    assert_eq!(sqlstate(&waited).as_deref(), Some("55P03"), "lock_not_available: {waited}");
    holder.rollback().await.expect("rollback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_not_bound_by_the_pools_statement_timeout() {
    let mut config = test_config();
    // Far too short for any migration's DDL, were migrations run on the pool.
    config.db_statement_timeout = Duration::from_millis(1);
    ledger_infrastructure::connect_and_migrate(&config).await.expect("migrated on a connection of its own");
    let mut conn = sqlx::PgConnection::connect(&config.database_url).await.expect("connect");
    let applied: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations where success")
        .fetch_one(&mut conn)
        .await
        .expect("migrations table");
    assert_eq!(applied, ledger_infrastructure::MIGRATOR.iter().count() as i64);
    conn.close().await.expect("close");
}

#[tokio::test]
async fn a_probe_refused_at_the_edge_says_nothing_about_postgres() {
    let app = TestApp::spawn().await;
    let account = app.open_account("EUR", 0).await;
    half_open_db_breaker(&app).await;
    // Malformed: answered before any SQL, so no verdict; the breaker stays half-open.
    let malformed = app.get(&format!("/v1/accounts/{account}?consistency=%00")).await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(app.state.db_breaker.state(), BreakerState::HalfOpen, "a 400 neither closes nor reopens it");
    assert!(!app.state.db_breaker.probe_in_flight());
    assert_next_request_closes_the_breaker(&app, account).await;
}

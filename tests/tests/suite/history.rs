//! Event history: temporal queries against a fold of the log, snapshots, replay,
//! verification, and rebuilding a projection under load without downtime.

use futures::future::join_all;
use ledger_domain::Ledger;
use ledger_tests::{TestApp, eventually, test_config};
use reqwest::StatusCode;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use uuid::Uuid;

/// The ledger folded up to and including `position`.
async fn fold_to(app: &TestApp, position: i64) -> Ledger {
    let mut ledger = Ledger::new();
    for e in ledger_infrastructure::EventStore::read_range(&app.pool, 0, position).await.expect("log") {
        ledger.apply(&e.event().expect("decodes"));
    }
    ledger
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn temporal_queries_match_a_fold_of_the_log() {
    let mut config = test_config();
    config.snapshot_every = 3;
    let app = TestApp::spawn_with(config).await;
    let a = app.open_account("EUR", 0).await;
    let b = app.open_account("EUR", 0).await;
    for i in 1..=12 {
        app.deposit(a, i * 10, "EUR").await;
        if i % 3 == 0 {
            app.transfer(a, b, 5, "EUR").await;
        }
    }
    // A cold load folds the whole stream and leaves a snapshot behind.
    let fresh = TestApp::spawn_with((*app.state.config).clone()).await;
    fresh.account(a).await;
    let snapshots: i64 = sqlx::query_scalar("select count(*) from snapshots where stream_id = $1")
        .bind(a)
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert!(snapshots >= 1, "a snapshot was taken");
    // A snapshot from another evolve version is never trusted.
    sqlx::query(
        "insert into snapshots (stream_id, version, position, evolve_version, state)
         select stream_id, version, position, 0, '{\"version\": 1, \"aggregate\": \"Empty\"}' from stream_entries
         where stream_id = $1 order by version desc limit 1
         on conflict (stream_id, version) do update set evolve_version = 0, state = excluded.state",
    )
    .bind(a)
    .execute(&app.pool)
    .await
    .expect("stale snapshot");

    let head = app.state.store.head().await.expect("head");
    let opened_at: i64 = sqlx::query_scalar("select min(position) from stream_entries where stream_id = $1")
        .bind(a)
        .fetch_one(&app.pool)
        .await
        .expect("opened");
    for p in [opened_at, opened_at + 1, head / 2, head - 1, head] {
        let r = app.get(&format!("/v1/accounts/{a}/balance?at_position={p}")).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        let folded = fold_to(&app, p).await;
        let want = folded.account(a).expect("exists");
        assert_eq!(r.body["balance"], json!(want.balance.minor_units()), "at position {p}");
        assert_eq!(r.body["available"], json!(want.available().minor_units()), "at position {p}");
        assert_eq!(r.body["as_of_position"], json!(p));
        assert_eq!(r.header("x-ledger-position"), Some(p.to_string().as_str()));
    }
    let before = app.get(&format!("/v1/accounts/{a}/balance?at_position={}", opened_at - 1)).await;
    assert_eq!((before.status, before.code()), (StatusCode::NOT_FOUND, "account_not_found"), "before it existed");

    let times: Vec<(i64, String)> = sqlx::query_as("select position, recorded_at::text from events order by position")
        .fetch_all(&app.pool)
        .await
        .expect("times");
    for (position, _) in times.iter().filter(|(p, _)| *p >= opened_at).step_by(4) {
        let at: chrono::DateTime<chrono::Utc> =
            sqlx::query_scalar("select recorded_at from events where position = $1")
                .bind(position)
                .fetch_one(&app.pool)
                .await
                .expect("time");
        let cut = app.state.store.position_at(at).await.expect("cut");
        assert!(cut >= *position, "events recorded at the same instant belong to the cut");
        let ts = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let r = app.get(&format!("/v1/accounts/{a}/balance?as_of={ts}")).await;
        let want = fold_to(&app, cut).await.account(a).map(|x| x.balance.minor_units());
        assert_eq!(r.body["balance"], json!(want.expect("exists")), "as of {ts}");
        assert_eq!(r.body["as_of_position"], json!(cut));
    }
    let ancient = app.get(&format!("/v1/accounts/{a}/balance?as_of=2000-01-01T00:00:00Z")).await;
    assert_eq!(ancient.status, StatusCode::NOT_FOUND);
    // API.md Clarifications, "Positions and time": beyond the head is 422.
    let bad = app.get(&format!("/v1/accounts/{a}/balance?at_position={}", head + 1)).await;
    assert_eq!((bad.status, bad.code()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"));

    let mut out = Vec::new();
    let lines = ledger_api::run::cli::replay(&app.state.config, app.state.master_key.clone(), a, None, &mut out)
        .await
        .expect("replay");
    let version: i64 = sqlx::query_scalar("select max(version) from stream_entries where stream_id = $1")
        .bind(a)
        .fetch_one(&app.pool)
        .await
        .expect("version");
    assert_eq!(lines as i64, version);
    let last: serde_json::Value =
        serde_json::from_str(std::str::from_utf8(&out).expect("utf8").lines().last().expect("line")).expect("json");
    assert_eq!(last["state_after"]["aggregate"]["Account"]["balance"], app.account(a).await["balance"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupted_read_model_is_reported_and_repaired_by_a_rebuild() {
    let app = TestApp::spawn().await;
    let a = app.open_account("EUR", 0).await;
    let b = app.open_account("EUR", 0).await;
    app.deposit(a, 500, "EUR").await;
    app.transfer(a, b, 200, "EUR").await;
    app.catch_up().await;
    assert!(ledger_api::run::cli::verify_projections(&app.state.config).await.expect("verify").is_empty());
    sqlx::query("update accounts_view set balance = balance + 1 where id = $1")
        .bind(a)
        .execute(&app.pool)
        .await
        .expect("corrupt");
    let diffs = ledger_api::run::cli::verify_projections(&app.state.config).await.expect("verify");
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert!(diffs.iter().all(|d| d.contains(&a.to_string())));
    ledger_api::run::cli::rebuild_projection(&app.state.config, "accounts").await.expect("rebuild");
    let diffs = ledger_api::run::cli::verify_projections(&app.state.config).await.expect("verify");
    assert!(diffs.is_empty(), "{diffs:?}");
    // Again, and the other projection: the rebuilt tables carry every index and key.
    for name in ["accounts", "transfers", "accounts"] {
        ledger_api::run::cli::rebuild_projection(&app.state.config, name).await.expect("rebuild");
    }
    for table in ["account_entries", "transactions_view", "accounts_view"] {
        let (indexes, primary): (i64, bool) = sqlx::query_as(
            "select count(*), bool_or(x.indisprimary) from pg_index x join pg_class t on t.oid = x.indrelid where t.relname = $1",
        )
        .bind(table)
        .fetch_one(&app.pool)
        .await
        .expect("indexes");
        assert!(indexes >= 1 && primary, "{table} keeps its primary key after rebuilds");
    }
    app.transfer(b, a, 1, "EUR").await;
    app.catch_up().await;
    assert!(ledger_api::run::cli::verify_projections(&app.state.config).await.expect("verify").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuilding_under_load_keeps_reads_answering_and_never_older() {
    let app = Arc::new(TestApp::spawn().await);
    let mut accounts = Vec::new();
    for _ in 0..6 {
        let id = app.open_account("EUR", 0).await;
        app.deposit(id, 100_000, "EUR").await;
        accounts.push(id);
    }
    for i in 0..300 {
        app.transfer(accounts[i % 6], accounts[(i + 1) % 6], 1, "EUR").await;
    }
    let accounts = Arc::new(accounts);
    let stop = Arc::new(AtomicBool::new(false));
    let writers = (0..4).map(|w| {
        let (app, accounts, stop) = (app.clone(), accounts.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::SeqCst) && i < 4_000 {
                let r = app.transfer(accounts[i % 6], accounts[(i + 2) % 6], 1, "EUR").await;
                assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
                i += 4;
            }
        })
    });
    let readers = (0..4).map(|r| {
        let (app, accounts, stop) = (app.clone(), accounts.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen: HashMap<Uuid, i64> = HashMap::new();
            let mut reads = 0;
            while !stop.load(Ordering::SeqCst) && reads < 20_000 {
                let id = accounts[(reads + r) % 6];
                let reply = app.get(&format!("/v1/accounts/{id}")).await;
                assert_eq!(reply.status, StatusCode::OK, "reads keep answering: {reply:?}");
                let version = reply.body["version"].as_i64().expect("version");
                let before = seen.insert(id, version).unwrap_or(0);
                assert!(version >= before, "a read never goes back in time ({before} then {version})");
                reads += 1;
            }
            reads
        })
    });
    let (writers, readers): (Vec<_>, Vec<_>) = (writers.collect(), readers.collect());
    // The switch replaces the live table: its oid changes.
    let table_oid = || async {
        sqlx::query_scalar::<_, i64>("select 'accounts_view'::regclass::oid::int8")
            .fetch_one(&app.pool)
            .await
            .expect("oid")
    };
    let before = table_oid().await;
    let started = app.post("/v1/admin/projections/accounts/rebuild", "rebuild-1", &json!({})).await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{started:?}");
    let twice = app.post("/v1/admin/projections/accounts/rebuild", "rebuild-2", &json!({})).await;
    let status_now = app.get("/v1/admin/projections").await;
    let accounts_status = status_now.body["projections"][0]["status"].as_str().unwrap_or("").to_owned();
    if accounts_status == "rebuilding" {
        assert_eq!(twice.status, StatusCode::CONFLICT, "one rebuild at a time");
    }
    eventually("the rebuild switches over", 60, || async {
        let s = app.get("/v1/admin/projections").await;
        let leftovers: i64 = sqlx::query_scalar(
            "select count(*) from pg_tables where tablename like 'account%_old' or tablename like 'account%_rebuild'",
        )
        .fetch_one(&app.pool)
        .await
        .expect("tables");
        table_oid().await != before
            && leftovers == 0
            && s.body["projections"][0]["status"] == "running"
            && s.body["projections"][0]["rebuild"].is_null()
    })
    .await;
    let remains: i64 = sqlx::query_scalar(
        "select count(*) from pg_tables where tablename like 'account%_old' or tablename like 'account%_rebuild'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("tables");
    assert_eq!(remains, 0, "old and temporary tables are dropped");
    stop.store(true, Ordering::SeqCst);
    for w in join_all(writers).await {
        w.expect("writer finished cleanly");
    }
    let reads: usize = join_all(readers).await.into_iter().map(|r| r.expect("reader finished cleanly")).sum();
    assert!(reads > 0);
    app.catch_up().await;
    let diffs = ledger_api::run::cli::verify_projections(&app.state.config).await.expect("verify");
    assert!(diffs.is_empty(), "{diffs:?}");
}

//! Pauses (issue 31): a process stopped by the scheduler or a VM migration (SIGSTOP)
//! while it holds something every other process needs: the relay's leadership, or its
//! ledger's head lock in the middle of an append. Neither may stall the others for
//! longer than its lease.

use ledger_api::run::serve::Mode;
use ledger_tests::procs::{LedgerProcess, base_env};
use ledger_tests::{ADMIN_TOKEN, TestApp, eventually, test_config};
use reqwest::StatusCode;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

async fn relayed(app: &TestApp) -> i64 {
    sqlx::query_scalar("select position from relay_checkpoints").fetch_one(&app.pool).await.unwrap_or(0)
}

async fn head(app: &TestApp) -> i64 {
    app.state.store.head().await.expect("the head")
}

/// Two `ledger worker` processes; the relay's leader is paused: the other leads within
/// the lease (`LEDGER_RELAY_LEASE_MS`), and when the paused one resumes nothing is
/// published twice into the read models (they equal the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_relay_leader_is_replaced_within_its_lease() {
    let config = test_config();
    let app = TestApp::spawn_mode(config.clone(), Mode::Api).await;
    let mut env = base_env(&config);
    env.push(("LEDGER_RELAY_LEASE_MS", "3000".to_owned()));
    let workers =
        [LedgerProcess::start_mode("worker", &env, None).await, LedgerProcess::start_mode("worker", &env, None).await];
    let a = app.open_account("EUR", 0).await;
    app.deposit(a, 1, "EUR").await;
    let target = head(&app).await;
    eventually("the relay publishes", 30, || async { relayed(&app).await >= target }).await;
    // Which one leads: a follower paused changes nothing.
    workers[0].signal("STOP");
    app.deposit(a, 1, "EUR").await;
    let target = head(&app).await;
    // Deliberate: long enough for a running leader to publish, shorter than the lease.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let leader = if relayed(&app).await >= target {
        workers[0].signal("CONT");
        workers[1].signal("STOP");
        1
    } else {
        0
    };
    // The leader is paused now: what is appended is published once its lease has run out.
    app.deposit(a, 1, "EUR").await;
    let target = head(&app).await;
    let paused = Instant::now();
    eventually("another relay leads", 20, || async { relayed(&app).await >= target }).await;
    let took = paused.elapsed();
    eprintln!("relayed again {took:?} after the leader was paused (lease 3 s)");
    assert!(took < Duration::from_secs(10), "within the lease and an election: {took:?}");
    workers[leader].signal("CONT");
    for _ in 0..5 {
        app.deposit(a, 1, "EUR").await;
    }
    let target = head(&app).await;
    eventually("everything is relayed after the resume", 30, || async { relayed(&app).await >= target }).await;
    eventually("the read model shows every deposit", 30, || async {
        app.get(&format!("/v1/accounts/{a}")).await.body["balance"] == json!(8)
    })
    .await;
    app.assert_read_models_match_log().await;
}

/// A `ledger api` process under load is paused in the middle of an append, holding its
/// ledger's head lock: Postgres ends its transaction after `LEDGER_APPEND_IDLE_TIMEOUT_MS`
/// and the other process's commands go on (before: the pool's 60 s idle limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_paused_mid_append_stalls_the_others_only_for_its_lease() {
    let mut config = test_config();
    config.append_idle_timeout = Duration::from_secs(2);
    let app = TestApp::spawn_with(config.clone()).await;
    let (a, b) = (app.open_account("EUR", 0).await, app.open_account("EUR", 0).await);
    app.deposit(a, 1_000_000, "EUR").await;
    let mut env = base_env(&config);
    env.push(("LEDGER_APPEND_IDLE_TIMEOUT_MS", "2000".to_owned()));
    let port = ledger_tests::procs::free_port();
    let other = LedgerProcess::start_mode("api", &env, Some(port)).await;
    // Load through the other process, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("a client");
    let loads: Vec<_> = (0..8)
        .map(|_| {
            let (client, base, stop) = (client.clone(), other.base.clone(), stop.clone());
            tokio::spawn(async move {
                let mut sent = 0;
                while !stop.load(Ordering::SeqCst) && sent < 100_000 {
                    let body = json!({ "from": a, "to": b, "amount": 1, "currency": "EUR" });
                    let _ = client
                        .post(format!("{base}/v1/transfers"))
                        .bearer_auth(ADMIN_TOKEN)
                        .header("idempotency-key", Uuid::new_v4().to_string())
                        .json(&body)
                        .send()
                        .await;
                    sent += 1;
                }
            })
        })
        .collect();
    // Pause it until it is caught holding the head lock idle in its transaction.
    let holding = "select count(*) from pg_locks l join pg_stat_activity s on s.pid = l.pid
                   where l.relation = 'log_head'::regclass and s.state = 'idle in transaction'";
    let mut caught = false;
    // Deliberate pauses: the load runs between tries, and a stopped process is given a
    // moment before the catalog is read.
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        other.signal("STOP");
        tokio::time::sleep(Duration::from_millis(30)).await;
        let n: i64 = sqlx::query_scalar(holding).fetch_one(&app.pool).await.expect("the catalog");
        if n > 0 {
            caught = true;
            break;
        }
        other.signal("CONT");
    }
    assert!(caught, "the other process was never caught holding the head lock");
    let paused = Instant::now();
    let r = app.transfer(a, b, 1, "EUR").await;
    let took = paused.elapsed();
    eprintln!("a command through the running process took {took:?} with the other paused holding the lock");
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert!(took < Duration::from_secs(5), "within the append's idle limit (2 s), not the pool's minute: {took:?}");
    other.signal("CONT");
    stop.store(true, Ordering::SeqCst);
    for l in loads {
        let _ = l.await;
    }
    app.fold_log().await;
}

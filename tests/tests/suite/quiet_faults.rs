//! The bank test under the faults that do not announce themselves (issue 31): three
//! `ledger serve` processes of one deployment, one honest, one with its wall clock
//! 2 hours ahead and one 10 minutes behind (libfaketime), behind fault proxies to
//! Postgres, NATS and the provider; clients spread transfers and withdrawals over the
//! three, moving to the next process when one does not answer, re-sending their keys.
//! One fault at a time, each healed before the next: Postgres hung for 15 s, NATS hung
//! for 15 s, the provider hung, the relay leader paused (SIGSTOP) past its lease,
//! another process paused under load past its append lease, Postgres out of disk space
//! for its WAL. The same checker as the bank test after: 0 violations. Prints, for each
//! fault, the longest stretch without an acknowledgement and how long after the heal
//! commands were acknowledged again.

use crate::faults::{Outcome, check_invariants, open_funded_accounts, send, settled};
use futures::future::join_all;
use ledger_provider_sim::{Faults, Simulator};
use ledger_tests::faultproxy::FaultProxy;
use ledger_tests::procs::{LedgerProcess, PgCluster, free_port};
use ledger_tests::{ADMIN_TOKEN, NatsServer, eventually};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// Sends one keyed command to the processes in turn, from `first`, until one gives a
/// final answer (each try bounded as in `send`).
async fn send_anywhere(
    client: &reqwest::Client,
    bases: &[String],
    first: usize,
    path: &str,
    key: &str,
    body: &Value,
    give_up_at: Instant,
) -> Option<(u16, Value)> {
    for turn in 0.. {
        if Instant::now() >= give_up_at {
            return None;
        }
        let base = &bases[(first + turn) % bases.len()];
        let slice = (Instant::now() + Duration::from_secs(3)).min(give_up_at);
        if let Some(answer) = send(client, base, path, key, body, slice).await {
            return Some(answer);
        }
    }
    None
}

/// The process (by its sessions' `application_name`, `quiet-NAME`) holding the relay's
/// leadership lock now, if one does.
async fn relay_leader(pool: &PgPool, lock_key: &str) -> Option<String> {
    sqlx::query_scalar::<_, String>(
        "select a.application_name from pg_locks l join pg_stat_activity a on a.pid = l.pid
         where l.locktype = 'advisory' and l.granted and l.objsubid = 2
           and l.classid = (hashtext($1)::int8 & 4294967295)::oid",
    )
    .bind(lock_key)
    .fetch_optional(pool)
    .await
    .ok()
    .flatten()
    .and_then(|name| name.strip_prefix("quiet-").map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_under_hangs_pauses_a_full_disk_and_wrong_clocks() {
    assert!(std::path::Path::new(FAKETIME).exists(), "{FAKETIME} is missing: scripts/test installs faketime");
    // Room for the whole run's WAL (no checkpoint runs), several times over.
    let pg = PgCluster::start_with_wal_disk(160);
    let nats = NatsServer::start().await;
    let sim = Simulator::new(Faults::default(), 5).start_local().await.expect("simulator");
    let pg_proxy = FaultProxy::start(&format!("127.0.0.1:{}", pg.port)).await;
    let nats_proxy = FaultProxy::start(&format!("127.0.0.1:{}", nats.port)).await;
    let provider_proxy = FaultProxy::start(sim.url().trim_start_matches("http://")).await;
    let prefix = format!("quiet{}", Uuid::new_v4().simple());
    // Each process names its sessions, so the relay's leader can be told apart.
    let env = |name: &str, clock: Option<&str>| {
        let mut env = vec![
            ("DATABASE_URL", format!("{}?application_name=quiet-{name}", pg_proxy.url_for(&pg.url("ledger"), pg.port))),
            ("NATS_URL", nats_proxy.url_for(&nats.url(), nats.port)),
            ("LEDGER_NATS_PREFIX", prefix.clone()),
            ("LEDGER_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
            ("LEDGER_PROVIDER_URL", format!("http://127.0.0.1:{}", provider_proxy.port)),
            ("LEDGER_PROVIDER_TIMEOUT_MS", "500".to_owned()),
            ("LEDGER_PAYOUT_ATTEMPTS_MAX", "1000".to_owned()),
            ("LEDGER_PAYOUT_BACKOFF_BASE_MS", "20".to_owned()),
            ("LEDGER_PAYOUT_BACKOFF_MAX_MS", "500".to_owned()),
            ("LEDGER_PROVIDER_BREAKER_COOLDOWN_MS", "500".to_owned()),
            ("LEDGER_DB_ACQUIRE_TIMEOUT_MS", "1000".to_owned()),
            ("LEDGER_DB_WAIT_MS", "2000".to_owned()),
            ("LEDGER_DB_BREAKER_COOLDOWN_MS", "1000".to_owned()),
            ("LEDGER_RELAY_LEASE_MS", "3000".to_owned()),
            ("LEDGER_APPEND_IDLE_TIMEOUT_MS", "2000".to_owned()),
            ("LEDGER_RECONCILE_INTERVAL_S", "0".to_owned()),
        ];
        if let Some(offset) = clock {
            env.push(("LD_PRELOAD", FAKETIME.to_owned()));
            env.push(("FAKETIME", offset.to_owned()));
            env.push(("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()));
        }
        env
    };
    // The honest process first: it leads the relay, and is the leader paused below.
    let honest = LedgerProcess::start(&env("honest", None), free_port()).await;
    let client = reqwest::Client::new();
    let accounts = open_funded_accounts(&client, &honest.base, 6).await;
    let ahead = LedgerProcess::start(&env("ahead", Some("+2h")), free_port()).await;
    let behind = LedgerProcess::start(&env("behind", Some("-10m")), free_port()).await;
    let bases = Arc::new(vec![honest.base.clone(), ahead.base.clone(), behind.base.clone()]);
    let accounts = Arc::new(accounts);
    let acknowledged_at = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let (client, bases, accounts) = (client.clone(), bases.clone(), accounts.clone());
            let (acknowledged_at, stop) = (acknowledged_at.clone(), stop.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut replays = Vec::new();
                let mut i = c;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let key = Uuid::new_v4().to_string();
                    let (kind, path, body) = if i % 7 == 0 {
                        let body = json!({ "account_id": accounts[i % 6], "amount": 3, "currency": "EUR", "destination": "NL00" });
                        ("withdrawal", "/v1/withdrawals", body)
                    } else {
                        let body = json!({ "from": accounts[i % 6], "to": accounts[(i * 5 + 1) % 6], "amount": 1 + (i % 40) as i64, "currency": "EUR" });
                        ("transfer", "/v1/transfers", body)
                    };
                    let give_up = Instant::now() + Duration::from_secs(120);
                    if let Some((status, answer)) = send_anywhere(&client, &bases, i, path, &key, &body, give_up).await {
                        if (200..300).contains(&status) {
                            acknowledged_at.lock().expect("times").push(Instant::now());
                            // Sampled through the whole run: before, during and after faults.
                            if i % 97 == 0 {
                                replays.push((path, key.clone(), body.clone(), answer));
                            }
                        }
                        outcomes.push(Outcome { kind, key, status });
                    }
                }
                (outcomes, replays)
            })
        })
        .collect();

    // The fault schedule: each fault's window (start, heal), to measure from. Every
    // sleep below is deliberate: a fault's duration, or the load running between faults.
    let monitor = PgPool::connect(&pg.url("ledger")).await.expect("a pool beside the proxy");
    let lock_key = format!("ledger-relay:{prefix}");
    let processes = [("honest", &honest), ("ahead", &ahead), ("behind", &behind)];
    let mut windows: Vec<(&str, Instant, Instant)> = Vec::new();
    let settle = || tokio::time::sleep(Duration::from_secs(3));
    settle().await;
    let start = Instant::now();
    pg_proxy.hang_for(Duration::from_secs(15)).await;
    windows.push(("Postgres hung 15 s", start, Instant::now()));
    settle().await;
    let start = Instant::now();
    nats_proxy.hang_for(Duration::from_secs(15)).await;
    windows.push(("NATS hung 15 s", start, Instant::now()));
    settle().await;
    let start = Instant::now();
    provider_proxy.hang_for(Duration::from_secs(6)).await;
    windows.push(("provider hung 6 s", start, Instant::now()));
    settle().await;
    // The relay's leader, whichever it is now, paused past its lease: another takes over.
    let mut leader = None;
    // Bounded: 30 s of 100 ms looks.
    for _ in 0..300 {
        leader = relay_leader(&monitor, &lock_key).await;
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = leader.expect("a leader");
    let (_, paused) = processes.iter().find(|(name, _)| *name == leader).expect("the leader is one of the three");
    let start = Instant::now();
    paused.signal("STOP");
    eventually("another process leads the relay", 20, || async {
        relay_leader(&monitor, &lock_key).await.is_some_and(|now| now != leader)
    })
    .await;
    let took_over = start.elapsed();
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(took_over)).await;
    paused.signal("CONT");
    windows.push(("the relay leader paused 6 s (lease 3 s)", start, Instant::now()));
    println!("quiet faults: the relay leader {leader} was replaced {took_over:?} after it was paused");
    settle().await;
    // Another process paused under load past its append lease (pauses.rs pauses one
    // caught holding the head lock).
    let current = relay_leader(&monitor, &lock_key).await;
    let (other, paused) =
        processes.iter().find(|(name, _)| Some(*name) != current.as_deref()).expect("a process that does not lead");
    let start = Instant::now();
    paused.signal("STOP");
    tokio::time::sleep(Duration::from_secs(5)).await;
    paused.signal("CONT");
    windows.push(("a process paused 5 s under load (append lease 2 s)", start, Instant::now()));
    println!("quiet faults: paused {other} under load");
    settle().await;
    let start = Instant::now();
    let filled = pg.hold_wal_disk_full(Duration::from_secs(5)).await;
    let freed = Instant::now();
    pg.supervise().await;
    windows.push(("Postgres' WAL disk full 5 s", start, freed));
    assert!(filled > 0 && pg.log_contains("No space left on device"), "Postgres never ran out of room for its WAL");
    settle().await;
    settle().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut outcomes = Vec::new();
    let mut replays = Vec::new();
    for r in join_all(clients).await {
        let (o, p) = r.expect("client finished");
        outcomes.extend(o);
        replays.extend(p);
    }
    let mut times = acknowledged_at.lock().expect("times").clone();
    times.sort();
    for (fault, start, healed) in &windows {
        // The longest stretch without an acknowledgement from the fault's start until
        // commands came back, and how long after the heal they did.
        let recovered = times.iter().find(|t| *t > healed).map(|t| t.duration_since(*healed));
        let mut last = *start;
        let mut longest = Duration::ZERO;
        for t in times.iter().filter(|t| **t > *start && **t <= *healed + recovered.unwrap_or_default()) {
            longest = longest.max(t.duration_since(last));
            last = *t;
        }
        println!(
            "quiet faults: {fault}: longest stretch without an acknowledgement {longest:?}; acknowledged again \
             {recovered:?} after the heal"
        );
        let recovered = recovered.unwrap_or_else(|| panic!("nothing acknowledged after: {fault}"));
        assert!(recovered < Duration::from_secs(30), "{fault}: commands came back only {recovered:?} after the heal");
    }
    // Replays are the first answers, whichever process answers them.
    for (n, (path, key, body, first)) in replays.iter().enumerate() {
        let again = send(&client, &bases[n % bases.len()], path, key, body, Instant::now() + Duration::from_secs(30))
            .await
            .expect("a replay");
        assert_eq!(&again.1, first, "the replay of {key} differs");
    }
    let pool = PgPool::connect(&pg.url("ledger")).await.expect("pool");
    settled(&pool).await;
    // Eventual reads equal strong ones, through every process: an account as the read
    // model has it, and folded from the log.
    for (n, account) in accounts.iter().enumerate() {
        let base = &bases[n % bases.len()];
        let read = |consistency: &str| {
            let url = format!("{base}/v1/accounts/{account}?consistency={consistency}");
            let client = client.clone();
            async move {
                let r = client.get(url).bearer_auth(ADMIN_TOKEN).send().await.expect("read");
                assert_eq!(r.status(), reqwest::StatusCode::OK);
                let balance = r.json::<Value>().await.expect("json")["balance"].clone();
                assert!(balance.is_i64(), "a balance: {balance}");
                balance
            }
        };
        assert_eq!(read("eventual").await, read("strong").await, "account {account}");
    }
    // The relay published everything (after the NATS hang and the leader's pause).
    let (relayed, head): (i64, i64) =
        sqlx::query_as("select (select max(position) from relay_checkpoints), (select position from log_head)")
            .fetch_one(&pool)
            .await
            .expect("positions");
    assert_eq!(relayed, head, "the relay's checkpoint is at the head");
    // No event is recorded in the future of the database's clock, whichever process wrote it.
    let ahead_of_db: i64 =
        sqlx::query_scalar("select count(*) from events where recorded_at > clock_timestamp() + interval '5 seconds'")
            .fetch_one(&pool)
            .await
            .expect("count");
    let violations = check_invariants(&pool, &outcomes).await;
    let acknowledged = outcomes.iter().filter(|o| (200..300).contains(&o.status)).count();
    println!(
        "quiet faults: {acknowledged} of {} answered commands acknowledged, {} violations",
        outcomes.len(),
        violations.len()
    );
    assert_eq!(ahead_of_db, 0, "events stamped ahead of the database's clock");
    assert!(sim.simulator.stats().double_paid().is_empty(), "paid twice: {:?}", sim.simulator.stats().double_paid());
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(acknowledged > 100, "the ledger made progress under the faults");
}

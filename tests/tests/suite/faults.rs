//! Faults and scale-out (run alone with `cargo test -p ledger-tests --test suite faults::`):
//! a "bank" test under kill -9, NATS and Postgres restarts and provider failures, the
//! pipelined writer losing a batch between its insert and its commit, and two API plus
//! two worker processes on a three-node JetStream cluster.

use futures::future::join_all;
use ledger_provider_sim::{Faults, Simulator};
use ledger_tests::procs::{LedgerProcess, NatsCluster, PgCluster, free_port};
use ledger_tests::{ADMIN_TOKEN, NatsServer, eventually, projection_lag, test_config};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// One operation as the client saw it in the end.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) kind: &'static str,
    pub(crate) key: String,
    pub(crate) status: u16,
}

/// A client that re-sends the same Idempotency-Key after timeouts, connection errors,
/// 5xx and 409 in-flight, until it gets a final answer or `give_up_at` passes.
pub(crate) async fn send(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    key: &str,
    body: &Value,
    give_up_at: Instant,
) -> Option<(u16, Value)> {
    let mut attempt = 0u32;
    while Instant::now() < give_up_at {
        attempt += 1;
        let r = client
            .post(format!("{base}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .header("idempotency-key", key)
            .timeout(Duration::from_secs(2))
            .json(body)
            .send()
            .await;
        if let Ok(r) = r {
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let retry =
                status >= 500 || (status == 409 && body["code"] == "idempotency_key_in_flight") || status == 429;
            if !retry {
                return Some((status, body));
            }
        }
        // Client-side retry backoff (not a wait for a condition).
        tokio::time::sleep(Duration::from_millis((20 * u64::from(attempt)).min(300))).await;
    }
    None
}

pub(crate) async fn open_funded(client: &reqwest::Client, base: &str, deadline: Instant) -> String {
    let (status, account) =
        send(client, base, "/v1/accounts", &Uuid::new_v4().to_string(), &json!({ "currency": "EUR" }), deadline)
            .await
            .expect("open");
    assert_eq!(status, 201, "{account}");
    let id = account["id"].as_str().expect("id").to_owned();
    let deposit = json!({ "account_id": id, "amount": 1_000_000, "currency": "EUR" });
    let (status, _) =
        send(client, base, "/v1/deposits", &Uuid::new_v4().to_string(), &deposit, deadline).await.expect("deposit");
    assert_eq!(status, 201);
    id
}

/// `n` funded accounts (see [`open_funded`]), opened within a minute.
pub(crate) async fn open_funded_accounts(client: &reqwest::Client, base: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut accounts = Vec::with_capacity(n);
    for _ in 0..n {
        accounts.push(open_funded(client, base, deadline).await);
    }
    accounts
}

/// Every acknowledged command is in the log exactly once; no key applied twice;
/// money conserved; read models equal the log; the chain verifies. Returns violations.
/// Waits (bounded) until every withdrawal has an outcome and the projections have
/// caught up with the log.
pub(crate) async fn settled(pool: &PgPool) {
    eventually("payouts end and projections catch up", 120, || async {
        let pending: i64 = sqlx::query_scalar(
            "select count(*) from events w where w.type = 'WithdrawalRequested' and not exists (
                select 1 from stream_entries s join events e on e.position = s.position
                where s.stream_id = w.stream_id and e.type in ('WithdrawalSettled', 'WithdrawalFailed', 'PayoutDeadLettered'))",
        )
        .fetch_one(pool)
        .await
        .unwrap_or(1);
        pending == 0 && projection_lag(pool).await == 0
    })
    .await;
}

pub(crate) async fn check_invariants(pool: &PgPool, outcomes: &[Outcome]) -> Vec<String> {
    let mut violations = Vec::new();
    let (ledger, head) = ledger_projections::verify::fold_log(pool, |_, _| {}).await.expect("log folds");
    for (currency, sum) in ledger.balance_sums() {
        if sum != 0 {
            violations.push(format!("money not conserved in {currency}: {sum}"));
        }
    }
    let per_key: Vec<(String, String, i64)> = sqlx::query_as(
        "select metadata ->> 'idempotency_key', type, count(*) from events
         where metadata ->> 'idempotency_key' is not null and type in ('TransferPosted', 'WithdrawalRequested')
         group by 1, 2",
    )
    .fetch_all(pool)
    .await
    .expect("keys");
    let per_key: HashMap<String, i64> = per_key.into_iter().map(|(k, _, n)| (k, n)).collect();
    for (key, n) in &per_key {
        if *n > 1 {
            violations.push(format!("key {key} applied {n} times"));
        }
    }
    for o in outcomes {
        let recorded = per_key.get(&o.key).copied().unwrap_or(0);
        match o.status {
            200..=299 if recorded != 1 => {
                violations.push(format!("acknowledged {} {} recorded {recorded} times", o.kind, o.key))
            }
            400..=499 if recorded != 0 => violations.push(format!("rejected {} {} has events", o.kind, o.key)),
            _ => {}
        }
    }
    let diffs = ledger_projections::verify::verify(pool, |_, _| {}).await.expect("verify runs");
    violations.extend(diffs);
    let chain = ledger_infrastructure::audit::verify_chain(
        &ledger_infrastructure::EventStore::new(pool.clone()),
        5_000,
        |_, _| {},
    )
    .await
    .expect("chain");
    if !chain.ok || chain.checked != head {
        violations.push(format!("hash chain: {chain:?}"));
    }
    for (id, state) in ledger.streams() {
        if let ledger_domain::Aggregate::Account(a) = &state.aggregate
            && !a.system
            && a.balance.minor_units() + a.overdraft_limit.minor_units() < 0
        {
            violations.push(format!("account {id} overdrawn past its limit: {:?}", a.balance));
        }
        if let ledger_domain::Aggregate::Withdrawal(w) = &state.aggregate
            && w.status == ledger_domain::WithdrawalStatus::Pending
            && w.dead_letter.is_none()
        {
            violations.push(format!("withdrawal {id} neither settled, failed nor dead-lettered"));
        }
    }
    violations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_under_crashes_restarts_and_provider_failures() {
    let pg = PgCluster::start();
    let mut nats = NatsServer::start().await;
    let sim = Simulator::new(Faults { error_rate: 0.2, drop_response_rate: 0.1, ..Faults::default() }, 11)
        .start_local()
        .await
        .expect("simulator");
    let port = free_port();
    let env = [
        ("DATABASE_URL", pg.url("ledger")),
        ("NATS_URL", nats.url()),
        ("LEDGER_NATS_PREFIX", format!("bank{}", Uuid::new_v4().simple())),
        ("LEDGER_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ("LEDGER_PROVIDER_URL", sim.url()),
        ("LEDGER_PROVIDER_TIMEOUT_MS", "300".to_owned()),
        ("LEDGER_PAYOUT_ATTEMPTS_MAX", "40".to_owned()),
        ("LEDGER_PAYOUT_BACKOFF_BASE_MS", "20".to_owned()),
        ("LEDGER_PAYOUT_BACKOFF_MAX_MS", "300".to_owned()),
        ("LEDGER_PROVIDER_BREAKER_COOLDOWN_MS", "300".to_owned()),
        ("LEDGER_DB_ACQUIRE_TIMEOUT_MS", "1000".to_owned()),
        ("LEDGER_RECONCILE_INTERVAL_S", "0".to_owned()),
    ];
    let mut ledger = LedgerProcess::start(&env, port).await;
    let base = ledger.base.clone();
    let client = reqwest::Client::new();
    let accounts = open_funded_accounts(&client, &base, 6).await;
    let accounts = Arc::new(accounts);
    let run_for = Duration::from_secs(35);
    let stop_at = Instant::now() + run_for;
    let operations = Arc::new(AtomicU64::new(0));
    let clients = (0..6).map(|c| {
        let (client, base, accounts, operations) = (client.clone(), base.clone(), accounts.clone(), operations.clone());
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut i = c;
            while Instant::now() < stop_at {
                i += 1;
                operations.fetch_add(1, Ordering::Relaxed);
                let key = Uuid::new_v4().to_string();
                let (kind, path, body) = if i % 5 == 0 {
                    let body = json!({ "account_id": accounts[i % 6], "amount": 7, "currency": "EUR", "destination": "NL00" });
                    ("withdrawal", "/v1/withdrawals", body)
                } else {
                    let body = json!({ "from": accounts[i % 6], "to": accounts[(i * 7 + 1) % 6], "amount": 1 + (i % 50) as i64, "currency": "EUR" });
                    ("transfer", "/v1/transfers", body)
                };
                // Keep retrying one key well past the fault window: an answer must come.
                if let Some((status, _)) = send(&client, &base, path, &key, &body, stop_at + Duration::from_secs(60)).await {
                    outcomes.push(Outcome { kind, key, status });
                }
            }
            outcomes
        })
    });
    let clients: Vec<_> = clients.collect();
    // The fault schedule: one fault every few seconds, each healed before the next.
    let mut faults = 0;
    let mut round = 0;
    while Instant::now() + Duration::from_secs(5) < stop_at {
        tokio::time::sleep(Duration::from_secs(2)).await;
        match round % 4 {
            0 => {
                ledger.kill9().await;
                ledger.restart().await;
            }
            1 => {
                nats.kill().await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                nats.resume().await;
            }
            2 => {
                pg.crash();
                tokio::time::sleep(Duration::from_secs(2)).await;
                pg.resume();
            }
            _ => {
                sim.simulator.set_faults(Faults { down: true, ..Faults::default() });
                tokio::time::sleep(Duration::from_secs(2)).await;
                sim.simulator.set_faults(Faults { error_rate: 0.2, drop_response_rate: 0.1, ..Faults::default() });
            }
        }
        faults += 1;
        round += 1;
    }
    let outcomes: Vec<Outcome> =
        join_all(clients).await.into_iter().flat_map(|r| r.expect("client finished")).collect();
    sim.simulator.set_faults(Faults::default());
    let pool = PgPool::connect(&pg.url("ledger")).await.expect("pool");
    settled(&pool).await;
    let violations = check_invariants(&pool, &outcomes).await;
    let acknowledged = outcomes.iter().filter(|o| (200..300).contains(&o.status)).count();
    println!(
        "bank: {} operations, {acknowledged} acknowledged, {} answered, {faults} faults injected, {} violations",
        operations.load(Ordering::Relaxed),
        outcomes.len(),
        violations.len()
    );
    let stats = sim.simulator.stats();
    assert!(stats.double_paid().is_empty(), "paid twice: {:?}", stats.double_paid());
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(acknowledged > 50, "the ledger made progress under faults");
    assert!(faults >= 4);
}

/// Which way a batch's commit is interrupted while the next batch is decided on top of it.
#[derive(Debug, Clone, Copy)]
enum Interruption {
    /// The process dies (kill -9); the batch's commit, already sent, completes without it.
    ProcessDies,
    /// The batch's connection is cut: the commit fails and the process lives on, so the
    /// batch decided on top of it must be decided again.
    CommitFails,
    /// Both: nothing of the batch lands and the process is gone.
    Both,
}

/// The pipelined writer: every commit is slowed down (a deferred trigger on `log_head`
/// sleeps 150 ms at commit), so batch N is between its insert and its commit while
/// N+1 is gathered and decided on N's state. Then, with 24 clients sending keyed
/// transfers that drain their accounts, N is interrupted three ways, twice each. After
/// all: every acknowledged transfer is in the log once, no key twice, no account past
/// its overdraft limit, money conserved, read models equal to the log, the chain valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipelined_writer_loses_a_batch_between_insert_and_commit() {
    pipelined_writer_loses_a_batch(false).await;
}

/// The same, with each batch appended right behind the one in flight
/// (`LEDGER_APPEND_BEHIND`): when N is cut or killed, N+1 has written its rows and waits
/// for the head; it must fail with N and be decided again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_appended_behind_one_that_is_lost_is_lost_with_it() {
    pipelined_writer_loses_a_batch(true).await;
}

async fn pipelined_writer_loses_a_batch(behind: bool) {
    let config = test_config();
    ledger_infrastructure::connect_and_migrate(&config).await.expect("database");
    let pool = PgPool::connect(&config.database_url).await.expect("pool");
    let mut env = ledger_tests::procs::base_env(&config);
    env.push(("LEDGER_APPEND_BEHIND", behind.to_string()));
    let mut ledger = LedgerProcess::start(&env, free_port()).await;
    let base = ledger.base.clone();
    let client = reqwest::Client::new();
    let accounts = open_funded_accounts(&client, &base, 8).await;
    ledger_tests::slow_commits(&pool, 0.15).await;
    let accounts = Arc::new(accounts);
    let stop_at = Instant::now() + Duration::from_secs(30);
    let clients: Vec<_> = (0..24)
        .map(|c| {
            let (client, base, accounts) = (client.clone(), base.clone(), accounts.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut i = c;
                while Instant::now() < stop_at {
                    i += 1;
                    let key = Uuid::new_v4().to_string();
                    // Large amounts, so that accounts run dry and the funds check is
                    // decided on state a lost batch had changed.
                    let body = json!({ "from": accounts[i % 8], "to": accounts[(i * 3 + 1) % 8],
                                       "amount": 50_000 + (i % 7) as i64 * 10_000, "currency": "EUR" });
                    if let Some((status, _)) =
                        send(&client, &base, "/v1/transfers", &key, &body, stop_at + Duration::from_secs(60)).await
                    {
                        outcomes.push(Outcome { kind: "transfer", key, status });
                    }
                }
                outcomes
            })
        })
        .collect();
    let sleeping_commit = || async {
        let wait_until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < wait_until {
            let pid: Option<i32> = sqlx::query_scalar(
                "select pid from pg_stat_activity where datname = current_database() and wait_event = 'PgSleep' limit 1",
            )
            .fetch_optional(&pool)
            .await
            .expect("activity");
            if pid.is_some() {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    };
    let mut interrupted = Vec::new();
    for round in 0..6 {
        // A deliberate pause: the clients run under the slowed commits between faults.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let how = [Interruption::ProcessDies, Interruption::CommitFails, Interruption::Both][round % 3];
        // The commit is cut first (a backend whose 150 ms commit ended between being
        // seen and being cut is not there to cut: the next committing one is), then,
        // at once, the process killed.
        if !matches!(how, Interruption::ProcessDies) {
            let mut cut = false;
            for _ in 0..20 {
                let pid = sleeping_commit().await.expect("a batch is committing under load");
                cut = sqlx::query_scalar("select pg_terminate_backend($1)")
                    .bind(pid)
                    .fetch_one(&pool)
                    .await
                    .expect("cut");
                if cut {
                    break;
                }
            }
            assert!(cut, "a committing backend is cut");
        } else {
            sleeping_commit().await.expect("a batch is committing under load");
        }
        if !matches!(how, Interruption::CommitFails) {
            ledger.kill9().await;
        }
        if !matches!(how, Interruption::CommitFails) {
            ledger.restart().await;
        }
        interrupted.push(how);
    }
    let outcomes: Vec<Outcome> =
        join_all(clients).await.into_iter().flat_map(|r| r.expect("client finished")).collect();
    ledger_tests::fast_commits(&pool).await;
    eventually("projections catch up", 60, || async {
        let lag = projection_lag(&pool).await;
        lag == 0
    })
    .await;
    let violations = check_invariants(&pool, &outcomes).await;
    let acknowledged = outcomes.iter().filter(|o| (200..300).contains(&o.status)).count();
    let refused = outcomes.iter().filter(|o| o.status == 422).count();
    println!(
        "pipelined writer (behind: {behind}): {} answered, {acknowledged} acknowledged, {refused} refused for funds, interruptions {interrupted:?}, {} violations",
        outcomes.len(),
        violations.len()
    );
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(acknowledged > 100 && refused > 0, "transfers both landed and ran dry: {acknowledged} / {refused}");
    drop(ledger);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_apis_and_two_workers_on_a_three_node_nats_cluster() {
    let mut cluster = NatsCluster::start(3).await;
    let config = test_config();
    ledger_infrastructure::connect_and_migrate(&config).await.expect("database");
    let env = [
        ("DATABASE_URL", config.database_url.clone()),
        ("NATS_URL", cluster.urls()),
        ("LEDGER_NATS_PREFIX", config.nats_prefix.clone()),
        // No LEDGER_NATS_REPLICAS: the replicas come from the cluster.
        ("LEDGER_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ("LEDGER_PROVIDER_URL", "http://127.0.0.1:9".to_owned()),
        ("LEDGER_RECONCILE_INTERVAL_S", "0".to_owned()),
    ];
    let api1 = LedgerProcess::start_mode("api", &env, Some(free_port())).await;
    let api2 = LedgerProcess::start_mode("api", &env, Some(free_port())).await;
    let mut worker1 = LedgerProcess::start_mode("worker", &env, None).await;
    let mut worker2 = LedgerProcess::start_mode("worker", &env, None).await;
    let pool = PgPool::connect(&config.database_url).await.expect("pool");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (a, b) = (open_funded(&client, &api1.base, deadline).await, open_funded(&client, &api1.base, deadline).await);
    let read2 = |path: String| {
        let (client, base) = (client.clone(), api2.base.clone());
        async move {
            let r = client.get(format!("{base}{path}")).bearer_auth(ADMIN_TOKEN).send().await.expect("read");
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // Warm api2's cache, then write through api1 and read through api2.
    let relayed = |at_least: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("select position from relay_checkpoints")
                .fetch_optional(&pool)
                .await
                .ok()
                .flatten()
                .is_some_and(|p| p >= at_least)
        }
    };
    // A fresh cluster elects its JetStream leaders and the R3 stream is created first.
    eventually("the cluster carries the first events to the read models", 60, || async {
        let lag = projection_lag(&pool).await;
        lag == 0
    })
    .await;
    // Three replicas of the stream and of every consumer, although none were asked for.
    let nats = async_nats::connect(cluster.urls().split(',').collect::<Vec<_>>()).await.expect("nats");
    let js = async_nats::jetstream::new(nats);
    let stream_name = format!("{}_events", config.nats_prefix);
    eventually("the stream has three replicas on the three-node cluster", 60, || async {
        let Ok(mut stream) = js.get_stream(&stream_name).await else { return false };
        stream.info().await.is_ok_and(|i| {
            i.config.num_replicas == 3
                && i.cluster.as_ref().is_some_and(|c| c.leader.is_some() && c.replicas.len() == 2)
        })
    })
    .await;
    let mut stream = js.get_stream(&stream_name).await.expect("the events stream");
    let info = stream.info().await.expect("stream info").clone();
    for name in ["projection_all", "payouts"] {
        let consumer = format!("{}_{name}", config.nats_prefix);
        eventually("the consumer is replicated with its stream", 60, || async {
            let Ok(mut consumer) =
                stream.get_consumer::<async_nats::jetstream::consumer::pull::Config>(&consumer).await
            else {
                return false;
            };
            consumer.info().await.is_ok_and(|i| i.cluster.as_ref().is_some_and(|c| c.replicas.len() == 2))
        })
        .await;
    }
    let leader = info.cluster.as_ref().and_then(|c| c.leader.clone()).expect("a stream leader");
    let leader: usize = leader.trim_start_matches("node").parse().expect("nodes are named node<i>");
    let mut acknowledged = HashSet::new();
    let mut relay_stall = Duration::ZERO;
    for round in 0..40 {
        if round == 15 {
            cluster.kill(leader).await; // the stream leader's node lost under load
        }
        if round == 25 {
            worker1.kill9().await; // relay leadership (if it was here) fails over
        }
        if round == 30 {
            worker1.restart().await;
            worker2.kill9().await; // and the other way round
        }
        let before = read2(format!("/v1/accounts/{b}")).await;
        let key = Uuid::new_v4().to_string();
        let body = json!({ "from": a, "to": b, "amount": 1, "currency": "EUR" });
        let (status, reply) =
            send(&client, &api1.base, "/v1/transfers", &key, &body, Instant::now() + Duration::from_secs(30))
                .await
                .expect("answered");
        assert_eq!(status, 201, "{reply}");
        acknowledged.insert(reply["id"].as_str().expect("id").to_owned());
        let position = reply["position"].as_i64().expect("position");
        // While the cluster fails over, a read may answer 503 consistency_timeout with
        // Retry-After; a client honours it and reads again.
        let mut answer = read2(format!("/v1/accounts/{b}?min_position={position}")).await;
        let retry_until = Instant::now() + Duration::from_secs(30);
        while answer.0 == 503 && answer.1["code"] == "consistency_timeout" && Instant::now() < retry_until {
            answer = read2(format!("/v1/accounts/{b}?min_position={position}")).await;
        }
        let (status, view) = answer;
        assert_eq!(status, 200, "read-your-writes across instances: {view}");
        assert!(
            view["version"].as_i64() > before.1["version"].as_i64(),
            "api2 does not serve a stale cached view: {view}"
        );
        // The relay may stall while the stream elects a new leader (acks time out);
        // the read above did not need it, and it catches up within seconds.
        let waited = Instant::now();
        eventually("the relay catches up", 30, || relayed(position)).await;
        relay_stall = relay_stall.max(waited.elapsed());
    }
    eventually("the relay and projections converge after the failovers", 60, || async {
        let lag = projection_lag(&pool).await;
        let head: i64 = sqlx::query_scalar("select position from log_head").fetch_one(&pool).await.unwrap_or(0);
        lag == 0 && relayed(head).await
    })
    .await;
    eprintln!("longest wait for the relay to publish an acknowledged transfer: {relay_stall:?}");
    // Processes that reconnected while a node was down saw two servers: the stream must
    // not have been scaled down by them.
    let after = stream.info().await.expect("stream info").config.num_replicas;
    assert_eq!(after, 3, "the stream keeps its three replicas through the node loss");
    for account in [&a, &b] {
        eventually("eventual reads equal strong reads on the other instance", 20, || async {
            let eventual = read2(format!("/v1/accounts/{account}")).await;
            let strong = read2(format!("/v1/accounts/{account}?consistency=strong")).await;
            eventual.0 == 200 && strong.0 == 200 && eventual.1["balance"] == strong.1["balance"]
        })
        .await;
    }
    let recorded: HashSet<String> =
        sqlx::query_scalar("select data ->> 'transfer_id' from events where type = 'TransferPosted'")
            .fetch_all(&pool)
            .await
            .expect("transfers")
            .into_iter()
            .collect();
    assert!(acknowledged.is_subset(&recorded), "no acknowledged command lost");
    let outcomes: Vec<Outcome> = Vec::new();
    let violations = check_invariants(&pool, &outcomes).await;
    assert!(violations.is_empty(), "{violations:#?}");
    drop((api1, api2, worker1, worker2));
}

/// Postgres out of disk space for its WAL: a private cluster whose WAL is on a small
/// tmpfs, filled to the last byte under load (Postgres cannot write its WAL: it panics,
/// and its restart cannot write either), held full, then freed (and the server started
/// again if it gave up, as a supervisor would). Clients keep re-sending their keys. A
/// server that restarts may still commit into the room left in its current WAL segment:
/// what it acknowledges then is durable like the rest (the checker counts it).
/// The same checker as the bank test: every acknowledged command exactly once, no key
/// twice, money conserved, read models equal to the log, the chain valid. Prints how
/// long the ledger took to answer commands again once the disk had room.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_with_the_wal_disk_full_then_freed() {
    let pg = PgCluster::start_with_wal_disk(64);
    let nats = NatsServer::start().await;
    let port = free_port();
    let env = [
        ("DATABASE_URL", pg.url("ledger")),
        ("NATS_URL", nats.url()),
        ("LEDGER_NATS_PREFIX", format!("wal{}", Uuid::new_v4().simple())),
        ("LEDGER_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ("LEDGER_PROVIDER_URL", "http://127.0.0.1:9".to_owned()),
        ("LEDGER_DB_ACQUIRE_TIMEOUT_MS", "1000".to_owned()),
        ("LEDGER_RECONCILE_INTERVAL_S", "0".to_owned()),
    ];
    let _ledger = LedgerProcess::start(&env, port).await;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let accounts = open_funded_accounts(&client, &base, 4).await;
    let accounts = Arc::new(accounts);
    let stop_at = Instant::now() + Duration::from_secs(16);
    let acknowledged_at = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (client, base, accounts) = (client.clone(), base.clone(), accounts.clone());
            let acknowledged_at = acknowledged_at.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut i = c;
                while Instant::now() < stop_at {
                    i += 1;
                    let key = Uuid::new_v4().to_string();
                    let body = json!({ "from": accounts[i % 4], "to": accounts[(i * 3 + 1) % 4], "amount": 1 + (i % 9) as i64, "currency": "EUR" });
                    if let Some((status, _)) =
                        send(&client, &base, "/v1/transfers", &key, &body, stop_at + Duration::from_secs(60)).await
                    {
                        if status == 201 {
                            acknowledged_at.lock().expect("times").push(Instant::now());
                        }
                        outcomes.push(Outcome { kind: "transfer", key, status });
                    }
                }
                outcomes
            })
        })
        .collect();
    // Deliberate: the load runs 3 s before the fault, which lasts 5 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let full_at = Instant::now();
    let filled = pg.hold_wal_disk_full(Duration::from_secs(5)).await;
    let freed_at = Instant::now();
    let restarted = pg.supervise().await;
    let outcomes: Vec<Outcome> =
        join_all(clients).await.into_iter().flat_map(|r| r.expect("client finished")).collect();
    let times = acknowledged_at.lock().expect("times").clone();
    let during = times.iter().filter(|t| **t > full_at + Duration::from_secs(1) && **t < freed_at).count();
    let recovered = times.iter().filter(|t| **t > freed_at).min().map(|t| t.duration_since(freed_at));
    let pool = PgPool::connect(&pg.url("ledger")).await.expect("pool");
    eventually("projections catch up", 120, || async { projection_lag(&pool).await == 0 }).await;
    let violations = check_invariants(&pool, &outcomes).await;
    let acknowledged = outcomes.iter().filter(|o| (200..300).contains(&o.status)).count();
    println!(
        "wal disk full: {filled} bytes filled for 5 s; {acknowledged} of {} acknowledged, {during} while full; \
         server restarted by the test: {restarted}; commands answered again {recovered:?} after the disk was freed; \
         {} violations",
        outcomes.len(),
        violations.len()
    );
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(filled > 0 && pg.log_contains("No space left on device"), "Postgres never ran out of room for its WAL");
    assert!(recovered.is_some(), "no command was acknowledged after the disk was freed");
    assert!(acknowledged > 20, "the ledger made progress around the fault");
}

//! The attacker's brief of issue 26, each item a test that failed on the `main` the
//! issue was filed against: one bulk key executing twice, a shared system account
//! driven to overflow, conditions and hold payees not re-checked across two writers,
//! unbounded work in the writer, a bitemporal fold that panicked, webhooks that reach
//! any host and leak what they found, secrets in clear, forged announcements, and a
//! hold-expiry worker that spins.

use ledger_domain::Currency;
use ledger_domain::decide::system_account_id;
use ledger_tests::{Reply, TestApp, eventually, test_config};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

fn key() -> String {
    Uuid::new_v4().to_string()
}

fn item(path: &str, key: &str, body: Value) -> Value {
    json!({ "method": "POST", "path": path, "idempotency_key": key, "body": body })
}

fn transfers(from: Uuid, to: Uuid, n: usize) -> Value {
    let items: Vec<Value> = (0..n)
        .map(|_| item("/v1/transfers", &key(), json!({ "from": from, "to": to, "amount": 1, "currency": "EUR" })))
        .collect();
    json!({ "items": items })
}

async fn balance(app: &TestApp, id: Uuid) -> i64 {
    app.account(id).await["balance"].as_i64().expect("a balance")
}

/// Two apps (two writers, as two `ledger api` processes would be) on one database.
async fn two_writers() -> (TestApp, TestApp) {
    let config = test_config();
    let first = TestApp::spawn_with(config.clone()).await;
    let second = TestApp::spawn_mode(config, ledger_api::run::serve::Mode::Api).await;
    (first, second)
}

/// Item 1: two bulks with one key, sent 0–30 ms apart, to one process or two, with
/// regenerated item keys (a different body) or the same body: money moves once, the
/// loser is told 409 `idempotency_key_in_flight` or 422 `idempotency_key_reused`, and
/// what the key replays afterwards is the execution, never a transient refusal.
#[tokio::test]
async fn one_bulk_key_never_moves_money_twice() {
    let (first, second) = two_writers().await;
    let (a, b) = (first.open_account("EUR", 0).await, first.open_account("EUR", 0).await);
    first.deposit(a, 1_000_000, "EUR").await;
    for round in 0..12u64 {
        let bulk_key = key();
        let same_body = round % 2 == 1;
        let body_one = transfers(a, b, 20);
        let body_two = if same_body { body_one.clone() } else { transfers(a, b, 20) };
        let other = if round % 4 < 2 { &first } else { &second };
        let before = balance(&first, b).await;
        let (one, two) = tokio::join!(first.post("/v1/bulk", &bulk_key, &body_one), async {
            tokio::time::sleep(Duration::from_millis(round * 30 / 11)).await;
            other.post("/v1/bulk", &bulk_key, &body_two).await
        });
        let moved = balance(&first, b).await - before;
        assert_eq!(moved, 20, "round {round}: one bulk's 20 transfers, once ({one:?} / {two:?})");
        for r in [&one, &two] {
            assert!(
                r.status == StatusCode::OK
                    || (r.status == StatusCode::CONFLICT && r.code() == "idempotency_key_in_flight")
                    || (r.status == StatusCode::UNPROCESSABLE_ENTITY && r.code() == "idempotency_key_reused"),
                "round {round}: {r:?}"
            );
        }
        let replay = first.post("/v1/bulk", &bulk_key, &body_one).await;
        if replay.status == StatusCode::OK {
            let results = replay.body["results"].as_array().expect("results");
            assert!(
                results.iter().all(|r| r["status"] == json!(201)),
                "round {round}: the key replays the execution, not a transient refusal: {replay:?}"
            );
        } else {
            // The first send was the other body: this one is another request.
            assert!(!same_body, "round {round}: {replay:?}");
            assert_eq!(replay.code(), "idempotency_key_reused", "round {round}");
        }
    }
    first.fold_log().await;
}

/// Item 10: a bulk whose own key is one of its items' keys is refused whole.
#[tokio::test]
async fn a_bulk_key_used_by_its_own_item_is_refused() {
    let app = TestApp::spawn().await;
    let (a, b) = (app.open_account("EUR", 0).await, app.open_account("EUR", 0).await);
    app.deposit(a, 100, "EUR").await;
    let shared = key();
    let body = json!({ "items": [item("/v1/transfers", &shared, json!({ "from": a, "to": b, "amount": 1, "currency": "EUR" }))] });
    let first = app.post("/v1/bulk", &shared, &body).await;
    assert_eq!(first.status, StatusCode::UNPROCESSABLE_ENTITY, "{first:?}");
    assert_eq!(first.code(), "validation_error");
    assert_eq!(balance(&app, b).await, 0, "nothing ran");
}

/// Item 2: one client pushing deposits of 10^15 cannot make a currency unusable for
/// another: the system account's balance goes past what an i64 holds, every other
/// deposit still succeeds, and every currency still sums to zero.
#[tokio::test]
async fn one_client_cannot_exhaust_a_currency() {
    let app = TestApp::spawn().await;
    let created = app.post("/v1/admin/tokens", &key(), &json!({ "name": "tenant-b", "role": "client" })).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let other_token = created.body["token"].as_str().expect("a token").to_owned();
    let victim = app.open_account("EUR", 0).await;
    for round in 0..10 {
        let account = app.open_account("EUR", 0).await;
        let items: Vec<Value> = (0..1000)
            .map(|_| {
                item(
                    "/v1/deposits",
                    &key(),
                    json!({ "account_id": account, "amount": 1_000_000_000_000_000i64, "currency": "EUR" }),
                )
            })
            .collect();
        let r = app.post("/v1/bulk", &key(), &json!({ "items": items })).await;
        assert_eq!(r.status, StatusCode::OK, "round {round}: {r:?}");
        let refused =
            r.body["results"].as_array().expect("results").iter().filter(|i| i["status"] != json!(201)).count();
        assert_eq!(refused, 0, "round {round}: every deposit is taken ({:?})", r.body["results"][999]);
    }
    let deposit = app
        .client
        .post(format!("{}/v1/deposits", app.base))
        .bearer_auth(&other_token)
        .header("idempotency-key", key())
        .json(&json!({ "account_id": victim, "amount": 1, "currency": "EUR" }))
        .send()
        .await
        .expect("sent");
    let deposit = TestApp::decode("POST", deposit).await;
    assert_eq!(deposit.status, StatusCode::CREATED, "another client's deposit still works: {deposit:?}");
    // Read as text: past 64 bits a JSON number is exact only for a parser that keeps it.
    let system = system_account_id(Currency::parse("EUR").expect("valid"));
    for consistency in ["strong", "eventual"] {
        app.catch_up().await;
        let body = app
            .client
            .get(format!("{}/v1/accounts/{system}?consistency={consistency}", app.base))
            .bearer_auth(ledger_tests::ADMIN_TOKEN)
            .send()
            .await
            .expect("sent")
            .text()
            .await
            .expect("a body");
        assert!(body.contains("\"balance\":-10000000000000000001,"), "{consistency}: the whole issue: {body}");
    }
    let statement = app.get(&format!("/v1/accounts/{system}/transactions?limit=1")).await;
    assert_eq!(statement.status, StatusCode::OK, "{statement:?}");
    app.fold_log().await;
    app.assert_read_models_match_log().await;
}

/// Items 3 and 13: a transaction's condition on an account outside its postings, and a
/// hold's payee, are part of what the decision read: with two writers, neither commits
/// after another writer changed that account.
#[tokio::test]
async fn conditions_and_hold_payees_are_checked_at_commit_across_two_writers() {
    let (first, second) = two_writers().await;
    let (x, y) = (first.open_account("EUR", 0).await, first.open_account("EUR", 0).await);
    first.deposit(x, 1_000_000, "EUR").await;
    let mut violations = Vec::new();
    for round in 0..25 {
        // The condition account C is drained by the other writer while transactions
        // that require its funds (at its current version) are decided.
        let (c, z) = (first.open_account("EUR", 0).await, first.open_account("EUR", 0).await);
        first.deposit(c, 100_000, "EUR").await;
        let version = first.account(c).await["version"].as_i64().expect("version");
        let payee = first.open_account("EUR", 0).await;
        let transaction = json!({
            "postings": [{ "from": x, "to": y, "amount": 1, "currency": "EUR" }],
            "conditions": [{ "account_id": c, "expected_version": version, "available_at_least": 100_000 }],
        });
        let hold = json!({ "account_id": x, "to": payee, "amount": 1, "currency": "EUR" });
        let drain = json!({ "from": c, "to": z, "amount": 100_000, "currency": "EUR" });
        let keys: Vec<String> = (0..14).map(|_| key()).collect();
        let conditioned = keys[..6].iter().map(|k| first.post("/v1/transactions", k, &transaction));
        let holds = keys[6..12].iter().map(|k| first.post("/v1/holds", k, &hold));
        let close_path = format!("/v1/accounts/{payee}/close");
        let empty = json!({});
        let (conditioned, holds, drained, closed) = tokio::join!(
            futures::future::join_all(conditioned),
            futures::future::join_all(holds),
            second.post("/v1/transfers", &keys[12], &drain),
            second.post(&close_path, &keys[13], &empty),
        );
        let drained_at = (drained.status == StatusCode::CREATED).then(|| drained.body["position"].as_i64());
        let closed_at = (closed.status == StatusCode::OK).then(|| closed.body["position"].as_i64());
        for t in conditioned.iter().filter(|t| t.status == StatusCode::CREATED) {
            if let Some(Some(at)) = drained_at
                && t.body["position"].as_i64() > Some(at)
            {
                violations.push(format!("round {round}: a transaction committed after its condition account changed"));
            }
        }
        for h in holds.iter().filter(|h| h.status == StatusCode::CREATED) {
            if let Some(Some(at)) = closed_at
                && h.body["position"].as_i64() > Some(at)
            {
                violations.push(format!("round {round}: a hold was placed on a closed payee"));
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
    first.fold_log().await;
}

/// Item 4: the writer's work per command is bounded at the edge.
#[tokio::test]
async fn work_per_command_is_bounded_before_the_writer() {
    let app = TestApp::spawn().await;
    let (a, b) = (app.open_account("EUR", 0).await, app.open_account("EUR", 0).await);
    app.deposit(a, 100, "EUR").await;
    let posting = json!([{ "from": a, "to": b, "amount": 1, "currency": "EUR" }]);
    let conditions: Vec<Value> = (0..101).map(|_| json!({ "account_id": a, "available_at_least": 1 })).collect();
    let r = app.post("/v1/transactions", &key(), &json!({ "postings": posting, "conditions": conditions })).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "101 conditions: {r:?}");
    assert_eq!(r.code(), "validation_error");
    // A bulk item is held to the body limit of the route it names.
    let huge: Vec<Value> =
        (0..3000).map(|_| json!({ "account_id": Uuid::new_v4(), "available_at_least": 1 })).collect();
    let body = json!({ "postings": posting, "conditions": huge });
    assert!(body.to_string().len() > 64 * 1024);
    let r = app.post("/v1/bulk", &key(), &json!({ "items": [item("/v1/transactions", &key(), body)] })).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["results"][0]["status"], json!(413), "{r:?}");
    assert_eq!(r.body["results"][0]["body"]["code"], json!("payload_too_large"));
    assert_eq!(balance(&app, b).await, 0);
}

/// Item 5: a hold captured with an `effective_at` before the hold was placed: balances
/// at every business time answer (no "negative holds" panic), postings by their
/// effective time, the hold by when it was placed and released.
#[tokio::test]
async fn a_backdated_capture_keeps_effective_balances_answering() {
    let app = TestApp::spawn().await;
    let (a, b) = (app.open_account("EUR", 0).await, app.open_account("EUR", 0).await);
    let now = chrono::Utc::now();
    let earlier = |h: i64| (now - chrono::Duration::hours(h)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let r = app
        .post(
            "/v1/deposits",
            &key(),
            &json!({ "account_id": a, "amount": 1000, "currency": "EUR", "effective_at": earlier(3) }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let hold =
        app.post("/v1/holds", &key(), &json!({ "account_id": a, "to": b, "amount": 600, "currency": "EUR" })).await;
    assert_eq!(hold.status, StatusCode::CREATED, "{hold:?}");
    let captured = app
        .post(
            &format!("/v1/holds/{}/capture", hold.id()),
            &key(),
            &json!({ "amount": 400, "effective_at": earlier(1) }),
        )
        .await;
    assert_eq!(captured.status, StatusCode::OK, "{captured:?}");
    let at = |t: String| format!("/v1/accounts/{a}/balance?effective_at={}", t.replace('+', "%2B"));
    for (when, balance) in [(earlier(2), 1000), (earlier(1), 600), (earlier(0), 600)] {
        let r = app.get(&at(when.clone())).await;
        assert_eq!(r.status, StatusCode::OK, "effective {when}: {r:?}");
        assert_eq!(
            (r.body["balance"].as_i64(), r.body["available"].as_i64()),
            (Some(balance), Some(balance)),
            "{when}"
        );
    }
    let future =
        (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let r = app.get(&at(future)).await;
    assert_eq!((r.body["balance"].as_i64(), r.body["available"].as_i64()), (Some(600), Some(600)), "{r:?}");
}

/// Item 9: a busy stream, always in the writer's cache, is snapshotted as it grows, so
/// historical reads start near the position they ask for.
#[tokio::test]
async fn busy_streams_are_snapshotted_as_they_grow() {
    let mut config = test_config();
    config.snapshot_every = 20;
    let app = TestApp::spawn_with(config).await;
    let a = app.open_account("EUR", 0).await;
    for _ in 0..50 {
        app.deposit(a, 1, "EUR").await;
    }
    let version: Option<i64> = sqlx::query_scalar("select max(version) from snapshots where stream_id = $1")
        .bind(a)
        .fetch_one(&app.pool)
        .await
        .expect("snapshots readable");
    assert!(version.is_some_and(|v| v >= 40), "a snapshot near the head of a hot stream: {version:?}");
}

async fn register(app: &TestApp, url: &str) -> Reply {
    app.post("/v1/admin/webhooks", &key(), &json!({ "url": url })).await
}

/// Item 6: webhook URLs with credentials, link-local and metadata addresses (however
/// they are spelled) are refused at registration.
#[tokio::test]
async fn webhooks_cannot_target_link_local_metadata_or_carry_credentials() {
    let app = TestApp::spawn().await;
    for url in [
        "http://user:pw@127.0.0.1:9/",
        "http://169.254.169.254/latest/meta-data/",
        "http://2852039166/",
        "http://0xa9fea9fe/",
        "http://[fe80::1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://0.0.0.0:5432/",
    ] {
        let r = register(&app, url).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {r:?}");
        assert_eq!(r.code(), "validation_error", "{url}");
    }
}

/// Item 6: what a dead letter says of a failed endpoint does not tell a closed port
/// from an open one that speaks something else or from a silent one.
#[tokio::test]
async fn dead_letters_do_not_tell_ports_apart() {
    let mut config = test_config();
    config.webhook_attempts_max = 1;
    config.webhook_timeout = Duration::from_millis(300);
    let app = TestApp::spawn_with(config).await;
    let closed = ledger_tests::procs::free_port();
    let talker = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (talker_port, silent_port) =
        (talker.local_addr().expect("addr").port(), silent.local_addr().expect("addr").port());
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut s, _)) = talker.accept().await {
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await;
        }
    });
    let _keep = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
        }
    });
    let mut ids = Vec::new();
    for port in [closed, talker_port, silent_port] {
        let r = register(&app, &format!("http://127.0.0.1:{port}/hook")).await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        ids.push(r.id());
    }
    let a = app.open_account("EUR", 0).await;
    app.deposit(a, 1, "EUR").await;
    let mut errors = Vec::new();
    for id in &ids {
        let source = json!(format!("webhook:{id}"));
        let letter = || async {
            let list = app.get("/v1/admin/dead-letters").await;
            list.body["dead_letters"].as_array().into_iter().flatten().find(|d| d["source"] == source).cloned()
        };
        eventually("the event is dead-lettered", 30, || async { letter().await.is_some() }).await;
        let found = letter().await.unwrap_or_default();
        errors.push(found["last_error"].clone());
    }
    assert!(errors.windows(2).all(|w| w[0] == w[1]), "one coarse class for every unreachable endpoint: {errors:?}");
}

/// Item 6: the host policy is applied to the address a name resolves to, at connect
/// time; and registrations are capped.
#[tokio::test]
async fn the_host_policy_holds_at_connect_time_and_webhooks_are_capped() {
    let mut config = test_config();
    config.webhook_deny = "127.0.0.0/8, ::1/128".into();
    config.webhook_attempts_max = 1;
    config.webhooks_max = 2;
    let app = TestApp::spawn_with(config).await;
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = receiver.local_addr().expect("addr").port();
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = reached.clone();
    tokio::spawn(async move {
        while let Ok(_conn) = receiver.accept().await {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    for literal in
        [format!("http://127.0.0.1:{port}/"), format!("http://2130706433:{port}/"), format!("http://[::1]:{port}/")]
    {
        let r = register(&app, &literal).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{literal}: {r:?}");
    }
    // A name passes registration; the address it resolves to is refused when it connects.
    let by_name = register(&app, &format!("http://localhost:{port}/hook")).await;
    assert_eq!(by_name.status, StatusCode::CREATED, "{by_name:?}");
    let a = app.open_account("EUR", 0).await;
    app.deposit(a, 1, "EUR").await;
    let source = json!(format!("webhook:{}", by_name.id()));
    eventually("the event is dead-lettered as refused", 30, || async {
        let list = app.get("/v1/admin/dead-letters").await;
        list.body["dead_letters"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d["source"] == source && d["last_error"] == json!("refused by the webhook host policy"))
    })
    .await;
    assert!(!reached.load(std::sync::atomic::Ordering::SeqCst), "no connection reached the denied address");
    let second = register(&app, "http://example.invalid/hook").await;
    assert_eq!(second.status, StatusCode::CREATED, "{second:?}");
    let third = register(&app, "http://example.invalid/other").await;
    assert_eq!((third.status, third.code()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"), "{third:?}");
}

/// Item 8: bulks are bounded per principal (a slow upload holds only its own client's
/// turns: 429 for that client, nothing for another) and per process (a bulk with no turn
/// to run is refused 503 with `Retry-After`); neither refusal runs anything or counts
/// against the Postgres breaker.
#[tokio::test]
async fn bulks_are_bounded_per_client_and_per_process() {
    use tokio::io::AsyncWriteExt;
    let mut config = test_config();
    config.bulk_concurrency_max = 1;
    config.bulk_wait = Duration::from_millis(200);
    let app = TestApp::spawn_with(config).await;
    let (a, b) = (app.open_account("EUR", 0).await, app.open_account("EUR", 0).await);
    app.deposit(a, 100, "EUR").await;
    let created = app.post("/v1/admin/tokens", &key(), &json!({ "name": "other-client", "role": "client" })).await;
    let other = created.body["token"].as_str().expect("a token").to_owned();
    // The admin token's bulk whose body arrives slowly holds that token's one turn.
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let head = format!(
        "POST /v1/bulk HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\nidempotency-key: {}\r\n\
         content-type: application/json\r\ncontent-length: 1000000\r\n\r\n{{\"items\": [",
        ledger_tests::ADMIN_TOKEN,
        key()
    );
    slow.write_all(head.as_bytes()).await.expect("written");
    slow.flush().await.expect("flushed");
    let body = transfers(a, b, 1);
    eventually("the same client's next bulk is refused while its slow one is read", 10, || async {
        let r = app.post("/v1/bulk", &key(), &body).await;
        r.status == StatusCode::TOO_MANY_REQUESTS && r.code() == "rate_limited" && r.header("retry-after") == Some("1")
    })
    .await;
    // Another client is not held up by it.
    let by_other = app
        .client
        .post(format!("{}/v1/bulk", app.base))
        .bearer_auth(&other)
        .header("idempotency-key", key())
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(TestApp::decode("POST", by_other).await.status, StatusCode::OK, "another client's bulk runs");
    drop(slow);
    // With every turn to run taken, a bulk is refused 503 after the wait, never run.
    let turns = app.state.shared.bulk_permits.clone().acquire_many_owned(1).await.expect("the turn");
    for _ in 0..4 {
        let r = app.post("/v1/bulk", &key(), &body).await;
        assert_eq!(
            (r.status, r.code(), r.header("retry-after")),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable", Some("1"))
        );
    }
    // Shedding says nothing of Postgres: its breaker stays closed, commands go on.
    assert_eq!(app.deposit(a, 1, "EUR").await.status, StatusCode::CREATED, "no breaker opened by shedding");
    assert_eq!(balance(&app, b).await, 1, "only the other client's bulk ran");
    drop(turns);
    assert_eq!(app.post("/v1/bulk", &key(), &body).await.status, StatusCode::OK);
    assert_eq!(balance(&app, b).await, 2);
}

/// Item 11: a webhook's secret is kept encrypted, and no idempotency record holds it;
/// the replay of the registration still gives it back.
#[tokio::test]
async fn webhook_secrets_are_not_stored_in_clear() {
    let app = TestApp::spawn().await;
    let k = key();
    let body = json!({ "url": "http://127.0.0.1:9/hook" });
    let created = app.post("/v1/admin/webhooks", &k, &body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let secret = created.body["secret"].as_str().expect("a secret").to_owned();
    let tables: Vec<String> = sqlx::query_scalar(
        "select table_name::text from information_schema.tables where table_schema = 'public' and table_type = 'BASE TABLE'",
    )
    .fetch_all(&app.pool)
    .await
    .expect("tables");
    for table in tables {
        let sql = format!("select count(*) from \"{table}\" t where t::text like '%' || $1 || '%'");
        let hits: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(&secret).fetch_one(&app.pool).await.expect("scan");
        assert_eq!(hits, 0, "the secret is in clear in `{table}`");
    }
    let replay = app.post("/v1/admin/webhooks", &k, &body).await;
    assert_eq!(replay.body["secret"], json!(secret), "{replay:?}");
}

/// Item 15: an announcement on NATS is a hint: a forged one claiming a position the
/// read model has not reached does not make a `min_position` read answer below it.
#[tokio::test]
async fn forged_announcements_do_not_satisfy_min_position() {
    let mut config = test_config();
    config.consistency_wait = Duration::from_millis(500);
    let app = TestApp::spawn_with(config).await;
    let a = app.open_account("EUR", 0).await;
    let head = app.state.store.head().await.expect("head");
    let forged = json!({ "origin": Uuid::new_v4(), "projection": "accounts", "position": head + 1000, "accounts": [], "all": false });
    let subject = app.state.names.cache_invalidation_subject();
    app.state.nats.publish(subject, forged.to_string().into()).await.expect("published");
    app.state.nats.flush().await.expect("flushed");
    tokio::time::sleep(Duration::from_millis(200)).await; // the forged announcement arrives
    let r = app.get(&format!("/v1/accounts/{a}?min_position={}", head + 500)).await;
    if r.status == StatusCode::OK {
        let position: i64 = r.header("x-ledger-position").and_then(|p| p.parse().ok()).expect("a position");
        assert!(position >= head + 500, "answered at {position} below the asked {}", head + 500);
    } else {
        assert_eq!(r.code(), "consistency_timeout", "{r:?}");
    }
}

/// Item 14: holds that look due in the read model but are no longer pending in the log
/// do not make the expiry worker spin.
#[tokio::test]
async fn stale_due_holds_do_not_make_the_expiry_worker_spin() {
    let app = TestApp::spawn().await;
    sqlx::query(
        "insert into holds_view (id, account_id, to_account, amount, currency, status, expires_at, position)
         select gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 1, 'EUR', 'pending', now() - interval '1 hour', 1
         from generate_series(1, 1200)",
    )
    .execute(&app.pool)
    .await
    .expect("stale rows");
    let scans = || async {
        let n: i64 = sqlx::query_scalar(
            "select coalesce(sum(idx_scan), 0)::bigint from pg_stat_user_indexes where indexrelname = 'holds_view_expiring'",
        )
        .fetch_one(&app.pool)
        .await
        .expect("stats");
        n
    };
    let _ = sqlx::query("select pg_stat_clear_snapshot()").execute(&app.pool).await;
    let before = scans().await;
    tokio::time::sleep(Duration::from_secs(4)).await; // the worker's rounds run meanwhile
    let _ = sqlx::query("select pg_stat_force_next_flush()").execute(&app.pool).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // statistics are flushed about every second
    let after = scans().await;
    assert!(after - before < 30, "the expiry worker looked {} times in 4 s", after - before);
    // And a hold that is due behind all of them still expires.
    let (a, b) = (app.open_account("EUR", 0).await, app.open_account("EUR", 0).await);
    app.deposit(a, 100, "EUR").await;
    let expires_at = (chrono::Utc::now() + chrono::Duration::milliseconds(500)).to_rfc3339();
    let hold = app
        .post(
            "/v1/holds",
            &key(),
            &json!({ "account_id": a, "to": b, "amount": 10, "currency": "EUR", "expires_at": expires_at }),
        )
        .await;
    eventually("the real hold expires", 15, || async {
        app.get(&format!("/v1/holds/{}?consistency=strong", hold.id())).await.body["status"] == json!("expired")
    })
    .await;
}

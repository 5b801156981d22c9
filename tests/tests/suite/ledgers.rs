//! Ledgers (API.md "Ledgers"): independent books in one deployment. What matters most
//! is isolation: nothing of one ledger is visible or usable through another. Then the
//! directory's routes, tokens confined to ledgers, hostile names, and placement on
//! several shards, one of which goes down.

use ledger_tests::procs::PgCluster;
use ledger_tests::{ADMIN_TOKEN, Reply, TestApp, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

fn key() -> String {
    Uuid::new_v4().to_string()
}

pub async fn create_ledger(app: &TestApp, name: &str) -> Reply {
    app.post("/v1/admin/ledgers", &key(), &json!({ "name": name })).await
}

/// `path` (which starts with `/v1/`) under the prefix of `ledger`.
pub fn under(ledger: &str, path: &str) -> String {
    format!("/v1/ledgers/{ledger}/{}", path.strip_prefix("/v1/").expect("a /v1 path"))
}

pub async fn open(app: &TestApp, ledger: &str, currency: &str) -> Uuid {
    let r = app.post(&under(ledger, "/v1/accounts"), &key(), &json!({ "currency": currency })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    r.id()
}

async fn get_with(app: &TestApp, token: &str, path: &str) -> Reply {
    let request = app.client.get(format!("{}{path}", app.base)).bearer_auth(token);
    TestApp::decode("GET", request.send().await.expect("request sent")).await
}

async fn post_with(app: &TestApp, token: &str, path: &str, body: &Value) -> Reply {
    let request =
        app.client.post(format!("{}{path}", app.base)).bearer_auth(token).header("idempotency-key", key()).json(body);
    TestApp::decode("POST", request.send().await.expect("request sent")).await
}

/// Every event of a ledger's log, checked gapless from 1, with its chain verified.
pub async fn log_of(app: &TestApp, ledger: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let page = app.get(&under(ledger, &format!("/v1/events?after={after}&limit=500"))).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        let batch = page.body["events"].as_array().cloned().unwrap_or_default();
        if batch.is_empty() {
            break;
        }
        for e in batch {
            after += 1;
            assert_eq!(e["position"], json!(after), "ledger {ledger}: positions gapless from 1");
            events.push(e);
        }
    }
    let verify = app.get(&under(ledger, "/v1/audit/verify")).await;
    assert_eq!(verify.status, StatusCode::OK, "{verify:?}");
    assert_eq!(verify.body["ok"], json!(true), "ledger {ledger}: {verify:?}");
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ledgers_are_independent_books_and_nothing_crosses() {
    let app = TestApp::spawn().await;
    let created = create_ledger(&app, "acme").await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!(created.body["name"], json!("acme"));
    assert_eq!(created.body["shard"], json!("main"));
    assert!(created.body["created_at"].is_string());
    assert_eq!(create_ledger(&app, "zeta").await.status, StatusCode::CREATED);
    let again = create_ledger(&app, "acme").await;
    assert_eq!((again.status, again.code()), (StatusCode::CONFLICT, "version_conflict"), "{again:?}");
    assert_eq!(create_ledger(&app, "default").await.status, StatusCode::CONFLICT);

    // One account per ledger; the same Idempotency-Key in two ledgers is two commands.
    let (d, a, z) =
        (app.open_account("EUR", 0).await, open(&app, "acme", "EUR").await, open(&app, "zeta", "EUR").await);
    let shared_key = key();
    for (ledger, account, amount) in [("default", d, 100), ("acme", a, 200), ("zeta", z, 300)] {
        let body = json!({ "account_id": account, "amount": amount, "currency": "EUR" });
        let r = app.post(&under(ledger, "/v1/deposits"), &shared_key, &body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{ledger}: {r:?}");
        assert_eq!(r.header("idempotent-replayed"), None, "{ledger}: keys are scoped per ledger");
    }
    // The acme log starts at 1 and holds only acme's events: its own EUR system
    // account, opened with its first EUR account, the account and the deposit.
    let acme = log_of(&app, "acme").await;
    assert_eq!(acme.len(), 3, "{acme:?}");
    let default_before = log_of(&app, "default").await.len();

    // Ids of one ledger are 404 under another, with the route's usual code.
    for (ledger, foreign) in [("acme", d), ("acme", z), ("zeta", a), ("default", a)] {
        let r = app.get(&under(ledger, &format!("/v1/accounts/{foreign}?consistency=strong"))).await;
        assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "account_not_found"), "{ledger} {foreign}: {r:?}");
        let r = app.get(&under(ledger, &format!("/v1/accounts/{foreign}/events"))).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
    }
    // Money never moves between ledgers in one command; nothing is applied.
    let across = json!({ "from": a, "to": d, "amount": 10, "currency": "EUR" });
    let r = app.post(&under("acme", "/v1/transfers"), &key(), &across).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "account_not_found"), "{r:?}");
    let across = json!({ "postings": [{ "from": a, "to": z, "amount": 10, "currency": "EUR" }] });
    let r = app.post(&under("acme", "/v1/transactions"), &key(), &across).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "account_not_found"), "{r:?}");
    assert_eq!(log_of(&app, "acme").await.len(), 3);
    assert_eq!(log_of(&app, "default").await.len(), default_before);

    // Each ledger's system account holds its own deposits only (the ids coincide).
    let mut system_ids = Vec::new();
    for (ledger, amount) in [("default", -100), ("acme", -200), ("zeta", -300)] {
        let r = app.get(&under(ledger, "/v1/system-accounts")).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        let eur: Vec<&Value> =
            r.body["accounts"].as_array().expect("a list").iter().filter(|s| s["currency"] == "EUR").collect();
        assert_eq!(eur.len(), 1, "{ledger}: {r:?}");
        let id = eur[0]["id"].as_str().expect("an id").to_owned();
        let view = app.get(&under(ledger, &format!("/v1/accounts/{id}?consistency=strong"))).await;
        assert_eq!(view.body["balance"], json!(amount), "{ledger}: {view:?}");
        system_ids.push(id);
    }
    system_ids.dedup();
    assert_eq!(system_ids.len(), 1, "a currency's system account has one id in every ledger");
    // Positions are the addressed ledger's.
    let t = app
        .post(&under("zeta", "/v1/deposits"), &key(), &json!({ "account_id": z, "amount": 1, "currency": "EUR" }))
        .await;
    assert_eq!(t.body["position"], json!(4), "{t:?}");
    let read = app.get(&under("acme", &format!("/v1/accounts/{a}?consistency=strong"))).await;
    assert_eq!(read.header("x-ledger-position"), Some("3"), "{read:?}");

    // Unknown ledgers, hostile names, and the deployment's routes under a prefix.
    for name in ["nope", "Acme", "1abc", "a_b", "a%2Fb", &"a".repeat(64), "acme%00", "acme%20"] {
        let r = app.get(&format!("/v1/ledgers/{name}/accounts?owner=x")).await;
        assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "ledger_not_found"), "{name}: {r:?}");
    }
    let anonymous = app.client.get(format!("{}/v1/ledgers/nope/events", app.base)).send().await.expect("sent");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED, "authentication comes first");
    for path in ["/v1/ledgers/acme/admin/tokens", "/v1/ledgers/acme/admin/ledgers", "/v1/ledgers/default/admin/tokens"]
    {
        let r = app.post(path, &key(), &json!({ "name": "x", "role": "client" })).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {r:?}");
    }
    for body in [
        json!({ "name": "Upper" }),
        json!({ "name": "" }),
        json!({ "name": "9lives" }),
        json!({ "name": "a".repeat(64) }),
        json!({ "name": "under_score" }),
        json!({ "name": "x", "shard": "nowhere" }),
        json!({ "name": "x", "metadata": "not an object" }),
        json!({ "name": 7 }),
    ] {
        let r = app.post("/v1/admin/ledgers", &key(), &body).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"), "{body}: {r:?}");
    }

    // The directory lists every ledger with its head.
    let list = app.get("/v1/admin/ledgers").await;
    assert_eq!(list.status, StatusCode::OK, "{list:?}");
    let names: Vec<&str> =
        list.body["ledgers"].as_array().expect("a list").iter().filter_map(|l| l["name"].as_str()).collect();
    assert_eq!(names, ["default", "acme", "zeta"]);
    assert_eq!(list.body["ledgers"][2]["head"], json!(4));
    let one = app.get("/v1/admin/ledgers/acme").await;
    assert_eq!((one.status, one.body["head"].clone()), (StatusCode::OK, json!(3)), "{one:?}");
    let missing = app.get("/v1/admin/ledgers/nope").await;
    assert_eq!((missing.status, missing.code()), (StatusCode::NOT_FOUND, "ledger_not_found"));

    // A bulk runs in its ledger; an item path with a prefix is refused whole.
    let items = |path: &str| {
        json!({ "items": [{ "method": "POST", "path": path, "idempotency_key": key(),
                            "body": { "account_id": a, "amount": 5, "currency": "EUR" } }] })
    };
    let r = app.post(&under("acme", "/v1/bulk"), &key(), &items("/v1/ledgers/acme/deposits")).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"), "{r:?}");
    let r = app.post(&under("acme", "/v1/bulk"), &key(), &items("/v1/deposits")).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["results"][0]["status"], json!(201), "{r:?}");
    assert_eq!(app.account(d).await["balance"], json!(100), "the default account is untouched");
    let balance = app.get(&under("acme", &format!("/v1/accounts/{a}?consistency=strong"))).await;
    assert_eq!(balance.body["balance"], json!(205), "{balance:?}");

    // Every log still holds only its own events, chain intact.
    let acme = log_of(&app, "acme").await;
    let ids: Vec<String> = acme.iter().map(|e| e["stream_id"].as_str().unwrap_or_default().to_owned()).collect();
    assert!(!ids.contains(&d.to_string()) && !ids.contains(&z.to_string()), "{acme:?}");
    app.fold_log().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_confined_to_ledgers_reaches_only_those() {
    let app = TestApp::spawn().await;
    for name in ["acme", "zeta"] {
        assert_eq!(create_ledger(&app, name).await.status, StatusCode::CREATED);
    }
    let unknown =
        app.post("/v1/admin/tokens", &key(), &json!({ "name": "x", "role": "client", "ledgers": ["nope"] })).await;
    assert_eq!((unknown.status, unknown.code()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"), "{unknown:?}");
    for ledgers in [json!(["Bad!"]), json!([]), json!("acme"), json!([7])] {
        let bad =
            app.post("/v1/admin/tokens", &key(), &json!({ "name": "y", "role": "client", "ledgers": ledgers })).await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{ledgers}: {bad:?}");
    }
    let issued = |name: &'static str, role: &'static str, ledgers: Value| {
        let app = app.clone_handle();
        async move {
            let r =
                app.post("/v1/admin/tokens", &key(), &json!({ "name": name, "role": role, "ledgers": ledgers })).await;
            assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
            r.body["token"].as_str().expect("the secret").to_owned()
        }
    };
    let client = issued("acme-client", "client", json!(["acme"])).await;
    let admin = issued("acme-admin", "admin", json!(["acme"])).await;
    let everywhere = issued("ops", "operator", Value::Null).await;

    let a = post_with(&app, &client, "/v1/ledgers/acme/accounts", &json!({ "currency": "EUR" })).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    for path in ["/v1/accounts?owner=x", "/v1/ledgers/default/accounts?owner=x", "/v1/ledgers/zeta/accounts?owner=x"] {
        let r = get_with(&app, &client, path).await;
        assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "forbidden"), "{path}: {r:?}");
    }
    let r = post_with(&app, &client, "/v1/ledgers/zeta/accounts", &json!({ "currency": "EUR" })).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    // Ledgers it may not use look alike, existing or not: nothing to enumerate.
    let r = get_with(&app, &client, "/v1/ledgers/no-such-ledger/events").await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "forbidden"), "{r:?}");
    // A confined admin administers its ledgers, not the deployment.
    assert_eq!(get_with(&app, &admin, "/v1/ledgers/acme/admin/projections").await.status, StatusCode::OK);
    for (path, body) in [
        ("/v1/admin/ledgers", json!({ "name": "mine" })),
        ("/v1/admin/tokens", json!({ "name": "wider", "role": "admin" })),
    ] {
        let r = post_with(&app, &admin, path, &body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {r:?}");
    }
    assert_eq!(get_with(&app, &admin, "/v1/admin/ledgers").await.status, StatusCode::FORBIDDEN);
    // An unscoped operator reads every ledger and the directory, and creates none.
    assert_eq!(get_with(&app, &everywhere, "/v1/ledgers/zeta/events").await.status, StatusCode::OK);
    assert_eq!(get_with(&app, &everywhere, "/v1/admin/ledgers").await.status, StatusCode::OK);
    let r = post_with(&app, &everywhere, "/v1/admin/ledgers", &json!({ "name": "ops-made" })).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    let r = get_with(&app, ADMIN_TOKEN, "/v1/admin/ledgers/ops-made").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "nothing was created: {r:?}");
}

/// Two shards: the shared Postgres and a private one. A ledger on each; the private
/// one is crashed under load: its ledger answers 503, the others keep answering; it
/// comes back: every acknowledged deposit is there, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_shard_takes_down_only_its_ledgers() {
    let far = PgCluster::start();
    let mut config = ledger_tests::test_config();
    let database = config.database_url.rsplit('/').next().expect("a database name").to_owned();
    config.shards = ledger_infrastructure::ledgers::Shard::parse_list(
        Some(&format!("main={},far={}", config.database_url, far.url(&database))),
        None,
    )
    .expect("two shards");
    config.db_acquire_timeout = Duration::from_millis(500);
    config.db_breaker_cooldown = Duration::from_millis(500);
    let app = TestApp::spawn_with(config).await;
    let r = app.post("/v1/admin/ledgers", &key(), &json!({ "name": "remote", "shard": "far" })).await;
    assert_eq!((r.status, r.body["shard"].clone()), (StatusCode::CREATED, json!("far")), "{r:?}");
    // Placement without a shard: the one with the fewest ledgers (main holds default),
    // the first listed among equals.
    let r = create_ledger(&app, "local").await;
    assert_eq!(r.body["shard"], json!("main"), "{r:?}");
    let r = create_ledger(&app, "third").await;
    assert_eq!(r.body["shard"], json!("far"), "{r:?}");
    let (remote, local) = (open(&app, "remote", "EUR").await, open(&app, "local", "EUR").await);
    let home = app.open_account("EUR", 0).await;
    // The far shard holds the remote ledger's rows; the shared one does not.
    let far_pool = sqlx::PgPool::connect(&far.url(&database)).await.expect("the far shard");
    let schema = ledger_infrastructure::ledgers::schema_for("remote");
    let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {schema}.events")))
        .fetch_one(&far_pool)
        .await
        .expect("the remote ledger's log is on the far shard");
    assert_eq!(rows, 2, "its EUR system account and the account");
    let here: Option<String> = sqlx::query_scalar("select nspname::text from pg_namespace where nspname = $1")
        .bind(&schema)
        .fetch_optional(&app.pool)
        .await
        .expect("catalog");
    assert_eq!(here, None, "nothing of it on the first shard");
    far_pool.close().await;

    let deposit = |ledger: &'static str, account: Uuid| {
        let app = app.clone_handle();
        async move {
            let body = json!({ "account_id": account, "amount": 1, "currency": "EUR" });
            app.post(&under(ledger, "/v1/deposits"), &key(), &body).await.status
        }
    };
    let mut acknowledged = 0i64;
    for _ in 0..20 {
        if deposit("remote", remote).await == StatusCode::CREATED {
            acknowledged += 1;
        }
    }
    far.crash();
    let mut refused = 0;
    for i in 0..60 {
        assert_eq!(deposit("local", local).await, StatusCode::CREATED, "round {i}: another shard's ledger");
        assert_eq!(deposit("default", home).await, StatusCode::CREATED, "round {i}: default");
        match deposit("remote", remote).await {
            StatusCode::CREATED => acknowledged += 1,
            StatusCode::SERVICE_UNAVAILABLE => refused += 1,
            other => panic!("round {i}: the down shard's ledger answered {other}"),
        }
    }
    assert!(refused > 0, "the down shard's ledger answered 503");
    let listed = app.get("/v1/admin/ledgers").await;
    assert_eq!(listed.status, StatusCode::OK, "the directory answers while a shard is down: {listed:?}");
    far.resume();
    eventually("the remote ledger answers again", 60, || async {
        deposit("remote", remote).await == StatusCode::CREATED
    })
    .await;
    acknowledged += 1;
    let balance = app.get(&under("remote", &format!("/v1/accounts/{remote}?consistency=strong"))).await;
    assert_eq!(
        balance.body["balance"],
        json!(acknowledged),
        "every acknowledged deposit, and nothing else: {balance:?}"
    );
    let events = log_of(&app, "remote").await;
    assert_eq!(events.len() as i64, 2 + acknowledged, "two accounts opened, then one event per deposit");
    assert_eq!(app.account(home).await["balance"], json!(60));
}

/// Starts a reconciliation run in `ledger` over the last hour and waits for its report.
async fn reconcile_in(app: &TestApp, ledger: &str) -> Value {
    let to = (chrono::Utc::now() + chrono::Duration::seconds(5)).to_rfc3339();
    let from = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let started =
        app.post(&under(ledger, "/v1/admin/reconciliations"), &key(), &json!({ "from": from, "to": to })).await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{started:?}");
    let path = under(ledger, &format!("/v1/admin/reconciliations/{}", started.id()));
    eventually("the run ends", 30, || async { app.get(&path).await.body["status"] != "running" }).await;
    let report = app.get(&path).await.body;
    assert_eq!(report["status"], json!("finished"), "{report}");
    report
}

/// The provider's statement is one for the whole deployment; each ledger's run compares
/// its own withdrawals, and only `default`'s reports a line that is no ledger's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_ledger_reconciles_its_own_withdrawals() {
    let (app, sim) = ledger_tests::with_simulator(ledger_provider_sim::Faults::default(), |_| {}).await;
    assert_eq!(create_ledger(&app, "acme").await.status, StatusCode::CREATED);
    let d = app.open_account("EUR", 0).await;
    app.deposit(d, 1_000, "EUR").await;
    let in_default = app.withdraw(d, 100).await;
    let a = open(&app, "acme", "EUR").await;
    let r = app
        .post(&under("acme", "/v1/deposits"), &key(), &json!({ "account_id": a, "amount": 1_000, "currency": "EUR" }))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let body = json!({ "account_id": a, "amount": 300, "currency": "EUR", "destination": "NL00BANK0002" });
    let w = app.post(&under("acme", "/v1/withdrawals"), &key(), &body).await;
    assert_eq!(w.status, StatusCode::ACCEPTED, "{w:?}");
    let in_acme = w.id();
    // Another ledger may hold a stream with the id of a withdrawal (ids are per ledger):
    // an account of acme named like default's withdrawal is not a withdrawal of acme.
    let twin = app.post(&under("acme", "/v1/accounts"), &key(), &json!({ "currency": "EUR", "id": in_default })).await;
    assert_eq!(twin.status, StatusCode::CREATED, "{twin:?}");
    app.wait_status(&[in_default], "settled", 30).await;
    let acme_status = under("acme", &format!("/v1/withdrawals/{in_acme}?consistency=strong"));
    eventually("acme's withdrawal is paid", 30, || async { app.get(&acme_status).await.body["status"] == "settled" })
        .await;
    sim.simulator.add_statement_entry(ledger_provider_sim::StatementEntry {
        provider_ref: "prv_stranger".into(),
        reference: "not-one-of-ours".into(),
        amount: 999,
        currency: "EUR".into(),
        status: ledger_provider_sim::PayoutStatus::Settled,
        settled_at: chrono::Utc::now(),
    });
    // A withdrawal-shaped reference that no ledger has: only default reports it.
    let stray = Uuid::now_v7();
    sim.simulator.add_statement_entry(ledger_provider_sim::StatementEntry {
        provider_ref: "prv_stray".into(),
        reference: stray.to_string(),
        amount: 5,
        currency: "EUR".into(),
        status: ledger_provider_sim::PayoutStatus::Settled,
        settled_at: chrono::Utc::now(),
    });
    let acme = reconcile_in(&app, "acme").await;
    assert_eq!((acme["matched"].clone(), acme["mismatches"].clone()), (json!(1), json!([])), "{acme}");
    let default = reconcile_in(&app, "default").await;
    assert_eq!(default["matched"], json!(1), "{default}");
    let mut flagged: Vec<String> = default["mismatches"]
        .as_array()
        .expect("mismatches")
        .iter()
        .map(|m| format!("{}:{}", m["kind"].as_str().unwrap_or_default(), m["reference"].as_str().unwrap_or_default()))
        .collect();
    flagged.sort();
    let mut expected = vec!["unknown_reference:not-one-of-ours".to_owned(), format!("unknown_reference:{stray}")];
    expected.sort();
    assert_eq!(flagged, expected, "{default}");
    // A run of one ledger is invisible from another.
    let runs = app.get(&under("acme", "/v1/admin/reconciliations")).await;
    assert_eq!(runs.body["reconciliations"].as_array().map(Vec::len), Some(1), "{runs:?}");
}

/// A TCP listener that accepts connections and never answers: a shard that hangs.
async fn hanging_shard() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let port = listener.local_addr().expect("an address").port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (port, task)
}

/// A shard that hangs, then one whose database is gone: only its ledger answers 503
/// (within the request time-out), the directory lists it with a `null` head at once,
/// the other ledgers' workers run, and a missing database is never silently recreated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_that_hangs_or_is_gone_takes_only_its_ledgers() {
    let mut config = ledger_tests::test_config();
    let far_url = format!("{}_far", config.database_url);
    let shards = |far: &str| {
        ledger_infrastructure::ledgers::Shard::parse_list(
            Some(&format!("main={},far={far}", config.database_url)),
            None,
        )
        .expect("two shards")
    };
    config.shards = shards(&far_url);
    config.request_timeout = Duration::from_secs(4);
    config.db_acquire_timeout = Duration::from_millis(500);
    config.http_in_flight_max = 8;
    let mut app = TestApp::spawn_with(config.clone()).await;
    let r = app.post("/v1/admin/ledgers", &key(), &json!({ "name": "remote", "shard": "far" })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(create_ledger(&app, "near").await.status, StatusCode::CREATED);
    let remote = open(&app, "remote", "EUR").await;
    app.stop().await;

    let (port, hang) = hanging_shard().await;
    config.shards = shards(&format!("postgres://postgres@127.0.0.1:{port}/nowhere"));
    let mut app = TestApp::spawn_with(config.clone()).await;
    let started = std::time::Instant::now();
    let list = app.get("/v1/admin/ledgers").await;
    assert_eq!(list.status, StatusCode::OK, "{list:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the list waits one bounded head read: {:?}",
        started.elapsed()
    );
    let heads: Vec<(Value, Value)> = list.body["ledgers"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|l| (l["name"].clone(), l["head"].clone()))
        .collect();
    assert!(heads.contains(&(json!("remote"), Value::Null)), "{heads:?}");
    let r = app.get(&under("remote", &format!("/v1/accounts/{remote}?consistency=strong"))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    // Many requests for the hanging ledger at once take at most its share of the
    // process's turns (8 here): another ledger is answered meanwhile.
    let flood: Vec<_> = (0..12)
        .map(|_| {
            let (app, path) = (app.clone_handle(), under("remote", "/v1/system-accounts"));
            tokio::spawn(async move { app.get(&path).await.status })
        })
        .collect();
    eventually("the hanging ledger holds its share of the turns", 10, || async {
        app.state.shared.request_permits.available_permits() == 2
    })
    .await;
    let r = app.get(&under("near", "/v1/system-accounts")).await;
    assert_eq!(r.status, StatusCode::OK, "another ledger is served while one hangs: {r:?}");
    for f in flood {
        assert_eq!(f.await.expect("a request"), StatusCode::SERVICE_UNAVAILABLE);
    }
    // The other ledgers work, their workers included: an eventual read converges.
    let a = open(&app, "near", "EUR").await;
    let body = json!({ "account_id": a, "amount": 7, "currency": "EUR" });
    assert_eq!(app.post(&under("near", "/v1/deposits"), &key(), &body).await.status, StatusCode::CREATED);
    let eventual = under("near", &format!("/v1/accounts/{a}"));
    eventually("near's projection applies while far hangs", 30, || async {
        app.get(&eventual).await.body["balance"] == json!(7)
    })
    .await;
    app.stop().await;
    hang.abort();

    // The far database is gone (dropped, or a typo in LEDGER_SHARDS): 503, and nothing
    // is recreated in its place.
    let gone = far_url.rsplit('/').next().expect("a name").to_owned();
    let server = far_url.rsplit_once('/').expect("a URL with a database").0;
    let admin = sqlx::PgPool::connect(&format!("{server}/postgres")).await.expect("the server");
    sqlx::query(sqlx::AssertSqlSafe(format!("drop database \"{gone}\" with (force)")))
        .execute(&admin)
        .await
        .expect("the far database dropped");
    config.shards = shards(&far_url);
    let app = TestApp::spawn_with(config).await;
    let r = app.get(&under("remote", &format!("/v1/accounts/{remote}?consistency=strong"))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    let r = app.post(&under("remote", "/v1/accounts"), &key(), &json!({ "currency": "EUR" })).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    let recreated: bool = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
        .bind(&gone)
        .fetch_one(&admin)
        .await
        .expect("the catalog");
    assert!(!recreated, "a missing shard database is never recreated empty");
}

/// A ledger's read models rebuild in its own schema: the rebuilt tables get their
/// indexes and keys there (never the default ledger's), and the ledger's reads answer
/// from them after the switch, as the log says.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ledgers_projections_rebuild_in_its_own_schema() {
    let app = TestApp::spawn().await;
    assert_eq!(create_ledger(&app, "books").await.status, StatusCode::CREATED);
    let (a, b) = (open(&app, "books", "EUR").await, open(&app, "books", "EUR").await);
    let r = app
        .post(&under("books", "/v1/deposits"), &key(), &json!({ "account_id": a, "amount": 500, "currency": "EUR" }))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let t = app
        .post(
            &under("books", "/v1/transfers"),
            &key(),
            &json!({ "from": a, "to": b, "amount": 200, "currency": "EUR" }),
        )
        .await;
    assert_eq!(t.status, StatusCode::CREATED, "{t:?}");
    let schema = ledger_infrastructure::ledgers::schema_for("books");
    // A table of the ledger's schema: its oid (a switch renames the rebuilt table in, so
    // it changes) and its indexes (how many, and whether one is the primary key).
    let described = |table: &'static str| {
        let (pool, schema) = (app.pool.clone(), schema.clone());
        async move {
            let (oid, indexes, primary) = sqlx::query_as::<_, (i64, i64, bool)>(
                "select t.oid::int8, count(x.indexrelid), coalesce(bool_or(x.indisprimary), false)
                 from pg_class t left join pg_index x on x.indrelid = t.oid
                 where t.relname = $1 and t.relnamespace = $2::regnamespace group by t.oid",
            )
            .bind(table)
            .bind(schema)
            .fetch_one(&pool)
            .await
            .expect("a table of the ledger");
            (oid, (indexes, primary))
        }
    };
    let (tables, before) = {
        let (entries, transactions) = (described("account_entries").await, described("transactions_view").await);
        ((entries.0, transactions.0), (entries.1, transactions.1))
    };
    for (i, (name, table, was)) in
        [("accounts", "account_entries", tables.0), ("transfers", "transactions_view", tables.1)]
            .into_iter()
            .enumerate()
    {
        let r = app.post(&under("books", &format!("/v1/admin/projections/{name}/rebuild")), &key(), &json!({})).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
        eventually("the ledger's own tables are rebuilt and switched in", 60, || async {
            let s = app.get(&under("books", "/v1/admin/projections")).await;
            described(table).await.0 != was
                && s.body["projections"][i]["status"] == "running"
                && s.body["projections"][i]["rebuild"].is_null()
        })
        .await;
    }
    assert_eq!((described("account_entries").await.1, described("transactions_view").await.1), before);
    assert!(before.0.1 && before.1.1, "both keep their primary keys: {before:?}");
    let position = &t.body["position"];
    let viewed = app.get(&under("books", &format!("/v1/transfers/{}?min_position={position}", t.id()))).await;
    let strong = app.get(&under("books", &format!("/v1/transfers/{}?consistency=strong", t.id()))).await;
    assert_eq!((viewed.status, &viewed.body), (StatusCode::OK, &strong.body));
    let account = app.get(&under("books", &format!("/v1/accounts/{a}?min_position={position}"))).await;
    assert_eq!(account.body["balance"], json!(300), "{account:?}");
    let statement = app.get(&under("books", &format!("/v1/accounts/{b}/transactions?min_position={position}"))).await;
    assert_eq!(statement.body["entries"].as_array().map(Vec::len), Some(1), "{statement:?}");
}

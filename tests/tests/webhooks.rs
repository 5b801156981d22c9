//! Webhooks (API.md "Webhooks") against real Postgres and NATS, receivers on loopback:
//! every matching event in log order with a valid signature; retries with backoff and
//! `Retry-After`; the breaker; dead letters, redrive and discard; a hanging receiver
//! that slows nothing else; kill -9 of the service and a NATS restart mid-delivery.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::{IntoResponse, Response};
use hmac::{KeyInit, Mac};
use ledger_tests::procs::{LedgerProcess, free_port};
use ledger_tests::{ADMIN_TOKEN, NatsServer, TestApp, eventually, test_config};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// What a receiver answers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Ok,
    /// Fails with this status; `Retry-After: 1` on the second failure.
    Fail(u16),
    /// Never answers.
    Hang,
}

/// One request a receiver got.
#[derive(Clone, Debug)]
struct Received {
    at: Instant,
    event_id: String,
    signature: String,
    body: Vec<u8>,
}

#[derive(Clone)]
struct Receiver {
    url: String,
    mode: Arc<Mutex<Mode>>,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(mode: Mode) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let receiver = Receiver { url, mode: Arc::new(Mutex::new(mode)), got: Arc::default() };
        let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        receiver
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().expect("mode") = mode;
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().expect("got").clone()
    }

    /// The distinct events received, in the order first received.
    fn events(&self) -> Vec<Value> {
        let mut seen = HashSet::new();
        self.got()
            .into_iter()
            .filter(|r| seen.insert(r.event_id.clone()))
            .map(|r| serde_json::from_slice(&r.body).expect("a JSON body"))
            .collect()
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let failures_before = {
        let mut got = r.got.lock().expect("got");
        got.push(Received {
            at: Instant::now(),
            event_id: header("ledger-event-id"),
            signature: header("ledger-signature"),
            body: body.to_vec(),
        });
        got.len() - 1
    };
    let mode = *r.mode.lock().expect("mode");
    match mode {
        Mode::Ok => AxumStatus::NO_CONTENT.into_response(),
        Mode::Fail(status) => {
            let status = AxumStatus::from_u16(status).expect("a status");
            if failures_before == 1 {
                (status, [("retry-after", "1")], "busy").into_response()
            } else {
                status.into_response()
            }
        }
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            AxumStatus::OK.into_response()
        }
    }
}

/// Checks `Ledger-Signature` as a receiver would (the docs' example does the same).
fn signed(secret: &str, r: &Received) -> bool {
    let Some((t, v1)) = r.signature.split_once(',') else { return false };
    let (Some(t), Some(v1)) = (t.strip_prefix("t="), v1.strip_prefix("v1=")) else { return false };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{t}.").as_bytes());
    mac.update(&r.body);
    let Ok(given) = hex::decode(v1) else { return false };
    mac.verify_slice(&given).is_ok()
}

async fn register(app: &TestApp, url: &str, types: Option<Vec<&str>>) -> (Uuid, String) {
    let mut body = json!({ "url": url, "description": "test receiver" });
    if let Some(types) = types {
        body["event_types"] = json!(types);
    }
    let r = app.post("/v1/admin/webhooks", &Uuid::new_v4().to_string(), &body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    (r.id(), r.body["secret"].as_str().expect("the secret, once").to_owned())
}

async fn webhook(app: &TestApp, id: Uuid) -> Value {
    let list = app.get("/v1/admin/webhooks").await;
    assert_eq!(list.status, StatusCode::OK);
    list.body["webhooks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| w["id"] == json!(id))
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_matching_event_is_delivered_in_log_order_and_signed() {
    let app = TestApp::spawn().await;
    let before = app.open_account("EUR", 0).await;
    app.deposit(before, 500, "EUR").await; // committed before registration: not delivered
    let all = Receiver::start(Mode::Ok).await;
    let transfers_only = Receiver::start(Mode::Ok).await;
    let key = Uuid::new_v4().to_string();
    let body = json!({ "url": all.url });
    let created = app.post("/v1/admin/webhooks", &key, &body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let (all_id, all_secret) = (created.id(), created.body["secret"].as_str().expect("secret").to_owned());
    assert!(all_secret.starts_with("whsec_"), "{all_secret}");
    assert_eq!((created.body["status"].clone(), created.body["event_types"].clone()), (json!("active"), Value::Null));
    let replay = app.post("/v1/admin/webhooks", &key, &body).await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!((replay.id(), replay.body["secret"].clone()), (all_id, Value::Null), "the secret is shown once");
    let (tr_id, tr_secret) = register(&app, &transfers_only.url, Some(vec!["TransferPosted"])).await;

    let a = app.open_account("EUR", 0).await;
    let b = app.open_account("EUR", 0).await;
    app.deposit(a, 1_000, "EUR").await;
    let mut last = 0;
    for i in 0..10 {
        last = app.transfer(a, b, 10 + i, "EUR").await.body["position"].as_i64().expect("position");
    }
    let head = last;
    eventually("both webhooks delivered up to the head", 30, || async {
        webhook(&app, all_id).await["delivered_position"] == json!(head)
            && webhook(&app, tr_id).await["delivered_position"] == json!(head)
    })
    .await;
    let log = app.get("/v1/events?after=0&limit=500").await.body["events"].as_array().cloned().expect("log");
    let registered_after = log.iter().position(|e| e["type"] == "DepositRecorded").expect("the first deposit") + 1;
    let expected: Vec<&Value> = log[registered_after..].iter().collect();
    let delivered = all.events();
    assert_eq!(delivered.len(), expected.len(), "every event after the registration, once");
    for (got, want) in delivered.iter().zip(&expected) {
        assert_eq!(got, *want, "the payload equals the event in GET /v1/events");
    }
    assert!(all.got().iter().all(|r| signed(&all_secret, r)), "every signature verifies");
    assert!(all.got().iter().all(|r| !signed("whsec_wrong", r)), "and only with the right secret");
    assert!(
        all.got()
            .iter()
            .all(|r| serde_json::from_slice::<Value>(&r.body).expect("json")["event_id"] == json!(r.event_id)),
        "Ledger-Event-Id names the event"
    );
    let transfers: Vec<Value> = transfers_only.events();
    assert_eq!(transfers.len(), 10);
    assert!(transfers.iter().all(|e| e["type"] == "TransferPosted"), "filtered by type");
    let positions: Vec<i64> = transfers.iter().map(|e| e["position"].as_i64().expect("position")).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "in log order: {positions:?}");
    assert!(transfers_only.got().iter().all(|r| signed(&tr_secret, r)));
    let listed = webhook(&app, tr_id).await;
    assert_eq!(listed["event_types"], json!(["TransferPosted"]));
    assert!(listed.get("secret").is_none(), "the list never shows a secret");
    assert_eq!((listed["breaker"].clone(), listed["failures"].clone()), (json!("closed"), json!(0)));

    // Hostile or wrong registrations.
    for bad in [
        json!({ "url": "ftp://127.0.0.1/x" }),
        json!({ "url": "not a url" }),
        json!({ "url": "http:///nohost" }),
        json!({ "url": all.url, "event_types": [] }),
        json!({ "url": all.url, "event_types": ["NoSuchEvent"] }),
        json!({ "url": format!("http://127.0.0.1/{}", "x".repeat(3000)) }),
        json!({ "event_types": ["TransferPosted"] }),
    ] {
        let r = app.post("/v1/admin/webhooks", &Uuid::new_v4().to_string(), &bad).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"), "{bad}: {r:?}");
    }

    // Deleted: deliveries stop; deleting again is 204; an unknown id is 404.
    let r = app.client.delete(format!("{}/v1/admin/webhooks/{tr_id}", app.base)).bearer_auth(ADMIN_TOKEN).send().await;
    assert_eq!(r.expect("delete").status(), StatusCode::NO_CONTENT);
    let r = app.client.delete(format!("{}/v1/admin/webhooks/{tr_id}", app.base)).bearer_auth(ADMIN_TOKEN).send().await;
    assert_eq!(r.expect("delete").status(), StatusCode::NO_CONTENT);
    let r =
        app.client.delete(format!("{}/v1/admin/webhooks/{}", app.base, Uuid::new_v4())).bearer_auth(ADMIN_TOKEN).send();
    assert_eq!(r.await.expect("delete").status(), StatusCode::NOT_FOUND);
    let after = app.transfer(a, b, 1, "EUR").await.body["position"].as_i64().expect("position");
    eventually("the other webhook goes on", 30, || async {
        webhook(&app, all_id).await["delivered_position"] == json!(after)
    })
    .await;
    assert_eq!(transfers_only.events().len(), 10, "a deleted webhook gets nothing more");
    assert_eq!(webhook(&app, tr_id).await, Value::Null, "and is not listed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_endpoint_backs_off_trips_its_breaker_and_dead_letters_then_redrive_and_discard() {
    let mut config = test_config();
    config.webhook_attempts_max = 7;
    config.webhook_backoff_max = Duration::from_millis(1500);
    config.webhook_breaker_cooldown = Duration::from_millis(1500);
    let app = TestApp::spawn_with(config).await;
    let a = app.open_account("EUR", 0).await;
    let receiver = Receiver::start(Mode::Fail(500)).await;
    let (id, _) = register(&app, &receiver.url, Some(vec!["DepositRecorded"])).await;
    let first = app.deposit(a, 100, "EUR").await.body["position"].as_i64().expect("position");

    // Five failures open the breaker: it is listed open, and no request is sent while open.
    eventually("the breaker opens after five failures", 30, || async {
        let breakers = app.get("/v1/admin/circuit-breakers").await.body["breakers"].clone();
        breakers
            .as_array()
            .into_iter()
            .flatten()
            .any(|b| b["name"] == json!(format!("webhook:{id}")) && b["state"] == "open")
    })
    .await;
    assert_eq!(webhook(&app, id).await["breaker"], json!("open"));
    let sent_when_opened = receiver.got().len();
    assert_eq!(sent_when_opened, 5, "the breaker opened after exactly five failed requests");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(receiver.got().len(), sent_when_opened, "nothing is sent while the breaker is open");
    // After the cool-down the probes go on; attempts 6 and 7 exhaust the event.
    eventually("the event is dead-lettered after its attempts", 30, || async {
        let list = app.get("/v1/admin/dead-letters").await.body["dead_letters"].clone();
        list.as_array().into_iter().flatten().any(|d| d["source"] == json!(format!("webhook:{id}")))
    })
    .await;
    let got = receiver.got();
    assert_eq!(got.len(), 7, "an attempt is a request actually sent");
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].at - w[0].at).collect();
    eprintln!("intervals between attempts: {gaps:?}");
    assert!(gaps[0] < Duration::from_millis(1000), "the first retry within 1 s: {gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(950), "Retry-After: 1 on the second failure is honoured: {gaps:?}");
    let dead = app.get("/v1/admin/dead-letters").await.body["dead_letters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["source"] == json!(format!("webhook:{id}")))
        .cloned()
        .expect("the dead letter");
    assert_eq!((dead["event_position"].clone(), dead["attempts"].clone()), (json!(first), json!(7)));
    assert_eq!(dead["withdrawal_id"], Value::Null);
    assert!(dead["last_error"].as_str().is_some_and(|e| e.contains("500")), "{dead}");

    // Delivery goes on with the next event once the endpoint answers again.
    receiver.set(Mode::Ok);
    let second = app.deposit(a, 200, "EUR").await.body["position"].as_i64().expect("position");
    eventually("the next event is delivered", 30, || async {
        receiver.events().iter().any(|e| e["position"] == json!(second))
    })
    .await;
    eventually("the breaker closed again", 30, || async { webhook(&app, id).await["breaker"] == json!("closed") })
        .await;
    // Redrive sends the dead-lettered event again.
    let dl = dead["id"].as_str().expect("id");
    let r = app.post(&format!("/v1/admin/dead-letters/{dl}/redrive"), &Uuid::new_v4().to_string(), &json!({})).await;
    assert_eq!((r.status, r.body["status"].clone()), (StatusCode::OK, json!("redriven")), "{r:?}");
    eventually("the redriven event is delivered", 30, || async {
        receiver.got().iter().filter(|g| g.event_id == dead_event_id(&got)).count() >= 8
    })
    .await;
    let again =
        app.post(&format!("/v1/admin/dead-letters/{dl}/redrive"), &Uuid::new_v4().to_string(), &json!({})).await;
    assert_eq!((again.status, again.code()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"), "{again:?}");

    // Discard drops one: it is never sent again.
    receiver.set(Mode::Fail(503));
    let third = app.deposit(a, 300, "EUR").await.body["position"].as_i64().expect("position");
    let dead_third = || async {
        app.get("/v1/admin/dead-letters").await.body["dead_letters"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["event_position"] == json!(third))
            .cloned()
    };
    eventually("the third event is dead-lettered", 60, || async { dead_third().await.is_some() }).await;
    let dl3 = dead_third().await.expect("dead letter")["id"].as_str().expect("id").to_owned();
    let r = app.post(&format!("/v1/admin/dead-letters/{dl3}/discard"), &Uuid::new_v4().to_string(), &json!({})).await;
    assert_eq!((r.status, r.body["status"].clone()), (StatusCode::OK, json!("discarded")), "{r:?}");
    assert!(dead_third().await.is_none(), "a discarded dead letter is not listed");
    receiver.set(Mode::Ok);
    let fourth = app.deposit(a, 400, "EUR").await.body["position"].as_i64().expect("position");
    eventually("delivery goes on past the discarded event", 30, || async {
        receiver.events().iter().any(|e| e["position"] == json!(fourth))
    })
    .await;
    let delivered_third = receiver
        .got()
        .iter()
        .filter(|g| serde_json::from_slice::<Value>(&g.body).is_ok_and(|b| b["position"] == json!(third)))
        .count();
    assert_eq!(delivered_third, 7, "only the failed attempts at the discarded event were sent");
}

fn dead_event_id(got: &[Received]) -> String {
    got.first().map(|g| g.event_id.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_endpoint_slows_neither_commands_nor_other_webhooks() {
    let mut config = test_config();
    config.webhook_timeout = Duration::from_millis(2000);
    let app = TestApp::spawn_with(config).await;
    let a = app.open_account("EUR", 0).await;
    let b = app.open_account("EUR", 0).await;
    app.deposit(a, 100_000, "EUR").await;
    let app = &app;
    let timed = |n: usize| async move {
        let mut took = Vec::new();
        for _ in 0..n {
            let started = Instant::now();
            let r = app.transfer(a, b, 1, "EUR").await;
            assert_eq!(r.status, StatusCode::CREATED);
            took.push(started.elapsed());
        }
        took.sort();
        took[took.len() / 2]
    };
    let alone = timed(30).await;
    let hanging = Receiver::start(Mode::Hang).await;
    let healthy = Receiver::start(Mode::Ok).await;
    let (hanging_id, _) = register(app, &hanging.url, None).await;
    let (healthy_id, _) = register(app, &healthy.url, None).await;
    let beside = timed(30).await;
    let head: i64 = sqlx::query_scalar("select position from log_head").fetch_one(&app.pool).await.expect("head");
    eventually("the healthy webhook delivers everything", 30, || async {
        webhook(app, healthy_id).await["delivered_position"] == json!(head)
    })
    .await;
    assert_eq!(healthy.events().len(), 30, "every transfer after registration, to the healthy endpoint");
    let stuck = webhook(app, hanging_id).await;
    assert!(stuck["delivered_position"].as_i64() < Some(head), "the hanging endpoint is still on its first event");
    let requests_in_flight = hanging.got().len();
    assert!(requests_in_flight >= 1, "the hanging endpoint got its request");
    let distinct: HashSet<String> = hanging.got().into_iter().map(|r| r.event_id).collect();
    assert_eq!(distinct.len(), 1, "one request in flight per webhook, in log order: never the next event");
    eprintln!("median transfer latency: {alone:?} without webhooks, {beside:?} beside a hanging endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deliveries_survive_kill_9_of_the_service_and_a_nats_restart() {
    let mut nats = NatsServer::start().await;
    let config = test_config();
    ledger_infrastructure::connect_and_migrate(&config).await.expect("database");
    let mut env = ledger_tests::procs::base_env(&config);
    env.push(("NATS_URL", nats.url()));
    let port = free_port();
    let mut service = LedgerProcess::start(&env, port).await;
    let client = reqwest::Client::new();
    let base = service.base.clone();
    let post = |path: &'static str, body: Value| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            for _ in 0..100 {
                let key = Uuid::new_v4().to_string();
                // The same key on every retry: a retried command is executed once.
                for _ in 0..50 {
                    let sent = client
                        .post(format!("{base}{path}"))
                        .bearer_auth(ADMIN_TOKEN)
                        .header("idempotency-key", &key)
                        .json(&body)
                        .send()
                        .await;
                    if let Ok(r) = sent
                        && r.status().is_success()
                    {
                        return r.json::<Value>().await.expect("json");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            panic!("{path} never succeeded");
        }
    };
    let receiver = Receiver::start(Mode::Ok).await;
    let created = post("/v1/admin/webhooks", json!({ "url": receiver.url, "event_types": ["DepositRecorded"] })).await;
    let _ = created["id"].as_str().expect("webhook id");
    let account = post("/v1/accounts", json!({ "currency": "EUR" })).await["id"].as_str().expect("id").to_owned();
    let mut deposits = Vec::new();
    for i in 0..60 {
        if i == 20 {
            service.kill9().await;
            service.restart().await;
        }
        if i == 40 {
            nats.kill().await;
            nats.resume().await;
        }
        let d = post("/v1/deposits", json!({ "account_id": account, "amount": 1, "currency": "EUR" })).await;
        deposits.push(d["position"].as_i64().expect("position"));
    }
    eventually("every deposit delivered at least once", 60, || async {
        let got: HashSet<i64> = receiver.events().iter().filter_map(|e| e["position"].as_i64()).collect();
        deposits.iter().all(|p| got.contains(p))
    })
    .await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in receiver.got() {
        *counts.entry(r.event_id).or_default() += 1;
    }
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    eprintln!(
        "{} deposits delivered, {duplicates} duplicate deliveries across kill -9 and the NATS restart",
        deposits.len()
    );
    let positions: Vec<i64> = receiver.events().iter().filter_map(|e| e["position"].as_i64()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "first deliveries in log order: {positions:?}");
    drop(service);
}

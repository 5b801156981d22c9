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
    /// Requests being answered now, and the most there ever were at once.
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    in_flight_max: Arc<std::sync::atomic::AtomicUsize>,
}

impl Receiver {
    fn new(url: String, mode: Mode) -> Receiver {
        Receiver {
            url,
            mode: Arc::new(Mutex::new(mode)),
            got: Arc::default(),
            in_flight: Arc::default(),
            in_flight_max: Arc::default(),
        }
    }

    fn app(&self) -> axum::Router {
        axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(self.clone())
    }

    async fn start(mode: Mode) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let receiver = Receiver::new(format!("http://{}/hook", listener.local_addr().expect("addr")), mode);
        let app = receiver.app();
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        receiver
    }

    /// The same receiver behind TLS, with a certificate for 127.0.0.1 signed by a CA of
    /// its own; returns the CA's PEM file for `LEDGER_WEBHOOK_CA_FILE`.
    async fn start_tls(mode: Mode, dir: &std::path::Path) -> (Receiver, String) {
        use tokio_rustls::rustls::{
            self,
            pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        };
        std::fs::create_dir_all(dir).expect("the certificate directory");
        let run = |args: &[&str]| {
            let ok = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
            assert!(ok.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&ok.stderr));
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=ledger-test-ca",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            dir.join("ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext");
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ]);
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
            .expect("server.pem")
            .collect::<Result<_, _>>()
            .expect("certificates");
        let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("server.key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("a certificate");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let receiver = Receiver::new(format!("https://{}/hook", tcp.local_addr().expect("addr")), mode);
        let listener = TlsListener { tcp, acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)) };
        let app = receiver.app();
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        (receiver, dir.join("ca.pem").display().to_string())
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

/// TLS in front of a TCP listener, for `axum::serve`.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else { continue };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Decrements the in-flight count when a request ends, however it ends.
struct Leaving(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Leaving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    use std::sync::atomic::Ordering;
    let now = r.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    r.in_flight_max.fetch_max(now, Ordering::SeqCst);
    let _leaving = Leaving(r.in_flight.clone());
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
            // Deliberate: this endpoint never answers (the dispatcher's time-out ends it).
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
    assert_eq!(replay.body, created.body, "a replay is the same answer, secret included");
    let reused = app.post("/v1/admin/webhooks", &key, &json!({ "url": transfers_only.url })).await;
    assert_eq!((reused.status, reused.code()), (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"));
    let reused = app.post("/v1/admin/webhooks", &key, &json!({ "url": "ftp://x" })).await;
    assert_eq!(reused.code(), "idempotency_key_reused", "the key is checked before the body");
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
        // The event as GET /v1/events shows it, and its ledger (API.md "Ledgers").
        let mut want = (*want).clone();
        want["ledger"] = json!("default");
        assert_eq!(*got, want, "the payload equals the event in GET /v1/events, with its ledger");
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
    config.webhook_breaker_cooldown = Duration::from_millis(3000);
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
    // Deliberate: a window (shorter than the 3 s cool-down) in which nothing may be sent.
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
    // A class, not the endpoint's words (issue 26: errors must not tell ports apart).
    assert_eq!(dead["last_error"], json!("the endpoint answered 5xx"), "{dead}");

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
    let at_once = hanging.in_flight_max.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(at_once, 1, "one request in flight per webhook, even when each times out");
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
    // A second process: both run a dispatcher, and the lease lets one deliver at a time.
    let other = LedgerProcess::start(&env, free_port()).await;
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
                    // A client's retry backoff while the service restarts.
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
    let at_once = receiver.in_flight_max.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(at_once, 1, "two processes, one request in flight for the webhook");
    drop((service, other));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_https_endpoint_is_delivered_over_tls_with_a_private_ca() {
    let dir = std::env::temp_dir().join(format!("ledger-webhook-tls-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (receiver, ca) = Receiver::start_tls(Mode::Ok, &dir).await;
    let (untrusted, _) = Receiver::start_tls(Mode::Ok, &dir.join("other")).await;
    let mut config = test_config();
    config.webhook_ca_file = Some(ca);
    config.webhook_attempts_max = 2;
    let app = TestApp::spawn_with(config).await;
    let (id, secret) = register(&app, &receiver.url, Some(vec!["DepositRecorded"])).await;
    let (other_id, _) = register(&app, &untrusted.url, Some(vec!["DepositRecorded"])).await;
    let a = app.open_account("EUR", 0).await;
    let position = app.deposit(a, 100, "EUR").await.body["position"].as_i64().expect("position");
    eventually("delivered over TLS", 30, || async { webhook(&app, id).await["delivered_position"] == json!(position) })
        .await;
    assert_eq!(receiver.events().len(), 1);
    assert!(receiver.got().iter().all(|r| signed(&secret, r)));
    // A certificate no trusted CA signed is refused: never delivered, dead-lettered (as
    // unreachable: what failed, TLS, goes to the log only).
    eventually("the untrusted endpoint's event is dead-lettered", 30, || async {
        app.get("/v1/admin/dead-letters").await.body["dead_letters"].as_array().into_iter().flatten().any(|d| {
            d["source"] == json!(format!("webhook:{other_id}"))
                && d["last_error"].as_str().is_some_and(|e| e.starts_with("unreachable"))
        })
    })
    .await;
    assert!(untrusted.got().is_empty(), "no request reached the endpoint with the unknown certificate");
    let _ = std::fs::remove_dir_all(&dir);
}

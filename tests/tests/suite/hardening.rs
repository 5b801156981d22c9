//! Hostile input and a second writer (issue 13): reserved ids, values that would not
//! read back as hashed, malformed query strings, reads of a just-returned id, token
//! principals, the audit filter by stream, and two writer processes on one database.

use ledger_domain::Currency;
use ledger_domain::decide::system_account_id;
use ledger_infrastructure::breaker::BreakerState;
use ledger_tests::procs::{LedgerProcess, base_env, free_port};
use ledger_tests::{ADMIN_TOKEN, TestApp, test_config};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

fn key() -> String {
    Uuid::new_v4().to_string()
}

#[tokio::test]
async fn reserved_ids_are_refused_and_the_currency_keeps_working() {
    let app = TestApp::spawn().await;
    let jpy = Currency::parse("JPY").expect("valid");
    let reserved = system_account_id(jpy);
    for (id, currency) in [(reserved, "JPY"), (reserved, "EUR"), (Uuid::new_v8([1; 16]), "EUR")] {
        let reply = app.post("/v1/accounts", &key(), &json!({ "currency": currency, "id": id })).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{reply:?}");
        assert_eq!(reply.code(), "validation_error");
    }
    // The currency nobody had used still gets its own system account, and money moves.
    let account = app.open_account("JPY", 0).await;
    let deposit = app.deposit(account, 500, "JPY").await;
    assert_eq!(deposit.status, StatusCode::CREATED, "{deposit:?}");
    let system = app.account(reserved).await;
    assert_eq!((system["system"].clone(), system["balance"].clone()), (json!(true), json!(-500)));
    // A client-chosen id that exists is 409, whatever the body.
    let mine = Uuid::now_v7();
    let first = app.post("/v1/accounts", &key(), &json!({ "currency": "EUR", "id": mine })).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = app.post("/v1/accounts", &key(), &json!({ "currency": "USD", "id": mine, "owner": "x" })).await;
    assert_eq!((again.status, again.code()), (StatusCode::CONFLICT, "version_conflict"));
    app.fold_log().await;
}

#[tokio::test]
async fn metadata_follows_the_contract_and_every_accepted_value_verifies() {
    let app = TestApp::spawn().await;
    let long_key = "k".repeat(65);
    let many: serde_json::Map<String, Value> = (0..65).map(|i| (format!("k{i}"), json!(i))).collect();
    let refused: Vec<String> = vec![
        r#"{"n":1e17}"#.into(),
        r#"{"n":7.0}"#.into(),
        r#"{"n":1e3}"#.into(),
        r#"{"n":9223372036854775808}"#.into(),
        r#"{"n":{"nested":1}}"#.into(),
        r#"{"n":[1]}"#.into(),
        r#"{"s":"a\u0000b"}"#.into(),
        r#"{"bad key":1}"#.into(),
        r#"{"":1}"#.into(),
        format!(r#"{{"{long_key}":1}}"#),
        format!(r#"{{"s":"{}"}}"#, "x".repeat(1025)),
        Value::Object(many).to_string(),
        r#""a string""#.into(),
    ];
    for metadata in &refused {
        let body = format!(r#"{{"currency":"EUR","metadata":{metadata}}}"#);
        let reply = app.post_raw("/v1/accounts", Some(&key()), body.into_bytes()).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{metadata}: {reply:?}");
        assert_eq!(reply.code(), "validation_error", "{metadata}");
    }
    // Not JSON the contract accepts at all: a duplicate key, a lone surrogate.
    for body in [
        r#"{"currency":"EUR","metadata":{"a":1,"a":2}}"#,
        r#"{"currency":"EUR","currency":"USD"}"#,
        r#"{"currency":"EUR","owner":"\ud800"}"#,
        r#"{"currency":"EUR","metadata":{"s":"\udc00x"}}"#,
        r#"{"currency":"EUR","overdraft_limit":1e400}"#,
    ] {
        let reply = app.post_raw("/v1/accounts", Some(&key()), body.as_bytes().to_vec()).await;
        assert_eq!((reply.status, reply.code()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"), "{body}");
    }
    // Every kind of value the contract accepts, at its limits, comes back as sent.
    let eight_kib: serde_json::Map<String, Value> =
        (0..7).map(|i| (format!("key.{i}-_"), json!("é".repeat(500)))).collect();
    let accepted = [
        json!({ "s": "x", "i": i64::MIN, "j": i64::MAX, "t": true, "f": false, "z": null, "u": "\u{1F600}" }),
        Value::Object(eight_kib),
        json!({}),
    ];
    for metadata in accepted {
        let reply = app.post("/v1/accounts", &key(), &json!({ "currency": "EUR", "metadata": metadata })).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        assert_eq!(reply.body["metadata"], metadata);
        assert_eq!(app.account(reply.id()).await["metadata"], metadata);
    }
    // Deposits, transfers and withdrawals: the same rules, and kept with the movement.
    let a = app.open_account("EUR", 0).await;
    let b = app.open_account("EUR", 0).await;
    let meta = json!({ "order": "o-17", "n": 42, "ok": true, "none": null });
    let deposit = json!({ "account_id": a, "amount": 100, "currency": "EUR", "metadata": meta });
    let transfer = json!({ "from": a, "to": b, "amount": 10, "currency": "EUR", "metadata": meta });
    let withdrawal = json!({ "account_id": a, "amount": 5, "currency": "EUR", "destination": "x", "metadata": meta });
    for (path, body) in [("/v1/deposits", &deposit), ("/v1/transfers", &transfer), ("/v1/withdrawals", &withdrawal)] {
        let mut bad = body.clone();
        bad["metadata"] = json!({ "n": 1e17 });
        let refused = app.post(path, &key(), &bad).await;
        assert_eq!((refused.status, refused.code()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"), "{path}");
        let reply = app.post(path, &key(), body).await;
        assert!(reply.status.is_success(), "{path}: {reply:?}");
        assert_eq!(reply.body["metadata"], meta, "{path}");
        let read = match path {
            "/v1/transfers" => Some(format!("/v1/transfers/{}", reply.id())),
            "/v1/withdrawals" => Some(format!("/v1/withdrawals/{}", reply.id())),
            _ => None,
        };
        for consistency in ["strong", "eventual"] {
            if let Some(read) = &read {
                let min = reply.body["position"].as_i64().expect("position");
                let query = if consistency == "strong" {
                    "consistency=strong".to_owned()
                } else {
                    format!("min_position={min}")
                };
                let view = app.get(&format!("{read}?{query}")).await;
                assert_eq!(view.body["metadata"], meta, "{read} {consistency}: {view:?}");
            }
        }
    }
    let verify = app.get("/v1/audit/verify").await;
    assert_eq!(verify.body["ok"], json!(true), "{verify:?}");
    app.assert_read_models_match_log().await;
}

#[tokio::test]
async fn malformed_query_strings_are_the_clients_fault_not_an_outage() {
    let app = TestApp::spawn().await;
    let id = app.open_account("EUR", 0).await;
    let paths = [
        "/v1/accounts?owner=%00".to_owned(),
        "/v1/accounts?owner=a%00b".to_owned(),
        "/v1/accounts?owner=%FF".to_owned(),
        format!("/v1/accounts?owner={}", "o".repeat(5000)),
        "/v1/accounts?owner=a&owner=b".to_owned(),
        "/v1/audit?actor=%00".to_owned(),
        "/v1/audit?correlation_id=x%00y".to_owned(),
        "/v1/audit?stream_id=%00".to_owned(),
        "/v1/events?after=99999999999999999999".to_owned(),
        format!("/v1/accounts/{id}?consistency=%00"),
        format!("/v1/accounts/{id}/transactions?cursor=%00"),
        format!("/v1/accounts/{id}/balance?as_of=%00"),
        format!("/v1/accounts/{id}/balance?at_position=-1"),
        // Valid RFC 3339 whose UTC form is year -1 or 10000: not storable as written.
        format!("/v1/accounts/{id}/balance?as_of=0000-01-01T00:00:00%2B23:59"),
        "/v1/audit?to=9999-12-31T23:59:59-23:59".to_owned(),
    ];
    for _round in 0..3 {
        for path in &paths {
            let reply = app.get(path).await;
            assert!(reply.status.is_client_error(), "{path}: {reply:?}");
            assert_eq!(reply.code(), "validation_error", "{path}");
            assert_eq!(reply.header("content-type"), Some("application/problem+json"), "{path}");
        }
    }
    let window = json!({ "from": "0000-01-01T00:00:00+23:59", "to": "9999-12-31T23:59:59-23:59" });
    let run = app.post("/v1/admin/reconciliations", &key(), &window).await;
    assert_eq!((run.status, run.code()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"), "{run:?}");
    assert_eq!(app.state.db_breaker.state(), BreakerState::Closed, "bad input never opens the breaker");
    let invalid_path = app.get("/v1/accounts/%FF").await;
    assert_eq!(invalid_path.status, StatusCode::NOT_FOUND);
    // Positions beyond the head are 422 (Clarifications: "Positions and time").
    let beyond = app.get(&format!("/v1/accounts/{id}/balance?at_position=1000000")).await;
    assert_eq!((beyond.status, beyond.code()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"));
    assert_eq!(app.get(&format!("/v1/accounts/{id}")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_returned_id_is_never_not_found_even_before_the_read_models_have_it() {
    // The API alone: no projection worker runs, so the read models never catch up.
    let app = TestApp::spawn_mode(test_config(), ledger_api::run::serve::Mode::Api).await;
    let a = app.open_account("EUR", 0).await;
    let b = app.open_account("EUR", 0).await;
    assert_eq!(app.deposit(a, 100, "EUR").await.status, StatusCode::CREATED);
    let transfer = app.transfer(a, b, 40, "EUR").await;
    assert_eq!(transfer.status, StatusCode::CREATED, "{transfer:?}");
    let body = json!({ "account_id": a, "amount": 10, "currency": "EUR", "destination": "x" });
    let withdrawal = app.post("/v1/withdrawals", &key(), &body).await;
    assert_eq!(withdrawal.status, StatusCode::ACCEPTED, "{withdrawal:?}");
    let paths = [
        format!("/v1/accounts/{a}"),
        format!("/v1/transfers/{}", transfer.id()),
        format!("/v1/withdrawals/{}", withdrawal.id()),
    ];
    for path in &paths {
        let reply = app.get(path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {reply:?}");
        assert!(reply.header("x-ledger-position").is_some());
    }
    assert_eq!(app.get(&format!("/v1/accounts/{a}")).await.body["balance"], json!(60));
    let statement = app.get(&format!("/v1/accounts/{a}/transactions")).await;
    assert_eq!(statement.status, StatusCode::OK, "a statement the read model has not started yet: {statement:?}");
    assert_eq!(app.get(&format!("/v1/accounts/{}", Uuid::now_v7())).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn token_principals_cannot_pass_for_the_bootstrap_token_or_each_other() {
    let app = TestApp::spawn().await;
    for name in ["", "has space", "colon:name", "nul\u{0}", &"n".repeat(65), "émile"] {
        let reply = app.post("/v1/admin/tokens", &key(), &json!({ "name": name, "role": "admin" })).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{name:?}: {reply:?}");
    }
    let issued = app.post("/v1/admin/tokens", &key(), &json!({ "name": "admin", "role": "admin" })).await;
    assert_eq!(issued.status, StatusCode::CREATED, "{issued:?}");
    let token = issued.body["token"].as_str().expect("token").to_owned();
    // One key, two principals: each its own scope, so neither replays the other's answer.
    let shared_key = key();
    let body = json!({ "currency": "EUR" });
    let bootstrap = app.post("/v1/accounts", &shared_key, &body).await;
    let request = app
        .client
        .post(format!("{}/v1/accounts", app.base))
        .bearer_auth(&token)
        .header("idempotency-key", &shared_key)
        .json(&body);
    let other = request.send().await.expect("sent");
    assert_eq!(other.status(), StatusCode::CREATED);
    assert!(other.headers().get("idempotent-replayed").is_none());
    let other: Value = other.json().await.expect("json");
    assert_ne!(other["id"], bootstrap.body["id"]);
    let actors = app.get(&format!("/v1/audit?stream_id={}", other["id"].as_str().expect("id"))).await;
    assert_eq!(actors.body["events"][0]["actor"], json!("token:admin"));
    // A token's stream is not an account: its event (name, role, hash) is not served there.
    let token_stream = ledger_api::routes::admin::token_id("admin");
    let events = app.get(&format!("/v1/accounts/{token_stream}/events")).await;
    assert_eq!((events.status, events.code()), (StatusCode::NOT_FOUND, "account_not_found"));
    let bootstrap_actor = app.get(&format!("/v1/audit?stream_id={}", bootstrap.id())).await;
    assert_eq!(bootstrap_actor.body["events"][0]["actor"], json!(ledger_api::http::auth::BOOTSTRAP_PRINCIPAL));
}

#[tokio::test]
async fn audit_by_stream_names_the_filtered_stream_and_every_stream_of_the_event() {
    let app = TestApp::spawn().await;
    let a = app.open_account("EUR", 0).await;
    let b = app.open_account("EUR", 0).await;
    app.deposit(a, 100, "EUR").await;
    let t = app.transfer(a, b, 30, "EUR").await.id();
    let page = app.get(&format!("/v1/audit?stream_id={b}")).await;
    let events = page.body["events"].as_array().expect("events");
    assert_eq!(events.len(), 2, "{page:?}");
    for (e, version) in events.iter().zip([1, 2]) {
        assert_eq!((e["stream_id"].clone(), e["version"].clone()), (json!(b), json!(version)));
    }
    assert_eq!(events[1]["streams"], json!([t, a, b]));
}

/// Reads one account's view from a process.
async fn read(client: &reqwest::Client, base: &str, path: &str) -> Value {
    let reply = client.get(format!("{base}{path}")).bearer_auth(ADMIN_TOKEN).send().await.expect("request sent");
    assert_eq!(reply.status(), StatusCode::OK, "{path}");
    reply.json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writer_processes_keep_system_accounts_equal_to_the_log() {
    let app = TestApp::spawn_mode(test_config(), ledger_api::run::serve::Mode::Api).await;
    let mut env = base_env(&app.state.config);
    // Snapshots often, so wrong states would be saved if the writers kept any.
    env.push(("LEDGER_SNAPSHOT_EVERY", "5".to_owned()));
    let mut writers = [
        LedgerProcess::start_mode("api", &env, Some(free_port())).await,
        LedgerProcess::start_mode("api", &env, Some(free_port())).await,
    ];
    let client = reqwest::Client::new();
    let post = |base: String, path: &'static str, body: Value| {
        let client = client.clone();
        async move {
            let r = client
                .post(format!("{base}{path}"))
                .bearer_auth(ADMIN_TOKEN)
                .header("idempotency-key", key())
                .json(&body)
                .send()
                .await
                .expect("request sent");
            assert!(r.status().is_success(), "{path}: {}", r.status());
            r.json::<Value>().await.expect("json")
        }
    };
    let accounts: Vec<Value> = futures::future::join_all(
        (0..4).map(|i| post(writers[i % 2].base.clone(), "/v1/accounts", json!({ "currency": "EUR" }))),
    )
    .await;
    let system = system_account_id(Currency::parse("EUR").expect("valid"));
    for round in 0..2 {
        // Both processes deposit at once: each appends to the system account at a version
        // it does not decide (Concurrency::Any), between the other's appends.
        let load = (0..4).map(|task| {
            let (base, account) = (writers[task % 2].base.clone(), accounts[task]["id"].clone());
            let post = &post;
            async move {
                // Distinct amounts: a writer that re-applied its own deposit in place of
                // the other's would show a different balance, not just a different version.
                for i in 0..40 {
                    let amount = 1 + task * 1000 + i;
                    post(
                        base.clone(),
                        "/v1/deposits",
                        json!({ "account_id": account, "amount": amount, "currency": "EUR" }),
                    )
                    .await;
                }
            }
        });
        futures::future::join_all(load).await;
        let log = app.fold_log().await;
        let folded = log.account(system).expect("system account").clone();
        let version = log.version(system);
        for w in &writers {
            let strong = read(&client, &w.base, &format!("/v1/accounts/{system}?consistency=strong")).await;
            assert_eq!(strong["balance"], json!(folded.balance), "round {round}: strong read of {}", w.base);
            assert_eq!(strong["version"], json!(version), "round {round}");
        }
        // Historical reads fold from snapshots: each must equal the log folded to there.
        let head = app.state.store.head().await.expect("head");
        for at in [head / 3, head / 2, head] {
            let mut cut = ledger_domain::Ledger::new();
            for e in app.state.store.read_all(0, at).await.expect("log") {
                cut.apply(&e.event().expect("decodes"));
            }
            let expected = cut.account(system).map_or(0, |a| a.balance.minor_units());
            for w in &writers {
                let past = read(&client, &w.base, &format!("/v1/accounts/{system}/balance?at_position={at}")).await;
                assert_eq!(past["balance"], json!(expected), "round {round}: at_position {at}");
            }
        }
        let snapshots: Vec<(i64, Value)> =
            sqlx::query_as("select version, state from snapshots where stream_id = $1 order by version")
                .bind(system)
                .fetch_all(&app.pool)
                .await
                .expect("snapshots");
        assert!(round == 0 || !snapshots.is_empty(), "the writers saved snapshots of the system account");
        for (version, state) in snapshots {
            let saved: ledger_domain::StreamState = serde_json::from_value(state).expect("snapshot decodes");
            let mut exact = ledger_domain::StreamState::default();
            for e in app.state.store.read_stream(system, 1, version).await.expect("stream") {
                exact = ledger_domain::evolve(exact, system, e.version, &e.event().expect("decodes"));
            }
            assert_eq!(saved, exact, "round {round}: the snapshot at version {version} is the log folded to it");
        }
        // Restart both writers: what they load afterwards comes from snapshots and the log.
        for w in &mut writers {
            w.restart().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_has_a_log_line_found_by_its_correlation_id() {
    let config = test_config();
    ledger_infrastructure::connect_and_migrate(&config).await.expect("database");
    let log = std::env::temp_dir().join(format!("ledger-log-{}.jsonl", Uuid::new_v4().simple()));
    let env = base_env(&config);
    let process = LedgerProcess::start_logged("api", &env, Some(free_port()), Some(log.clone())).await;
    let correlation = format!("find-me-{}", Uuid::new_v4().simple());
    let id = Uuid::now_v7();
    let reply = reqwest::Client::new()
        .get(format!("{}/v1/accounts/{id}", process.base))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-correlation-id", &correlation)
        .send()
        .await
        .expect("sent");
    assert_eq!(reply.status(), StatusCode::NOT_FOUND);
    let line = {
        let mut found = None;
        ledger_tests::eventually("the request's log line is written", 10, || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            found = text.lines().find(|l| l.contains(&correlation) && l.contains("\"route\"")).map(str::to_owned);
            std::future::ready(found.is_some())
        })
        .await;
        found.expect("found")
    };
    let line: Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(line["level"], json!("INFO"), "{line}");
    let fields = &line["fields"];
    assert_eq!(fields["method"], json!("GET"), "{line}");
    assert_eq!(fields["route"], json!("/v1/accounts/{id}"), "{line}");
    assert_eq!(fields["status"], json!(404), "{line}");
    assert_eq!(fields["correlation_id"], json!(correlation), "{line}");
    assert!(fields["request_id"].is_string() && fields["latency_ms"].is_number(), "{line}");
    let _ = std::fs::remove_file(&log);
}

/// A command to open an EUR account with the given owner, its idempotency record
/// scoped to `principal`.
fn opening(owner: &str, principal: &str) -> ledger_infrastructure::CommandRequest {
    ledger_infrastructure::CommandRequest {
        command: ledger_domain::Command::OpenAccount(ledger_domain::decide::OpenAccount {
            account_id: Uuid::now_v7(),
            currency: Currency::parse("EUR").expect("valid"),
            // The writer refuses personal values in clear (the API seals them): the
            // test's text goes in the subject, which is not personal.
            owner: None,
            overdraft_limit: ledger_domain::Money::ZERO,
            metadata: None,
            subject: Some(owner.to_owned()),
        }),
        metadata: ledger_infrastructure::EventMetadata { actor: "test".into(), ..Default::default() },
        idempotency: Some(ledger_infrastructure::IdempotencyClaim {
            principal: principal.to_owned(),
            key: key(),
            fingerprint: vec![0; 32],
            expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
        }),
        fresh_stream: None,
        owner_index: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_failing_command_never_fails_its_batch_neighbours() {
    use ledger_infrastructure::{CommandError, Outcome};
    let app = TestApp::spawn().await;
    for round in 0..5 {
        // Sent at once, so the writer batches them; both failures bypassed the edge's
        // validation. Command 7's event would not read back as hashed (caught before
        // the append); command 13's idempotency record is refused by Postgres itself
        // (NUL in text), which fails the whole append: the batch is run again one
        // command at a time.
        let requests = (0..24).map(|i| match i {
            7 => opening("nul\u{0}", "test"),
            13 => opening("refused by postgres", "test\u{0}"),
            _ => opening(&format!("neighbour-{i}"), "test"),
        });
        let replies = futures::future::join_all(requests.map(|r| app.state.bus.execute(r))).await;
        for (i, reply) in replies.into_iter().enumerate() {
            match (i, reply) {
                (7 | 13, Err(CommandError::Internal)) => {}
                (7 | 13, other) => panic!("round {round}: command {i} should fail alone, got {other:?}"),
                (_, Ok(r)) => assert!(matches!(r.outcome(), Some(Outcome::Recorded(_))), "round {round}: {i}"),
                (_, Err(e)) => panic!("round {round}: neighbour {i} failed: {e}"),
            }
        }
    }
    let log = app.fold_log().await;
    let owners: Vec<String> =
        log.streams().filter_map(|(id, _)| log.account(*id).and_then(|a| a.subject.clone())).collect();
    assert_eq!(owners.iter().filter(|o| o.starts_with("neighbour-")).count(), 5 * 22);
    assert!(
        !owners.iter().any(|o| o.contains('\u{0}') || o == "refused by postgres"),
        "nothing of a failed command is stored"
    );
    assert_eq!(app.get("/v1/audit/verify").await.body["ok"], json!(true));
}

/// A provider that answers every request with `status` and `body` (raw bytes, NUL
/// included), on a loopback port; returns its URL.
async fn hostile_provider(status: &'static str, body: &'static [u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = vec![0u8; 16 * 1024];
                let _ = socket.read(&mut request).await;
                let head = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(body).await;
            });
        }
    });
    url
}

#[tokio::test]
async fn whatever_the_provider_answers_the_withdrawal_is_recorded() {
    for (status, body, expected) in [
        ("422 Unprocessable Entity", &b"bad\x00request"[..], "failed"),
        ("200 OK", &br#"{"provider_ref":"p\u0000\u001b","status":"rejected","reason":"no\u0000pe"}"#[..], "failed"),
        ("200 OK", &br#"{"provider_ref":"ref\u0000x","status":"settled"}"#[..], "settled"),
    ] {
        let mut config = test_config();
        config.provider_url = hostile_provider(status, body).await;
        let app = TestApp::spawn_with(config).await;
        let a = app.open_account("EUR", 0).await;
        app.deposit(a, 100, "EUR").await;
        let w = app.withdraw(a, 40).await;
        app.wait_status(&[w], expected, 20).await;
        let view = app.get(&format!("/v1/withdrawals/{w}?consistency=strong")).await.body;
        for field in ["provider_ref", "failure_reason"] {
            assert!(!view[field].as_str().unwrap_or("").contains('\u{0}'), "{field}: {view}");
        }
        app.fold_log().await;
        assert_eq!(app.get("/v1/audit/verify").await.body["ok"], json!(true));
    }
}

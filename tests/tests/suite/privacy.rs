//! Personal data (issue 29; API.md v1.2 "Personal data"; docs/PRIVACY.md): sealed under
//! per-subject keys everywhere it is stored, readable through the API until its subject
//! is erased, gone after, with the chain, balances and postings untouched.

use ledger_tests::procs::{LedgerProcess, base_env, free_port};
use ledger_tests::{ADMIN_TOKEN, TestApp, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

fn key() -> String {
    Uuid::new_v4().to_string()
}

/// Every byte of the database as `pg_dump` writes it.
fn pg_dump(database_url: &str) -> String {
    let out = std::process::Command::new("pg_dump").arg("--no-owner").arg(database_url).output().expect("pg_dump runs");
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every message of the ledger's JetStream stream, as text.
async fn jetstream_dump(app: &TestApp) -> String {
    let js = async_nats::jetstream::new(app.state.nats.clone());
    let mut stream = js.get_stream(app.state.names.events_stream()).await.expect("stream");
    let info = stream.info().await.expect("info").state.clone();
    let mut all = String::new();
    for sequence in info.first_sequence..=info.last_sequence {
        if let Ok(m) = stream.get_raw_message(sequence).await {
            all.push_str(&String::from_utf8_lossy(&m.payload));
            all.push('\n');
        }
    }
    all
}

/// Where any of `secrets` appears in `text` (the first one found).
fn leaked<'a>(text: &str, secrets: &'a [String]) -> Option<&'a String> {
    secrets.iter().find(|s| text.contains(s.as_str()))
}

async fn post(base: &str, path: &str, body: &Value) -> (StatusCode, Value) {
    post_as(base, ADMIN_TOKEN, path, &key(), body).await
}

async fn post_as(base: &str, token: &str, path: &str, key: &str, body: &Value) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .expect("sent");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(base: &str, path: &str) -> (StatusCode, Value) {
    let r = reqwest::Client::new().get(format!("{base}{path}")).bearer_auth(ADMIN_TOKEN).send().await.expect("sent");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A busy run through a real `ledger serve` process (its log captured at debug level):
/// before the erasure the personal values are readable through the API and nowhere
/// else (database dump, JetStream, the log); after it they are nowhere, and the chain,
/// balances and postings are as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn personal_values_are_sealed_everywhere_and_an_erasure_leaves_the_books_whole() {
    let app = TestApp::spawn().await;
    let log = std::env::temp_dir().join(format!("ledger-privacy-{}.jsonl", Uuid::new_v4().simple()));
    let mut env = base_env(&app.state.config);
    env.push(("RUST_LOG", "info,ledger_api=debug,ledger_infrastructure=debug,ledger_projections=debug".to_owned()));
    let process = LedgerProcess::start_logged("api", &env, Some(free_port()), Some(log.clone())).await;
    let base = process.base.clone();
    let mark = Uuid::new_v4().simple().to_string();
    let alice = format!("alice.{mark}@example.com");
    let phone = format!("+49-{mark}");
    let bob = format!("bob.{mark}@example.com");
    let secrets = vec![alice.clone(), phone.clone(), bob.clone(), mark.clone()];
    // What the erasure covers (bob's subject is not erased: the API still shows him).
    let erased_values = vec![alice.clone(), phone.clone()];

    // Subject `cust-…` has two accounts (one opened in a bulk); bob's account is its own subject.
    let subject = format!("cust-{}", &mark[..8]);
    let open_a = json!({ "currency": "EUR", "owner": alice, "subject": subject,
                         "metadata": { "pii.phone": phone, "pii.age": 41, "tier": "gold" } });
    let open_a_key = key();
    let (status, a) = post_as(&base, ADMIN_TOKEN, "/v1/accounts", &open_a_key, &open_a).await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    assert_eq!(
        (a["owner"].as_str(), a["subject"].as_str(), a["erased"].as_bool()),
        (Some(alice.as_str()), Some(subject.as_str()), Some(false))
    );
    assert_eq!(a["metadata"], json!({ "pii.phone": phone, "pii.age": 41, "tier": "gold" }));
    let a_id = a["id"].as_str().expect("id").to_owned();
    let (status, bulk) = post(
        &base,
        "/v1/bulk",
        &json!({ "items": [{ "method": "POST", "path": "/v1/accounts", "idempotency_key": key(),
                             "body": { "currency": "EUR", "owner": alice, "subject": subject } }] }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{bulk}");
    let a2_id = bulk["results"][0]["body"]["id"].as_str().expect("bulk item id").to_owned();
    assert_eq!(bulk["results"][0]["body"]["owner"], json!(alice), "{bulk}");
    let (_, b) = post(&base, "/v1/accounts", &json!({ "currency": "EUR", "owner": bob })).await;
    let b_id = b["id"].as_str().expect("id").to_owned();
    assert_eq!(b["subject"], json!(b_id), "a subject defaults to the account's id");
    for (id, amount) in [(&a_id, 10_000), (&a2_id, 5_000), (&b_id, 7_000)] {
        let (s, _) =
            post(&base, "/v1/deposits", &json!({ "account_id": id, "amount": amount, "currency": "EUR" })).await;
        assert_eq!(s, StatusCode::CREATED);
    }
    for i in 0..20 {
        let (from, to) = if i % 2 == 0 { (&a_id, &b_id) } else { (&b_id, &a2_id) };
        let (s, _) =
            post(&base, "/v1/transfers", &json!({ "from": from, "to": to, "amount": 100 + i, "currency": "EUR" }))
                .await;
        assert_eq!(s, StatusCode::CREATED);
    }

    // Readable through the API, by every route that shows them.
    app.catch_up().await;
    let (_, found) = get(&base, &format!("/v1/accounts?owner={alice}")).await;
    let mut ids: Vec<&str> =
        found["accounts"].as_array().expect("list").iter().filter_map(|a| a["id"].as_str()).collect();
    ids.sort_unstable();
    let mut expected = vec![a_id.as_str(), a2_id.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected, "the owner look-up finds the subject's accounts");
    let (_, events) = get(&base, &format!("/v1/accounts/{a_id}/events")).await;
    assert!(events.to_string().contains(&alice) && events.to_string().contains(&phone), "{events}");
    let (_, view) = get(&base, &format!("/v1/accounts/{a_id}")).await;
    assert_eq!(view["owner"], json!(alice));

    // …and nowhere else.
    let relayed = app.state.store.head().await.expect("head");
    app.wait_relayed(relayed, 30).await;
    let url = app.state.config.database_url.clone();
    assert_eq!(leaked(&pg_dump(&url), &secrets), None, "a personal value in the database dump");
    let stream = jetstream_dump(&app).await;
    assert!(stream.contains("pii:v1:"), "the stream holds the sealed form");
    assert_eq!(leaked(&stream, &secrets), None, "a personal value in JetStream");
    let balances_before: Vec<Value> = {
        let mut v = Vec::new();
        for id in [&a_id, &a2_id, &b_id] {
            v.push(get(&base, &format!("/v1/accounts/{id}?consistency=strong")).await.1["balance"].clone());
        }
        v
    };
    let (_, statement_before) = get(&base, &format!("/v1/accounts/{a_id}/transactions?consistency=strong")).await;

    // Erasure: admin only, answered once and the same again.
    let reason = json!({ "reason": "erasure request 2026-12-05" });
    let operator = app
        .post("/v1/admin/tokens", &key(), &json!({ "name": format!("op-{}", &mark[..6]), "role": "operator" }))
        .await;
    let operator_token = operator.body["token"].as_str().expect("token").to_owned();
    let (status, _) =
        post_as(&base, &operator_token, &format!("/v1/admin/subjects/{subject}/erase"), &key(), &reason).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "an operator cannot erase");
    let (status, erased) = post(&base, &format!("/v1/admin/subjects/{subject}/erase"), &reason).await;
    assert_eq!(status, StatusCode::OK, "{erased}");
    let mut erased_ids: Vec<&str> =
        erased["accounts"].as_array().expect("accounts").iter().filter_map(Value::as_str).collect();
    erased_ids.sort_unstable();
    assert_eq!(erased_ids, expected);
    let (status, again) = post(&base, &format!("/v1/admin/subjects/{subject}/erase"), &reason).await;
    assert_eq!((status, &again), (StatusCode::OK, &erased), "a second erasure answers the first");
    let (status, _) = post(&base, "/v1/admin/subjects/nobody-at-all/erase", &reason).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // After: erased on every path, through this process and the test's own.
    for base in [base.as_str(), app.base.as_str()] {
        for consistency in ["strong", "eventual"] {
            let (_, v) = get(base, &format!("/v1/accounts/{a_id}?consistency={consistency}")).await;
            if consistency == "eventual" && v["erased"] == json!(false) {
                // The read model lags: its sealed values are withheld already.
                assert_eq!(v["owner"], Value::Null, "{v}");
                continue;
            }
            assert_eq!(
                (&v["owner"], &v["erased"], &v["metadata"]),
                (&Value::Null, &json!(true), &json!({ "tier": "gold" })),
                "{v}"
            );
        }
        let (_, events) = get(base, &format!("/v1/accounts/{a_id}/events")).await;
        assert_eq!(leaked(&events.to_string(), &erased_values), None, "{events}");
        let opened = &events["events"][0]["data"];
        assert_eq!((&opened["owner"], &opened["metadata"]), (&Value::Null, &json!({ "tier": "gold" })), "{events}");
        let (_, all) = get(base, "/v1/events?limit=1000").await;
        assert_eq!(leaked(&all.to_string(), &erased_values), None);
        let (_, audit) = get(base, "/v1/audit?limit=1000").await;
        assert_eq!(leaked(&audit.to_string(), &erased_values), None);
        let (status, verify) = get(base, "/v1/audit/verify").await;
        assert_eq!((status, &verify["ok"]), (StatusCode::OK, &json!(true)), "{verify}");
    }
    let (_, v) = get(&base, &format!("/v1/accounts/{b_id}?consistency=strong")).await;
    assert_eq!(v["owner"], json!(bob), "another subject's values stay readable");
    let (status, replay) = post_as(&base, ADMIN_TOKEN, "/v1/accounts", &open_a_key, &open_a).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        (&replay["owner"], replay.get("metadata")),
        (&Value::Null, Some(&json!({ "tier": "gold" }))),
        "{replay}"
    );
    // The replay sealed its body again (under a new key of the subject) but recorded
    // nothing: no look-up row, nothing readable under a live key.
    let rows: i64 = sqlx::query_scalar(
        "select count(*) from owner_index o join subject_keys k on k.id = o.key_id where k.subject = $1",
    )
    .bind(&subject)
    .fetch_one(&app.pool)
    .await
    .expect("rows");
    assert_eq!(rows, 0, "nothing of the erased subject is indexed");
    for (id, before) in [&a_id, &a2_id, &b_id].into_iter().zip(&balances_before) {
        assert_eq!(&get(&base, &format!("/v1/accounts/{id}?consistency=strong")).await.1["balance"], before);
    }
    let (_, statement_after) = get(&base, &format!("/v1/accounts/{a_id}/transactions?consistency=strong")).await;
    assert_eq!(statement_after, statement_before, "postings unchanged");

    // The read model follows, and a rebuilt one is erased as well.
    app.catch_up().await;
    let (_, found) = get(&base, &format!("/v1/accounts?owner={alice}")).await;
    assert_eq!(found["accounts"], json!([]), "the owner look-up no longer finds them");
    ledger_api::run::cli::rebuild_projection(&app.state.config, "accounts").await.expect("rebuild");
    let (_, v) = get(&base, &format!("/v1/accounts/{a2_id}?consistency=eventual")).await;
    assert_eq!((&v["owner"], &v["erased"]), (&Value::Null, &json!(true)), "rebuilt: {v}");
    let mut out = Vec::new();
    ledger_api::run::cli::replay(
        &app.state.config,
        app.state.master_key.clone(),
        a_id.parse().expect("uuid"),
        None,
        &mut out,
    )
    .await
    .expect("replay");
    assert_eq!(leaked(&String::from_utf8_lossy(&out), &erased_values), None, "the CLI replay");
    app.assert_read_models_match_log().await;

    // Nowhere after, either: the dump, the stream and the process's log.
    let dump = pg_dump(&url);
    assert_eq!(leaked(&dump, &secrets), None, "a personal value in the database dump after the erasure");
    assert_eq!(leaked(&jetstream_dump(&app).await, &secrets), None);
    drop(process);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.lines().count() > 20, "the log was written");
    assert_eq!(leaked(&text, &secrets), None, "a personal value in the service's log");
    let _ = std::fs::remove_file(&log);
}

/// What an attacker sends at the personal-data edges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_edges_refuse_hostile_input_without_echoing_it() {
    let app = TestApp::spawn().await;
    let a = app.open_account("EUR", 0).await;
    let secret = format!("secret-{}", Uuid::new_v4().simple());
    let cases = [
        ("/v1/deposits", json!({ "account_id": a, "amount": 1, "currency": "EUR", "metadata": { "pii.x": secret } })),
        ("/v1/accounts", json!({ "currency": "EUR", "subject": "has space" })),
        ("/v1/accounts", json!({ "currency": "EUR", "subject": "" })),
        ("/v1/accounts", json!({ "currency": "EUR", "subject": "x".repeat(129) })),
        ("/v1/accounts", json!({ "currency": "EUR", "subject": 7 })),
        ("/v1/accounts", json!({ "currency": "EUR", "owner": format!("{secret}{}", "y".repeat(1100)) })),
        ("/v1/accounts", json!({ "currency": "EUR", "owner": secret, "metadata": { "pii.nested": { "a": secret } } })),
    ];
    for (path, body) in cases {
        let r = app.post(path, &key(), &body).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"),
            "{path} {body}: {r:?}"
        );
        assert!(!r.body.to_string().contains(&secret), "the refusal echoes a personal value: {}", r.body);
    }
    let r = app.post("/v1/accounts", &key(), &json!({ "currency": "EUR", "owner": 4915112345678_i64 })).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!r.body.to_string().contains("4915112345678"), "a value of the wrong type is not echoed: {}", r.body);
    let r = app.get("/v1/transactions?metadata.pii.email=x").await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"), "{r:?}");
    for subject in ["%20", "a%2Fb", &"z".repeat(200), "never-opened"] {
        let r = app.post(&format!("/v1/admin/subjects/{subject}/erase"), &key(), &json!({ "reason": "r" })).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{subject}: {r:?}");
    }
    let r = app.post(&format!("/v1/admin/subjects/{a}/erase"), &key(), &json!({})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "a reason is required: {r:?}");
    // Texts that look sealed are a client's values like any other: sealed when personal,
    // shown as sent elsewhere, and nobody's reads fail on them.
    let forged = format!("pii:v1:{}", "A".repeat(60));
    let r = app
        .post("/v1/accounts", &key(), &json!({ "currency": "EUR", "owner": forged, "metadata": { "pii.x": forged } }))
        .await;
    assert_eq!(
        (r.status, &r.body["owner"], &r.body["metadata"]["pii.x"]),
        (StatusCode::CREATED, &json!(forged), &json!(forged)),
        "{r:?}"
    );
    let r = app.post("/v1/deposits", &key(), &json!({ "account_id": a, "amount": 5, "currency": "EUR", "reference": forged, "metadata": { "owner": forged } })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let all = app.get("/v1/events?limit=1000").await;
    assert_eq!(all.status, StatusCode::OK, "{all:?}");
    let stored: Vec<String> = sqlx::query_scalar(
        "select data ->> 'owner' from events where type = 'AccountOpened' and data ->> 'owner' is not null",
    )
    .fetch_all(&app.pool)
    .await
    .expect("owners");
    assert!(
        stored.iter().all(|o| o.starts_with("pii:v1:") && *o != forged),
        "every stored owner is one this code sealed: {stored:?}"
    );
    // A client cannot name the stream of a subject as an account id (reserved space).
    let stream = ledger_domain::subject_stream_id(&a.to_string());
    let r = app.post("/v1/accounts", &key(), &json!({ "currency": "EUR", "id": stream })).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
}

/// Two processes erase one subject while others open accounts for it, again and
/// again: each erasure answers the accounts it made unreadable, no account is left
/// half-erased (its values unreadable but not marked erased), and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn erasures_racing_each_other_and_openings_leave_nothing_half_done() {
    let app = TestApp::spawn().await;
    let other = TestApp::spawn_with((*app.state.config).clone()).await;
    let subject = format!("race-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let mut opened: Vec<String> = Vec::new();
    let mut erased: std::collections::HashSet<String> = std::collections::HashSet::new();
    // Some history for a rebuild to replay while the rounds run.
    for _ in 0..40 {
        app.open_account("EUR", 0).await;
    }
    for round in 0..6 {
        if round == 2 {
            // The read model rebuilt from the log while erasures go on.
            let started = app.post("/v1/admin/projections/accounts/rebuild", &key(), &json!({})).await;
            assert_eq!(started.status, StatusCode::ACCEPTED, "{started:?}");
        }
        let open = |app: &TestApp, n: usize| {
            let (app, subject) = (app.clone_handle(), subject.clone());
            async move {
                let body =
                    json!({ "currency": "EUR", "owner": format!("racer-{round}-{n}@example.com"), "subject": subject });
                let key = key();
                // A 503 (the subject erased under it) is retried with the same key.
                for _ in 0..5 {
                    let r = app.post("/v1/accounts", &key, &body).await;
                    if r.status == StatusCode::CREATED {
                        return Some(r.body["id"].as_str().expect("id").to_owned());
                    }
                    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
                }
                None
            }
        };
        let erase = |app: &TestApp| {
            let (app, subject) = (app.clone_handle(), subject.clone());
            async move {
                app.post(&format!("/v1/admin/subjects/{subject}/erase"), &key(), &json!({ "reason": "race" })).await
            }
        };
        let (o1, o2, o3, e1, e2) =
            tokio::join!(open(&app, 1), open(&other, 2), open(&app, 3), erase(&app), erase(&other));
        opened.extend([o1, o2, o3].into_iter().flatten());
        for e in [e1, e2] {
            match e.status {
                StatusCode::OK => erased.extend(
                    e.body["accounts"]
                        .as_array()
                        .expect("accounts")
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_owned)),
                ),
                StatusCode::NOT_FOUND if round == 0 => {}
                s => panic!("round {round}: erasure answered {s}: {e:?}"),
            }
        }
    }
    assert!(!opened.is_empty());
    eventually("the rebuild switched over", 60, || async {
        let s = app.get("/v1/admin/projections").await;
        s.body["projections"][0]["status"] == "running" && s.body["projections"][0]["rebuild"].is_null()
    })
    .await;
    app.catch_up().await;
    for id in &opened {
        // The rebuilt read model agrees with the log.
        let v = app.get(&format!("/v1/accounts/{id}?consistency=eventual")).await;
        assert_eq!(v.body["erased"], json!(erased.contains(id)), "{id} after the rebuild: {v:?}");
    }
    for id in &opened {
        let v = app.account(id.parse().expect("uuid")).await;
        let is_erased = v["erased"] == json!(true);
        assert_eq!(is_erased, erased.contains(id), "{id}: the erasures answered it iff it is erased: {v}");
        assert_eq!(v["owner"].is_null(), is_erased, "{id}: readable iff not erased: {v}");
    }
    let verify = app.get("/v1/audit/verify").await;
    assert_eq!(verify.body["ok"], json!(true), "{verify:?}");
    app.assert_read_models_match_log().await;
}

/// Keys are leased, not read at every answer (issue 27: cached reads had fallen to a
/// Postgres round trip each): a second process that has just revealed an account (so
/// holds its subject's key) reads it and its events over and over while the first
/// erases the subject. Every read that began after the erasure answered shows the
/// erased form, through either process; reads before it show the value or the erased
/// form, never the sealed text.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_another_process_holds_is_never_used_after_the_erasure_answered() {
    let app = TestApp::spawn().await;
    let other = TestApp::spawn_with((*app.state.config).clone()).await;
    let subject = format!("lease-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let owner = format!("leased.{subject}@example.com");
    let opened =
        app.post("/v1/accounts", &key(), &json!({ "currency": "EUR", "owner": owner, "subject": subject })).await;
    assert_eq!(opened.status, StatusCode::CREATED, "{opened:?}");
    let id = opened.body["id"].as_str().expect("id").to_owned();
    for reader in [&app, &other] {
        let v = reader.get(&format!("/v1/accounts/{id}?consistency=strong")).await;
        assert_eq!(v.body["owner"], json!(owner), "readable before the erasure: {v:?}");
    }
    let erased_at = std::sync::Arc::new(std::sync::Mutex::new(None::<std::time::Instant>));
    let stop = tokio_util::sync::CancellationToken::new();
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Per reader: reads begun before the erasure answered, and after.
    let counts: Vec<std::sync::Arc<[AtomicUsize; 2]>> = (0..3).map(|_| std::sync::Arc::default()).collect();
    let readers: Vec<_> = [app.clone_handle(), other.clone_handle(), other.clone_handle()]
        .into_iter()
        .zip(counts.clone())
        .map(|(reader, count)| {
            let (id, owner, erased_at, stop) = (id.clone(), owner.clone(), erased_at.clone(), stop.clone());
            tokio::spawn(async move {
                // Bounded: 30 s at most, and stopped once every reader has read after
                // the erasure answered.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                while !stop.is_cancelled() && std::time::Instant::now() < deadline {
                    let began = std::time::Instant::now();
                    let answered_before = erased_at.lock().expect("not poisoned").is_some_and(|t| t <= began);
                    // The account's events keep the sealed owner for ever (its opening):
                    // only the key decides what they show.
                    for path in ["", "?consistency=strong", "/events"] {
                        let v = reader.get(&format!("/v1/accounts/{id}{path}")).await;
                        assert_eq!(v.status, StatusCode::OK, "{v:?}");
                        let text = v.body.to_string();
                        if answered_before {
                            assert!(!text.contains(&owner), "a read begun after the erasure answered: {v:?}");
                            count[1].fetch_add(1, Ordering::Relaxed);
                        } else {
                            assert!(!text.contains("pii:v1:"), "revealed or erased, never sealed: {v:?}");
                            count[0].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                (count[0].load(Ordering::Relaxed), count[1].load(Ordering::Relaxed))
            })
        })
        .collect();
    let each_read = |side: usize, reads: usize| {
        let counts = counts.clone();
        move || {
            let done = counts.iter().all(|c| c[side].load(Ordering::Relaxed) >= reads);
            async move { done }
        }
    };
    eventually("every reader revealed the account (so holds its key)", 20, each_read(0, 3)).await;
    let erased = app.post(&format!("/v1/admin/subjects/{subject}/erase"), &key(), &json!({ "reason": "lease" })).await;
    assert_eq!(erased.status, StatusCode::OK, "{erased:?}");
    *erased_at.lock().expect("not poisoned") = Some(std::time::Instant::now());
    // Three rounds of reads each after the answer, the first inside any lease still held.
    eventually("every reader read after the erasure answered", 20, each_read(1, 9)).await;
    stop.cancel();
    for reader in readers {
        let (before, after) = reader.await.expect("the reader's assertions held");
        assert!(before > 0 && after > 0, "reads on both sides of the erasure's answer: {before} / {after}");
    }
}

/// A hot account's key is read again before its lease ends (one statement for every
/// key that came due), so reading the account for 3 s asks the primary for its key
/// once on the read path; the answer revealed once is served again while its key is
/// leased, and an erasure still shows at once after it answered, through the same
/// process's remembered answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_accounts_key_is_renewed_before_its_lease_ends_and_erasure_still_shows() {
    let app = TestApp::spawn().await;
    let subject = format!("hot-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let owner = format!("hot.{subject}@example.com");
    let opened = app
        .post(
            "/v1/accounts",
            &key(),
            &json!({ "currency": "EUR", "owner": owner, "subject": subject, "metadata": { "pii.age": 41, "tier": 1 } }),
        )
        .await;
    assert_eq!(opened.status, StatusCode::CREATED, "{opened:?}");
    let id = opened.body["id"].as_str().expect("id").to_owned();
    let first = app.get(&format!("/v1/accounts/{id}")).await;
    assert_eq!(first.body["owner"], json!(owner), "{first:?}");
    let (read_before, renewed_before) = app.state.privacy.key_reads();
    // 3 s of reads, one every 10 ms: three leases' worth.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut reads = 0;
    while std::time::Instant::now() < until {
        let v = app.get(&format!("/v1/accounts/{id}")).await;
        assert_eq!(v.status, StatusCode::OK, "{v:?}");
        assert_eq!(
            (&v.body["owner"], &v.body["metadata"]),
            (&json!(owner), &json!({ "pii.age": 41, "tier": 1 })),
            "{v:?}"
        );
        reads += 1;
        // A deliberate pace: a steady reader across three leases, not a wait for a state.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (read_after, renewed_after) = app.state.privacy.key_reads();
    assert!(reads >= 50, "the loop read the account: {reads}");
    // Without renewal the key's lease ends every second: 3 reads or more.
    assert!(read_after - read_before <= 1, "the read path asked for the key {} times", read_after - read_before);
    assert!(renewed_after - renewed_before >= 2, "renewed {} times in 3 s", renewed_after - renewed_before);

    let erased = app.post(&format!("/v1/admin/subjects/{subject}/erase"), &key(), &json!({ "reason": "hot" })).await;
    assert_eq!(erased.status, StatusCode::OK, "{erased:?}");
    for path in ["", "?consistency=strong", "/events"] {
        let v = app.get(&format!("/v1/accounts/{id}{path}")).await;
        assert_eq!(v.status, StatusCode::OK, "{v:?}");
        let text = v.body.to_string();
        assert!(!text.contains(&owner) && !text.contains("pii:v1:"), "after the erasure answered: {v:?}");
    }
    let v = app.get(&format!("/v1/accounts/{id}")).await;
    assert_eq!((&v.body["owner"], &v.body["metadata"]), (&Value::Null, &json!({ "tier": 1 })), "{v:?}");
}

/// A database written before personal data was sealed (owners and `pii.` metadata in
/// clear in the log, the read model and an idempotency record, a consistent chain over
/// them): the next start seals them in place, re-anchors the chain with one event, and
/// the values stay readable, findable and erasable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_database_is_sealed_in_place_and_its_chain_reanchored() {
    use ledger_infrastructure::hash::GENESIS_HASH;
    let mut app = TestApp::spawn().await;
    let config = (*app.state.config).clone();
    let mark = Uuid::new_v4().simple().to_string();
    let owner = format!("legacy.{mark}@example.com");
    let id = app.open_account("EUR", 0).await;
    app.deposit(id, 500, "EUR").await;
    let other = app.open_account("EUR", 0).await;
    app.transfer(id, other, 100, "EUR").await;
    app.catch_up().await;
    app.stop().await;

    // Made legacy, as the superuser: the opening without a subject and in clear, the
    // view and an idempotency record in clear, no key; then the chain made whole again.
    let pool = &sqlx::PgPool::connect(&config.database_url).await.expect("database");
    let data: Value =
        sqlx::query_scalar("select data from events where type = 'AccountOpened' and data ->> 'account_id' = $1")
            .bind(id.to_string())
            .fetch_one(pool)
            .await
            .expect("opening");
    let mut legacy = data.clone();
    legacy.as_object_mut().expect("object").remove("subject");
    legacy["owner"] = json!(owner);
    legacy["metadata"] = json!({ "pii.name": format!("Legacy {mark}"), "plan": "basic" });
    for sql in [
        "alter table events disable trigger events_append_only",
        "alter table stream_entries disable trigger stream_entries_append_only",
    ] {
        sqlx::query(sql).execute(pool).await.expect("the superuser lifts the log's guard");
    }
    for sql in [
        "update events set data = $2 where type = 'AccountOpened' and data ->> 'account_id' = $1",
        "update accounts_view set owner = $2 ->> 'owner', metadata = $2 -> 'metadata', subject = null where id::text = $1",
    ] {
        sqlx::query(sql).bind(id.to_string()).bind(&legacy).execute(pool).await.expect("made legacy");
    }
    sqlx::query("delete from stream_entries where stream_id = $1")
        .bind(ledger_domain::subject_stream_id(&id.to_string()))
        .execute(pool)
        .await
        .expect("entries");
    sqlx::query("delete from owner_index").execute(pool).await.expect("index");
    sqlx::query("delete from subject_keys").execute(pool).await.expect("keys");
    sqlx::query(
        "insert into idempotency_keys (principal, key, fingerprint, status_code, body, expires_at)
         values ($2, 'legacy-open', $3, 201, $1, now() + interval '1 day')",
    )
    .bind(json!({ "id": id, "currency": "EUR", "owner": owner, "subject": id, "erased": false, "status": "open", "balance": 0,
                  "available": 0, "pending_holds": 0, "overdraft_limit": 0, "system": false,
                  "metadata": { "pii.name": format!("Legacy {mark}"), "plan": "basic" }, "version": 1, "position": 2 }))
    .bind(ledger_api::http::auth::BOOTSTRAP_PRINCIPAL)
    .bind(ledger_api::http::command::CommandBody::new("POST", "/v1/accounts", json!({ "currency": "EUR" }), "legacy-open".into()).fingerprint)
    .execute(pool)
    .await
    .expect("a legacy record");
    let events = ledger_infrastructure::EventStore::new(pool.clone()).read_all(0, i64::MAX).await.expect("log");
    let mut previous = GENESIS_HASH.to_vec();
    for e in &events {
        previous = ledger_infrastructure::store::recompute_hash(&previous, e).to_vec();
        sqlx::query("update events set hash = $2 where position = $1")
            .bind(e.position)
            .bind(&previous)
            .execute(pool)
            .await
            .expect("hash");
    }
    sqlx::query("update log_head set hash = $1").bind(&previous).execute(pool).await.expect("head");
    for sql in [
        "alter table events enable trigger events_append_only",
        "alter table stream_entries enable trigger stream_entries_append_only",
    ] {
        sqlx::query(sql).execute(pool).await.expect("the guard is back");
    }
    let head_before = events.last().expect("events").position;
    assert!(pg_dump(&config.database_url).contains(&owner), "the legacy database holds the owner in clear");

    // The next start seals it.
    let app = TestApp::spawn_with(config.clone()).await;
    let dump = pg_dump(&config.database_url);
    assert!(!dump.contains(&owner) && !dump.contains(&format!("Legacy {mark}")), "sealed in place");
    let verify = app.get("/v1/audit/verify").await;
    assert_eq!(verify.body["ok"], json!(true), "{verify:?}");
    // The Merkle tree, grown over the old hashes before, grows over the new ones.
    let head = app.state.store.head().await.expect("head");
    let tree_head = app.get("/v1/audit/tree-head").await;
    assert_eq!((tree_head.status, &tree_head.body["tree_size"]), (StatusCode::OK, &json!(head)), "{tree_head:?}");
    let (_, log) = get(&app.base, "/v1/events?limit=1000").await;
    let reanchored: Vec<&Value> =
        log["events"].as_array().expect("events").iter().filter(|e| e["type"] == "ChainReanchored").collect();
    assert_eq!(reanchored.len(), 1, "{log}");
    assert_eq!(reanchored[0]["data"]["before_position"], json!(head_before));
    assert_eq!(reanchored[0]["data"]["before_hash"], json!(hex::encode(&previous)));
    assert_eq!(reanchored[0]["position"], json!(head_before + 1));
    let v = app.account(id).await;
    assert_eq!(
        (&v["owner"], &v["subject"], &v["metadata"]["pii.name"]),
        (&json!(owner), &json!(id), &json!(format!("Legacy {mark}"))),
        "{v}"
    );
    let replay = app.post("/v1/accounts", "legacy-open", &json!({ "currency": "EUR" })).await;
    assert_eq!(replay.body["owner"], json!(owner), "a legacy record replays, revealed: {replay:?}");
    app.catch_up().await;
    let (_, found) = get(&app.base, &format!("/v1/accounts?owner={owner}")).await;
    assert_eq!(found["accounts"][0]["id"], json!(id), "{found}");

    // Erasable like any other subject; a later start finds nothing to seal.
    let erased = app.post(&format!("/v1/admin/subjects/{id}/erase"), &key(), &json!({ "reason": "legacy" })).await;
    assert_eq!((erased.status, &erased.body["accounts"]), (StatusCode::OK, &json!([id])), "{erased:?}");
    assert_eq!(app.account(id).await["owner"], Value::Null);
    drop(app);
    let app = TestApp::spawn_with(config.clone()).await;
    let (_, log) = get(&app.base, "/v1/events?limit=1000").await;
    assert_eq!(log["events"].as_array().expect("events").iter().filter(|e| e["type"] == "ChainReanchored").count(), 1);
    assert_eq!(app.get("/v1/audit/verify").await.body["ok"], json!(true));
    app.assert_read_models_match_log().await;
}

/// Rotating the master key re-seals the subjects' keys (and the rest it seals) and
/// changes no event: values stay readable under the new key, the old one is refused
/// at start-up, and the chain is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_master_key_reseals_keys_and_leaves_the_log_alone() {
    let app = TestApp::spawn().await;
    let mut config = (*app.state.config).clone();
    let owner = format!("rotate-{}@example.com", Uuid::new_v4().simple());
    let opened = app.post("/v1/accounts", &key(), &json!({ "currency": "EUR", "owner": owner })).await;
    let id = opened.id();
    let head = app.state.store.head().await.expect("head");
    let hash: Vec<u8> = sqlx::query_scalar("select hash from log_head").fetch_one(&app.pool).await.expect("hash");
    drop(app);
    let (_, new) = ledger_infrastructure::keys::MasterKey::generate();
    let rotated = ledger_api::run::cli::rotate_master_key(config.clone(), &new).await.expect("rotated");
    assert_eq!(
        rotated.last().map(|(l, r)| (l.as_str(), r.subject_keys, r.lookup_keys)),
        Some(("default", 1, 1)),
        "{rotated:?}"
    );
    // The dev-mode key is gone from the database: only the new key opens it now.
    assert!(ledger_api::run::serve::build_core(config.clone()).await.is_err(), "the old key is refused");
    config.master_key = Some(new.to_string());
    let app = TestApp::spawn_with(config).await;
    assert_eq!(app.account(id).await["owner"], json!(owner));
    let same: Vec<u8> = sqlx::query_scalar("select hash from log_head").fetch_one(&app.pool).await.expect("hash");
    assert_eq!((app.state.store.head().await.expect("head"), same), (head, hash), "no event changed");
    assert_eq!(app.get("/v1/audit/verify").await.body["ok"], json!(true));
}

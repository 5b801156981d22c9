//! The write side against real Postgres: money conserved under concurrency,
//! idempotency, gapless commit-ordered positions, the append-only log, bad input.

use futures::future::join_all;
use ledger_infrastructure::store::{Commit, EventMetadata};
use ledger_tests::{TestApp, test_config};
use reqwest::StatusCode;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transfers_conserve_money_and_keep_versions_gapless() {
    let app = Arc::new(TestApp::spawn().await);
    let mut accounts = Vec::new();
    for i in 0..5 {
        let id = app.open_account("EUR", if i == 0 { 500 } else { 0 }).await;
        assert_eq!(app.deposit(id, 1_000, "EUR").await.status, StatusCode::CREATED);
        accounts.push(id);
    }
    let tasks = (0..200u64).map(|i| {
        let app = app.clone();
        let from = accounts[(i % 5) as usize];
        let to = accounts[((i * 7 + 3) % 5) as usize];
        let to = if to == from { accounts[((i + 1) % 5) as usize] } else { to };
        let amount = (i * 37 % 400 + 1) as i64;
        tokio::spawn(async move { app.transfer(from, to, amount, "EUR").await })
    });
    let replies: Vec<_> = join_all(tasks).await.into_iter().map(|r| r.expect("task ran")).collect();
    let mut completed = 0;
    for r in &replies {
        match r.status {
            StatusCode::CREATED => completed += 1,
            StatusCode::UNPROCESSABLE_ENTITY => assert_eq!(r.code(), "insufficient_funds", "{r:?}"),
            other => panic!("unexpected {other}: {r:?}"),
        }
    }
    assert!(completed > 100, "most transfers succeed, got {completed}");

    let ledger = app.fold_log().await;
    for (i, id) in accounts.iter().enumerate() {
        let view = app.account(*id).await;
        let folded = ledger.account(*id).expect("account in log");
        assert_eq!(view["balance"], json!(folded.balance.minor_units()));
        let floor = if i == 0 { -500 } else { 0 };
        assert!(view["available"].as_i64().expect("number") >= floor, "overdraft breached: {view}");
        let versions: Vec<i64> =
            sqlx::query_scalar("select version from stream_entries where stream_id = $1 order by version")
                .bind(id)
                .fetch_all(&app.pool)
                .await
                .expect("versions");
        assert_eq!(versions, (1..=versions.len() as i64).collect::<Vec<_>>(), "versions have no gaps");
        assert_eq!(view["version"], json!(versions.len()));
    }
    let transfers: i64 = sqlx::query_scalar("select count(*) from events where type = 'TransferPosted'")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(transfers, completed, "every 201 is exactly one event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_idempotency_key_moves_money_once() {
    let app = Arc::new(TestApp::spawn().await);
    let a = app.open_account("EUR", 0).await;
    let b = app.open_account("EUR", 0).await;
    app.deposit(a, 1_000, "EUR").await;
    let body = json!({ "from": a, "to": b, "amount": 250, "currency": "EUR" });
    let tasks = (0..20).map(|_| {
        let (app, body) = (app.clone(), body.clone());
        tokio::spawn(async move { app.post("/v1/transfers", "same-key", &body).await })
    });
    let replies: Vec<_> = join_all(tasks).await.into_iter().map(|r| r.expect("task ran")).collect();
    let created: Vec<_> = replies.iter().filter(|r| r.status == StatusCode::CREATED).collect();
    assert!(!created.is_empty());
    for r in &replies {
        assert!(
            r.status == StatusCode::CREATED
                || (r.status == StatusCode::CONFLICT && r.code() == "idempotency_key_in_flight"),
            "{r:?}"
        );
    }
    let originals = created.iter().filter(|r| r.header("idempotent-replayed").is_none()).count();
    assert_eq!(originals, 1, "exactly one request executed");
    assert!(created.iter().all(|r| r.body == created[0].body), "replays carry the original body");

    let replay = app.post("/v1/transfers", "same-key", &body).await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body, created[0].body);
    assert_eq!(app.account(a).await["balance"], json!(750), "money moved once");

    let changed = json!({ "from": a, "to": b, "amount": 251, "currency": "EUR" });
    let reused = app.post("/v1/transfers", "same-key", &changed).await;
    assert_eq!((reused.status, reused.code()), (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"));

    let too_much = json!({ "from": a, "to": b, "amount": 10_000, "currency": "EUR" });
    let first = app.post("/v1/transfers", "poor-key", &too_much).await;
    assert_eq!((first.status, first.code()), (StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds"));
    app.deposit(a, 100_000, "EUR").await;
    let again = app.post("/v1/transfers", "poor-key", &too_much).await;
    assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY, "a rejection replays as itself");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
}

fn account_opening(n: usize) -> Commit {
    let event = ledger_domain::Event::AccountOpened(ledger_domain::events::AccountOpened {
        account_id: Uuid::now_v7(),
        currency: ledger_domain::Currency::parse("EUR").expect("valid"),
        owner: None,
        overdraft_limit: ledger_domain::Money::ZERO,
        system: false,
        metadata: None,
        subject: Some(format!("appender-{n}")),
    });
    // The account's stream and its subject's, both new.
    let expected = event.streams().into_iter().map(|(id, _)| (id, 0)).collect();
    Commit {
        events: vec![event],
        expected,
        read: Vec::new(),
        metadata: EventMetadata { actor: "test".into(), ..EventMetadata::default() },
        idempotency: None,
        streams: Vec::new(),
        rejection: None,
        owner_index: None,
    }
}

/// An opening whose append fails after it has taken positions: Postgres refuses NUL in
/// text, so its transaction rolls back.
fn failing_opening(n: usize, key: String) -> Commit {
    Commit {
        idempotency: Some(ledger_infrastructure::IdempotencyClaim {
            principal: "nul\u{0}".into(),
            key,
            fingerprint: vec![0; 32],
            expires_at: chrono::Utc::now(),
        }),
        ..account_opening(n)
    }
}

/// A reader following the log by position, which asserts that it never sees a hole or a
/// late arrival behind it, until `stop` holds before a read (that read is its last) or
/// `seconds` have passed; it returns the last position it read.
fn spawn_tailer(
    store: ledger_infrastructure::EventStore,
    seconds: u64,
    stop: impl Fn(i64) -> bool + Send + 'static,
) -> tokio::task::JoinHandle<i64> {
    tokio::spawn(async move {
        let mut after = 0i64;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        loop {
            let stopping = stop(after);
            for e in store.read_all(after, 50).await.expect("read") {
                assert_eq!(e.position, after + 1, "a reader never sees a hole or a late arrival behind it");
                after = e.position;
            }
            if stopping || std::time::Instant::now() > deadline {
                return after;
            }
            tokio::task::yield_now().await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn positions_are_gapless_and_commit_ordered_under_concurrent_appends() {
    let app = TestApp::spawn().await;
    let store = app.state.store.clone();
    const APPENDERS: usize = 16;
    const BATCHES: usize = 25;
    let total = APPENDERS * BATCHES * 2;
    let appenders = (0..APPENDERS).map(|a| {
        let store = store.clone();
        tokio::spawn(async move {
            for b in 0..BATCHES {
                let batch = vec![account_opening(a * 1000 + b), account_opening(a * 1000 + b + 500)];
                store.append_batch(&batch).await.expect("append");
                if b % 5 == 0 {
                    // A transaction that fails after taking positions must leave no hole.
                    assert!(store.append_batch(&[failing_opening(a, format!("k{a}-{b}"))]).await.is_err());
                }
            }
        })
    });
    let tailer = spawn_tailer(store.clone(), 60, move |after| after >= total as i64);
    for a in join_all(appenders).await {
        a.expect("appender finished");
    }
    assert_eq!(tailer.await.expect("tailer finished"), total as i64);
    assert_eq!(store.head().await.expect("head"), total as i64);
    let positions: Vec<i64> = sqlx::query_scalar("select position from events order by position")
        .fetch_all(&app.pool)
        .await
        .expect("positions");
    assert_eq!(positions, (1..=total as i64).collect::<Vec<_>>());
}

/// An event's primary stream and version are its first stream entry, so the primary key
/// of `stream_entries` alone refuses a version taken twice, whichever stream of the
/// event it is (`events` keeps no second index of them since migration 0028).
#[tokio::test]
async fn a_version_taken_twice_is_refused_for_an_events_primary_stream_too() {
    let app = TestApp::spawn().await;
    let store = app.state.store.clone();
    let opening = account_opening(1);
    let account = opening.events[0].streams()[0].0;
    store.append_batch(&[opening]).await.expect("the opening");
    let head = store.head().await.expect("head");
    // Decided against a stale version (0): its one stream, the account, is its primary.
    let stale = Commit {
        events: vec![ledger_domain::Event::AccountClosed(ledger_domain::events::AccountClosed { account_id: account })],
        expected: vec![(account, 0)],
        ..account_opening(2)
    };
    match store.append_batch(&[stale]).await {
        Err(ledger_infrastructure::store::AppendError::Conflict { .. }) => {}
        other => panic!("a second version 1 of the account was not refused as a conflict: {other:?}"),
    }
    assert_eq!(store.head().await.expect("head"), head, "nothing was written");
    // Nor can one be slipped in beside the append: the key is the stream entries'.
    let err = sqlx::query("insert into stream_entries (stream_id, version, position) values ($1, 1, $2)")
        .bind(account)
        .bind(head)
        .execute(&app.pool)
        .await
        .expect_err("a second entry at version 1");
    assert_eq!(err.as_database_error().and_then(|d| d.constraint()), Some("stream_entries_pkey"));
    let versions: Vec<(Uuid, i64)> = sqlx::query_as("select stream_id, version from events where stream_id = $1")
        .bind(account)
        .fetch_all(&app.pool)
        .await
        .expect("the account's events");
    assert_eq!(versions, vec![(account, 1)]);
}

#[tokio::test]
async fn the_log_refuses_update_delete_and_truncate() {
    let app = TestApp::spawn().await;
    app.open_account("EUR", 0).await;
    for sql in [
        "update events set data = '{}' where position = 1",
        "delete from events where position = 1",
        "truncate events cascade",
        "update stream_entries set version = 9",
        "delete from stream_entries",
    ] {
        let err = sqlx::query(sql).execute(&app.pool).await.expect_err(sql);
        let code = err.as_database_error().and_then(|d| d.code()).map(|c| c.to_string());
        assert_eq!(code.as_deref(), Some("23001"), "{sql}: {err}");
    }
    let count: i64 = sqlx::query_scalar("select count(*) from events").fetch_one(&app.pool).await.expect("count");
    assert_eq!(count, 2);
}

#[tokio::test]
async fn bad_input_gets_its_documented_status_and_code() {
    let app = TestApp::spawn().await;
    let a = app.open_account("EUR", 0).await;
    let b = app.open_account("EUR", 0).await;
    let usd = app.open_account("USD", 0).await;
    let closed = app.open_account("EUR", 0).await;
    let close = app.post(&format!("/v1/accounts/{closed}/close"), "close-it", &json!({})).await;
    assert_eq!(close.status, StatusCode::OK, "{close:?}");
    assert_eq!(close.body["status"], "closed");
    app.deposit(a, 1_000, "EUR").await;
    let t = |amount: serde_json::Value| json!({ "from": a, "to": b, "amount": amount, "currency": "EUR" });
    let unknown = Uuid::now_v7();
    let cases: Vec<(&str, serde_json::Value, StatusCode, &str)> = vec![
        ("zero", t(json!(0)), StatusCode::UNPROCESSABLE_ENTITY, "validation_error"),
        ("negative", t(json!(-5)), StatusCode::UNPROCESSABLE_ENTITY, "validation_error"),
        ("fraction", t(json!(1.5)), StatusCode::UNPROCESSABLE_ENTITY, "validation_error"),
        ("string", t(json!("100")), StatusCode::UNPROCESSABLE_ENTITY, "validation_error"),
        ("10^18", t(json!(1_000_000_000_000_000_000i64)), StatusCode::UNPROCESSABLE_ENTITY, "validation_error"),
        ("huge", t(json!(1e30)), StatusCode::UNPROCESSABLE_ENTITY, "validation_error"),
        (
            "currency",
            json!({ "from": a, "to": b, "amount": 1, "currency": "eur" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
        ),
        (
            "missing",
            json!({ "from": a, "amount": 1, "currency": "EUR" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
        ),
        (
            "unknown",
            json!({ "from": a, "to": unknown, "amount": 1, "currency": "EUR" }),
            StatusCode::NOT_FOUND,
            "account_not_found",
        ),
        (
            "same",
            json!({ "from": a, "to": a, "amount": 1, "currency": "EUR" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "same_account",
        ),
        (
            "closed",
            json!({ "from": a, "to": closed, "amount": 1, "currency": "EUR" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "account_closed",
        ),
        (
            "mismatch",
            json!({ "from": a, "to": usd, "amount": 1, "currency": "EUR" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "currency_mismatch",
        ),
        ("funds", t(json!(5_000)), StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds"),
    ];
    for (name, body, status, code) in cases {
        let r = app.post("/v1/transfers", &format!("bad-{name}"), &body).await;
        assert_eq!((r.status, r.code()), (status, code), "case {name}: {r:?}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"), "case {name}");
    }
    let invalid = app.post_raw("/v1/transfers", Some("bad-json"), b"{\"from\": ".to_vec()).await;
    assert_eq!((invalid.status, invalid.code()), (StatusCode::BAD_REQUEST, "validation_error"));
    let big = vec![b' '; 70 * 1024];
    let too_large = app.post_raw("/v1/transfers", Some("bad-size"), big).await;
    assert_eq!((too_large.status, too_large.code()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));
    let no_key = app.post_raw("/v1/transfers", None, t(json!(1)).to_string().into_bytes()).await;
    assert_eq!((no_key.status, no_key.code()), (StatusCode::BAD_REQUEST, "idempotency_key_missing"));
    let bad_key = app.post("/v1/transfers", &"k".repeat(256), &t(json!(1))).await;
    assert_eq!(bad_key.status, StatusCode::BAD_REQUEST);
    let not_empty = app.post(&format!("/v1/accounts/{a}/close"), "close-a", &json!({})).await;
    assert_eq!((not_empty.status, not_empty.code()), (StatusCode::UNPROCESSABLE_ENTITY, "account_not_empty"));
    let deposit_closed = app.deposit(closed, 5, "EUR").await;
    assert_eq!(deposit_closed.code(), "account_closed");
    let unknown_read = app.get(&format!("/v1/accounts/{unknown}")).await;
    assert_eq!((unknown_read.status, unknown_read.code()), (StatusCode::NOT_FOUND, "account_not_found"));
    app.fold_log().await;
}

#[tokio::test]
async fn every_v1_route_requires_a_token() {
    let app = TestApp::spawn().await;
    for path in ["/v1/events", "/v1/system-accounts", "/v1/accounts/x"] {
        let r = app.client.get(format!("{}{path}", app.base)).send().await.expect("sent");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        let r = app.client.get(format!("{}{path}", app.base)).bearer_auth("wrong").send().await.expect("sent");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let live = app.client.get(format!("{}/health/live", app.base)).send().await.expect("sent");
    assert_eq!(live.status(), StatusCode::OK);
    let ready = app.client.get(format!("{}/health/ready", app.base)).send().await.expect("sent");
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test]
async fn reversal_withdrawal_and_history_reads() {
    let app = TestApp::spawn().await;
    let a = app.open_account("EUR", 0).await;
    let b = app.open_account("EUR", 0).await;
    app.deposit(a, 1_000, "EUR").await;
    let t = app.transfer(a, b, 400, "EUR").await;
    let transfer_id = t.id();
    let reverse = |key: &'static str| {
        let app = &app;
        async move {
            app.post(&format!("/v1/transfers/{transfer_id}/reverse"), key, &json!({ "reason": "duplicate" })).await
        }
    };
    let r = reverse("rev-1").await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(r.body["reverses"], json!(transfer_id));
    assert_eq!((r.body["from"].clone(), r.body["to"].clone()), (json!(b), json!(a)));
    let twice = reverse("rev-2").await;
    assert_eq!((twice.status, twice.code()), (StatusCode::UNPROCESSABLE_ENTITY, "already_reversed"));
    let original = app.get(&format!("/v1/transfers/{transfer_id}?consistency=strong")).await;
    assert_eq!(original.body["reversed_by"], json!(r.id()));
    assert!(original.header("x-ledger-position").is_some());

    let w = app
        .post(
            "/v1/withdrawals",
            "w-1",
            &json!({ "account_id": a, "amount": 300, "currency": "EUR", "destination": "NL00BANK0123" }),
        )
        .await;
    assert_eq!((w.status, w.body["status"].clone()), (StatusCode::ACCEPTED, json!("pending")), "{w:?}");
    let view = app.account(a).await;
    assert_eq!(
        (view["balance"].clone(), view["available"].clone(), view["pending_holds"].clone()),
        (json!(1_000), json!(700), json!(300))
    );
    let at = w.body["position"].as_i64().expect("position");
    let read = app.get(&format!("/v1/withdrawals/{}?min_position={at}", w.id())).await;
    assert_eq!(read.body["status"], "pending");

    let history = app.get(&format!("/v1/accounts/{a}/events?limit=10")).await;
    let types: Vec<&str> =
        history.body["events"].as_array().expect("events").iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["AccountOpened", "DepositRecorded", "TransferPosted", "TransferPosted", "WithdrawalRequested"]);
    let versions: HashSet<i64> =
        history.body["events"].as_array().expect("events").iter().filter_map(|e| e["version"].as_i64()).collect();
    assert_eq!(versions, (1..=5).collect());
    let reversal = &history.body["events"][3];
    assert_eq!(reversal["metadata"]["causation_id"], json!(transfer_id.to_string()));

    let page = app.get("/v1/events?after=2&limit=2").await;
    let positions: Vec<i64> =
        page.body["events"].as_array().expect("events").iter().filter_map(|e| e["position"].as_i64()).collect();
    assert_eq!(positions, [3, 4]);
    let systems = app.get("/v1/system-accounts").await;
    assert_eq!(systems.body["accounts"][0]["currency"], "EUR");
    app.fold_log().await;
}

#[tokio::test]
async fn a_second_process_sees_conflicts_and_decides_again() {
    // Two API instances (two writers, two caches) on one database.
    let config = test_config();
    let first = TestApp::spawn_with(config.clone()).await;
    let second = TestApp::spawn_with(config).await;
    let a = first.open_account("EUR", 0).await;
    let b = first.open_account("EUR", 0).await;
    first.deposit(a, 100, "EUR").await;
    // Warm both caches, then spend from both sides: the second must see the first's write.
    assert_eq!(second.account(a).await["balance"], json!(100));
    assert_eq!(first.transfer(a, b, 80, "EUR").await.status, StatusCode::CREATED);
    let r = second.transfer(a, b, 80, "EUR").await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds"));
    first.fold_log().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_racing_on_the_same_accounts_decide_again_and_never_fail() {
    // Two API instances (two writers, two caches) on one database, appending at once.
    let config = test_config();
    let first = Arc::new(TestApp::spawn_with(config.clone()).await);
    let second = Arc::new(TestApp::spawn_with(config).await);
    let a = first.open_account("EUR", 0).await;
    let b = first.open_account("EUR", 0).await;
    first.deposit(a, 100_000, "EUR").await;
    first.deposit(b, 100_000, "EUR").await;
    let tasks = (0..60u32).map(|i| {
        let app = if i % 2 == 0 { first.clone() } else { second.clone() };
        let (from, to) = if i % 3 == 0 { (b, a) } else { (a, b) };
        tokio::spawn(async move { app.transfer(from, to, 1 + i64::from(i), "EUR").await })
    });
    for r in join_all(tasks).await {
        let r = r.expect("task");
        assert_eq!(r.status, StatusCode::CREATED, "a conflict with the other writer is retried, not failed: {r:?}");
    }
    let conflicts: i64 = sqlx::query_scalar("select count(*) from events where type = 'TransferPosted'")
        .fetch_one(&first.pool)
        .await
        .expect("count");
    assert_eq!(conflicts, 60);
    let metrics = ledger_api::http::metrics::handle().render();
    assert!(metrics.contains("ledger_append_conflicts_total"), "the writers did conflict and decided again");
    first.fold_log().await;
    assert_eq!(first.account(a).await["balance"], second.account(a).await["balance"]);
}

#[tokio::test]
async fn idempotency_records_refer_to_outcomes_and_records_from_before_replay_as_stored() {
    let app = TestApp::spawn().await;
    let a = app.open_account("EUR", 0).await;
    let body = json!({ "account_id": a, "amount": 25, "currency": "EUR" });
    let first = app.post("/v1/deposits", "outcome-key", &body).await;
    assert_eq!(first.status, StatusCode::CREATED);
    // The record refers to the events it answers for: no copy of them, no rendered response.
    let (status, outcome, position, events): (Option<i16>, Option<serde_json::Value>, Option<i64>, Option<i32>) =
        sqlx::query_as(
            "select status_code, outcome, outcome_position, outcome_events from idempotency_keys where key = 'outcome-key'",
        )
        .fetch_one(&app.pool)
        .await
        .expect("record");
    assert_eq!((status, outcome, position, events), (None, None, first.body["position"].as_i64(), Some(1)));
    // A replay reads them back from the log: the very first answer again.
    let replay = app.post("/v1/deposits", "outcome-key", &body).await;
    assert_eq!((replay.status, &replay.body), (first.status, &first.body));
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    // A record written by a version that kept the typed outcome replays from it.
    let kept = app
        .state
        .store
        .resolve(ledger_infrastructure::outcome::OutcomeRef { position: position.expect("a position"), events: 1 });
    let kept = serde_json::to_value(kept.await.expect("read back")).expect("serializes");
    sqlx::query("update idempotency_keys set outcome_position = null, outcome_events = null, outcome = $1 where key = 'outcome-key'")
        .bind(&kept)
        .execute(&app.pool)
        .await
        .expect("rewritten");
    let from_outcome = app.post("/v1/deposits", "outcome-key", &body).await;
    assert_eq!((from_outcome.status, &from_outcome.body), (first.status, &first.body));
    // A record written by a version that stored rendered responses replays as stored
    // (marked here by a reference the request never had).
    let mut stored = first.body.clone();
    stored["reference"] = json!("rendered by an earlier version");
    sqlx::query("update idempotency_keys set outcome = null, status_code = 201, body = $1 where key = 'outcome-key'")
        .bind(&stored)
        .execute(&app.pool)
        .await
        .expect("rewritten");
    let legacy = app.post("/v1/deposits", "outcome-key", &body).await;
    assert_eq!((legacy.status, &legacy.body), (StatusCode::CREATED, &stored));
    assert_eq!(legacy.header("idempotent-replayed"), Some("true"));
    assert_eq!(app.account(a).await["balance"], json!(25), "nothing ran twice");
}

/// A currency's system account is appended by every deposit without a version check,
/// so another writer's deposits land between this writer's decision and its commit. A
/// pipelined batch that did not append to it once put back into the writer's cache the
/// state the batch before had computed, which the log never held: later loads folded
/// on top of it, and strong reads (and snapshots) kept a wrong system balance. Two
/// writers deposit at once while the first also posts transfers (so its batches often
/// leave the system account alone); what each writer answers for the system account
/// must be what the log folds to.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_system_account_two_writers_append_to_is_cached_only_as_the_log_has_it() {
    let config = test_config();
    let first = Arc::new(TestApp::spawn_with(config.clone()).await);
    let second = Arc::new(TestApp::spawn_mode(config, ledger_api::run::serve::Mode::Api).await);
    let accounts: Arc<Vec<Uuid>> = Arc::new(join_all((0..8).map(|_| first.open_account("EUR", 0))).await);
    for a in accounts.iter() {
        assert_eq!(first.deposit(*a, 1_000_000, "EUR").await.status, StatusCode::CREATED);
    }
    let listed = first.get("/v1/system-accounts").await;
    let system: Uuid =
        serde_json::from_value(listed.body["accounts"][0]["id"].clone()).expect("the EUR system account");
    for round in 0..3 {
        let until = std::time::Instant::now() + std::time::Duration::from_millis(1500);
        // On the first writer 32 clients transfer and one deposits (enough clients that
        // a batch gathers while the one before commits); on the second 4 deposit.
        let tasks = (0..69usize).map(|client| {
            let (app, deposits) = match client {
                0..64 => (first.clone(), false),
                64 => (first.clone(), true),
                _ => (second.clone(), true),
            };
            let accounts = accounts.clone();
            tokio::spawn(async move {
                let mut n = 0usize;
                // The writers share only the system account: the first's customer accounts
                // are 0..4, the second's 4..8 (shared ones would conflict, and be retried).
                let own = if client > 64 { 4 } else { 0 };
                while std::time::Instant::now() < until && n < 2_000 {
                    let a = accounts[own + (client + n) % 4];
                    // Amounts that tell the writers' deposits apart: a state counting
                    // one of the first's twice and missing one of the second's is off.
                    let r = if deposits {
                        app.deposit(a, if own == 0 { 1 } else { 1_000 }, "EUR").await
                    } else {
                        app.transfer(a, accounts[own + (client + n + 1) % 4], 1, "EUR").await
                    };
                    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
                    n += 1;
                    if client == 64 {
                        // The first writer's deposits come now and then, so batches
                        // without one land between them.
                        tokio::time::sleep(std::time::Duration::from_millis(1 + n as u64 % 7)).await;
                    }
                }
            })
        });
        for t in join_all(tasks).await {
            t.expect("client task");
        }
        let log = first.fold_log().await;
        let expected = log.account(system).expect("the system account").balance;
        for (name, app) in [("first", &first), ("second", &second)] {
            let strong = app.get(&format!("/v1/accounts/{system}?consistency=strong")).await;
            assert_eq!(strong.status, StatusCode::OK, "{strong:?}");
            assert_eq!(
                strong.body["balance"].to_string(),
                expected.to_string(),
                "round {round}: the {name} writer's system account is not the log's"
            );
        }
    }
}

/// The writer's idempotency look-up runs on sessions that always plan generically
/// (`db::generic_plans`): it is a probe per key, planned once per session instead of on
/// every batch. Every other session keeps Postgres' own choice (the read routes filter
/// optionally, where only a custom plan uses an index). A retried command still finds
/// its record through the look-up, and moves money once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_look_ups_plan_generically_and_still_find_every_key() {
    let app = TestApp::spawn().await;
    let generic = ledger_infrastructure::db::generic_plans(&app.pool, &app.state.config, 1);
    let mode = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, String>("select current_setting('plan_cache_mode')")
            .fetch_one(&pool)
            .await
            .expect("the setting")
    };
    assert_eq!(mode(generic.clone()).await, "force_generic_plan");
    assert_eq!(mode(app.pool.clone()).await, "auto", "the other sessions keep Postgres' choice");
    let (a, b) = (app.open_account("EUR", 0).await, app.open_account("EUR", 0).await);
    app.deposit(a, 100, "EUR").await;
    // More look-ups than Postgres makes custom plans before it may switch (five).
    for i in 0..8 {
        let key = format!("generic-{i}");
        let body = json!({"from": a, "to": b, "amount": 1, "currency": "EUR"});
        let first = app.post("/v1/transfers", &key, &body).await;
        assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
        let again = app.post("/v1/transfers", &key, &body).await;
        assert_eq!(again.status, StatusCode::CREATED);
        assert_eq!(again.body["id"], first.body["id"], "the retry replays the first");
    }
    assert_eq!(app.account(a).await["balance"], json!(92), "eight transfers, each once");
}

/// Appends behind one another, as the pipelined writer makes them (each batch planned
/// on the tail of the append before it and written while that one commits, only its
/// update of the head waiting for it), raced by a second process's appends under the
/// head lock, with some batches failing after they were planned (at their insert: a
/// NUL Postgres refuses). A batch behind one that did not commit never commits; every
/// batch commits whole or not at all; a reader sees the log gapless and in commit
/// order; the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_behind_one_another_commit_in_order_or_not_at_all() {
    use ledger_infrastructure::store::{AppendError, Appended, chain};
    let app = TestApp::spawn().await;
    let store = app.state.store.clone();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let chains_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut foreign: Vec<_> = (0..2usize)
        .map(|f| {
            let (store, chains_done) = (store.clone(), chains_done.clone());
            tokio::spawn(async move {
                let mut conflicts = 0;
                for b in 0..500 {
                    if chains_done.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    // Fresh accounts: nothing to conflict on but a deadlock with a batch
                    // written behind another (a conflict): counted, and there must be none.
                    match store.append_batch(&[account_opening(900_000 + f * 1_000 + b)]).await {
                        Ok(_) => {}
                        Err(AppendError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("the other process's append failed: {e}"),
                    }
                    // A deliberate pause: the other process's pace, so that chains both
                    // meet its appends and commit between them.
                    tokio::time::sleep(std::time::Duration::from_millis(15)).await;
                }
                conflicts
            })
        })
        .collect();
    let tailer = {
        let done = done.clone();
        spawn_tailer(store.clone(), 120, move |_| done.load(std::sync::atomic::Ordering::SeqCst))
    };
    type Flight = tokio::task::JoinHandle<Result<Appended, AppendError>>;
    // (batch, its accounts, whether it was to fail, its append)
    type Landed = (usize, Vec<Uuid>, bool, Result<Appended, AppendError>);
    let mut results: Vec<Landed> = Vec::new();
    let mut in_flight: Option<(usize, Vec<Uuid>, bool, Flight)> = None;
    let mut behind = None;
    let mut foreign_conflicts = 0;
    for b in 0..60usize {
        if b == 30 {
            // An append of the other process between two of a chain's breaks the chain
            // (the batches behind it are decided again): from here on, none.
            chains_done.store(true, std::sync::atomic::Ordering::SeqCst);
            for f in join_all(std::mem::take(&mut foreign)).await {
                foreign_conflicts += f.expect("the other process finished");
            }
        }
        let mut batch = vec![account_opening(b * 2), account_opening(b * 2 + 1)];
        // A chain starts afresh every ten batches (under the head lock). The last of
        // each chain fails, and so does the first of every other chain (under the head
        // lock), which leaves every batch of its chain behind a failed one.
        let failing = b % 10 == 9 || b % 20 == 10;
        if failing {
            batch.push(failing_opening(b, format!("k{b}")));
        }
        let accounts: Vec<Uuid> = batch.iter().map(|c| c.events[0].streams()[0].0).collect();
        let after = if b % 10 == 0 { None } else { behind.take() };
        let (next, next_behind) = chain();
        behind = Some(next_behind);
        let store = store.clone();
        let flight: Flight = tokio::spawn(async move { store.append_behind(&batch, after, Some(next)).await });
        // At most two under way, as in the writer: the one before lands now.
        if let Some((pb, pa, pf, previous)) = in_flight.replace((b, accounts, failing, flight)) {
            results.push((pb, pa, pf, previous.await.expect("append ran")));
        }
    }
    let (lb, la, lf, last) = in_flight.take().expect("the last batch");
    results.push((lb, la, lf, last.await.expect("append ran")));
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let head = store.head().await.expect("head");
    assert_eq!(tailer.await.expect("tailer finished"), head, "the reader read the whole log");

    let mut committed = 0;
    for (i, (b, accounts, failing, result)) in results.iter().enumerate() {
        let stored: Vec<(Uuid, i64)> =
            sqlx::query_as("select stream_id, position from events where stream_id = any($1)")
                .bind(accounts)
                .fetch_all(&app.pool)
                .await
                .expect("the batch's events");
        match result {
            Ok(appended) => {
                assert!(!failing, "batch {b} was to fail and committed");
                let positions: Vec<(Uuid, i64)> = appended
                    .results
                    .iter()
                    .flat_map(|r| r.recorded.iter().map(|e| (e.stream_id, e.position)))
                    .collect();
                let mut stored = stored.clone();
                stored.sort_by_key(|(_, p)| *p);
                assert_eq!(stored, positions, "batch {b} is in the log where its append said, whole");
                let first = positions[0].1;
                assert!(
                    positions.iter().enumerate().all(|(k, (_, p))| *p == first + k as i64),
                    "batch {b} is contiguous"
                );
                committed += 1;
            }
            Err(_) => assert!(stored.is_empty(), "batch {b} failed, yet left {stored:?}"),
        }
        // Behind a batch that did not commit, none commits.
        if b % 10 != 0 && i > 0 && results[i - 1].3.is_err() {
            assert!(result.is_err(), "batch {b} committed behind a batch that did not");
        }
    }
    println!(
        "{committed} of 60 batches behind one another committed; the other process met {foreign_conflicts} conflicts"
    );
    // Of the last three chains, run alone, the first and the last fail whole (their
    // first batch fails), the middle one commits but for its last batch.
    let alone: Vec<usize> = results.iter().filter(|(b, .., r)| *b >= 30 && r.is_ok()).map(|(b, ..)| *b).collect();
    assert_eq!(alone, (40..=48).collect::<Vec<_>>(), "the chain run alone committed, but for the batch that failed");
    assert_eq!(foreign_conflicts, 0, "the other process's appends never deadlocked with these");
    let positions: Vec<i64> = sqlx::query_scalar("select position from events order by position")
        .fetch_all(&app.pool)
        .await
        .expect("positions");
    assert_eq!(positions, (1..=head).collect::<Vec<_>>(), "gapless");
    let report = ledger_infrastructure::audit::verify_chain(&store, 500, |_, _| {}).await.expect("verify");
    assert!(report.ok, "the chain verifies: {:?}", report.first_bad_position);
}

/// The writer decides a command alone without looking its key up first: the append's
/// insert of the key is the final word, and a batch one of whose keys was recorded
/// before is decided again with look-ups. So a retry must still get its first answer
/// where deciding the command again would answer otherwise: with the payer refunded
/// since (deciding again would pay twice) and drained again (it would refuse), through
/// the process that answered first and through another that has never seen the key,
/// each before either has met a key (look-ups still off), then beside new commands that
/// share its batch; a key reused with another body, which would now succeed, is
/// refused; an all-or-nothing bulk counts an item done before under its key as done.
/// Money moves once for each key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_gets_its_first_answer_though_keys_are_not_looked_up_before_deciding() {
    let config = test_config();
    let first = TestApp::spawn_with(config.clone()).await;
    let second = TestApp::spawn_mode(config, ledger_api::run::serve::Mode::Api).await;
    let (a, b) = (first.open_account("EUR", 0).await, first.open_account("EUR", 0).await);
    first.deposit(a, 1_000, "EUR").await;
    let drain = json!({ "from": a, "to": b, "amount": 1_000, "currency": "EUR" });
    let original = first.post("/v1/transfers", "drain-key", &drain).await;
    assert_eq!(original.status, StatusCode::CREATED, "{:?}", original.body);
    // Refunded: deciding the transfer again would now pay it again.
    first.deposit(a, 1_000, "EUR").await;
    let reused = json!({ "from": a, "to": b, "amount": 1, "currency": "EUR" });
    let reused = second.post("/v1/transfers", "drain-key", &reused).await;
    assert_eq!((reused.status, reused.code()), (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"));
    let retry = first.post("/v1/transfers", "drain-key", &drain).await;
    assert_eq!((retry.status, retry.header("idempotent-replayed")), (StatusCode::CREATED, Some("true")));
    assert_eq!(retry.body, original.body, "the first answer");
    assert_eq!(first.account(a).await["balance"], json!(1_000), "paid once");
    // Drained again: deciding it again would now refuse it.
    let again = json!({ "from": a, "to": b, "amount": 1_000, "currency": "EUR" });
    assert_eq!(first.post("/v1/transfers", "again-key", &again).await.status, StatusCode::CREATED);
    let mut deposits = 0;
    for (round, app) in [&second, &first, &second, &first].into_iter().enumerate() {
        // The retry beside eight new deposits, so that most rounds share a batch.
        let news = (0..8).map(|i| {
            let body = json!({ "account_id": b, "amount": 1, "currency": "EUR" });
            async move { app.post("/v1/deposits", &format!("deposit-{round}-{i}"), &body).await }
        });
        let (retry, news) = tokio::join!(app.post("/v1/transfers", "drain-key", &drain), join_all(news));
        assert_eq!(retry.status, StatusCode::CREATED, "round {round}: {:?}", retry.body);
        assert_eq!(retry.header("idempotent-replayed"), Some("true"), "round {round}");
        assert_eq!(retry.body, original.body, "round {round}: the first answer");
        for n in &news {
            assert_eq!(n.status, StatusCode::CREATED, "round {round}: a new command beside it: {:?}", n.body);
            assert_eq!(n.header("idempotent-replayed"), None);
        }
        deposits += news.len() as i64;
    }

    // An item done before under its key, in an all-or-nothing bulk through a process
    // that never saw it: b has been drained since, so deciding it again would refuse
    // the whole bulk.
    let back = json!({ "from": b, "to": a, "amount": 600, "currency": "EUR" });
    let done = first.post("/v1/transfers", "back-key", &back).await;
    assert_eq!(done.status, StatusCode::CREATED, "{:?}", done.body);
    let rest = json!({ "from": b, "to": a, "amount": 1_400 + deposits, "currency": "EUR" });
    assert_eq!(first.post("/v1/transfers", "rest-key", &rest).await.status, StatusCode::CREATED);
    let bulk = json!({ "atomic": true, "items": [
        { "method": "POST", "path": "/v1/transfers", "idempotency_key": "back-key", "body": back },
        { "method": "POST", "path": "/v1/deposits", "idempotency_key": "bulk-deposit",
          "body": { "account_id": b, "amount": 5, "currency": "EUR" } },
    ] });
    let answered = second.post("/v1/bulk", "atomic-bulk-key", &bulk).await;
    assert_eq!(answered.status, StatusCode::OK, "{:?}", answered.body);
    let results = answered.body["results"].as_array().expect("results");
    assert_eq!(results[0]["status"], json!(201), "the item done before counts as done: {results:?}");
    assert_eq!(results[0]["body"], done.body, "with its first answer");
    assert_eq!(results[1]["status"], json!(201), "{results:?}");
    assert_eq!(first.account(a).await["balance"], json!(2_000 + deposits), "every key moved money once");
    assert_eq!(first.account(b).await["balance"], json!(5));
    let transfers: i64 = sqlx::query_scalar("select count(*) from events where type = 'TransferPosted'")
        .fetch_one(&first.pool)
        .await
        .expect("count");
    assert_eq!(transfers, 4, "four transfer keys, four transfers");
}

//! `POST /v1/bulk` (API.md v1.1 "Bulk") against real Postgres and NATS: items in order
//! each as if sent alone, replays of items and of the whole bulk, atomic all-or-nothing.

use ledger_tests::{Reply, TestApp};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

fn key() -> String {
    Uuid::new_v4().to_string()
}

fn item(path: &str, key: &str, body: Value) -> Value {
    json!({ "method": "POST", "path": path, "idempotency_key": key, "body": body })
}

async fn bulk(app: &TestApp, bulk_key: &str, atomic: bool, items: Vec<Value>) -> Reply {
    app.post("/v1/bulk", bulk_key, &json!({ "atomic": atomic, "items": items })).await
}

async fn head(app: &TestApp) -> i64 {
    app.state.store.head().await.expect("a head")
}

#[tokio::test]
async fn items_run_in_order_each_as_if_alone_and_replay_item_by_item() {
    let app = TestApp::spawn().await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let items = vec![
        item("/v1/accounts", "open-a", json!({ "id": a, "currency": "EUR" })),
        item("/v1/accounts", "open-b", json!({ "id": b, "currency": "EUR" })),
        item("/v1/deposits", "fund-a", json!({ "account_id": a, "amount": 100, "currency": "EUR" })),
        // Sees the deposit before it: funded.
        item("/v1/transfers", "pay-1", json!({ "from": a, "to": b, "amount": 60, "currency": "EUR" })),
        // And the transfer before it: refused.
        item("/v1/transfers", "pay-2", json!({ "from": a, "to": b, "amount": 60, "currency": "EUR" })),
        item("/v1/transfers", "bad", json!({ "from": a, "to": b, "amount": -1, "currency": "EUR" })),
        item(
            "/v1/transactions",
            "tx",
            json!({ "postings": [{ "from": b, "to": a, "amount": 10, "currency": "EUR" }] }),
        ),
    ];
    let r = bulk(&app, "bulk-1", false, items.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let results = r.body["results"].as_array().expect("results").clone();
    let statuses: Vec<i64> = results.iter().map(|x| x["status"].as_i64().unwrap_or(0)).collect();
    assert_eq!(statuses, vec![201, 201, 201, 201, 422, 422, 201]);
    assert_eq!(results[4]["body"]["code"], "insufficient_funds");
    assert_eq!(results[5]["body"]["code"], "validation_error");
    assert_eq!(results[3]["body"]["from"], json!(a), "the body is the route's own answer");
    assert!(results.iter().all(|x| x["replayed"] == false));
    assert_eq!(app.account(a).await["balance"], 50);

    // The bulk's own key replays the whole response.
    let again = bulk(&app, "bulk-1", false, items.clone()).await;
    assert_eq!((again.status, &again.body), (StatusCode::OK, &r.body));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    // Another bulk key with the same items: each item replays its own answer.
    let other = bulk(&app, "bulk-2", false, items.clone()).await;
    let replayed: Vec<bool> =
        other.body["results"].as_array().expect("results").iter().map(|x| x["replayed"] == true).collect();
    assert_eq!(replayed, vec![true, true, true, true, true, false, true], "a refused-at-the-edge item stores nothing");
    assert_eq!(app.account(a).await["balance"], 50, "nothing ran twice");
    // A key of an item used with another body is refused for that item alone.
    let reused = bulk(
        &app,
        "bulk-3",
        false,
        vec![item("/v1/deposits", "fund-a", json!({ "account_id": a, "amount": 1, "currency": "EUR" }))],
    )
    .await;
    assert_eq!(reused.body["results"][0]["body"]["code"], "idempotency_key_reused");
    app.assert_read_models_match_log().await;
}

#[tokio::test]
async fn an_atomic_bulk_commits_every_item_in_one_transaction_or_stores_nothing() {
    let app = TestApp::spawn().await;
    let (a, b) = (app.open_account("EUR", 0).await, app.open_account("EUR", 0).await);
    assert_eq!(app.deposit(a, 100, "EUR").await.status, StatusCode::CREATED);
    let before = head(&app).await;
    let failing = vec![
        item("/v1/transfers", "t1", json!({ "from": a, "to": b, "amount": 40, "currency": "EUR" })),
        item("/v1/transfers", "t2", json!({ "from": a, "to": b, "amount": 40, "currency": "EUR" })),
        item("/v1/transfers", "t3", json!({ "from": a, "to": b, "amount": 40, "currency": "EUR" })),
    ];
    let r = bulk(&app, "atomic-1", true, failing.clone()).await;
    assert_eq!(
        (r.status, r.code(), r.body["failed_index"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds", json!(2)),
        "{r:?}"
    );
    assert_eq!(head(&app).await, before, "no event");
    let keys: i64 = sqlx::query_scalar("select count(*) from idempotency_keys where key in ('t1', 't2', 't3')")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(keys, 0, "no idempotency record of any item");
    // That answer is what the bulk's key replays.
    let again = bulk(&app, "atomic-1", true, failing.clone()).await;
    assert_eq!((again.status, &again.body), (StatusCode::UNPROCESSABLE_ENTITY, &r.body));
    // Each item sent alone then runs.
    let alone = app.post("/v1/transfers", "t1", &json!({ "from": a, "to": b, "amount": 40, "currency": "EUR" })).await;
    assert_eq!((alone.status, alone.header("idempotent-replayed")), (StatusCode::CREATED, None));
    // A failure at validation or at a posting's accounts also names its item.
    let unknown = vec![
        item("/v1/transfers", "u1", json!({ "from": a, "to": b, "amount": 1, "currency": "EUR" })),
        item("/v1/transfers", "u2", json!({ "from": a, "to": Uuid::now_v7(), "amount": 1, "currency": "EUR" })),
    ];
    let r = bulk(&app, &key(), true, unknown).await;
    assert_eq!((r.code(), r.body["failed_index"].clone()), ("account_not_found", json!(1)), "{r:?}");
    let bad = vec![
        item("/v1/transfers", "v1", json!({ "from": a, "to": b, "amount": 1, "currency": "EUR" })),
        item("/v1/transfers", "v2", json!({})),
    ];
    let r = bulk(&app, &key(), true, bad).await;
    assert_eq!((r.code(), r.body["failed_index"].clone()), ("validation_error", json!(1)), "{r:?}");

    // Success: every item's event in one append (one commit time, consecutive positions).
    let c = Uuid::now_v7();
    let good = vec![
        item("/v1/accounts", "g1", json!({ "id": c, "currency": "EUR" })),
        item("/v1/transfers", "g2", json!({ "from": a, "to": c, "amount": 30, "currency": "EUR" })),
        item(
            "/v1/transactions",
            "g3",
            json!({ "postings": [{ "from": c, "to": b, "amount": 30, "currency": "EUR" }] }),
        ),
    ];
    let before = head(&app).await;
    let r = bulk(&app, &key(), true, good).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let statuses: Vec<i64> =
        r.body["results"].as_array().expect("results").iter().map(|x| x["status"].as_i64().unwrap_or(0)).collect();
    assert_eq!(statuses, vec![201, 201, 201]);
    let times: Vec<String> = app
        .state
        .store
        .read_all(before, 100)
        .await
        .expect("the log")
        .iter()
        .map(|e| e.recorded_at.to_rfc3339())
        .collect();
    assert!(times.len() >= 3 && times.iter().all(|t| *t == times[0]), "one transaction: {times:?}");
    assert_eq!(app.account(c).await["balance"], 0);
    app.assert_read_models_match_log().await;
}

#[tokio::test]
async fn a_malformed_bulk_is_refused_whole() {
    let app = TestApp::spawn().await;
    let a = app.open_account("EUR", 0).await;
    let deposit = json!({ "account_id": a, "amount": 1, "currency": "EUR" });
    let many: Vec<Value> = (0..1001).map(|i| item("/v1/deposits", &format!("k{i}"), deposit.clone())).collect();
    for (items, what) in [
        (vec![], "no items"),
        (many, "1,001 items"),
        (vec![item("/v1/admin/tokens", "k", json!({ "name": "x", "role": "admin" }))], "an admin route"),
        (vec![item("/v1/bulk", "k", json!({ "items": [] }))], "a bulk in a bulk"),
        (
            vec![item("/v1/deposits", "same", deposit.clone()), item("/v1/deposits", "same", deposit.clone())],
            "a repeated key",
        ),
        (vec![json!({ "method": "GET", "path": "/v1/deposits", "idempotency_key": "k" })], "not a POST"),
        (vec![item("/v1/deposits", "", deposit.clone())], "an empty key"),
    ] {
        let r = bulk(&app, &key(), false, items).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"), "{what}: {r:?}");
    }
    let huge = json!({ "items": [item("/v1/deposits", "k", json!({ "account_id": a, "amount": 1, "currency": "EUR",
                                                                  "reference": "x".repeat(5 * 1024 * 1024) }))] });
    let r = app.post_raw("/v1/bulk", Some(&key()), huge.to_string().into_bytes()).await;
    assert_eq!((r.status, r.code()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));
    assert_eq!(app.account(a).await["balance"], 0, "nothing ran");
}

#[tokio::test]
async fn a_non_atomic_bulk_is_appended_as_one_batch_and_projected_whole() {
    let app = TestApp::spawn().await;
    let (a, b) = (app.open_account("EUR", 0).await, app.open_account("EUR", 0).await);
    assert_eq!(app.deposit(a, 1_000, "EUR").await.status, StatusCode::CREATED);
    // More items than a writer batch holds by default (256): the bulk is still one
    // submission, decided in order and appended in one transaction.
    let original = Uuid::now_v7();
    let mut items = vec![item(
        "/v1/transactions",
        "first",
        json!({ "id": original, "postings": [{ "from": a, "to": b, "amount": 5, "currency": "EUR" }] }),
    )];
    items.push(item(&format!("/v1/transactions/{original}/reverse"), "undo", json!({ "reason": "same bulk" })));
    for n in 0..298 {
        let amount = if n == 100 { 1_000_000 } else { 1 };
        let body = json!({ "postings": [{ "from": a, "to": b, "amount": amount, "currency": "EUR" }] });
        items.push(item("/v1/transactions", &format!("t{n}"), body));
    }
    let before = head(&app).await;
    let r = bulk(&app, &key(), false, items).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let results = r.body["results"].as_array().expect("results");
    assert_eq!(results.len(), 300);
    let refused: Vec<usize> = results.iter().enumerate().filter(|(_, x)| x["status"] != 201).map(|(i, _)| i).collect();
    assert_eq!(refused, vec![102], "only the unfunded item is refused, alone");
    assert_eq!(results[102]["body"]["code"], "insufficient_funds");
    let log = app.state.store.read_all(before, 1_000).await.expect("the log");
    assert_eq!(log.len(), 299, "one event per recorded item");
    assert!(log.iter().all(|e| e.recorded_at == log[0].recorded_at), "one append, one commit time");
    assert!(log.windows(2).all(|w| w[1].position == w[0].position + 1), "consecutive positions");
    // The original and its reversal were projected in one batch: the view links them.
    let last = log.last().map(|e| e.position).expect("events");
    let t = app.get(&format!("/v1/transactions/{original}?min_position={last}")).await;
    assert_eq!(t.status, StatusCode::OK, "{t:?}");
    assert_eq!(t.body["reversed_by"], results[1]["body"]["id"], "{t:?}");
    assert_eq!(app.account(a).await["balance"], 1_000 - 297);
    app.assert_read_models_match_log().await;
}

/// An item's path is matched against the command routes' table segment by segment: no
/// prefix, empty segment, query string, `..` or trailing slash names a route (the
/// whole bulk is refused, nothing runs), and an id is held to what the router's own
/// path extractor accepts (a long one names nothing: that item is 404).
#[tokio::test]
async fn item_paths_name_a_command_route_exactly() {
    let app = TestApp::spawn().await;
    let before = head(&app).await;
    let open = || item("/v1/accounts", &Uuid::now_v7().to_string(), json!({ "currency": "EUR" }));
    for (n, path) in [
        "/v1/holds//void",
        "/v1/ledgers/acme/transfers",
        "/v1/transfers?dry_run=1",
        "/v1/transfers/",
        "/v1/holds/../transfers",
    ]
    .into_iter()
    .enumerate()
    {
        let r = bulk(&app, &format!("paths-{n}"), false, vec![open(), item(path, "k", json!({}))]).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"), "{path}: {r:?}");
    }
    assert_eq!(head(&app).await, before, "no item of a refused bulk ran");
    let long = format!("/v1/holds/{}/void", "a".repeat(5_000));
    let r = bulk(&app, "paths-long", false, vec![item(&long, "long", json!({}))]).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(
        (r.body["results"][0]["status"].as_i64(), r.body["results"][0]["body"]["code"].as_str()),
        (Some(404), Some("not_found"))
    );
    // A percent-encoded id names what it names in the route's own URL.
    let account = app.open_account("EUR", 0).await;
    let encoded = format!("/v1/accounts/{}/close", account.to_string().replace('-', "%2D"));
    let r = bulk(&app, "paths-encoded", false, vec![item(&encoded, "close-in-bulk", json!({}))]).await;
    assert_eq!(r.body["results"][0]["status"].as_u64(), Some(200), "{r:?}");
    assert_eq!(r.body["results"][0]["body"]["id"], json!(account), "{r:?}");
}

//! Transactions of many postings (API.md v1.1 "Transactions", with the order of checks
//! of its "Clarifications") against real Postgres and NATS: every rule and error code,
//! reversal, statements with net entries, and the indexed query.

use ledger_tests::{Reply, TestApp};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashSet;
use uuid::Uuid;

fn key() -> String {
    Uuid::new_v4().to_string()
}

async fn post(app: &TestApp, body: Value) -> Reply {
    app.post("/v1/transactions", &key(), &body).await
}

fn leg(from: Uuid, to: Uuid, amount: i64, currency: &str) -> Value {
    json!({ "from": from, "to": to, "amount": amount, "currency": currency })
}

/// An account of `currency` with `balance` deposited.
async fn funded(app: &TestApp, currency: &str, limit: i64, balance: i64) -> Uuid {
    let id = app.open_account(currency, limit).await;
    if balance > 0 {
        assert_eq!(app.deposit(id, balance, currency).await.status, StatusCode::CREATED);
    }
    id
}

async fn balance(app: &TestApp, id: Uuid) -> i64 {
    app.account(id).await["balance"].as_i64().expect("a balance")
}

fn assert_refused(r: &Reply, status: StatusCode, code: &str) {
    assert_eq!((r.status, r.code()), (status, code), "{r:?}");
}

#[tokio::test]
async fn a_transaction_is_one_event_across_currencies_checked_as_a_whole() {
    let app = TestApp::spawn().await;
    let (a_eur, b_eur) = (funded(&app, "EUR", 0, 100).await, funded(&app, "EUR", 0, 0).await);
    let (a_usd, b_usd) = (funded(&app, "USD", 0, 0).await, funded(&app, "USD", 0, 500).await);
    // An FX trade: EUR one way, USD the other; and a posting that overdraws A on its
    // own (150 of 100) made good by a later one (B gives 100 back): only the end counts.
    let body = json!({
        "postings": [leg(a_eur, b_eur, 150, "EUR"), leg(b_usd, a_usd, 120, "USD"), leg(b_eur, a_eur, 100, "EUR")],
        "reference": "fx-1", "metadata": { "desk": "fx", "ticket": 7 }, "effective_at": null,
    });
    let r = post(&app, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(r.body["postings"].as_array().map(Vec::len), Some(3));
    assert_eq!((r.body["status"].clone(), r.body["reference"].clone()), (json!("completed"), json!("fx-1")));
    assert_eq!(r.body["metadata"], json!({ "desk": "fx", "ticket": 7 }), "returned as sent");
    assert_eq!(r.body["effective_at"], r.body["recorded_at"], "default: when recorded");
    let position = r.body["position"].as_i64().expect("a position");
    // One event at one position, in the transaction's stream and all four accounts'.
    let log = app.get(&format!("/v1/events?after={}&limit=10", position - 1)).await;
    let events = log.body["events"].as_array().expect("events");
    assert_eq!((events.len(), events[0]["type"].as_str()), (1, Some("TransactionPosted")));
    let audit = app.get(&format!("/v1/audit?stream_id={}", r.id())).await;
    assert_eq!(audit.body["events"][0]["streams"].as_array().map(Vec::len), Some(5));
    assert_eq!(
        [
            balance(&app, a_eur).await,
            balance(&app, b_eur).await,
            balance(&app, a_usd).await,
            balance(&app, b_usd).await
        ],
        [50, 50, 120, 380]
    );
    // Read back by id, from the read model and from the log.
    let strong = app.get(&format!("/v1/transactions/{}?consistency=strong", r.id())).await;
    let eventual = app.get(&format!("/v1/transactions/{}?min_position={position}", r.id())).await;
    assert_eq!(strong.body, eventual.body);
    assert_eq!(strong.body["postings"], r.body["postings"]);
    app.assert_read_models_match_log().await;
}

#[tokio::test]
async fn every_rule_refuses_with_its_code_in_the_contract_order_and_applies_nothing() {
    let app = TestApp::spawn().await;
    let a = funded(&app, "EUR", 0, 1_000).await;
    let b = funded(&app, "EUR", 0, 100).await;
    let usd = funded(&app, "USD", 0, 0).await;
    let closed = app.open_account("EUR", 0).await;
    assert_eq!(app.post(&format!("/v1/accounts/{closed}/close"), &key(), &json!({})).await.status, StatusCode::OK);
    let systems = app.get("/v1/system-accounts").await.body["accounts"].clone();
    let system =
        systems.as_array().and_then(|s| s.iter().find(|a| a["currency"] == "EUR")).expect("EUR's")["id"].clone();
    let unknown = Uuid::now_v7();

    // Body validation first.
    assert_refused(&post(&app, json!({ "postings": [] })).await, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
    let many: Vec<Value> = (0..101).map(|_| leg(a, b, 1, "EUR")).collect();
    let r = post(&app, json!({ "postings": many })).await;
    assert_refused(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
    assert!(r.body["detail"].as_str().unwrap_or("").starts_with("`postings`"), "{r:?}");
    let hundred: Vec<Value> = (0..100).map(|_| leg(a, b, 1, "EUR")).collect();
    assert_eq!(post(&app, json!({ "postings": hundred })).await.status, StatusCode::CREATED, "100 is allowed");
    for bad in [json!(0), json!(1.5), json!("5"), json!(1_000_000_000_000_001_i64)] {
        let r = post(&app, json!({ "postings": [{ "from": a, "to": b, "amount": bad, "currency": "EUR" }] })).await;
        assert_refused(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
    }
    let r = post(&app, json!({ "postings": [leg(a, b, 1, "EUR")], "metadata": { "nested": { "x": 1 } } })).await;
    assert_refused(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
    let long_ago = (chrono::Utc::now() - chrono::Duration::days(31)).to_rfc3339();
    let ahead = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc3339();
    for t in [long_ago, ahead] {
        let r = post(&app, json!({ "postings": [leg(a, b, 1, "EUR")], "effective_at": t })).await;
        assert_refused(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
    }
    let r = post(&app, json!({ "id": Uuid::new_v8([3; 16]), "postings": [leg(a, b, 1, "EUR")] })).await;
    assert_refused(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");

    // Then each posting in order: not found, system account, closed, same account, currency.
    let cases = [
        (leg(a, unknown, 1, "EUR"), StatusCode::NOT_FOUND, "account_not_found"),
        (
            json!({ "from": a, "to": system, "amount": 1, "currency": "EUR" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
        ),
        (leg(closed, a, 1, "EUR"), StatusCode::UNPROCESSABLE_ENTITY, "account_closed"),
        (leg(a, a, 1, "EUR"), StatusCode::UNPROCESSABLE_ENTITY, "same_account"),
        (leg(a, usd, 1, "EUR"), StatusCode::UNPROCESSABLE_ENTITY, "currency_mismatch"),
    ];
    for (bad, status, code) in &cases {
        assert_refused(&post(&app, json!({ "postings": [leg(a, b, 1, "EUR"), bad] })).await, *status, code);
    }
    // The earlier posting's rule wins: a currency mismatch in posting 1 before an
    // unknown account in posting 2.
    let r = post(&app, json!({ "postings": [leg(a, usd, 1, "EUR"), leg(a, unknown, 1, "EUR")] })).await;
    assert_refused(&r, StatusCode::UNPROCESSABLE_ENTITY, "currency_mismatch");

    // Then conditions: versions before availability; then funds.
    let version = app.account(a).await["version"].as_i64().expect("a version");
    let condition =
        |v: i64, at_least: i64| json!([{ "account_id": a, "expected_version": v, "available_at_least": at_least }]);
    let r =
        post(&app, json!({ "postings": [leg(a, b, 1, "EUR")], "conditions": condition(version + 5, 1_000_000) })).await;
    assert_refused(&r, StatusCode::CONFLICT, "version_conflict");
    let r = post(&app, json!({ "postings": [leg(a, b, 1, "EUR")], "conditions": condition(version, 1_000_000) })).await;
    assert_refused(&r, StatusCode::UNPROCESSABLE_ENTITY, "condition_failed");
    let r = post(&app, json!({ "postings": [leg(a, b, 100_000, "EUR")], "conditions": condition(version, 1) })).await;
    assert_refused(&r, StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds");
    let r = post(&app, json!({ "postings": [leg(a, b, 1, "EUR")], "conditions": [{ "account_id": unknown }] })).await;
    assert_refused(&r, StatusCode::NOT_FOUND, "account_not_found");
    let met = post(&app, json!({ "postings": [leg(a, b, 1, "EUR")], "conditions": condition(version, 1) })).await;
    assert_eq!(met.status, StatusCode::CREATED, "{met:?}");

    // Funds as a whole, naming the first account in posting order that ends short.
    let (a_now, b_now) = (balance(&app, a).await, balance(&app, b).await);
    let c = funded(&app, "EUR", 0, 0).await;
    let r = post(&app, json!({ "postings": [leg(a, c, a_now + 1, "EUR"), leg(b, c, b_now + 1, "EUR")] })).await;
    assert_refused(&r, StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds");
    assert_eq!(r.body["account_id"], json!(a), "both end short: the first in posting order {r:?}");
    // A posting that overdraws on its own is fine when a later one makes it good.
    let r = post(&app, json!({ "postings": [leg(b, a, b_now + 1, "EUR"), leg(a, b, 2, "EUR")] })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let r = post(&app, json!({ "postings": [leg(a, b, 1, "EUR"), leg(b, a, 1, "EUR")] })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let (a_now, b_now) = (balance(&app, a).await, balance(&app, b).await);
    let r = post(&app, json!({ "postings": [leg(b, a, b_now + 1, "EUR")] })).await;
    assert_eq!(r.body["account_id"], json!(b), "{r:?}");
    assert_eq!((balance(&app, a).await, balance(&app, b).await), (a_now, b_now), "nothing of a refusal applied");

    // An id that exists is 409 whatever the body.
    let id = met.id();
    let r = post(&app, json!({ "id": id, "postings": [leg(b, a, 1, "EUR")] })).await;
    assert_refused(&r, StatusCode::CONFLICT, "version_conflict");
    let r = post(&app, json!({ "id": a, "postings": [leg(b, a, 1, "EUR")] })).await;
    assert_refused(&r, StatusCode::CONFLICT, "version_conflict");
    assert_refused(&app.get(&format!("/v1/transactions/{}", Uuid::now_v7())).await, StatusCode::NOT_FOUND, "not_found");
    assert_refused(&app.get("/v1/transactions/not-a-uuid").await, StatusCode::NOT_FOUND, "not_found");
    app.assert_read_models_match_log().await;
}

#[tokio::test]
async fn reversal_swaps_every_posting_once_and_transfers_are_transactions() {
    let app = TestApp::spawn().await;
    let (a, b, c) =
        (funded(&app, "EUR", 0, 300).await, funded(&app, "EUR", 0, 0).await, funded(&app, "EUR", 0, 0).await);
    let t =
        post(&app, json!({ "postings": [leg(a, b, 100, "EUR"), leg(a, c, 50, "EUR")], "reference": "split" })).await;
    assert_eq!(t.status, StatusCode::CREATED);
    let back = app.post(&format!("/v1/transactions/{}/reverse", t.id()), &key(), &json!({ "reason": "refund" })).await;
    assert_eq!(back.status, StatusCode::CREATED, "{back:?}");
    assert_eq!(back.body["reverses"], json!(t.id()));
    assert_eq!(back.body["postings"], json!([leg(b, a, 100, "EUR"), leg(c, a, 50, "EUR")]));
    assert_eq!([balance(&app, a).await, balance(&app, b).await, balance(&app, c).await], [300, 0, 0]);
    let original = app.get(&format!("/v1/transactions/{}?consistency=strong", t.id())).await;
    assert_eq!(original.body["reversed_by"], json!(back.id()));
    let eventual = app.get(&format!("/v1/transactions/{}?min_position={}", t.id(), back.body["position"])).await;
    assert_eq!(eventual.body["reversed_by"], json!(back.id()));
    let twice = app.post(&format!("/v1/transactions/{}/reverse", t.id()), &key(), &json!({ "reason": "again" })).await;
    assert_refused(&twice, StatusCode::UNPROCESSABLE_ENTITY, "already_reversed");
    let r = app.post(&format!("/v1/transactions/{}/reverse", Uuid::now_v7()), &key(), &json!({ "reason": "x" })).await;
    assert_refused(&r, StatusCode::NOT_FOUND, "not_found");
    // A reversal that the receiver cannot pay back is refused like any transaction.
    let t = post(&app, json!({ "postings": [leg(a, b, 100, "EUR")] })).await;
    assert_eq!(app.transfer(b, c, 100, "EUR").await.status, StatusCode::CREATED);
    let r = app.post(&format!("/v1/transactions/{}/reverse", t.id()), &key(), &json!({ "reason": "x" })).await;
    assert_refused(&r, StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds");

    // A transfer is a one-posting transaction with the same id, reversible here too.
    let transfer = app.transfer(a, b, 10, "EUR").await;
    let as_transaction = app.get(&format!("/v1/transactions/{}?consistency=strong", transfer.id())).await;
    assert_eq!(as_transaction.body["postings"], json!([leg(a, b, 10, "EUR")]), "{as_transaction:?}");
    let queried =
        app.get(&format!("/v1/transactions/{}?min_position={}", transfer.id(), transfer.body["position"])).await;
    assert_eq!(queried.body, as_transaction.body, "the read model and the log agree");
    let back =
        app.post(&format!("/v1/transactions/{}/reverse", transfer.id()), &key(), &json!({ "reason": "x" })).await;
    assert_eq!((back.status, back.body["reverses"].clone()), (StatusCode::CREATED, json!(transfer.id())));
    let transfer_view = app.get(&format!("/v1/transfers/{}?consistency=strong", transfer.id())).await;
    assert_eq!(transfer_view.body["reversed_by"], json!(back.id()));
    // The read model's transfers (rows of `transactions_view` marked `transfer`) say what
    // the log says, a reversal's reason included; a transaction is not a transfer there.
    let position = &back.body["position"];
    for id in [transfer.id(), back.id()] {
        let viewed = app.get(&format!("/v1/transfers/{id}?min_position={position}")).await;
        let strong = app.get(&format!("/v1/transfers/{id}?consistency=strong")).await;
        assert_eq!((viewed.status, &viewed.body), (StatusCode::OK, &strong.body), "transfer {id}");
    }
    assert_eq!(app.get(&format!("/v1/transfers/{}?min_position={position}", back.id())).await.body["reason"], "x");
    let r = app.get(&format!("/v1/transfers/{}?min_position={position}", t.id())).await;
    assert_refused(&r, StatusCode::NOT_FOUND, "not_found");
    // A reversal projected as before migration 0029 (its row unmarked, the transfer and
    // its reason in `transfers_view`) reads the same.
    let strong = app.get(&format!("/v1/transfers/{}?consistency=strong", back.id())).await;
    sqlx::query(
        "insert into transfers_view (id, from_account, to_account, amount, currency, reference, reverses, reason,
                                     position, created_at, metadata, effective_at)
         select id, (postings -> 0 ->> 'from')::uuid, (postings -> 0 ->> 'to')::uuid,
                (postings -> 0 ->> 'amount')::int8, postings -> 0 ->> 'currency', reference, reverses, reason,
                position, recorded_at, metadata, effective_at
         from transactions_view where id = $1",
    )
    .bind(back.id())
    .execute(&app.pool)
    .await
    .expect("as projected before");
    sqlx::query("update transactions_view set transfer = false, reason = null where id = $1")
        .bind(back.id())
        .execute(&app.pool)
        .await
        .expect("unmarked");
    let viewed = app.get(&format!("/v1/transfers/{}?min_position={position}", back.id())).await;
    assert_eq!((viewed.status, &viewed.body), (StatusCode::OK, &strong.body));
    let diffs = ledger_projections::verify::verify(&app.pool, |_, _| {}).await.expect("verified");
    assert!(diffs.is_empty(), "{diffs:?}");
    app.assert_read_models_match_log().await;
}

#[tokio::test]
async fn a_statement_shows_one_net_entry_per_account_per_transaction() {
    let app = TestApp::spawn().await;
    let (a, b, c) =
        (funded(&app, "EUR", 0, 500).await, funded(&app, "EUR", 0, 0).await, funded(&app, "EUR", 0, 0).await);
    let split =
        post(&app, json!({ "postings": [leg(a, b, 100, "EUR"), leg(a, c, 30, "EUR"), leg(b, a, 5, "EUR")] })).await;
    let single = post(&app, json!({ "postings": [leg(a, b, 7, "EUR"), leg(a, b, 3, "EUR")] })).await;
    let zero = post(&app, json!({ "postings": [leg(a, b, 9, "EUR"), leg(b, a, 9, "EUR")] })).await;
    let last = zero.body["position"].as_i64().expect("a position");
    let page = app.get(&format!("/v1/accounts/{a}/transactions?min_position={last}")).await;
    let entries = page.body["entries"].as_array().expect("entries").clone();
    let of = |id: Uuid| entries.iter().find(|e| e["transfer_id"] == json!(id)).cloned().expect("an entry");
    let e = of(split.id());
    assert_eq!(
        (e["amount"].clone(), e["counterparty"].clone(), e["kind"].clone()),
        (json!(-125), Value::Null, json!("transaction"))
    );
    assert_eq!((of(single.id())["amount"].clone(), of(single.id())["counterparty"].clone()), (json!(-10), json!(b)));
    assert_eq!(of(zero.id())["amount"], json!(0), "a net of 0 still gives an entry");
    assert_eq!(entries.iter().filter(|e| e["transfer_id"] == json!(split.id())).count(), 1);
    assert_eq!(of(split.id())["effective_at"], split.body["effective_at"]);
    let c_page = app.get(&format!("/v1/accounts/{c}/transactions?min_position={last}")).await;
    assert_eq!(c_page.body["entries"][0]["counterparty"], json!(a));
    app.assert_read_models_match_log().await;
}

#[tokio::test]
async fn queries_filter_by_every_field_combined_newest_first_with_cursors() {
    let app = TestApp::spawn().await;
    let (a, b, c) =
        (funded(&app, "EUR", 0, 10_000).await, funded(&app, "EUR", 0, 0).await, funded(&app, "EUR", 0, 0).await);
    let before = chrono::Utc::now();
    let backdated = (chrono::Utc::now() - chrono::Duration::days(3)).to_rfc3339();
    let mut ids = Vec::new();
    for i in 0..6 {
        let to = if i % 2 == 0 { b } else { c };
        let mut body = json!({ "postings": [leg(a, to, 10 + i, "EUR")], "reference": format!("ref-{}", i % 3),
                               "metadata": { "order": i, "kind": if i < 3 { "sale" } else { "refund" } } });
        if i == 5 {
            body["effective_at"] = json!(backdated);
        }
        let r = post(&app, body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        ids.push(r.id());
    }
    let metadata_string = post(&app, json!({ "postings": [leg(a, b, 1, "EUR")], "metadata": { "order": "4" } })).await;
    let transfer = app.transfer(a, c, 1, "EUR").await;
    let head = transfer.body["position"].as_i64().expect("a position");
    let query = |q: String| {
        let app = &app;
        async move {
            let r = app.get(&format!("/v1/transactions?min_position={head}&{q}")).await;
            assert_eq!(r.status, StatusCode::OK, "{q}: {r:?}");
            r.body["transactions"]
                .as_array()
                .expect("transactions")
                .iter()
                .map(|t| t["id"].as_str().unwrap_or("").to_owned())
                .collect::<Vec<_>>()
        }
    };
    let s = |id: &Uuid| id.to_string();
    assert_eq!(
        query(format!("account_id={c}")).await,
        vec![s(&transfer.id()), s(&ids[5]), s(&ids[3]), s(&ids[1])],
        "newest first, transfers included"
    );
    assert_eq!(query("reference=ref-1".into()).await, vec![s(&ids[4]), s(&ids[1])]);
    assert_eq!(query("metadata.order=4".into()).await, vec![s(&metadata_string.id()), s(&ids[4])], "string or integer");
    assert_eq!(query("metadata.kind=sale&metadata.order=1".into()).await, vec![s(&ids[1])]);
    assert_eq!(query(format!("metadata.kind=refund&account_id={b}")).await, vec![s(&ids[4])]);
    let since = before.to_rfc3339().replace('+', "%2B");
    assert_eq!(query(format!("recorded_from={since}&account_id={b}&reference=ref-0")).await, vec![s(&ids[0])]);
    let three_days = (chrono::Utc::now() - chrono::Duration::days(2)).to_rfc3339().replace('+', "%2B");
    assert_eq!(query(format!("effective_to={three_days}")).await, vec![s(&ids[5])]);
    assert_eq!(query(format!("effective_from={three_days}&metadata.kind=refund")).await, vec![s(&ids[4]), s(&ids[3])]);
    // Paging resumes strictly after the cursor.
    let page = app.get(&format!("/v1/transactions?account_id={b}&limit=2&min_position={head}")).await;
    let cursor = page.body["next_cursor"].as_str().expect("a cursor").to_owned();
    let rest = app.get(&format!("/v1/transactions?account_id={b}&limit=2&cursor={cursor}")).await;
    let all = query(format!("account_id={b}")).await;
    let paged: Vec<String> = [&page, &rest]
        .iter()
        .flat_map(|r| r.body["transactions"].as_array().cloned().unwrap_or_default())
        .map(|t| t["id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(paged, all[..4].to_vec());
    let strong = app.get(&format!("/v1/transactions?consistency=strong&account_id={c}")).await;
    assert_eq!(strong.body["transactions"].as_array().map(Vec::len), Some(4));
    for bad in [
        "limit=0",
        "limit=1001",
        "account_id=x",
        "recorded_from=yesterday",
        "cursor=-1",
        "metadata.bad%20key=1",
        "metadata.a=1&metadata.b=1&metadata.c=1&metadata.d=1&metadata.e=1&metadata.f=1",
    ] {
        let r = app.get(&format!("/v1/transactions?{bad}")).await;
        assert_refused(&r, StatusCode::BAD_REQUEST, "validation_error");
    }
}

/// Every filter's statement uses its index, as the planner chooses it over a table
/// with statistics (20,000 transactions of varied references, metadata and times).
#[tokio::test]
async fn every_query_filter_is_served_by_an_index() {
    use ledger_projections::queries::TransactionFilter;
    let app = TestApp::spawn().await;
    sqlx::query(
        "insert into transactions_view (id, postings, reference, metadata, effective_at, recorded_at, position)
         select gen_random_uuid(), '[]'::jsonb, 'ref-' || n, jsonb_build_object('order', n, 'kind', 'k' || (n % 50)),
                now() - make_interval(secs => n), now() - make_interval(secs => n), 1000000 + n
         from generate_series(1, 20000) n",
    )
    .execute(&app.pool)
    .await
    .expect("rows");
    sqlx::query(
        "insert into account_entries (account_id, position, kind, movement_id, amount, balance_after, counterparty,
                                      occurred_at, effective_at)
         select ('00000000-0000-7000-8000-' || lpad((position % 500)::text, 12, '0'))::uuid, position, 'transaction',
                id, 1, 1, null, recorded_at, effective_at
         from transactions_view",
    )
    .execute(&app.pool)
    .await
    .expect("rows");
    // As autovacuum leaves them: statistics gathered, the GIN index's pending list merged.
    sqlx::query("vacuum (analyze) transactions_view, account_entries").execute(&app.pool).await.expect("vacuum");
    let t = chrono::Utc::now() - chrono::Duration::seconds(600);
    let minute = Some(t + chrono::Duration::seconds(60));
    let account = Uuid::parse_str("00000000-0000-7000-8000-000000000007").ok();
    let cases = [
        ("account_id", TransactionFilter { account_id: account, ..Default::default() }, "account_entries_pkey"),
        (
            "reference",
            TransactionFilter { reference: Some("ref-77".into()), ..Default::default() },
            "transactions_view_reference",
        ),
        (
            "metadata",
            TransactionFilter { metadata: vec![("order".into(), "77".into())], ..Default::default() },
            "transactions_view_metadata",
        ),
        (
            "recorded range",
            TransactionFilter { recorded_from: Some(t), recorded_to: minute, ..Default::default() },
            "transactions_view_recorded",
        ),
        (
            "effective range",
            TransactionFilter { effective_from: Some(t), effective_to: minute, ..Default::default() },
            "transactions_view_effective",
        ),
        ("a cursor", TransactionFilter { before: Some(1_000_100), ..Default::default() }, "transactions_view_position"),
        ("no filter", TransactionFilter::default(), "transactions_view_position"),
    ];
    for (name, mut filter, index) in cases {
        filter.limit = 50;
        let plan = ledger_projections::queries::explain_transactions(&app.pool, &filter).await.expect("explain");
        let plan = plan.join("\n");
        assert!(plan.contains(index), "{name} should use {index}:\n{plan}");
        assert!(!plan.contains("Seq Scan"), "{name}:\n{plan}");
    }
}

#[tokio::test]
async fn effective_dates_on_deposits_and_transfers_within_the_window_and_as_known_then() {
    let app = TestApp::spawn().await;
    let (a, b) = (app.open_account("EUR", 0).await, app.open_account("EUR", 0).await);
    let now = chrono::Utc::now();
    let week_ago = now - chrono::Duration::days(7);
    let iso = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for (path, body) in [
        ("/v1/deposits", json!({ "account_id": a, "amount": 10, "currency": "EUR" })),
        ("/v1/transfers", json!({ "from": a, "to": b, "amount": 1, "currency": "EUR" })),
    ] {
        for t in [now - chrono::Duration::days(31), now + chrono::Duration::seconds(90)] {
            let mut late = body.clone();
            late["effective_at"] = json!(iso(t));
            assert_refused(&app.post(path, &key(), &late).await, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
        }
        let mut bad = body.clone();
        bad["effective_at"] = json!("last tuesday");
        assert_refused(&app.post(path, &key(), &bad).await, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
    }
    // A deposit backdated a week: the view says when it counts and when it was recorded.
    let deposit = app
        .post(
            "/v1/deposits",
            &key(),
            &json!({ "account_id": a, "amount": 100, "currency": "EUR", "effective_at": iso(week_ago) }),
        )
        .await;
    assert_eq!(deposit.status, StatusCode::CREATED, "{deposit:?}");
    assert_eq!(deposit.body["effective_at"].as_str().map(|s| s[..23].to_owned()), Some(iso(week_ago)[..23].to_owned()));
    assert!(
        deposit.body["recorded_at"].as_str().is_some_and(|r| r > deposit.body["effective_at"].as_str().unwrap_or(""))
    );
    let after_deposit = deposit.body["position"].as_i64().expect("a position");
    let three_days_ago = now - chrono::Duration::days(3);
    // Funds are checked against the current state: this transfer, backdated before the
    // deposit it spends, is accepted, and leaves a past effective balance negative.
    let transfer = app
        .post(
            "/v1/transfers",
            &key(),
            &json!({ "from": a, "to": b, "amount": 60, "currency": "EUR",
                                              "effective_at": iso(week_ago - chrono::Duration::days(1)) }),
        )
        .await;
    assert_eq!(transfer.status, StatusCode::CREATED, "{transfer:?}");
    let read = app.get(&format!("/v1/transfers/{}?min_position={}", transfer.id(), transfer.body["position"])).await;
    assert_eq!(read.body["effective_at"], transfer.body["effective_at"]);
    let strong = app.get(&format!("/v1/transfers/{}?consistency=strong", transfer.id())).await;
    assert_eq!(
        (strong.body["effective_at"].clone(), strong.body["recorded_at"].clone()),
        (transfer.body["effective_at"].clone(), transfer.body["recorded_at"].clone())
    );
    let balance = |q: String| {
        let app = &app;
        async move {
            let r = app.get(&format!("/v1/accounts/{a}/balance?{q}")).await;
            assert_eq!(r.status, StatusCode::OK, "{q}: {r:?}");
            r.body["balance"].as_i64().expect("a balance")
        }
    };
    let eight_days = iso(week_ago - chrono::Duration::hours(12));
    assert_eq!(balance(format!("effective_at={eight_days}")).await, -60, "reported, not refused");
    assert_eq!(balance(format!("effective_at={}", iso(three_days_ago))).await, 40);
    // As known right after the deposit: the backdated transfer was not known yet.
    assert_eq!(balance(format!("effective_at={}&at_position={after_deposit}", iso(three_days_ago))).await, 100);
    let recorded = deposit.body["recorded_at"].as_str().expect("a time").to_owned();
    assert_eq!(balance(format!("effective_at={}&as_of={recorded}", iso(three_days_ago))).await, 100);
    let r = app.get(&format!("/v1/accounts/{a}/balance?effective_at=soon")).await;
    assert_refused(&r, StatusCode::BAD_REQUEST, "validation_error");
    let page = app.get(&format!("/v1/accounts/{a}/transactions?min_position={}", transfer.body["position"])).await;
    assert_eq!(page.body["entries"][0]["effective_at"], transfer.body["effective_at"]);
}

/// Two writers (two API instances on one database) posting multi-posting transactions
/// over the same accounts at once, the same idempotency key sent to both: every
/// transaction is recorded once or refused, no account that paid ends below its limit,
/// and money is conserved at every position.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_posting_transactions_over_the_same_accounts() {
    use std::sync::Arc;
    let config = ledger_tests::test_config();
    let first = Arc::new(TestApp::spawn_with(config.clone()).await);
    let second = Arc::new(TestApp::spawn_with(config).await);
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(funded(&first, "EUR", if i == 0 { 100 } else { 0 }, 300).await);
    }
    let tasks = (0..60usize).map(|i| {
        let (one, other) = (first.clone(), second.clone());
        let (a, b, c) = (ids[i % 4], ids[(i + 1) % 4], ids[(i + 2) % 4]);
        let body = json!({ "postings": [leg(a, b, 40 + i as i64, "EUR"), leg(b, c, 30, "EUR"), leg(c, a, 5, "EUR")] });
        let k = key();
        tokio::spawn(async move {
            // The same request to both writers: one records it, the other answers the record.
            let (x, y) =
                tokio::join!(one.post("/v1/transactions", &k, &body), other.post("/v1/transactions", &k, &body));
            (x, y)
        })
    });
    let mut created = HashSet::new();
    let mut same_answer = 0;
    for r in futures::future::join_all(tasks).await {
        let (x, y) = r.expect("task");
        for r in [&x, &y] {
            assert!(
                matches!(r.status, StatusCode::CREATED | StatusCode::CONFLICT) || r.code() == "insufficient_funds",
                "{r:?}"
            );
        }
        if x.status == y.status && x.status != StatusCode::CONFLICT {
            assert_eq!(x.body, y.body, "one decision, answered by both writers");
            same_answer += 1;
        }
        for r in [x, y] {
            if r.status == StatusCode::CREATED {
                created.insert(r.id());
            }
        }
    }
    let recorded: i64 = sqlx::query_scalar("select count(*) from events where type = 'TransactionPosted'")
        .fetch_one(&first.pool)
        .await
        .expect("count");
    assert_eq!(recorded, created.len() as i64, "each created transaction recorded once");
    assert!(same_answer > 30, "most keys answered alike by both writers: {same_answer} of 60");
    let mut ledger = ledger_domain::Ledger::new();
    for e in first.state.store.read_all(0, 100_000).await.expect("the log") {
        ledger.apply(&e.event().expect("decodes"));
        assert!(ledger.balance_sums().iter().all(|(_, sum)| *sum == 0), "position {}", e.position);
    }
    for id in &ids {
        let a = ledger.account(*id).expect("an account");
        assert!(a.available().minor_units() >= -a.overdraft_limit.minor_units(), "{a:?}");
    }
    first.assert_read_models_match_log().await;
}

#[tokio::test]
async fn hostile_conditions_and_postings_are_refused_at_the_edge() {
    let app = TestApp::spawn().await;
    let (a, b) = (funded(&app, "EUR", 0, 100).await, funded(&app, "EUR", 0, 0).await);
    for bad in [
        json!({ "postings": [leg(a, b, 1, "EUR")], "conditions": [{ "account_id": a, "expected_version": -1 }] }),
        json!({ "postings": [leg(a, b, 1, "EUR")], "conditions": [{ "account_id": a, "expected_version": 1.5 }] }),
        json!({ "postings": [leg(a, b, 1, "EUR")], "conditions": [{ "account_id": a, "available_at_least": "10" }] }),
        json!({ "postings": [leg(a, b, 1, "EUR")], "conditions": [{ "account_id": "x" }] }),
        json!({ "postings": [leg(a, b, 1, "EUR")], "conditions": {} }),
        json!({ "postings": [{ "from": a, "to": b, "amount": 1 }] }),
        json!({ "postings": [{ "from": a, "to": b, "amount": 1, "currency": "eur" }] }),
        json!({ "postings": "all of them" }),
        json!({ "postings": [leg(a, b, 1, "EUR")], "reference": "" }),
        json!({ "postings": [leg(a, b, 1, "EUR")], "reference": "a\u{0}b" }),
        json!({ "postings": [leg(a, b, 1, "EUR")], "effective_at": "0000-01-01T00:00:00+23:59" }),
    ] {
        let r = post(&app, bad.clone()).await;
        assert_refused(&r, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
    }
    let r = app.post_raw("/v1/transactions", Some(&key()), b"{\"postings\": [".to_vec()).await;
    assert_refused(&r, StatusCode::BAD_REQUEST, "validation_error");
    assert_eq!(balance(&app, a).await, 100, "nothing ran");
}

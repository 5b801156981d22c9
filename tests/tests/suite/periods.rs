//! Closed periods (issue 30; API.md v1.2 "Verifiable log"): backdated commands of every
//! kind refused after a close, the closing balances (every account, summing to zero per
//! currency, equal to the effective balance at the close and unchanged by later
//! postings), the signed tree head over the close, hostile input, and the check under
//! the head lock that holds whatever a second writer process decided.

use chrono::{DateTime, Duration, SecondsFormat, SubsecRound, Utc};
use ledger_tests::{TestApp, eventually, test_config};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use uuid::Uuid;

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn key() -> String {
    Uuid::new_v4().to_string()
}

async fn transfer_at(
    app: &TestApp,
    from: Uuid,
    to: Uuid,
    amount: i64,
    at: Option<DateTime<Utc>>,
) -> ledger_tests::Reply {
    let mut body = json!({ "from": from, "to": to, "amount": amount, "currency": "EUR" });
    if let Some(at) = at {
        body["effective_at"] = json!(rfc(at));
    }
    app.post("/v1/transfers", &key(), &body).await
}

/// Every page of a period's balances, by account.
async fn period_balances(app: &TestApp, id: &str, limit: usize) -> HashMap<Uuid, (String, i128)> {
    let mut out = HashMap::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let path = match &cursor {
            None => format!("/v1/admin/periods/{id}/balances?limit={limit}"),
            Some(c) => format!("/v1/admin/periods/{id}/balances?limit={limit}&cursor={c}"),
        };
        let page = app.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        for b in page.body["balances"].as_array().expect("balances") {
            let account = Uuid::parse_str(b["account_id"].as_str().expect("id")).expect("uuid");
            let balance = b["balance"].as_i64().map(i128::from).expect("balance");
            assert!(out.insert(account, (b["currency"].as_str().expect("currency").to_owned(), balance)).is_none());
        }
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
    panic!("more than 100 pages of balances");
}

fn verify_head(keys: &Value, head: &Value) {
    let key = keys["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["key_id"] == head["key_id"])
        .expect("the head names a listed key");
    assert!(
        ledger_infrastructure::signing::verify_head(
            key["public_key"].as_str().expect("key"),
            head["ledger"].as_str().expect("ledger"),
            head["tree_size"].as_i64().expect("size"),
            head["root_hash"].as_str().expect("root"),
            head["timestamp"].as_str().expect("timestamp"),
            head["signature"].as_str().expect("signature"),
        ),
        "the period's tree head verifies with the public key: {head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_period_refuses_backdated_commands_and_keeps_its_balances() {
    let app = TestApp::spawn().await;
    let now = Utc::now();
    // Microseconds, as the ledger keeps every time.
    let closes_at = (now - Duration::minutes(10)).trunc_subsecs(6);
    let (a, b) = (app.open_account("EUR", 0).await, app.open_account("EUR", 0).await);
    let c = app.open_account("USD", 0).await;
    let deposit = |account: Uuid, amount: i64, currency: &str, at: DateTime<Utc>| json!({ "account_id": account, "amount": amount, "currency": currency, "effective_at": rfc(at) });
    for (account, amount, currency, at) in
        [(a, 1_000, "EUR", now - Duration::minutes(20)), (c, 70, "USD", now - Duration::minutes(12))]
    {
        let r = app.post("/v1/deposits", &key(), &deposit(account, amount, currency, at)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    }
    assert_eq!(transfer_at(&app, a, b, 100, Some(now - Duration::minutes(15))).await.status, StatusCode::CREATED);
    // Recorded before the close, effective after it: not in the period's balances.
    assert_eq!(transfer_at(&app, a, b, 50, Some(now - Duration::minutes(5))).await.status, StatusCode::CREATED);
    // A hold placed before the close, to be captured into the period after it.
    let hold =
        app.post("/v1/holds", &key(), &json!({ "account_id": a, "to": b, "amount": 10, "currency": "EUR" })).await;
    assert_eq!(hold.status, StatusCode::CREATED, "{hold:?}");
    let hold = hold.id();

    // Hostile closes: nothing recorded.
    for body in [
        json!({}),
        json!({ "closes_at": "yesterday" }),
        json!({ "closes_at": 1_700_000_000 }),
        json!({ "closes_at": rfc(now + Duration::hours(1)) }),
        json!({ "closes_at": rfc(closes_at), "extra": true }),
        json!({ "closes_at": "99999-01-01T00:00:00Z" }),
    ] {
        let r = app.post("/v1/admin/periods", &key(), &body).await;
        assert!(r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::UNPROCESSABLE_ENTITY, "{body}: {r:?}");
        assert_eq!(r.code(), "validation_error", "{body}: {r:?}");
    }
    assert_eq!(app.get("/v1/admin/periods").await.body["periods"], json!([]));

    let close_key = key();
    let closed = app.post("/v1/admin/periods", &close_key, &json!({ "closes_at": rfc(closes_at) })).await;
    assert_eq!(closed.status, StatusCode::CREATED, "{closed:?}");
    let period = closed.body.clone();
    let id = period["id"].as_str().expect("id").to_owned();
    let position = period["position"].as_i64().expect("position");
    assert_eq!(
        period["closes_at"].as_str().map(|t| DateTime::parse_from_rfc3339(t).expect("rfc 3339")),
        Some(closes_at.into())
    );
    assert_eq!(period["tree_head"]["tree_size"].as_i64(), Some(position), "signed over the log up to the close");
    let keys: Value =
        reqwest::get(format!("{}/v1/audit/keys", app.base)).await.expect("keys").json().await.expect("json");
    verify_head(&keys, &period["tree_head"]);
    // The same request again is the same period; another body with its key is refused.
    let again = app.post("/v1/admin/periods", &close_key, &json!({ "closes_at": rfc(closes_at) })).await;
    assert_eq!((again.status, &again.body), (StatusCode::CREATED, &period), "{again:?}");
    let other =
        app.post("/v1/admin/periods", &close_key, &json!({ "closes_at": rfc(closes_at - Duration::seconds(1)) })).await;
    assert_eq!(other.code(), "idempotency_key_reused", "{other:?}");

    // Every command with a business time at or before the close: 422 period_closed.
    let before = closes_at - Duration::minutes(1);
    let refused = [
        transfer_at(&app, a, b, 1, Some(before)).await,
        transfer_at(&app, a, b, 1, Some(closes_at)).await,
        app.post("/v1/deposits", &key(), &deposit(a, 5, "EUR", closes_at)).await,
        app.post(
            "/v1/transactions",
            &key(),
            &json!({ "postings": [{ "from": a, "to": b, "amount": 1, "currency": "EUR" }], "effective_at": rfc(before) }),
        )
        .await,
        app.post(&format!("/v1/holds/{hold}/capture"), &key(), &json!({ "effective_at": rfc(before) })).await,
    ];
    for r in &refused {
        assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "period_closed"), "{r:?}");
    }
    // After it, or with no business time (effective when recorded): accepted.
    assert_eq!(transfer_at(&app, a, b, 1, Some(closes_at + Duration::seconds(1))).await.status, StatusCode::CREATED);
    assert_eq!(transfer_at(&app, a, b, 2, None).await.status, StatusCode::CREATED);
    let captured = app.post(&format!("/v1/holds/{hold}/capture"), &key(), &json!({})).await;
    assert_eq!(captured.status, StatusCode::OK, "the hold is still pending: {captured:?}");
    // A second period must close later than the first.
    for at in [closes_at, closes_at - Duration::seconds(1)] {
        let r = app.post("/v1/admin/periods", &key(), &json!({ "closes_at": rfc(at) })).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"), "{r:?}");
    }

    // The closing balances: every account, at the close, summing to zero per currency.
    let eur = ledger_domain::decide::system_account_id(ledger_domain::Currency::parse("EUR").expect("EUR"));
    let usd = ledger_domain::decide::system_account_id(ledger_domain::Currency::parse("USD").expect("USD"));
    let expected: HashMap<Uuid, (String, i128)> = [
        (a, ("EUR".to_owned(), 900)),
        (b, ("EUR".to_owned(), 100)),
        (eur, ("EUR".to_owned(), -1_000)),
        (c, ("USD".to_owned(), 70)),
        (usd, ("USD".to_owned(), -70)),
    ]
    .into();
    for limit in [1, 2, 1000] {
        assert_eq!(period_balances(&app, &id, limit).await, expected, "pages of {limit}");
    }
    // The same as the effective balance at the close, before and after later postings.
    for account in [a, b, c] {
        let r = app.get(&format!("/v1/accounts/{account}/balance?effective_at={}", rfc(closes_at))).await;
        assert_eq!(r.body["balance"].as_i64().map(i128::from), Some(expected[&account].1), "{r:?}");
    }

    // The views: listed newest first, one by id; unknown and malformed ids are 404.
    let list = app.get("/v1/admin/periods").await;
    assert_eq!(list.body["periods"], json!([period.clone()]), "{list:?}");
    assert_eq!(app.get(&format!("/v1/admin/periods/{id}")).await.body, period);
    for bad in [Uuid::new_v4().to_string(), "not-a-uuid".to_owned(), "%00".to_owned()] {
        assert_eq!(app.get(&format!("/v1/admin/periods/{bad}")).await.status, StatusCode::NOT_FOUND, "{bad}");
        assert_eq!(app.get(&format!("/v1/admin/periods/{bad}/balances")).await.status, StatusCode::NOT_FOUND, "{bad}");
    }
    for bad in ["limit=0", "limit=1001", "limit=-1", "cursor=x", "limit=1e3"] {
        let r = app.get(&format!("/v1/admin/periods/{id}/balances?{bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {r:?}");
    }
    // A client may not close the books.
    let client = app
        .post("/v1/admin/tokens", &key(), &json!({ "name": "periods-client", "role": "client" }))
        .await
        .body["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let r = app
        .client
        .post(format!("{}/v1/admin/periods", app.base))
        .bearer_auth(&client)
        .header("Idempotency-Key", key())
        .json(&json!({ "closes_at": rfc(closes_at + Duration::seconds(5)) }))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Rebuilt from the log, the accounts projection keeps the same balances.
    app.catch_up().await;
    let before_rebuild = period_balances(&app, &id, 1000).await;
    let r = app.post("/v1/admin/projections/accounts/rebuild", &key(), &json!({})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    eventually("the rebuild ends", 30, || async {
        let p = app.get("/v1/admin/projections").await;
        p.body["projections"].as_array().is_some_and(|l| l.iter().all(|p| p["status"] == "running"))
    })
    .await;
    assert_eq!(period_balances(&app, &id, 1000).await, before_rebuild);
    app.assert_read_models_match_log().await;
}

/// Two writer processes on one database: one closes the books while the other is sent
/// backdated transfers at the same moment. Whatever each process had loaded, no
/// transfer effective before the close is recorded after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_writer_records_into_a_period_another_process_closed() {
    let config = test_config();
    let closer = TestApp::spawn_with(config.clone()).await;
    let poster = TestApp::spawn_with(config).await;
    let (a, b) = (poster.open_account("EUR", 0).await, poster.open_account("EUR", 0).await);
    let closes_at = (Utc::now() - Duration::seconds(30)).trunc_subsecs(6);
    let deposit = json!({ "account_id": a, "amount": 1_000_000, "currency": "EUR",
                          "effective_at": rfc(closes_at - Duration::minutes(1)) });
    assert_eq!(poster.post("/v1/deposits", &key(), &deposit).await.status, StatusCode::CREATED);
    // The poster's writer has the periods stream loaded (no period yet) before the race.
    assert_eq!(transfer_at(&poster, a, b, 1, Some(closes_at - Duration::seconds(1))).await.status, StatusCode::CREATED);
    let posts = (0..40).map(|i| {
        let poster = poster.clone_handle();
        async move { transfer_at(&poster, a, b, 1, Some(closes_at - Duration::milliseconds(i))).await }
    });
    let (close_key, close_body) = (key(), json!({ "closes_at": rfc(closes_at) }));
    let close = closer.post("/v1/admin/periods", &close_key, &close_body);
    let (replies, closed) = tokio::join!(futures::future::join_all(posts), close);
    assert_eq!(closed.status, StatusCode::CREATED, "{closed:?}");
    let close_position = closed.body["position"].as_i64().expect("position");
    let mut accepted = 0;
    for r in &replies {
        match r.status {
            StatusCode::CREATED => {
                accepted += 1;
                let p = r.body["position"].as_i64().expect("position");
                assert!(p < close_position, "a transfer effective before the close recorded after it: {r:?}");
            }
            _ => assert_eq!(r.code(), "period_closed", "{r:?}"),
        }
    }
    // The closing balance is what every transfer recorded before the close made it.
    let balances = period_balances(&closer, closed.body["id"].as_str().expect("id"), 1000).await;
    assert_eq!(balances[&b].1, 1 + accepted as i128, "{accepted} transfers made it before the close");
    assert_eq!(balances[&a].1, 1_000_000 - 1 - accepted as i128);
}

/// The append's own check, for a writer that decided without knowing of the close:
/// an event effective at or before it is a conflict on the periods stream, and a close
/// at or after the log's time is refused; nothing is stored either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_append_refuses_what_a_stale_writer_decided() {
    use ledger_domain::{Amount, Currency, Event, events::DepositRecorded, events::PeriodClosed};
    use ledger_infrastructure::store::{AppendError, Commit, EventMetadata};
    let app = TestApp::spawn().await;
    let closes_at = (Utc::now() - Duration::minutes(1)).trunc_subsecs(6);
    let r = app.post("/v1/admin/periods", &key(), &json!({ "closes_at": rfc(closes_at) })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let head = app.state.store.head().await.expect("head");
    let commit = |event: Event, expected: Vec<(Uuid, i64)>| Commit {
        events: vec![event],
        expected,
        read: Vec::new(),
        metadata: EventMetadata { actor: "test".into(), ..EventMetadata::default() },
        idempotency: None,
        streams: Vec::new(),
        rejection: None,
        owner_index: None,
    };
    let eur = Currency::parse("EUR").expect("EUR");
    let account = Uuid::new_v4();
    // A deposit as a writer would have decided it, effective at `at`.
    let deposit = |at: DateTime<Utc>| {
        Event::DepositRecorded(DepositRecorded {
            deposit_id: Uuid::new_v4(),
            account_id: account,
            system_account_id: ledger_domain::decide::system_account_id(eur),
            amount: Amount::new(5).expect("amount"),
            currency: eur,
            reference: None,
            metadata: None,
            effective_at: Some(at),
        })
    };
    match app.state.store.append_batch(&[commit(deposit(closes_at), vec![(account, 0)])]).await {
        Err(AppendError::Conflict { streams, .. }) => assert_eq!(streams, vec![ledger_domain::periods_stream_id()]),
        other => panic!("a posting into the closed period was not refused: {other:?}"),
    }
    let future =
        Event::PeriodClosed(PeriodClosed { period_id: Uuid::new_v4(), closes_at: Utc::now() + Duration::hours(1) });
    let periods = ledger_domain::periods_stream_id();
    match app.state.store.append_batch(&[commit(future, vec![(periods, 1)])]).await {
        Err(AppendError::AheadOfLog { commit: 0, .. }) => {}
        other => panic!("a period closing in the future was not refused: {other:?}"),
    }
    // Nothing is effective more than a minute after it is recorded, whoever decided it.
    let ahead = deposit(Utc::now() + Duration::minutes(3));
    match app.state.store.append_batch(&[commit(ahead, vec![(account, 0)])]).await {
        Err(AppendError::AheadOfLog { commit: 0, .. }) => {}
        other => panic!("an effective_at minutes ahead was not refused: {other:?}"),
    }
    assert_eq!(app.state.store.head().await.expect("head"), head, "nothing was stored");
}

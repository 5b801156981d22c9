//! Audit trail and access control: the role table, correlation and causation in
//! event metadata, the tamper-evident hash chain, and least-privilege grants.

use ledger_tests::{ADMIN_TOKEN, TestApp, test_config};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

async fn token(app: &TestApp, name: &str, role: &str) -> String {
    let r = app.post("/v1/admin/tokens", &format!("token-{name}"), &json!({ "name": name, "role": role })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    r.body["token"].as_str().expect("token shown once").to_owned()
}

async fn call(app: &TestApp, method: Method, path: &str, token: Option<&str>, body: &Value) -> StatusCode {
    let mut request = app
        .client
        .request(method, format!("{}{path}", app.base))
        .header("idempotency-key", Uuid::new_v4().to_string())
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    request.send().await.expect("sent").status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_enforces_the_role_table() {
    let app = TestApp::spawn().await;
    let operator = token(&app, "ops", "operator").await;
    let client = token(&app, "shop", "client").await;
    let a = app.open_account("EUR", 0).await;
    let b = app.open_account("EUR", 0).await;
    app.deposit(a, 1_000, "EUR").await;
    let t = app.transfer(a, b, 10, "EUR").await.id();
    let nobody = Uuid::now_v7();
    // (method, path, body, roles allowed: admin, operator, client)
    let routes: Vec<(Method, String, Value, [bool; 3])> = vec![
        (Method::GET, format!("/v1/accounts/{a}"), json!({}), [true, true, true]),
        (Method::GET, "/v1/accounts?owner=owner@example.com".into(), json!({}), [true, true, true]),
        (Method::GET, format!("/v1/accounts/{a}/transactions"), json!({}), [true, true, true]),
        (Method::GET, format!("/v1/accounts/{a}/events"), json!({}), [true, true, true]),
        (Method::GET, "/v1/events".into(), json!({}), [true, true, true]),
        (Method::GET, format!("/v1/transfers/{t}"), json!({}), [true, true, true]),
        (Method::GET, format!("/v1/withdrawals/{nobody}"), json!({}), [true, true, true]),
        (Method::GET, "/v1/system-accounts".into(), json!({}), [true, true, true]),
        (Method::GET, "/v1/audit".into(), json!({}), [true, true, true]),
        (Method::GET, "/v1/audit/verify".into(), json!({}), [true, true, true]),
        (Method::GET, "/v1/admin/projections".into(), json!({}), [true, true, false]),
        (Method::GET, "/v1/admin/circuit-breakers".into(), json!({}), [true, true, false]),
        (Method::GET, "/v1/admin/dead-letters".into(), json!({}), [true, true, false]),
        (Method::POST, format!("/v1/admin/dead-letters/{nobody}/redrive"), json!({}), [true, true, false]),
        (Method::POST, format!("/v1/admin/dead-letters/{nobody}/discard"), json!({}), [true, true, false]),
        (Method::POST, "/v1/admin/tokens".into(), json!({ "name": "x", "role": "bogus" }), [true, false, false]),
        (Method::POST, "/v1/accounts".into(), json!({ "currency": "EUR" }), [true, false, true]),
        (Method::POST, format!("/v1/accounts/{nobody}/close"), json!({}), [true, false, true]),
        (
            Method::POST,
            "/v1/deposits".into(),
            json!({ "account_id": a, "amount": 1, "currency": "EUR" }),
            [true, false, true],
        ),
        (
            Method::POST,
            "/v1/transfers".into(),
            json!({ "from": a, "to": b, "amount": 1, "currency": "EUR" }),
            [true, false, true],
        ),
        (Method::POST, format!("/v1/transfers/{nobody}/reverse"), json!({ "reason": "x" }), [true, false, true]),
        (
            Method::POST,
            "/v1/withdrawals".into(),
            json!({ "account_id": a, "amount": 1, "currency": "EUR", "destination": "d" }),
            [true, false, true],
        ),
    ];
    for (method, path, body, allowed) in &routes {
        for token in [None, Some("not-a-token")] {
            let status = call(&app, method.clone(), path, token, body).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} with {token:?}");
        }
        for (role, token) in [("admin", ADMIN_TOKEN), ("operator", operator.as_str()), ("client", client.as_str())] {
            let i = ["admin", "operator", "client"].iter().position(|r| *r == role).expect("role");
            let status = call(&app, method.clone(), path, Some(token), body).await;
            if allowed[i] {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{role} {method} {path}: {status}"
                );
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{role} {method} {path}");
            }
        }
    }
    // Tokens are stored hashed: the secret appears nowhere in the database.
    let stored: i64 = sqlx::query_scalar("select count(*) from events where data::text like '%' || $1 || '%'")
        .bind(&operator)
        .fetch_one(&app.pool)
        .await
        .expect("search");
    assert_eq!(stored, 0);
    let keys: i64 = sqlx::query_scalar("select count(*) from idempotency_keys where body::text like '%' || $1 || '%'")
        .bind(&operator)
        .fetch_one(&app.pool)
        .await
        .expect("search");
    assert_eq!(keys, 0, "the idempotency record does not keep the secret");
    let replay = app.post("/v1/admin/tokens", "token-ops", &json!({ "name": "ops", "role": "operator" })).await;
    assert_eq!((replay.status, replay.body["token"].clone()), (StatusCode::CREATED, Value::Null));
    let duplicate = app.post("/v1/admin/tokens", "token-ops-2", &json!({ "name": "ops", "role": "client" })).await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn audit_finds_a_transfer_by_correlation_id_and_a_reversal_by_causation() {
    let app = TestApp::spawn().await;
    let client = token(&app, "shop", "client").await;
    let a = app.open_account("EUR", 0).await;
    let b = app.open_account("EUR", 0).await;
    app.deposit(a, 1_000, "EUR").await;
    let response = app
        .client
        .post(format!("{}/v1/transfers", app.base))
        .bearer_auth(&client)
        .header("idempotency-key", "pay-42")
        .header("x-correlation-id", "order-42")
        .json(&json!({ "from": a, "to": b, "amount": 100, "currency": "EUR" }))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.headers().get("x-correlation-id").and_then(|v| v.to_str().ok()), Some("order-42"));
    let transfer: Value = response.json().await.expect("json");
    let found = app.get("/v1/audit?correlation_id=order-42").await;
    let events = found.body["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{found:?}");
    assert_eq!(events[0]["type"], "TransferPosted");
    assert_eq!(events[0]["actor"], "token:shop");
    assert_eq!(events[0]["idempotency_key"], "pay-42");
    assert_eq!(events[0]["data"]["transfer_id"], transfer["id"]);
    let by_actor = app.get("/v1/audit?actor=token:shop").await;
    assert_eq!(by_actor.body["events"].as_array().map(Vec::len), Some(1));

    let id = transfer["id"].as_str().expect("id");
    let reversal = app.post(&format!("/v1/transfers/{id}/reverse"), "undo-42", &json!({ "reason": "refund" })).await;
    let trail = app.get(&format!("/v1/audit?stream_id={id}")).await;
    let trail = trail.body["events"].as_array().expect("events");
    assert_eq!(trail.len(), 2, "the original transfer's stream holds it and its reversal");
    assert_eq!(trail[1]["causation_id"], json!(id));
    assert_eq!(trail[1]["data"]["transfer_id"], reversal.body["id"]);
    let generated = app.get("/v1/audit?limit=1").await;
    assert!(
        generated.body["events"][0]["correlation_id"].is_string(),
        "a correlation id is generated when none is sent"
    );
    assert_eq!(generated.body["next_cursor"], json!("1"));
}

#[tokio::test]
async fn tampering_is_found_at_exactly_its_position() {
    let app = TestApp::spawn().await;
    let a = app.open_account("EUR", 0).await;
    for _ in 0..5 {
        app.deposit(a, 10, "EUR").await;
    }
    let ok = app.get("/v1/audit/verify").await;
    assert_eq!((ok.body["ok"].clone(), ok.body["checked"].clone()), (json!(true), json!(7)), "{ok:?}");
    assert_eq!(ok.body["head"].as_str().map(str::len), Some(64));
    // As a superuser: switch the trigger off and alter one event.
    let mut tx = app.pool.begin().await.expect("tx");
    sqlx::query("alter table events disable trigger events_append_only").execute(&mut *tx).await.expect("disable");
    sqlx::query("update events set data = jsonb_set(data, '{amount}', '1000000') where position = 4")
        .execute(&mut *tx)
        .await
        .expect("tamper");
    sqlx::query("alter table events enable trigger events_append_only").execute(&mut *tx).await.expect("enable");
    tx.commit().await.expect("commit");
    let bad = app.get("/v1/audit/verify").await;
    assert_eq!((bad.body["ok"].clone(), bad.body["first_bad_position"].clone()), (json!(false), json!(4)), "{bad:?}");
    let cli = ledger_api::run::cli::audit_verify(&app.state.config).await.expect("cli runs");
    assert_eq!(cli.first_bad_position, Some(4));
}

#[tokio::test]
async fn a_stream_entry_naming_no_event_fails_verification() {
    // No foreign key checks entries against events any more (migration 0013): the
    // verification does, after walking the chain.
    let app = TestApp::spawn().await;
    let a = app.open_account("EUR", 0).await;
    app.deposit(a, 10, "EUR").await;
    assert_eq!(app.get("/v1/audit/verify").await.body["ok"], json!(true));
    sqlx::query("insert into stream_entries (stream_id, version, position) values ($1, 1, 9)")
        .bind(Uuid::now_v7())
        .execute(&app.pool)
        .await
        .expect("an entry past the head");
    let bad = app.get("/v1/audit/verify").await;
    assert_eq!((bad.body["ok"].clone(), bad.body["first_bad_position"].clone()), (json!(false), json!(9)), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_while_commands_append_finds_nothing_wrong() {
    // Entries appended during the walk lie beyond the head it started from; they are
    // sound, and must not be reported as naming no event.
    let app = TestApp::spawn().await;
    let a = app.open_account("EUR", 0).await;
    let writes = async {
        for _ in 0..40 {
            assert_eq!(app.deposit(a, 1, "EUR").await.status, StatusCode::CREATED);
        }
    };
    let verifies = async {
        let mut reports = Vec::new();
        for _ in 0..20 {
            reports.push(app.get("/v1/audit/verify").await.body);
        }
        reports
    };
    let ((), reports) = tokio::join!(writes, verifies);
    let bad: Vec<&Value> = reports.iter().filter(|r| r["ok"] != json!(true)).collect();
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(app.get("/v1/audit/verify").await.body["checked"], json!(42));
}

#[tokio::test]
async fn the_service_role_cannot_change_the_log() {
    let app = TestApp::spawn().await;
    app.open_account("EUR", 0).await;
    let mut tx = app.pool.begin().await.expect("tx");
    sqlx::query("set local role ledger_app").execute(&mut *tx).await.expect("role");
    let err =
        sqlx::query("update events set type = 'x' where position = 1").execute(&mut *tx).await.expect_err("denied");
    let code = err.as_database_error().and_then(|d| d.code()).map(|c| c.to_string());
    assert_eq!(code.as_deref(), Some("42501"), "permission denied: {err}");
    drop(tx);
    for sql in ["delete from events", "truncate events", "delete from stream_entries"] {
        let mut tx = app.pool.begin().await.expect("tx");
        sqlx::query("set local role ledger_app").execute(&mut *tx).await.expect("role");
        let err = sqlx::query(sql).execute(&mut *tx).await.expect_err(sql);
        let code = err.as_database_error().and_then(|d| d.code()).map(|c| c.to_string());
        assert_eq!(code.as_deref(), Some("42501"), "{sql}: {err}");
    }
    let mut tx = app.pool.begin().await.expect("tx");
    sqlx::query("set local role ledger_app").execute(&mut *tx).await.expect("role");
    let n: i64 = sqlx::query_scalar("select count(*) from events").fetch_one(&mut *tx).await.expect("it may read");
    assert_eq!(n, 2);
}

#[tokio::test]
async fn tokens_from_the_cli_work_and_rate_limits_answer_429() {
    let mut config = test_config();
    config.rate_limit_per_s = 1;
    config.rate_limit_burst = 3;
    let app = TestApp::spawn_with(config).await;
    let token =
        ledger_api::run::cli::create_token(&app.state.config, "batch-job", "client", None).await.expect("token");
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = app.client.get(format!("{}/v1/events", app.base)).bearer_auth(&token).send().await.expect("sent");
        let retry_after = r.headers().get("retry-after").is_some();
        let status = r.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let body: serde_json::Value = r.json().await.expect("a problem document");
            assert_eq!(body["code"], "rate_limited", "API.md v1.1: 429 answers `rate_limited`");
        }
        statuses.push((status, retry_after));
    }
    assert_eq!(statuses[0].0, StatusCode::OK, "a CLI-issued token authenticates");
    assert!(statuses.iter().any(|(s, retry)| *s == StatusCode::TOO_MANY_REQUESTS && *retry), "{statuses:?}");
    let other = app.get("/v1/events").await;
    assert_eq!(other.status, StatusCode::OK, "limits are per token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_with_least_privilege() {
    // A login role that is only a member of ledger_app (as an operator would set up).
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", ledger_tests::server_url())).await.expect("admin");
    let _ = sqlx::query(
        "do $$ begin
           if not exists (select 1 from pg_roles where rolname = 'ledger_svc_test') then
             create role ledger_svc_test login in role ledger_app;
           end if;
         exception when duplicate_object or unique_violation then null; end $$",
    )
    .execute(&admin)
    .await;
    // The owner creates and migrates the database first (`ledger migrate`).
    let mut config = test_config();
    ledger_infrastructure::connect_and_migrate(&config).await.expect("migrated by the owner");
    config.database_url = config.database_url.replacen("postgres@", "ledger_svc_test@", 1);
    let app = TestApp::spawn_with(config).await;
    let a = app.open_account("EUR", 0).await;
    let b = app.open_account("EUR", 0).await;
    app.deposit(a, 100, "EUR").await;
    let t = app.transfer(a, b, 40, "EUR").await;
    assert_eq!(t.status, StatusCode::CREATED, "{t:?}");
    let p = t.body["position"].as_i64().expect("position");
    let read = app.get(&format!("/v1/accounts/{b}?min_position={p}")).await;
    assert_eq!(read.body["balance"], json!(40));
    ledger_api::run::cli::rebuild_projection(&app.state.config, "accounts")
        .await
        .expect("a rebuild as the service role");
    let err =
        sqlx::query("delete from events").execute(&app.pool).await.expect_err("the service cannot delete history");
    assert_eq!(err.as_database_error().and_then(|d| d.code()).as_deref(), Some("42501"));
}

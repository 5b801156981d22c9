//! Two-phase holds (API.md v1.1 "Holds") against real Postgres and NATS: placing,
//! capturing (all or part), voiding, expiry (recorded by the workers, refused at
//! capture time even before), and what holds do to `available` and to closing.

use ledger_tests::{Reply, TestApp, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

fn key() -> String {
    Uuid::new_v4().to_string()
}

fn assert_refused(r: &Reply, status: StatusCode, code: &str) {
    assert_eq!((r.status, r.code()), (status, code), "{r:?}");
}

async fn hold(app: &TestApp, body: Value) -> Reply {
    app.post("/v1/holds", &key(), &body).await
}

async fn account(app: &TestApp, id: Uuid) -> (i64, i64, i64) {
    let a = app.account(id).await;
    (
        a["balance"].as_i64().unwrap_or(i64::MIN),
        a["available"].as_i64().unwrap_or(i64::MIN),
        a["pending_holds"].as_i64().unwrap_or(i64::MIN),
    )
}

#[tokio::test]
async fn a_hold_reserves_then_captures_part_and_releases_the_rest() {
    let app = TestApp::spawn().await;
    let (a, b) = (app.open_account("EUR", 0).await, app.open_account("EUR", 0).await);
    assert_eq!(app.deposit(a, 1_000, "EUR").await.status, StatusCode::CREATED);
    let h = hold(
        &app,
        json!({ "account_id": a, "to": b, "amount": 600, "currency": "EUR", "reference": "auth-1",
                               "metadata": { "card": "x1" } }),
    )
    .await;
    assert_eq!(h.status, StatusCode::CREATED, "{h:?}");
    assert_eq!((h.body["status"].clone(), h.body["captured_amount"].clone()), (json!("pending"), Value::Null));
    assert_eq!(account(&app, a).await, (1_000, 400, 600), "available drops, balance does not");
    // Held funds are not available to anything else.
    assert_refused(&app.transfer(a, b, 401, "EUR").await, StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds");
    assert_refused(
        &hold(&app, json!({ "account_id": a, "to": b, "amount": 401, "currency": "EUR" })).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "insufficient_funds",
    );
    // An account with pending holds cannot be closed.
    let empty = app.open_account("EUR", 0).await;
    assert_eq!(app.deposit(empty, 5, "EUR").await.status, StatusCode::CREATED);
    let small = hold(&app, json!({ "account_id": empty, "to": b, "amount": 5, "currency": "EUR" })).await;
    assert_eq!(small.status, StatusCode::CREATED);
    assert_eq!(app.transfer(empty, b, 1, "EUR").await.code(), "insufficient_funds");
    // Its balance is spent on the hold; the pending hold still keeps it open.
    let capture = app.post(&format!("/v1/holds/{}/capture", small.id()), &key(), &json!({ "amount": 5 })).await;
    assert_eq!(capture.status, StatusCode::OK);
    let other = app.open_account("EUR", 10).await;
    let pending = hold(&app, json!({ "account_id": other, "to": b, "amount": 10, "currency": "EUR" })).await;
    assert_eq!((pending.status, account(&app, other).await), (StatusCode::CREATED, (0, -10, 10)));
    let close = app.post(&format!("/v1/accounts/{other}/close"), &key(), &json!({})).await;
    assert_refused(&close, StatusCode::UNPROCESSABLE_ENTITY, "account_not_empty");
    let void = app.post(&format!("/v1/holds/{}/void", pending.id()), &key(), &json!({})).await;
    assert_eq!(void.status, StatusCode::OK);
    let close = app.post(&format!("/v1/accounts/{other}/close"), &key(), &json!({})).await;
    assert_eq!(close.status, StatusCode::OK, "no holds, no balance: it closes {close:?}");

    let too_much = app.post(&format!("/v1/holds/{}/capture", h.id()), &key(), &json!({ "amount": 601 })).await;
    assert_refused(&too_much, StatusCode::UNPROCESSABLE_ENTITY, "validation_error");
    let captured = app.post(&format!("/v1/holds/{}/capture", h.id()), &key(), &json!({ "amount": 250 })).await;
    assert_eq!(captured.status, StatusCode::OK, "{captured:?}");
    assert_eq!(
        (captured.body["status"].clone(), captured.body["captured_amount"].clone()),
        (json!("captured"), json!(250))
    );
    assert_eq!(account(&app, a).await, (750, 750, 0), "250 moved, the other 350 released");
    assert_eq!(account(&app, b).await.0, 255, "250 of this hold and 5 of the small one");
    for action in ["capture", "void"] {
        let again = app.post(&format!("/v1/holds/{}/{action}", h.id()), &key(), &json!({})).await;
        assert_refused(&again, StatusCode::UNPROCESSABLE_ENTITY, "hold_not_pending");
    }
    let read = app.get(&format!("/v1/holds/{}?min_position={}", h.id(), captured.body["position"])).await;
    assert_eq!(read.body, captured.body, "the read model agrees with the command's answer");
    let strong = app.get(&format!("/v1/holds/{}?consistency=strong", h.id())).await;
    assert_eq!(strong.body, captured.body);
    // The statement shows the capture as one entry on each side.
    let page = app.get(&format!("/v1/accounts/{b}/transactions?min_position={}", captured.body["position"])).await;
    assert_eq!(
        (page.body["entries"][0]["amount"].clone(), page.body["entries"][0]["kind"].clone()),
        (json!(250), json!("capture"))
    );
    app.assert_read_models_match_log().await;
}

#[tokio::test]
async fn void_releases_all_and_every_rule_has_its_code() {
    let app = TestApp::spawn().await;
    let (a, b) = (app.open_account("EUR", 100).await, app.open_account("EUR", 0).await);
    let usd = app.open_account("USD", 0).await;
    let h = hold(&app, json!({ "account_id": a, "to": b, "amount": 100, "currency": "EUR" })).await;
    assert_eq!((h.status, account(&app, a).await), (StatusCode::CREATED, (0, -100, 100)), "within the overdraft");
    let void = app.post(&format!("/v1/holds/{}/void", h.id()), &key(), &json!({})).await;
    assert_eq!((void.status, void.body["status"].clone()), (StatusCode::OK, json!("voided")), "{void:?}");
    assert_eq!(account(&app, a).await, (0, 0, 0));
    let twice = app.post(&format!("/v1/holds/{}/void", h.id()), &key(), &json!({})).await;
    assert_refused(&twice, StatusCode::UNPROCESSABLE_ENTITY, "hold_not_pending");
    for (body, status, code) in [
        (
            json!({ "account_id": a, "to": Uuid::now_v7(), "amount": 1, "currency": "EUR" }),
            StatusCode::NOT_FOUND,
            "account_not_found",
        ),
        (
            json!({ "account_id": a, "to": usd, "amount": 1, "currency": "EUR" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "currency_mismatch",
        ),
        (
            json!({ "account_id": a, "to": a, "amount": 1, "currency": "EUR" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "same_account",
        ),
        (
            json!({ "account_id": a, "to": b, "amount": 101, "currency": "EUR" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "insufficient_funds",
        ),
        (
            json!({ "account_id": a, "to": b, "amount": 0, "currency": "EUR" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
        ),
        (
            json!({ "account_id": a, "to": b, "amount": 1, "currency": "EUR", "expires_at": "2020-01-01T00:00:00Z" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
        ),
        (
            json!({ "id": h.id(), "account_id": a, "to": b, "amount": 1, "currency": "EUR" }),
            StatusCode::CONFLICT,
            "version_conflict",
        ),
    ] {
        assert_refused(&hold(&app, body).await, status, code);
    }
    let missing = Uuid::now_v7();
    assert_refused(
        &app.post(&format!("/v1/holds/{missing}/capture"), &key(), &json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_refused(&app.get(&format!("/v1/holds/{missing}")).await, StatusCode::NOT_FOUND, "not_found");
    app.assert_read_models_match_log().await;
}

#[tokio::test]
async fn an_expired_hold_cannot_be_captured_and_its_expiry_is_recorded_once() {
    let app = TestApp::spawn().await;
    let (a, b) = (app.open_account("EUR", 0).await, app.open_account("EUR", 0).await);
    assert_eq!(app.deposit(a, 100, "EUR").await.status, StatusCode::CREATED);
    let expires_at = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let h = hold(
        &app,
        json!({ "account_id": a, "to": b, "amount": 70, "currency": "EUR",
                               "expires_at": expires_at.to_rfc3339() }),
    )
    .await;
    assert_eq!(h.status, StatusCode::CREATED, "{h:?}");
    // Deliberate: the hold must reach `expires_at` (a time, not a condition to poll) by
    // the ledger's clock, which is the database's read over a round trip of at most
    // 200 ms (`clock::ROUND_TRIP_MAX`): it may be up to half of that behind this
    // process's clock, so the capture goes 200 ms after.
    let after = expires_at + chrono::Duration::milliseconds(200);
    tokio::time::sleep((after - chrono::Utc::now()).to_std().unwrap_or_default()).await;
    // After expires_at: refused, whether or not the expiry is recorded yet.
    let late = app.post(&format!("/v1/holds/{}/capture", h.id()), &key(), &json!({})).await;
    assert!(matches!(late.code(), "hold_expired" | "hold_not_pending"), "{late:?}");
    eventually("the expiry is recorded", 10, || async {
        app.get(&format!("/v1/holds/{}?consistency=strong", h.id())).await.body["status"] == "expired"
    })
    .await;
    let late = app.post(&format!("/v1/holds/{}/capture", h.id()), &key(), &json!({})).await;
    assert_refused(&late, StatusCode::UNPROCESSABLE_ENTITY, "hold_not_pending");
    assert_eq!(account(&app, a).await, (100, 100, 0), "released");
    let stream = app.get(&format!("/v1/audit?stream_id={}", h.id())).await;
    let types: Vec<&str> = stream.body["events"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["type"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(types, vec!["HoldPlaced", "HoldExpired"], "expired exactly once");
    app.assert_read_models_match_log().await;
}

/// Random interleavings of holds (some expiring within the run), captures (all or
/// part), voids and transfers, seeded (`LEDGER_PROPERTY_SEED`): after every step
/// `available = balance - pending_holds >= -overdraft_limit` on both sides, and at the
/// end every hold is in one final state, the pending holds of each account are the sum
/// of its pending holds in the log, and money is conserved.
#[tokio::test]
async fn random_holds_captures_voids_expiries_and_transfers_keep_available_consistent() {
    use rand::{Rng, SeedableRng};
    let seed = std::env::var("LEDGER_PROPERTY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("LEDGER_PROPERTY_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let id = app.open_account("EUR", if i == 0 { 200 } else { 0 }).await;
        assert_eq!(app.deposit(id, 500, "EUR").await.status, StatusCode::CREATED);
        ids.push(id);
    }
    let mut holds: Vec<Uuid> = Vec::new();
    for step in 0..80 {
        let (x, y) = (rng.random_range(0..4), rng.random_range(0..4));
        let (from, to) = (ids[x], ids[(x + 1 + y % 3) % 4]);
        let r = match rng.random_range(0..10) {
            0..=3 => {
                let mut body =
                    json!({ "account_id": from, "to": to, "amount": rng.random_range(1..300), "currency": "EUR" });
                if rng.random_bool(0.4) {
                    body["expires_at"] = json!(
                        (chrono::Utc::now() + chrono::Duration::milliseconds(rng.random_range(300..1500))).to_rfc3339()
                    );
                }
                let r = hold(&app, body).await;
                if r.status == StatusCode::CREATED {
                    holds.push(r.id());
                }
                r
            }
            4..=5 if !holds.is_empty() => {
                let h = holds[rng.random_range(0..holds.len())];
                let body = if rng.random_bool(0.5) { json!({}) } else { json!({ "amount": rng.random_range(1..300) }) };
                app.post(&format!("/v1/holds/{h}/capture"), &key(), &body).await
            }
            6 if !holds.is_empty() => {
                let h = holds[rng.random_range(0..holds.len())];
                app.post(&format!("/v1/holds/{h}/void"), &key(), &json!({})).await
            }
            _ => app.transfer(from, to, rng.random_range(1..300), "EUR").await,
        };
        assert!(
            r.status.is_success()
                || ["insufficient_funds", "hold_not_pending", "hold_expired", "validation_error"].contains(&r.code()),
            "step {step}: {r:?}"
        );
        for id in [from, to] {
            let a = app.account(id).await;
            let (balance, available, pending) =
                (a["balance"].as_i64(), a["available"].as_i64(), a["pending_holds"].as_i64());
            assert_eq!(available, balance.zip(pending).map(|(b, p)| b - p), "step {step}: {a}");
            assert!(available >= a["overdraft_limit"].as_i64().map(|l| -l), "step {step}: {a}");
        }
    }
    eventually("the expiring holds expire", 10, || async {
        let ledger = app.fold_log().await;
        holds.iter().all(|h| {
            ledger.hold(*h).is_some_and(|h| h.status != ledger_domain::HoldStatus::Pending || h.expires_at.is_none())
        })
    })
    .await;
    let ledger = app.fold_log().await; // also checks that money is conserved
    for id in &ids {
        let pending: i64 = holds
            .iter()
            .filter_map(|h| ledger.hold(*h))
            .filter(|h| h.account_id == *id && h.status == ledger_domain::HoldStatus::Pending)
            .map(|h| h.amount.minor_units())
            .sum();
        assert_eq!(app.account(*id).await["pending_holds"], json!(pending), "account {id}");
    }
    app.assert_read_models_match_log().await;
}

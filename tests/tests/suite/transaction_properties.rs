//! Property tests of transactions and effective dates, seeded and bounded
//! (`LEDGER_PROPERTY_SEED` replays a run, `LEDGER_PROPERTY_STEPS` lengthens it):
//!
//! - random multi-posting transactions over several currencies and random overdraft
//!   limits agree with a model of the contract (every acceptance and every refusal,
//!   with its code and account), keep the per-currency sum of all balances at zero at
//!   every position, never leave an account that paid below its limit, and replay to
//!   the same state;
//! - for random backdated postings, `balance?effective_at=T&at_position=P` equals a
//!   fold of the events with position ≤ P and effective time ≤ T.

use ledger_domain::{Event, Ledger};
use ledger_tests::{TestApp, test_config};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use uuid::Uuid;

fn seed() -> u64 {
    let seed = std::env::var("LEDGER_PROPERTY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("LEDGER_PROPERTY_SEED={seed}");
    seed
}

fn steps(default: usize) -> usize {
    std::env::var("LEDGER_PROPERTY_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// The model's view of an account.
#[derive(Clone, Debug)]
struct Model {
    currency: &'static str,
    limit: i64,
    balance: i64,
}

/// What the contract says a transaction gets: created, or the code (and account) of
/// the first rule it breaks.
fn expect(
    accounts: &[(Uuid, Model)],
    postings: &[(usize, usize, i64, &'static str)],
) -> Result<(), (&'static str, Option<Uuid>)> {
    for &(from, to, _, currency) in postings {
        if from == to {
            return Err(("same_account", None));
        }
        if accounts[from].1.currency != currency || accounts[to].1.currency != currency {
            return Err(("currency_mismatch", None));
        }
    }
    let mut net: HashMap<usize, i64> = HashMap::new();
    let mut order = Vec::new();
    for &(from, to, amount, _) in postings {
        for (i, delta) in [(from, -amount), (to, amount)] {
            if !order.contains(&i) {
                order.push(i);
            }
            *net.entry(i).or_default() += delta;
        }
    }
    for i in order {
        let (id, m) = &accounts[i];
        if net[&i] < 0 && m.balance + net[&i] < -m.limit {
            return Err(("insufficient_funds", Some(*id)));
        }
    }
    Ok(())
}

#[tokio::test]
async fn random_transactions_agree_with_the_model_and_conserve_money_at_every_position() {
    let mut rng = StdRng::seed_from_u64(seed());
    let app = TestApp::spawn().await;
    let currencies = ["EUR", "USD", "JPY"];
    let mut accounts: Vec<(Uuid, Model)> = Vec::new();
    for i in 0..9 {
        let currency = currencies[i % 3];
        let limit = rng.random_range(0..300);
        let id = app.open_account(currency, limit).await;
        let balance = rng.random_range(0..500);
        if balance > 0 {
            assert_eq!(app.deposit(id, balance, currency).await.status, StatusCode::CREATED);
        }
        accounts.push((id, Model { currency, limit, balance }));
    }
    let (mut created, mut refused) = (0, 0);
    for step in 0..steps(60) {
        let n = rng.random_range(1..=5);
        let postings: Vec<(usize, usize, i64, &'static str)> = (0..n)
            .map(|_| {
                let from = rng.random_range(0..accounts.len());
                // Mostly the same currency (a valid posting), sometimes not, sometimes itself.
                let to = match rng.random_range(0..10) {
                    0 => from,
                    1 => rng.random_range(0..accounts.len()),
                    _ => (from + 3 * rng.random_range(1..3)) % accounts.len(),
                };
                let currency = if rng.random_range(0..12) == 0 {
                    currencies[rng.random_range(0..3)]
                } else {
                    accounts[from].1.currency
                };
                (from, to, rng.random_range(1..400), currency)
            })
            .collect();
        let body = json!({ "postings": postings.iter().map(|&(f, t, a, c)| json!({
            "from": accounts[f].0, "to": accounts[t].0, "amount": a, "currency": c })).collect::<Vec<_>>() });
        let expected = expect(&accounts, &postings);
        let r = app.post("/v1/transactions", &Uuid::new_v4().to_string(), &body).await;
        match expected {
            Ok(()) => {
                assert_eq!(r.status, StatusCode::CREATED, "step {step}: {body} → {r:?}");
                for &(f, t, a, _) in &postings {
                    accounts[f].1.balance -= a;
                    accounts[t].1.balance += a;
                }
                created += 1;
            }
            Err((code, account)) => {
                assert_eq!(r.code(), code, "step {step}: {body} → {r:?}");
                if let Some(id) = account {
                    assert_eq!(r.body["account_id"], json!(id), "step {step}: {body} → {r:?}");
                }
                refused += 1;
            }
        }
    }
    assert!(created > 5 && refused > 5, "both outcomes exercised: {created} created, {refused} refused");
    for (id, m) in &accounts {
        assert_eq!(app.account(*id).await["balance"], json!(m.balance), "account {id}");
    }
    // Every position: the sum per currency is zero, and no account a transaction took
    // money from ends below its limit.
    let mut ledger = Ledger::new();
    for e in app.state.store.read_all(0, 100_000).await.expect("the log") {
        let event = e.event().expect("decodes");
        let before = ledger.clone();
        ledger.apply(&event);
        for (currency, sum) in ledger.balance_sums() {
            assert_eq!(sum, 0, "{currency} at position {}", e.position);
        }
        if let Event::TransactionPosted(t) = &event {
            for id in t.accounts() {
                let (was, now) = (before.account(id).expect("known"), ledger.account(id).expect("known"));
                if now.available() < was.available() {
                    assert!(
                        now.available().minor_units() >= -now.overdraft_limit.minor_units(),
                        "{id} at {}",
                        e.position
                    );
                }
            }
        }
    }
    // Replays to the same state: read models, and a second fold of the log.
    app.assert_read_models_match_log().await;
    assert_eq!(app.fold_log().await, ledger);
}

/// Effective time of an event as `/v1/events` shows it.
fn effective(e: &Value) -> chrono::DateTime<chrono::Utc> {
    let at = |v: &Value| v.as_str().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok()).map(|t| t.to_utc());
    at(&e["data"]["effective_at"]).or_else(|| at(&e["recorded_at"])).expect("a time")
}

#[tokio::test]
async fn the_bitemporal_balance_is_the_fold_of_what_was_known_and_effective() {
    let mut rng = StdRng::seed_from_u64(seed());
    let mut config = test_config();
    config.snapshot_every = 4; // long enough streams to start from snapshots
    let app = TestApp::spawn_with(config).await;
    let (a, b) = (app.open_account("EUR", 1_000_000).await, app.open_account("EUR", 1_000_000).await);
    let now = chrono::Utc::now();
    for step in 0..steps(40) {
        let effective_at = match rng.random_range(0..4) {
            0 => Value::Null,
            1 => json!((now + chrono::Duration::seconds(rng.random_range(0..30))).to_rfc3339()),
            _ => json!((now - chrono::Duration::minutes(rng.random_range(0..40_000))).to_rfc3339()),
        };
        let amount = rng.random_range(1..1000);
        let (path, body) = match rng.random_range(0..3) {
            0 => (
                "/v1/deposits",
                json!({ "account_id": a, "amount": amount, "currency": "EUR", "effective_at": effective_at }),
            ),
            1 => (
                "/v1/transfers",
                json!({ "from": b, "to": a, "amount": amount, "currency": "EUR", "effective_at": effective_at }),
            ),
            _ => (
                "/v1/transactions",
                json!({ "effective_at": effective_at, "postings": [
                { "from": a, "to": b, "amount": amount, "currency": "EUR" },
                { "from": b, "to": a, "amount": amount / 2 + 1, "currency": "EUR" }] }),
            ),
        };
        let r = app.post(path, &Uuid::new_v4().to_string(), &body).await;
        assert_eq!(r.status, StatusCode::CREATED, "step {step}: {body} → {r:?}");
    }
    let log = app.get("/v1/events?limit=1000").await.body["events"].as_array().cloned().expect("events");
    let head = log.last().and_then(|e| e["position"].as_i64()).expect("a head");
    let balance_of = |p: i64, t: chrono::DateTime<chrono::Utc>| -> i64 {
        log.iter()
            .filter(|e| e["position"].as_i64() <= Some(p) && effective(e) <= t)
            .filter_map(|e| Event::from_parts(e["type"].as_str()?, e["data"].clone()).ok())
            .flat_map(|e| e.postings())
            .filter(|p| p.account_id == a)
            .map(|p| p.delta.to_i64().expect("a customer posting"))
            .sum()
    };
    let times: Vec<chrono::DateTime<chrono::Utc>> = log.iter().map(effective).collect();
    for _ in 0..60 {
        let p = rng.random_range(1..=head);
        let t = times[rng.random_range(0..times.len())] + chrono::Duration::milliseconds(rng.random_range(-1..=1));
        let q = t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        // The time as sent (to the microsecond), which is what the ledger compares.
        let t = chrono::DateTime::parse_from_rfc3339(&q).expect("a time").to_utc();
        let r = app.get(&format!("/v1/accounts/{a}/balance?effective_at={q}&at_position={p}")).await;
        if balance_of(p, chrono::DateTime::<chrono::Utc>::MAX_UTC) == 0 && r.status == StatusCode::NOT_FOUND {
            continue; // the account did not exist yet at p
        }
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.body["balance"], json!(balance_of(p, t)), "effective_at={q} at_position={p}");
        assert_eq!(r.body["effective_at"].as_str().map(|s| s.starts_with(&q[..19])), Some(true), "{r:?}");
    }
    // `effective_at` alone: everything recorded so far.
    let t = now - chrono::Duration::days(10);
    let q = t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let r = app.get(&format!("/v1/accounts/{a}/balance?effective_at={q}")).await;
    assert_eq!(
        (r.body["balance"].clone(), r.body["as_of_position"].clone()),
        (json!(balance_of(head, t)), json!(head))
    );
}

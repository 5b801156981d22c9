//! Payouts through the provider simulator: retries with backoff, the circuit breaker,
//! the dead-letter queue, and "paid but the response was lost".

use ledger_provider_sim::Faults;
use ledger_tests::{TestApp, eventually, with_simulator};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

async fn breaker(app: &TestApp) -> Value {
    let r = app.get("/v1/admin/circuit-breakers").await;
    r.body["breakers"]
        .as_array()
        .expect("breakers")
        .iter()
        .find(|b| b["name"] == "payment-provider")
        .cloned()
        .expect("provider breaker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_errors_and_timeouts_still_pay_each_withdrawal_once() {
    let faults = Faults { error_rate: 0.15, timeout_rate: 0.15, hang_ms: 400, ..Faults::default() };
    let (app, sim) = with_simulator(faults, |c| c.provider_timeout = Duration::from_millis(150)).await;
    let a = app.open_account("EUR", 0).await;
    app.deposit(a, 10_000, "EUR").await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(app.withdraw(a, 100).await);
    }
    app.wait_status(&ids, "settled", 90).await;
    let stats = sim.simulator.stats();
    assert!(stats.double_paid().is_empty(), "nothing paid twice: {stats:?}");
    for id in &ids {
        assert_eq!(stats.paid.get(&id.to_string()), Some(&1), "withdrawal {id} paid exactly once");
    }
    assert!(stats.payout_calls > 20, "faults forced retries ({} calls)", stats.payout_calls);
    let view = app.account(a).await;
    assert_eq!((view["balance"].clone(), view["pending_holds"].clone()), (json!(8_000), json!(0)));
    let settled: i64 = sqlx::query_scalar("select count(*) from events where type = 'WithdrawalSettled'")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(settled, 20, "settled once each");
    app.fold_log().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permanent_rejection_fails_the_withdrawal_and_releases_the_hold() {
    let (app, sim) = with_simulator(Faults { permanent_error_rate: 1.0, ..Faults::default() }, |_| {}).await;
    let a = app.open_account("EUR", 0).await;
    app.deposit(a, 1_000, "EUR").await;
    let refused = app.withdraw(a, 300).await;
    app.wait_status(&[refused], "failed", 30).await;
    sim.simulator.set_faults(Faults { reject_rate: 1.0, ..Faults::default() });
    let rejected = app.withdraw(a, 200).await;
    app.wait_status(&[rejected], "failed", 30).await;
    let view = app.account(a).await;
    assert_eq!(
        (view["balance"].clone(), view["available"].clone(), view["pending_holds"].clone()),
        (json!(1_000), json!(1_000), json!(0))
    );
    let reason =
        app.get(&format!("/v1/withdrawals/{rejected}?consistency=strong")).await.body["failure_reason"].clone();
    assert_eq!(reason, json!("simulated rejection"));
    app.fold_log().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_down_provider_opens_the_breaker_and_the_backlog_drains_after() {
    let (app, sim) = with_simulator(Faults { down: true, ..Faults::default() }, |c| {
        c.provider_breaker_failures = 3;
        c.provider_breaker_cooldown = Duration::from_millis(800);
        c.payout_attempts_max = 1_000;
    })
    .await;
    let a = app.open_account("EUR", 0).await;
    app.deposit(a, 1_000, "EUR").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.withdraw(a, 10).await);
    }
    eventually("the breaker opens", 30, || async { breaker(&app).await["state"] == "open" }).await;
    // Calls let through while it was still closed may reach the provider after the first
    // opening (a permit is taken before the attempt is counted). Watch a later open spell:
    // it follows a failed probe, the only call let through while half-open, so nothing
    // admitted before it can still be on its way.
    let first = breaker(&app).await["opened_at"].clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut observed_open = 0;
    while observed_open == 0 {
        assert!(std::time::Instant::now() < deadline, "a failed probe opens the breaker again");
        let opened = breaker(&app).await;
        if opened["state"] != "open" || opened["opened_at"] == first {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        // Calls first, then the state: if the breaker is still the same open breaker
        // afterwards, it was open when the calls were counted.
        let calls_when_opened = sim.simulator.stats().calls;
        loop {
            let calls = sim.simulator.stats().calls;
            let now = breaker(&app).await;
            if now["state"] != "open" || now["opened_at"] != opened["opened_at"] {
                break;
            }
            observed_open += 1;
            assert_eq!(calls, calls_when_opened, "no calls while the breaker is open");
            tokio::task::yield_now().await;
        }
    }
    sim.simulator.set_faults(Faults::default());
    app.wait_status(&ids, "settled", 60).await;
    eventually("the probe closed the breaker", 10, || async { breaker(&app).await["state"] == "closed" }).await;
    assert!(sim.simulator.stats().double_paid().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exhausted_retries_dead_letter_then_redrive_settles_and_discard_fails() {
    let (app, sim) = with_simulator(Faults { error_rate: 1.0, ..Faults::default() }, |c| {
        c.payout_attempts_max = 3;
        c.provider_breaker_failures = 1_000;
    })
    .await;
    let a = app.open_account("EUR", 0).await;
    app.deposit(a, 1_000, "EUR").await;
    let (first, second) = (app.withdraw(a, 100).await, app.withdraw(a, 200).await);
    let dead = |app: &TestApp| {
        let app = app.clone_handle();
        async move {
            app.get("/v1/admin/dead-letters?consistency=strong").await.body["dead_letters"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        }
    };
    eventually("both payouts dead-lettered", 60, || async { dead(&app).await.len() == 2 }).await;
    let letters = dead(&app).await;
    for letter in &letters {
        assert_eq!(letter["attempts"], json!(3));
        assert_eq!(letter["source"], json!("payouts"));
        assert!(letter["last_error"].as_str().expect("error").contains("503"));
    }
    // Each is kept in JetStream too, in the dead letters' own stream; the events
    // stream holds events only (`stream_positions` checks every message).
    eventually("both dead letters kept in their stream", 20, || async { kept_dead_letters(&app).await.len() == 2 })
        .await;
    let (mut kept, mut withdrawals) = (kept_dead_letters(&app).await, vec![first, second]);
    kept.sort();
    withdrawals.sort();
    assert_eq!(kept, withdrawals);
    assert!(app.stream_positions().await.is_some_and(|p| !p.is_empty()));
    assert_eq!(app.withdrawal_status(first).await, "pending", "a dead-lettered withdrawal keeps its hold");
    assert_eq!(app.account(a).await["pending_holds"], json!(300));
    let letter_of = |w: Uuid| {
        letters
            .iter()
            .find(|l| l["withdrawal_id"] == json!(w))
            .and_then(|l| l["id"].as_str())
            .expect("letter")
            .to_owned()
    };

    sim.simulator.set_faults(Faults::default());
    let redriven =
        app.post(&format!("/v1/admin/dead-letters/{}/redrive", letter_of(first)), "redrive-1", &json!({})).await;
    assert_eq!((redriven.status, redriven.body["status"].clone()), (StatusCode::OK, json!("redriven")), "{redriven:?}");
    let discarded =
        app.post(&format!("/v1/admin/dead-letters/{}/discard", letter_of(second)), "discard-1", &json!({})).await;
    assert_eq!(discarded.status, StatusCode::OK, "{discarded:?}");
    let again =
        app.post(&format!("/v1/admin/dead-letters/{}/discard", letter_of(second)), "discard-2", &json!({})).await;
    assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY, "a resolved dead letter cannot be resolved again");
    app.wait_status(&[first], "settled", 30).await;
    assert_eq!(app.withdrawal_status(second).await, "failed");
    let view = app.account(a).await;
    assert_eq!((view["balance"].clone(), view["pending_holds"].clone()), (json!(900), json!(0)));
    let actors: Vec<String> = sqlx::query_scalar(
        "select metadata ->> 'actor' from events where type in ('PayoutRedriven', 'WithdrawalFailed') order by position",
    )
    .fetch_all(&app.pool)
    .await
    .expect("actors");
    assert_eq!(
        actors,
        [ledger_api::http::auth::BOOTSTRAP_PRINCIPAL; 2],
        "operator actions are events with the operator as actor"
    );
    assert!(dead(&app).await.is_empty());
    app.fold_log().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paid_but_response_lost_settles_once_with_the_original_payout() {
    let (app, sim) = with_simulator(Faults { drop_response_rate: 1.0, ..Faults::default() }, |_| {}).await;
    let a = app.open_account("EUR", 0).await;
    app.deposit(a, 1_000, "EUR").await;
    let w = app.withdraw(a, 250).await;
    app.wait_status(&[w], "settled", 30).await;
    let stats = sim.simulator.stats();
    assert_eq!(stats.paid.get(&w.to_string()), Some(&1));
    assert!(stats.payout_calls >= 2, "the lost response was retried");
    let payouts = sim.simulator.payouts();
    let provider_ref = app.get(&format!("/v1/withdrawals/{w}?consistency=strong")).await.body["provider_ref"].clone();
    assert_eq!(provider_ref, json!(payouts[0].provider_ref), "the retry returned the original payout");
    assert_eq!(app.account(a).await["balance"], json!(750));
}

/// The withdrawals of the dead letters JetStream keeps, in their own stream.
async fn kept_dead_letters(app: &TestApp) -> Vec<Uuid> {
    let js = async_nats::jetstream::new(app.state.nats.clone());
    let Ok(mut stream) = js.get_stream(app.state.names.dead_letter_stream()).await else { return Vec::new() };
    let Ok(info) = stream.info().await.map(|i| i.state.clone()) else { return Vec::new() };
    let mut kept = Vec::new();
    for sequence in info.first_sequence..=info.last_sequence {
        if let Ok(m) = stream.get_raw_message(sequence).await {
            assert_eq!(m.subject.as_str(), app.state.names.payout_dead_letter_subject());
            let letter: Value = serde_json::from_slice(&m.payload).expect("a dead letter");
            kept.push(letter["withdrawal_id"].as_str().expect("its withdrawal").parse().expect("uuid"));
        }
    }
    kept
}

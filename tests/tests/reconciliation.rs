//! Reconciliation against the provider simulator: one test per row of PROVIDER.md's
//! table, re-runs that change nothing, conservation, and a run racing payout retries.

use ledger_provider_sim::{Faults, PayoutOverride, PayoutStatus, StatementEntry};
use ledger_tests::{TestApp, eventually, with_simulator};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

/// Starts a run over the last hour (and a little ahead) and waits for its report.
async fn run(app: &TestApp) -> Value {
    let to = (chrono::Utc::now() + chrono::Duration::seconds(5)).to_rfc3339();
    let from = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let started =
        app.post("/v1/admin/reconciliations", &Uuid::new_v4().to_string(), &json!({ "from": from, "to": to })).await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{started:?}");
    let id = started.id();
    let path = format!("/v1/admin/reconciliations/{id}");
    eventually("the run finishes", 30, || async { app.get(&path).await.body["status"] != "running" }).await;
    let report = app.get(&path).await.body;
    assert_eq!(report["status"], "finished", "{report}");
    report
}

async fn money_events(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "select count(*) from events where type in ('WithdrawalSettled', 'WithdrawalFailed', 'WithdrawalReconciled', 'TransferPosted', 'DepositRecorded')",
    )
    .fetch_one(&app.pool)
    .await
    .expect("count")
}

/// A funded account and one withdrawal the payout worker settled normally.
async fn settled_withdrawal(app: &TestApp, amount: i64) -> (Uuid, Uuid) {
    let a = app.open_account("EUR", 0).await;
    app.deposit(a, 1_000, "EUR").await;
    let w = app.withdraw(a, amount).await;
    app.wait_status(&[w], "settled", 30).await;
    (a, w)
}

fn only_mismatch(report: &Value) -> &Value {
    let list = report["mismatches"].as_array().expect("mismatches");
    assert_eq!(list.len(), 1, "{report}");
    &list[0]
}

async fn check_rerun_changes_nothing(app: &TestApp) {
    let before = money_events(app).await;
    let again = run(app).await;
    assert!(again["mismatches"].as_array().expect("list").iter().all(|m| m["resolution"] == "flagged"), "{again}");
    assert_eq!(money_events(app).await, before, "a second run appends no money-moving event");
    app.fold_log().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settled_on_both_sides_with_the_same_amount_is_matched() {
    let (app, _sim) = with_simulator(Faults::default(), |_| {}).await;
    settled_withdrawal(&app, 300).await;
    let report = run(&app).await;
    assert_eq!(report["matched"], json!(1), "{report}");
    assert_eq!(report["mismatches"], json!([]));
    check_rerun_changes_nothing(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settled_at_the_provider_but_pending_or_failed_here_is_settled() {
    // Paid, but every response is lost and the worker gives up after one call.
    let (app, sim) =
        with_simulator(Faults { drop_response_rate: 1.0, ..Faults::default() }, |c| c.payout_attempts_max = 1).await;
    let a = app.open_account("EUR", 0).await;
    app.deposit(a, 1_000, "EUR").await;
    let pending = app.withdraw(a, 300).await;
    let failed = app.withdraw(a, 200).await;
    eventually("both dead-lettered", 30, || async {
        app.get("/v1/admin/dead-letters?consistency=strong").await.body["dead_letters"].as_array().map(Vec::len)
            == Some(2)
    })
    .await;
    // An operator discards one: failed here, though the provider paid it.
    let letters = app.get("/v1/admin/dead-letters?consistency=strong").await.body["dead_letters"].clone();
    let letter =
        letters.as_array().expect("list").iter().find(|l| l["withdrawal_id"] == json!(failed)).expect("letter")["id"]
            .clone();
    let discarded = app
        .post(&format!("/v1/admin/dead-letters/{}/discard", letter.as_str().expect("id")), "discard", &json!({}))
        .await;
    assert_eq!(discarded.status, StatusCode::OK);
    assert_eq!(app.account(a).await["available"], json!(700));
    // The provider's amount for the pending one differs from ours: it is the truth.
    sim.simulator
        .override_payout(&pending.to_string(), &PayoutOverride { amount: Some(310), ..Default::default() })
        .expect("override");

    let report = run(&app).await;
    let list = report["mismatches"].as_array().expect("list");
    assert_eq!(list.len(), 2, "{report}");
    assert!(list.iter().all(|m| m["kind"] == "settled_at_provider" && m["resolution"] == "settled"));
    assert!(list.iter().all(|m| m["resolution_position"].is_i64()));
    assert_eq!(app.withdrawal_status(pending).await, "settled");
    assert_eq!(app.withdrawal_status(failed).await, "settled");
    let view = app.account(a).await;
    assert_eq!((view["balance"].clone(), view["pending_holds"].clone()), (json!(1_000 - 310 - 200), json!(0)));
    let run_id = report["id"].as_str().expect("id").to_owned();
    let causes: Vec<Option<String>> = sqlx::query_scalar(
        "select metadata ->> 'causation_id' from events where type in ('WithdrawalSettled', 'WithdrawalReconciled')",
    )
    .fetch_all(&app.pool)
    .await
    .expect("causes");
    assert!(causes.iter().all(|c| c.as_deref() == Some(run_id.as_str())), "corrections carry the run as causation");
    assert_eq!(app.get("/v1/admin/dead-letters?consistency=strong").await.body["dead_letters"], json!([]));
    check_rerun_changes_nothing(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_different_amount_at_the_provider_is_adjusted() {
    let (app, sim) = with_simulator(Faults::default(), |_| {}).await;
    let (a, w) = settled_withdrawal(&app, 300).await;
    sim.simulator
        .override_payout(&w.to_string(), &PayoutOverride { amount: Some(350), ..Default::default() })
        .expect("override");
    let report = run(&app).await;
    let m = only_mismatch(&report);
    assert_eq!((m["kind"].clone(), m["resolution"].clone()), (json!("amount_mismatch"), json!("adjusted")));
    assert_eq!((m["ours"]["amount"].clone(), m["theirs"]["amount"].clone()), (json!(300), json!(350)));
    assert_eq!(app.account(a).await["balance"], json!(650));
    let position = m["resolution_position"].as_i64().expect("position");
    let event_type: String = sqlx::query_scalar("select type from events where position = $1")
        .bind(position)
        .fetch_one(&app.pool)
        .await
        .expect("event");
    assert_eq!(event_type, "WithdrawalReconciled");
    check_rerun_changes_nothing(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rejected_at_the_provider_but_settled_here_is_credited_back() {
    let (app, sim) = with_simulator(Faults::default(), |_| {}).await;
    let (a, w) = settled_withdrawal(&app, 300).await;
    sim.simulator
        .override_payout(&w.to_string(), &PayoutOverride { status: Some(PayoutStatus::Rejected), ..Default::default() })
        .expect("override");
    let report = run(&app).await;
    let m = only_mismatch(&report);
    assert_eq!((m["kind"].clone(), m["resolution"].clone()), (json!("rejected_at_provider"), json!("credited_back")));
    assert_eq!(app.account(a).await["balance"], json!(1_000));
    assert_eq!(app.withdrawal_status(w).await, "failed");
    check_rerun_changes_nothing(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_record_at_the_provider_is_flagged_and_moves_no_money() {
    let (app, sim) = with_simulator(Faults::default(), |_| {}).await;
    let (a, w) = settled_withdrawal(&app, 300).await;
    sim.simulator
        .override_payout(&w.to_string(), &PayoutOverride { remove: Some(true), ..Default::default() })
        .expect("override");
    let before = money_events(&app).await;
    let report = run(&app).await;
    let m = only_mismatch(&report);
    assert_eq!(
        (m["kind"].clone(), m["resolution"].clone(), m["resolution_position"].clone()),
        (json!("missing_at_provider"), json!("flagged"), Value::Null)
    );
    assert_eq!(m["withdrawal_id"], json!(w));
    assert_eq!(money_events(&app).await, before);
    assert_eq!(app.account(a).await["balance"], json!(700));
    check_rerun_changes_nothing(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_reference_is_flagged() {
    let (app, sim) = with_simulator(Faults::default(), |_| {}).await;
    sim.simulator.add_statement_entry(StatementEntry {
        provider_ref: "prv_stranger".into(),
        reference: "not-one-of-ours".into(),
        amount: 999,
        currency: "EUR".into(),
        status: PayoutStatus::Settled,
        settled_at: chrono::Utc::now(),
    });
    let before = money_events(&app).await;
    let report = run(&app).await;
    let m = only_mismatch(&report);
    assert_eq!((m["kind"].clone(), m["resolution"].clone()), (json!("unknown_reference"), json!("flagged")));
    assert_eq!(m["provider_ref"], json!("prv_stranger"));
    assert_eq!(money_events(&app).await, before);
    check_rerun_changes_nothing(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_while_payouts_retry_settles_each_withdrawal_once_in_total() {
    // Every first answer is lost; the worker retries slowly, the run gets there first.
    let (app, sim) = with_simulator(Faults { drop_response_rate: 1.0, ..Faults::default() }, |c| {
        c.payout_backoff_base = std::time::Duration::from_millis(1_500);
        c.payout_backoff_max = std::time::Duration::from_millis(3_000);
    })
    .await;
    let a = app.open_account("EUR", 0).await;
    app.deposit(a, 1_000, "EUR").await;
    let ids = [app.withdraw(a, 100).await, app.withdraw(a, 200).await];
    eventually("the provider paid both", 30, || async { sim.simulator.stats().paid.len() == 2 }).await;
    run(&app).await;
    sim.simulator.set_faults(Faults::default());
    app.wait_status(&ids, "settled", 30).await;
    // Let the worker's redeliveries arrive and be handled; they must change nothing.
    let js = async_nats::jetstream::new(app.state.nats.clone());
    let consumer_name = format!("{}_payouts", app.state.names.prefix());
    eventually("the payout worker drained its redeliveries", 30, || async {
        let Ok(stream) = js.get_stream(app.state.names.events_stream()).await else { return false };
        let Ok(mut consumer) =
            stream.get_consumer::<async_nats::jetstream::consumer::pull::Config>(&consumer_name).await
        else {
            return false;
        };
        consumer.info().await.is_ok_and(|i| i.num_ack_pending == 0 && i.num_pending == 0)
    })
    .await;
    let settled: i64 = sqlx::query_scalar("select count(*) from events where type = 'WithdrawalSettled'")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(settled, 2, "each withdrawal settled once in total");
    assert!(sim.simulator.stats().double_paid().is_empty());
    assert_eq!(app.account(a).await["balance"], json!(700));
    app.fold_log().await;
}

//! Reconciliation against the provider simulator: one test per row of PROVIDER.md's
//! table, re-runs that change nothing, conservation, a run racing payout retries, and
//! the statement lines that cannot be trusted (v1.1): duplicated, foreign, out of
//! range, unreadable or not JSON at all.

use ledger_provider_sim::{Faults, PayoutOverride, PayoutStatus, StatementEntry};
use ledger_tests::{TestApp, eventually, with_simulator};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

/// Starts a run over the last hour (and a little ahead) and waits for its report,
/// which must say `finished`.
async fn run(app: &TestApp) -> Value {
    let report = run_to_end(app).await;
    assert_eq!(report["status"], "finished", "{report}");
    report
}

/// Starts a run over the last hour (and a little ahead) and waits until it ends, well
/// or not.
async fn run_to_end(app: &TestApp) -> Value {
    let to = (chrono::Utc::now() + chrono::Duration::seconds(5)).to_rfc3339();
    let from = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let started =
        app.post("/v1/admin/reconciliations", &Uuid::new_v4().to_string(), &json!({ "from": from, "to": to })).await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{started:?}");
    let id = started.id();
    let path = format!("/v1/admin/reconciliations/{id}");
    eventually("the run ends", 30, || async { app.get(&path).await.body["status"] != "running" }).await;
    app.get(&path).await.body
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

/// Every balance of the log, folded (which also checks that every currency sums to 0).
async fn balances(app: &TestApp) -> Vec<(Uuid, i128)> {
    let ledger = app.fold_log().await;
    ledger
        .streams()
        .filter_map(|(id, s)| match &s.aggregate {
            ledger_domain::Aggregate::Account(a) => Some((*id, a.balance.minor_units())),
            _ => None,
        })
        .collect()
}

fn eur_system_account() -> Uuid {
    ledger_domain::system_account_id(ledger_domain::Currency::parse("EUR").expect("valid"))
}

/// The mismatches of a report by withdrawal (`None`: lines that name none).
fn kinds(report: &Value) -> Vec<(Option<String>, String, String)> {
    let mut kinds: Vec<_> = report["mismatches"]
        .as_array()
        .expect("mismatches")
        .iter()
        .map(|m| {
            (
                m["withdrawal_id"].as_str().map(str::to_owned),
                m["kind"].as_str().unwrap_or("").to_owned(),
                m["resolution"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    kinds.sort();
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_and_malformed_lines_are_listed_on_every_run_and_move_no_money() {
    let (app, sim) = with_simulator(Faults::default(), |_| {}).await;
    let a = app.open_account("EUR", 0).await;
    app.deposit(a, 100_000, "EUR").await;
    let mut ids = Vec::new();
    for n in 0..15 {
        ids.push(app.withdraw(a, 100 + n).await);
    }
    app.wait_status(&ids, "settled", 30).await;
    let payouts = sim.simulator.payouts();
    let provider_ref =
        |w: Uuid| payouts.iter().find(|p| p.reference == w.to_string()).expect("paid").provider_ref.clone();
    let now = chrono::Utc::now().to_rfc3339();
    let line = |w: Uuid, amount: &str, currency: &str, status: &str| {
        format!(
            r#"{{"provider_ref":"{}","reference":"{w}","amount":{amount},"currency":{currency},"status":{status},"settled_at":"{now}"}}"#,
            provider_ref(w)
        )
    };
    // The provider's own line for `w` gives way to `text`.
    let replace = |w: Uuid, text: String| {
        sim.simulator
            .override_payout(&w.to_string(), &PayoutOverride { remove: Some(true), ..Default::default() })
            .expect("override");
        sim.simulator.add_raw_statement_line(text);
    };
    let also = |w: Uuid, amount: i64, provider_ref: String| {
        sim.simulator.add_statement_entry(StatementEntry {
            provider_ref,
            reference: w.to_string(),
            amount,
            currency: "EUR".into(),
            status: PayoutStatus::Settled,
            settled_at: chrono::Utc::now(),
        });
    };
    // ids[0]: a well-formed difference, corrected once (the control).
    sim.simulator
        .override_payout(&ids[0].to_string(), &PayoutOverride { amount: Some(150), ..Default::default() })
        .expect("override");
    also(ids[1], 999, "prv_second_line".into());
    also(ids[2], 102, provider_ref(ids[2]));
    replace(ids[3], line(ids[3], "103", r#""USD""#, r#""settled""#));
    replace(ids[4], line(ids[4], "0", r#""EUR""#, r#""settled""#));
    replace(ids[5], line(ids[5], "-105", r#""EUR""#, r#""settled""#));
    replace(ids[6], line(ids[6], &i64::MAX.to_string(), r#""EUR""#, r#""settled""#));
    replace(ids[7], line(ids[7], &i64::MIN.to_string(), r#""EUR""#, r#""rejected""#));
    replace(ids[8], line(ids[8], &(ledger_domain::AMOUNT_MAX + 1).to_string(), r#""EUR""#, r#""settled""#));
    replace(ids[9], line(ids[9], "109.5", r#""EUR""#, r#""settled""#));
    replace(ids[10], line(ids[10], "9223372036854775808", r#""EUR""#, r#""settled""#));
    replace(ids[11], line(ids[11], "1e400", r#""EUR""#, r#""settled""#));
    replace(ids[12], line(ids[12], "112", "null", r#""settled""#));
    replace(ids[13], line(ids[13], "113", r#""EUR""#, r#""PAID""#));
    replace(ids[14], line(ids[14], r#""114""#, r#""EUR""#, r#""settled""#));
    for text in ["42", r#"{"amount":5,"status":"settled"}"#, r#"{"reference":"w\u0000","amount":5}"#] {
        sim.simulator.add_raw_statement_line(text);
    }
    let anomalies: Vec<(Option<String>, String, String)> = {
        let by_withdrawal = [
            (1, "duplicate_reference"),
            (2, "duplicate_reference"),
            (3, "currency_mismatch"),
            (4, "invalid_amount"),
            (5, "invalid_amount"),
            (6, "invalid_amount"),
            (7, "invalid_amount"),
            (8, "invalid_amount"),
            (9, "invalid_amount"),
            (10, "invalid_amount"),
            (11, "invalid_amount"),
            (12, "malformed_line"),
            (13, "malformed_line"),
            (14, "malformed_line"),
        ];
        let mut expected: Vec<_> = by_withdrawal
            .iter()
            .map(|(i, kind)| (Some(ids[*i].to_string()), kind.to_string(), "flagged".to_owned()))
            .chain((0..3).map(|_| (None, "malformed_line".to_owned(), "flagged".to_owned())))
            .collect();
        expected.sort();
        expected
    };
    let before = balances(&app).await;

    let first = run(&app).await;
    let mut expected = anomalies.clone();
    expected.push((Some(ids[0].to_string()), "amount_mismatch".into(), "adjusted".into()));
    expected.sort();
    assert_eq!(kinds(&first), expected, "{first}");
    let flagged = first["mismatches"].as_array().expect("list").iter().filter(|m| m["resolution"] == "flagged");
    assert!(flagged.clone().all(|m| m["resolution_position"].is_null()), "{first}");
    let after_first = balances(&app).await;
    let changed: Vec<_> = before.iter().zip(&after_first).filter(|(b, a)| b != a).map(|(_, a)| a.0).collect();
    assert_eq!(changed, {
        let mut only = vec![a, eur_system_account()];
        only.sort();
        only
    });
    assert_eq!(app.account(a).await["balance"], json!(100_000 - (100..115).sum::<i64>() - 50));

    let money_before = money_events(&app).await;
    let second = run(&app).await;
    assert_eq!(kinds(&second), anomalies, "every anomaly is listed again, nothing else: {second}");
    assert_eq!(money_events(&app).await, money_before, "the second run moves no money");
    assert_eq!(balances(&app).await, after_first, "balances, the system account's too, are unchanged");
    let theirs = second["mismatches"]
        .as_array()
        .expect("list")
        .iter()
        .find(|m| m["withdrawal_id"] == json!(ids[1]))
        .expect("listed")["theirs"]
        .clone();
    assert_eq!(theirs["lines_total"], json!(2), "{theirs}");
    // The writer survived all of it.
    assert_eq!(app.deposit(a, 1, "EUR").await.status, StatusCode::CREATED);
    app.fold_log().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_correction_gone_missing_at_the_provider_is_listed_on_every_later_run() {
    // Paid, but every answer is lost and the worker gives up at once: an operator
    // discards it (failed here), the first run settles it from the statement.
    let (app, sim) =
        with_simulator(Faults { drop_response_rate: 1.0, ..Faults::default() }, |c| c.payout_attempts_max = 1).await;
    let a = app.open_account("EUR", 0).await;
    app.deposit(a, 1_000, "EUR").await;
    let w = app.withdraw(a, 300).await;
    let letters = || async { app.get("/v1/admin/dead-letters?consistency=strong").await.body["dead_letters"].clone() };
    eventually("dead-lettered", 30, || async { letters().await.as_array().map(Vec::len) == Some(1) }).await;
    let letter = letters().await[0]["id"].as_str().expect("id").to_owned();
    let discarded = app.post(&format!("/v1/admin/dead-letters/{letter}/discard"), "discard", &json!({})).await;
    assert_eq!(discarded.status, StatusCode::OK);
    let m = only_mismatch(&run(&app).await).clone();
    assert_eq!((m["kind"].clone(), m["resolution"].clone()), (json!("settled_at_provider"), json!("settled")));
    assert_eq!(app.withdrawal_status(w).await, "settled");

    // Now the provider has no record of it: a person must look, on every run.
    sim.simulator
        .override_payout(&w.to_string(), &PayoutOverride { remove: Some(true), ..Default::default() })
        .expect("override");
    let before = balances(&app).await;
    let money_before = money_events(&app).await;
    for _ in 0..2 {
        let report = run(&app).await;
        let m = only_mismatch(&report);
        assert_eq!(
            (m["kind"].clone(), m["resolution"].clone(), m["withdrawal_id"].clone()),
            (json!("missing_at_provider"), json!("flagged"), json!(w)),
            "{report}"
        );
        assert_eq!(money_events(&app).await, money_before);
        assert_eq!(balances(&app).await, before);
    }
    assert_eq!(app.account(a).await["balance"], json!(700));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_statement_that_is_not_json_fails_the_run_and_moves_nothing() {
    let (app, sim) = with_simulator(Faults::default(), |c| c.provider_breaker_failures = 100).await;
    let (a, _) = settled_withdrawal(&app, 300).await;
    sim.simulator.add_raw_statement_line("{\"reference\": ");
    let before = money_events(&app).await;
    let report = run_to_end(&app).await;
    assert_eq!(report["status"], "failed", "{report}");
    assert!(report["error"].as_str().is_some_and(|e| e.contains("provider")), "{report}");
    assert_eq!(report["mismatches"], json!([]));
    assert_eq!(money_events(&app).await, before);
    // The service and the next run are unaffected.
    sim.simulator.clear_raw_statement_lines();
    let report = run(&app).await;
    assert_eq!((report["matched"].clone(), report["mismatches"].clone()), (json!(1), json!([])), "{report}");
    assert_eq!(app.account(a).await["balance"], json!(700));
    app.fold_log().await;
}

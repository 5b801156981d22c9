//! The read side against real Postgres and NATS: outbox relay, projections, cache and
//! the consistency choices of API.md.

use futures::StreamExt;
use futures::future::join_all;
use ledger_api::run::serve::Mode;
use ledger_infrastructure::relay::STREAM_RECHECK;
use ledger_tests::{NatsServer, TestApp, eventually, test_config};
use reqwest::StatusCode;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_your_writes_and_read_models_equal_the_log() {
    let app = Arc::new(TestApp::spawn().await);
    let a = app.open_account("EUR", 0).await;
    let deposit = app.deposit(a, 500, "EUR").await;
    let position = deposit.body["position"].as_i64().expect("position");
    let read = app.get(&format!("/v1/accounts/{a}?min_position={position}")).await;
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    assert_eq!(read.body["balance"], json!(500));
    assert!(read.header("x-ledger-position").and_then(|p| p.parse::<i64>().ok()).expect("header") >= position);

    let mut accounts = vec![a];
    for _ in 0..9 {
        let id = app.open_account("EUR", 100).await;
        app.deposit(id, 1_000, "EUR").await;
        accounts.push(id);
    }
    let accounts = Arc::new(accounts);
    let tasks = (0..16).map(|worker| {
        let (app, accounts) = (app.clone(), accounts.clone());
        tokio::spawn(async move {
            let mut last = 0;
            for i in 0..63usize {
                let from = accounts[(worker + i) % 10];
                let to = accounts[(worker + 3 * i + 1) % 10];
                if from == to {
                    continue;
                }
                let r = app.transfer(from, to, (i % 50 + 1) as i64, "EUR").await;
                if let Some(p) = r.body["position"].as_i64() {
                    last = last.max(p);
                }
            }
            last
        })
    });
    let last = join_all(tasks).await.into_iter().map(|r| r.expect("task")).max().expect("positions");
    for id in accounts.iter() {
        let eventual = app.get(&format!("/v1/accounts/{id}?min_position={last}")).await;
        assert_eq!(eventual.status, StatusCode::OK, "{eventual:?}");
        let strong = app.account(*id).await;
        for field in ["balance", "available", "pending_holds", "version", "status"] {
            assert_eq!(eventual.body[field], strong[field], "{field} of {id}");
        }
    }
    eventually("transfers projection reaches the last position", 20, || {
        let app = app.clone();
        async move { app.checkpoint("transfers").await >= last }
    })
    .await;
    app.assert_read_models_match_log().await;

    let owned = app.get(&format!("/v1/accounts?owner=owner@example.com&min_position={last}")).await;
    assert_eq!(owned.body["accounts"].as_array().map(Vec::len), Some(10));
    let page = app.get(&format!("/v1/accounts/{a}/transactions?limit=2&min_position={last}")).await;
    let entries = page.body["entries"].as_array().expect("entries").clone();
    assert_eq!(entries.len(), 2);
    assert!(entries[0]["position"].as_i64() > entries[1]["position"].as_i64(), "newest first");
    let cursor = page.body["next_cursor"].as_str().expect("cursor");
    let next = app.get(&format!("/v1/accounts/{a}/transactions?limit=1000&cursor={cursor}")).await;
    let older = next.body["entries"].as_array().expect("entries");
    assert!(older.iter().all(|e| e["position"].as_i64() < entries[1]["position"].as_i64()));
    let last_entry = older.last().expect("oldest entry");
    assert_eq!((last_entry["kind"].clone(), last_entry["balance_after"].clone()), (json!("deposit"), json!(500)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_nats_gone_read_models_follow_the_log_and_the_stream_is_made_whole_again() {
    let mut nats = NatsServer::start().await;
    let mut config = test_config();
    config.nats_url = nats.url();
    let app = TestApp::spawn_with(config.clone()).await;
    // A second API instance, no workers: it hears of applied batches only over NATS.
    let other = TestApp::spawn_mode(config, Mode::Api).await;
    let a = app.open_account("EUR", 0).await;
    let b = app.open_account("EUR", 0).await;
    let first = app.deposit(a, 1_000, "EUR").await.body["position"].as_i64().expect("position");
    let read = other.get(&format!("/v1/accounts/{a}?min_position={first}")).await;
    assert_eq!(
        (read.status, read.body["balance"].clone()),
        (StatusCode::OK, json!(1_000)),
        "projections run over NATS"
    );

    nats.kill().await;
    let mut last = first;
    for _ in 0..20 {
        let r = app.transfer(a, b, 10, "EUR").await;
        assert_eq!(r.status, StatusCode::CREATED, "commands succeed without NATS: {r:?}");
        last = r.body["position"].as_i64().expect("position");
    }
    assert_eq!(app.account(a).await["balance"], json!(800), "strong reads stay exact");
    // The read models follow the Postgres log, and both instances' eventual reads
    // converge: the other one's cached view is dropped although no announcement came.
    for instance in [&app, &other] {
        eventually("eventual reads converge through the log without NATS", 20, || async move {
            let r = instance.get(&format!("/v1/accounts/{a}")).await;
            r.status == StatusCode::OK && r.body["balance"] == json!(800)
        })
        .await;
        let read = instance.get(&format!("/v1/accounts/{b}?min_position={last}")).await;
        assert_eq!((read.status, read.body["balance"].clone()), (StatusCode::OK, json!(200)), "{read:?}");
    }
    eventually("the transfers projection follows the log too", 20, || async {
        app.checkpoint("transfers").await >= last
    })
    .await;

    nats.resume().await;
    eventually("the relay publishes what the stream was missing", 30, || async { app.relayed().await >= last }).await;
    // Every event, first stored in log order. A publish sent as NATS went and stored
    // when it came back, its ack lost, is sent again from the log in a run cut
    // otherwise (a run's message id is its first and last position): only events of
    // the outage can be there twice.
    let positions = app.stream_positions().await.expect("stream");
    let (mut seen, mut first_copies, mut again) = (std::collections::BTreeSet::new(), Vec::new(), Vec::new());
    for p in &positions {
        if seen.insert(*p) { first_copies.push(*p) } else { again.push(*p) }
    }
    assert_eq!(first_copies, (1..=last).collect::<Vec<_>>(), "every event, first in log order: {positions:?}");
    assert!(again.iter().all(|p| *p > first && *p <= last), "only the outage's events twice: {positions:?}");
    // Deliveries of what the log already applied are acknowledged and change nothing.
    let c = app.transfer(b, a, 5, "EUR").await.body["position"].as_i64().expect("position");
    let read = other.get(&format!("/v1/accounts/{a}?min_position={c}")).await;
    assert_eq!((read.status, read.body["balance"].clone()), (StatusCode::OK, json!(805)), "{read:?}");
    app.wait_consumers_drained().await;
    let entries: i64 =
        sqlx::query_scalar("select count(*) from account_entries").fetch_one(&app.pool).await.expect("count");
    // Two lines per money movement (the deposit's other side is the system account).
    assert_eq!(entries, 2 * (1 + 21), "every statement line exactly once");
    app.assert_read_models_match_log().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_restarting_before_its_checkpoint_applies_nothing_twice() {
    let app = TestApp::spawn().await;
    let a = app.open_account("EUR", 0).await;
    let b = app.open_account("EUR", 0).await;
    app.deposit(a, 1_000, "EUR").await;
    let last = app.transfer(a, b, 100, "EUR").await.body["position"].as_i64().expect("position");
    eventually("relay and projections caught up", 20, || async {
        app.checkpoint("accounts").await >= last && app.checkpoint("transfers").await >= last
    })
    .await;
    let entries_before: i64 =
        sqlx::query_scalar("select count(*) from account_entries").fetch_one(&app.pool).await.expect("count");
    app.wait_relayed(last, 20).await;
    // As if the relay died after publishing but before advancing its checkpoint.
    sqlx::query("update relay_checkpoints set position = 0").execute(&app.pool).await.expect("rewind");
    // The leader reads its checkpoint back within a second (it keeps it in memory
    // between), and publishes everything after it again with nothing new appended.
    eventually("the leader follows the rewind", 20, || async { app.relayed().await >= last }).await;
    let last = app.transfer(b, a, 50, "EUR").await.body["position"].as_i64().expect("position");
    eventually("projections apply the new event", 20, || async { app.checkpoint("accounts").await >= last }).await;
    eventually("the relay caught up again", 20, || async { app.relayed().await >= last }).await;
    assert_eq!(app.relayed().await, last, "the relay re-published everything and caught up");
    let entries_after: i64 =
        sqlx::query_scalar("select count(*) from account_entries").fetch_one(&app.pool).await.expect("count");
    assert_eq!(entries_after, entries_before + 2, "only the new transfer's two entries were added");
    // What was published again is stored again where the relay cut it into other runs
    // than the first time (a run's message id is its first and last position); an
    // event alone, published again inside the duplicate window, is dropped. Either way
    // the stream holds the log in order, and only the re-published part twice.
    let positions = app.stream_positions().await.expect("stream");
    let (mut seen, mut first, mut again) = (std::collections::BTreeSet::new(), Vec::new(), Vec::new());
    for p in &positions {
        if seen.insert(*p) { first.push(*p) } else { again.push(*p) }
    }
    assert_eq!(first, (1..=last).collect::<Vec<_>>(), "every event stored, first in log order: {positions:?}");
    assert!(again.iter().all(|p| *p < last), "only the re-published events twice: {positions:?}");
    app.assert_read_models_match_log().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_stream_is_filled_again_from_the_log() {
    let (app, a, b, _, _) = relayed_transfer().await;
    // The stream is lost (deleted by an operator, or its only replica's disk is gone).
    let js = async_nats::jetstream::new(app.state.nats.clone());
    assert!(js.delete_stream(app.state.names.events_stream()).await.expect("delete").success);
    let last = app.transfer(b, a, 30, "EUR").await.body["position"].as_i64().expect("position");
    // (The first event after the loss may be stored twice: alone, before the relay
    // noticed the loss, and again in a run when the whole log is published anew.)
    wait_stream_holds_the_log(&app, last, 30).await;
    eventually("projections applied the new transfer", 20, || async {
        app.checkpoint("accounts").await >= last && app.checkpoint("transfers").await >= last
    })
    .await;
    app.wait_consumers_drained().await;
    let entries: i64 =
        sqlx::query_scalar("select count(*) from account_entries").fetch_one(&app.pool).await.expect("count");
    // Two lines per money movement (the deposit's other side is the system account).
    assert_eq!(entries, 2 * 3, "the re-published events were not applied twice");
    app.assert_read_models_match_log().await;
}

/// Nothing but the relay publishes to the events stream, so a stream lost and made
/// anew is noticed by its sequences however much other work reaches NATS first: here,
/// more dead letters than the relay had stored messages, published into the new
/// stream's neighbour before the relay publishes again (when dead letters shared the
/// events stream, they carried its sequences past the relay's and the loss went
/// unnoticed for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_stream_is_noticed_though_dead_letters_reach_nats_before_the_relay() {
    let (app, a, b, stored, _) = relayed_transfer().await;
    let names = &app.state.names;
    assert!(stored >= 1, "the relay stored messages");
    let js = async_nats::jetstream::new(app.state.nats.clone());
    assert!(js.delete_stream(names.events_stream()).await.expect("delete").success);
    // A payout worker makes the streams anew and dead-letters more payouts than the
    // relay had stored messages, all before the relay's next publish.
    ledger_infrastructure::nats::ensure_dead_letter_stream(&js, names).await.expect("streams");
    let letters = stored + 3;
    for i in 0..letters {
        let ack = js.publish(names.payout_dead_letter_subject(), format!("{{\"letter\":{i}}}").into()).await;
        ack.expect("publish").await.expect("stored");
    }
    let last = app.transfer(b, a, 30, "EUR").await.body["position"].as_i64().expect("position");
    wait_stream_holds_the_log(&app, last, 30).await;
    let mut dead = js.get_stream(names.dead_letter_stream()).await.expect("the dead letters' stream");
    assert_eq!(dead.info().await.expect("info").state.messages, letters as u64, "every dead letter kept, apart");
    let mut events = js.get_stream(names.events_stream()).await.expect("the events stream");
    assert_eq!(events.info().await.expect("info").config.subjects, vec![names.events_subjects()]);
    app.wait_consumers_drained().await;
    app.assert_read_models_match_log().await;
}

/// A ledger with two accounts (`a` funded) and a transfer from `a` to `b`, once the
/// relay has published it: the app, the accounts, and the relay's last stored
/// sequence with the `Ledger-Position` of its message there.
async fn relayed_transfer() -> (TestApp, Uuid, Uuid, i64, Option<i64>) {
    let app = TestApp::spawn().await;
    let a = app.open_account("EUR", 0).await;
    let b = app.open_account("EUR", 0).await;
    app.deposit(a, 1_000, "EUR").await;
    let before = app.transfer(a, b, 100, "EUR").await.body["position"].as_i64().expect("position");
    let (stored, at) = relays_last_message(&app, before).await;
    (app, a, b, stored, at)
}

/// The relay's last stored sequence and the `Ledger-Position` of its message there,
/// once it has relayed `position`.
async fn relays_last_message(app: &TestApp, position: i64) -> (i64, Option<i64>) {
    app.wait_relayed(position, 20).await;
    sqlx::query_as("select stream_sequence, stream_position from relay_checkpoints where name = $1")
        .bind(app.state.names.prefix())
        .fetch_one(&app.pool)
        .await
        .expect("the relay's stream sequence")
}

/// Deletes the events stream and makes it anew with more messages than the relay had
/// stored (copies of the first event, as a batch whose first publishes failed while
/// another process made the stream again would leave its later messages).
async fn lose_the_stream_and_grow_a_new_one_past(app: &TestApp, stored: i64) {
    lose_the_stream_and_fill_a_new_one(app, stored + 3).await;
}

async fn lose_the_stream_and_fill_a_new_one(app: &TestApp, copies: i64) {
    let names = &app.state.names;
    let js = async_nats::jetstream::new(app.state.nats.clone());
    assert!(js.delete_stream(names.events_stream()).await.expect("delete").success);
    ledger_infrastructure::nats::ensure_events_stream(&js, names).await.expect("made anew");
    let first = app.state.store.read_all(0, 1).await.expect("log").remove(0);
    for i in 0..copies {
        let message = async_nats::jetstream::message::PublishMessage::build()
            .payload(serde_json::to_vec(&first).expect("json").into())
            .message_id(format!("copy-{i}"))
            .header("Ledger-Position", "1");
        let ack = js.send_publish(names.event_subject(&first.event_type), message).await.expect("publish");
        ack.await.expect("stored");
    }
}

/// Waits until the stream holds every event of the log through `last` (some maybe
/// twice) and the relay's checkpoint has reached it.
async fn wait_stream_holds_the_log(app: &TestApp, last: i64, seconds: u64) {
    eventually("the stream holds the whole log again", seconds, || async {
        let held = app.stream_positions().await.map(|p| p.into_iter().collect::<std::collections::BTreeSet<_>>());
        held.is_some_and(|p| p == (1..=last).collect()) && app.relayed().await >= last
    })
    .await;
}

/// A stream lost and made anew that has grown past the relay's last sequence before
/// the relay published again holds another message at that sequence: the relay's next
/// publish skips past its sequence, the message there is read, and the whole log is
/// published again. By its sequences alone the loss would go unnoticed for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_stream_grown_past_the_relays_sequence_is_noticed_by_the_message_there() {
    let (app, a, b, stored, at) = relayed_transfer().await;
    assert!(stored >= 1 && at.is_some_and(|p| p > 1), "the relay stored messages: {stored} {at:?}");
    lose_the_stream_and_grow_a_new_one_past(&app, stored).await;
    let last = app.transfer(b, a, 30, "EUR").await.body["position"].as_i64().expect("position");
    wait_stream_holds_the_log(&app, last, 40).await;
    app.wait_consumers_drained().await;
    app.assert_read_models_match_log().await;
}

/// The same loss with nothing appended after it: the relay's periodic stream check
/// (every 10 s) reads the message at its sequence and publishes the log again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_stream_grown_past_the_relays_sequence_is_noticed_while_nothing_is_appended() {
    let app = TestApp::spawn().await;
    let a = app.open_account("EUR", 0).await;
    app.deposit(a, 1_000, "EUR").await;
    let last: i64 = sqlx::query_scalar("select position from log_head").fetch_one(&app.pool).await.expect("head");
    let (stored, _) = relays_last_message(&app, last).await;
    lose_the_stream_and_grow_a_new_one_past(&app, stored).await;
    wait_stream_holds_the_log(&app, last, 40).await;
}

/// A new stream filled by others exactly up to the relay's sequence: the relay's next
/// message lands right after it, so neither the sequences nor that publish show the
/// loss. The next stream check reads again the message the check before found at the
/// relay's sequence, and finds a copy there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_stream_filled_exactly_to_the_relays_sequence_is_noticed_at_the_next_check() {
    let (app, a, b, stored, _) = relayed_transfer().await;
    // A deliberate pause past the relay's stream check period (not observable from
    // outside), with a margin for a loaded machine: a check finds the relay's message
    // where it was stored.
    tokio::time::sleep(STREAM_RECHECK + Duration::from_secs(3)).await;
    lose_the_stream_and_fill_a_new_one(&app, stored).await;
    let last = app.transfer(b, a, 30, "EUR").await.body["position"].as_i64().expect("position");
    wait_stream_holds_the_log(&app, last, 40).await;
}

/// A relay of the version before moves the stream sequence alone, leaving the message
/// position of an earlier sequence beside it: the pair is not used then, and nothing
/// is published again (a false restart would re-publish the whole log).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_position_of_another_sequence_is_not_compared() {
    let (app, a, b, stored, _) = relayed_transfer().await;
    // As the version before leaves it: the position belongs to an earlier sequence, and
    // is not the message's at the current one.
    sqlx::query("update relay_checkpoints set stream_position = 1, stream_position_at = stream_sequence - 1")
        .execute(&app.pool)
        .await
        .expect("an old relay's checkpoint");
    // A deliberate pause past two of the relay's periodic stream checks (not observable
    // from outside), with a margin for a loaded machine: a restart would have set the
    // sequence to 0 and the pair to null (re-publishing only duplicates, it stores nothing).
    tokio::time::sleep(2 * STREAM_RECHECK + Duration::from_secs(3)).await;
    let row: (i64, Option<i64>, Option<i64>) = sqlx::query_as(
        "select stream_sequence, stream_position, stream_position_at from relay_checkpoints where name = $1",
    )
    .bind(app.state.names.prefix())
    .fetch_one(&app.pool)
    .await
    .expect("checkpoint");
    assert_eq!(row, (stored, Some(1), Some(stored - 1)), "the relay did not start the log again");
    // And through one more publish.
    let last = app.transfer(b, a, 30, "EUR").await.body["position"].as_i64().expect("position");
    let (now, at) = relays_last_message(&app, last).await;
    assert!(now > stored, "the stream sequence went on from {stored} to {now}: nothing started again");
    assert_eq!(at, Some(last), "the pair is the relay's own again");
    let held = app.stream_positions().await.expect("stream");
    assert_eq!(held, (1..=last).collect::<Vec<_>>(), "every event once, in order");
    // And a sequence moved alone, as that version moves it, drops the pair at once.
    let mut tx = app.pool.begin().await.expect("begin");
    let pair: (Option<i64>, Option<i64>) = sqlx::query_as(
        "update relay_checkpoints set stream_sequence = stream_sequence + 1
         returning stream_position, stream_position_at",
    )
    .fetch_one(&mut *tx)
    .await
    .expect("an old relay's update");
    assert_eq!(pair, (None, None));
    tx.rollback().await.expect("rollback");
}

/// A stream made by a version that kept dead letters in the events stream gives their
/// subjects up to a stream of their own; what it already holds stays.
#[tokio::test]
async fn an_events_stream_that_held_dead_letters_hands_them_to_their_own_stream() {
    let nats = async_nats::connect("127.0.0.1:4222").await.expect("nats");
    let js = async_nats::jetstream::new(nats);
    let names = ledger_infrastructure::nats::Names::new(&format!("ledger_test_{}", uuid::Uuid::new_v4().simple()))
        .with_replicas(Some(1));
    let old = async_nats::jetstream::stream::Config {
        name: names.events_stream(),
        subjects: vec![names.events_subjects(), names.dead_letter_subjects()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    };
    js.create_stream(old).await.expect("a stream as the version before made it");
    js.publish(names.payout_dead_letter_subject(), "{}".into()).await.expect("publish").await.expect("stored");
    ledger_infrastructure::nats::ensure_dead_letter_stream(&js, &names).await.expect("streams");
    js.publish(names.payout_dead_letter_subject(), "{}".into()).await.expect("publish").await.expect("stored");
    let mut events = js.get_stream(names.events_stream()).await.expect("events stream");
    let info = events.info().await.expect("info").clone();
    assert_eq!(info.config.subjects, vec![names.events_subjects()]);
    assert_eq!(info.state.messages, 1, "the old dead letter stays where it was");
    let mut dead = js.get_stream(names.dead_letter_stream()).await.expect("dead letters' stream");
    assert_eq!(dead.info().await.expect("info").state.messages, 1, "the new one is kept apart");
    // Ensured again (every worker does at start): nothing changes.
    ledger_infrastructure::nats::ensure_dead_letter_stream(&js, &names).await.expect("streams again");
    assert_eq!(events.info().await.expect("info").config.subjects, vec![names.events_subjects()]);
    for stream in [names.events_stream(), names.dead_letter_stream()] {
        js.delete_stream(stream).await.expect("clean up");
    }
}

/// What the relay's own process commits is handed to it in memory; what another
/// process commits in between is read from the log. Either way JetStream gets every
/// event once, in log order, byte for byte the JSON of the log's row, alone or in a
/// run of events published as one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handed_and_read_back_events_reach_the_stream_once_in_order_as_the_log_has_them() {
    let config = test_config();
    let app = TestApp::spawn_with(config.clone()).await;
    // A second writer on the same log, without a relay of its own.
    let other = TestApp::spawn_mode(config, Mode::Api).await;
    let a = app.open_account("EUR", 0).await;
    let b = other.open_account("EUR", 0).await;
    app.deposit(a, 100_000, "EUR").await;
    other.deposit(b, 100_000, "EUR").await;
    let transfers = (0..60).map(|i| {
        let (app, other) = (&app, &other);
        async move {
            let reply = if i % 2 == 0 {
                app.transfer(a, b, 1 + i, "EUR").await
            } else {
                other.transfer(b, a, 1 + i, "EUR").await
            };
            assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        }
    });
    join_all(transfers).await;
    let last: i64 = sqlx::query_scalar("select position from log_head").fetch_one(&app.pool).await.expect("head");
    app.wait_relayed(last, 30).await;
    let js = async_nats::jetstream::new(app.state.nats.clone());
    let stream = js.get_stream(app.state.names.events_stream()).await.expect("stream");
    let log = app.state.store.read_all(0, last).await.expect("log");
    assert_eq!(log.len() as i64, last);
    // A message is one event under its type's subject, or a run of events (a JSON
    // array of their rows) under the batch subject, its `Ledger-Position` the last.
    let batch_subject = app.state.names.events_batch_subject();
    let (mut sequence, mut at, mut runs) = (1u64, 0usize, 0usize);
    while at < log.len() {
        let message = stream.get_raw_message(sequence).await.expect("message");
        let row = |e: &ledger_infrastructure::RecordedEvent| serde_json::to_vec(e).expect("json");
        let n = if message.subject.as_str() == batch_subject {
            runs += 1;
            let run: Vec<serde_json::Value> = serde_json::from_slice(&message.payload).expect("a run");
            assert!(run.len() > 1, "message {sequence}: a run holds several events");
            run.len()
        } else {
            1
        };
        let expected = &log[at..(at + n).min(log.len())];
        assert_eq!(expected.len(), n, "message {sequence} holds no event beyond the log");
        let bytes = if n == 1 && message.subject.as_str() != batch_subject {
            row(&expected[0])
        } else {
            [b"[".to_vec(), expected.iter().map(row).collect::<Vec<_>>().join(&b","[..]), b"]".to_vec()].concat()
        };
        assert_eq!(
            message.payload.as_ref(),
            bytes.as_slice(),
            "message {sequence}: the log's next events, byte for byte their rows"
        );
        let position = message.headers.get("Ledger-Position").map(|v| v.as_str().to_owned());
        assert_eq!(position, expected.last().map(|e| e.position.to_string()), "message {sequence}'s position");
        at += n;
        sequence += 1;
    }
    assert!(runs > 0, "60 concurrent transfers were relayed one message each: no run was grouped");
    assert!(stream.get_raw_message(sequence).await.is_err(), "nothing published twice or beyond the log");
    app.assert_read_models_match_log().await;
}

/// A relay leader that lingers after a publish smaller than a batch gathers what the
/// writer commits meanwhile: transfers sent one after another, each its own append,
/// reach JetStream in fewer messages than appends, every event once and in log order,
/// and the read models equal the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lingering_relay_sends_several_appends_as_one_message_and_loses_none() {
    let mut config = test_config();
    config.relay_linger = Duration::from_millis(400);
    let app = TestApp::spawn_with(config).await;
    let a = app.open_account("EUR", 0).await;
    let b = app.open_account("EUR", 0).await;
    app.deposit(a, 100_000, "EUR").await;
    let before: i64 = sqlx::query_scalar("select position from log_head").fetch_one(&app.pool).await.expect("head");
    app.wait_relayed(before, 30).await;
    let messages_before = app.stream_message_count().await;
    // One at a time: each transfer is answered, so appended, before the next is sent.
    let transfers = 12;
    for i in 0..transfers {
        let reply = app.transfer(a, b, 1 + i, "EUR").await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
    let last: i64 = sqlx::query_scalar("select position from log_head").fetch_one(&app.pool).await.expect("head");
    assert_eq!(last - before, transfers, "one event per transfer");
    wait_stream_holds_the_log(&app, last, 30).await;
    let positions = app.stream_positions().await.expect("the stream");
    assert_eq!(positions, (1..=last).collect::<Vec<_>>(), "every event once, in log order");
    let messages = app.stream_message_count().await - messages_before;
    assert!(
        messages < transfers as u64,
        "{transfers} appends, one after another, took {messages} messages: the relay did not gather them"
    );
    app.assert_read_models_match_log().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_relay_leads_and_another_takes_over() {
    use ledger_infrastructure::relay::{Relay, RelayLimits};
    let api = TestApp::spawn_mode(test_config(), Mode::Api).await;
    let config = api.state.config.clone();
    let start = |shutdown: tokio_util::sync::CancellationToken| {
        let relay = Relay::new(
            config.database_url.clone(),
            async_nats::jetstream::new(api.state.nats.clone()),
            api.state.names.clone(),
            api.state.relay_breaker.clone(),
            RelayLimits::from_config(&ledger_infrastructure::Config::default()),
        );
        let leader = relay.leader.clone();
        tokio::spawn(relay.run(shutdown));
        leader
    };
    let (stop_a, stop_b) = (tokio_util::sync::CancellationToken::new(), tokio_util::sync::CancellationToken::new());
    let (lead_a, lead_b) = (start(stop_a.clone()), start(stop_b.clone()));
    eventually("one relay leads", 10, || async { lead_a.load(Ordering::SeqCst) || lead_b.load(Ordering::SeqCst) })
        .await;
    assert!(!(lead_a.load(Ordering::SeqCst) && lead_b.load(Ordering::SeqCst)), "never two leaders");
    let (stop_leader, follower) = if lead_a.load(Ordering::SeqCst) { (stop_a, lead_b) } else { (stop_b, lead_a) };
    let a = api.open_account("EUR", 0).await;
    eventually("the leader relays", 10, || async { api.relayed().await >= 2 }).await;
    stop_leader.cancel();
    eventually("the follower takes over", 10, || async { follower.load(Ordering::SeqCst) }).await;
    let p = api.deposit(a, 10, "EUR").await.body["position"].as_i64().expect("position");
    eventually("the new leader relays", 10, || async { api.relayed().await >= p }).await;
}

/// A fetch is bounded in bytes, and a message may be a run of events larger than the
/// bound: a fetch that the server ends at the bound after some messages applies those,
/// and one whose first message is larger than the bound takes it alone. The
/// projections reach the head through JetStream alone (following the log is off).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deliveries_cut_by_a_fetchs_byte_bound_reach_the_read_models() {
    use ledger_infrastructure::relay::{Relay, RelayLimits};
    use ledger_projections::worker::{ProjectionWorker, WorkerLimits};
    const BOUND: usize = 16 * 1024;
    let api = TestApp::spawn_mode(test_config(), Mode::Api).await;
    // Small messages first (an opening goes alone, and breaks the run before it), then
    // transfers sent at once, relayed from the log as one large run.
    let mut accounts = Vec::new();
    for _ in 0..30 {
        let a = api.open_account("EUR", 0).await;
        api.deposit(a, 1_000_000, "EUR").await;
        accounts.push(a);
    }
    let replies =
        join_all((0..150).map(|i| api.transfer(accounts[i % 30], accounts[(i + 7) % 30], 1 + i as i64, "EUR"))).await;
    assert!(replies.iter().all(|r| r.status == StatusCode::CREATED), "transfers made");
    let head: i64 = sqlx::query_scalar("select position from log_head").fetch_one(&api.pool).await.expect("head");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let js = async_nats::jetstream::new(api.state.nats.clone());
    let relay = Relay::new(
        api.state.config.database_url.clone(),
        js.clone(),
        api.state.names.clone(),
        api.state.relay_breaker.clone(),
        RelayLimits::from_config(&ledger_infrastructure::Config::default()),
    );
    tokio::spawn(relay.run(shutdown.clone()));
    api.wait_relayed(head, 20).await;
    // The stream is as the test needs it: more bytes than one fetch, and a message
    // larger than the bound.
    let mut stream = js.get_stream(api.state.names.events_stream()).await.expect("stream");
    let info = stream.info().await.expect("info").state.clone();
    let mut sizes = Vec::new();
    for sequence in info.first_sequence..=info.last_sequence {
        sizes.push(stream.get_raw_message(sequence).await.expect("message").payload.len());
    }
    assert!(sizes.iter().sum::<usize>() > 2 * BOUND, "more than one fetch: {sizes:?}");
    assert!(sizes.iter().any(|s| *s > BOUND), "a message larger than a fetch: {sizes:?}");
    assert!(sizes.iter().filter(|s| **s < BOUND / 8).count() > 8, "several messages to a fetch: {sizes:?}");
    let worker = ProjectionWorker {
        pool: api.pool.clone(),
        js,
        names: api.state.names.clone(),
        projections: ledger_projections::Projection::ALL.to_vec(),
        limits: WorkerLimits {
            fetch_bytes_max: Some(BOUND),
            log_stall_after: Duration::from_secs(3_600),
            ..WorkerLimits::default()
        },
        on_applied: Arc::new(|_, _| {}),
        memo: Default::default(),
    };
    tokio::spawn(worker.run(shutdown.clone()));
    // Well inside the consumer's 30 s ack wait: nothing delivered is left unacked to
    // come again later.
    eventually("the projections reach the head through JetStream", 20, || async {
        api.checkpoint("accounts").await >= head && api.checkpoint("transfers").await >= head
    })
    .await;
    shutdown.cancel();
    api.assert_read_models_match_log().await;
}

#[tokio::test]
async fn hot_queries_use_their_indexes() {
    let app = TestApp::spawn().await;
    app.open_account("EUR", 0).await;
    let mut conn = app.pool.acquire().await.expect("connection");
    sqlx::query("set enable_seqscan = off").execute(&mut *conn).await.expect("set");
    let id = Uuid::now_v7();
    let cases = [
        ("select * from accounts_view where owner = 'x'", "accounts_view_owner"),
        ("select * from accounts_view where id = '{id}'", "accounts_view_pkey"),
        (
            "select * from account_entries where account_id = '{id}' and position < 10 order by position desc limit 50",
            "account_entries_pkey",
        ),
        (
            "select * from stream_entries where stream_id = '{id}' and version > 3 order by version",
            "stream_entries_pkey",
        ),
        ("select * from events where position > 5 order by position limit 100", "events_pkey"),
        ("select * from idempotency_keys where principal = 'a' and key = 'b'", "idempotency_keys_pkey"),
    ];
    for (sql, index) in cases {
        let sql = format!("explain {}", sql.replace("{id}", &id.to_string()));
        let plan: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone())).fetch_all(&mut *conn).await.expect("explain");
        let plan = plan.join("\n");
        assert!(plan.contains(index), "{sql} does not use {index}:\n{plan}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_cache_hits_and_is_invalidated_by_projections() {
    let app = TestApp::spawn().await;
    let a = app.open_account("EUR", 0).await;
    let p = app.deposit(a, 100, "EUR").await.body["position"].as_i64().expect("position");
    // The first read misses; the projection's own invalidation may race one more miss.
    for _ in 0..10 {
        let r = app.get(&format!("/v1/accounts/{a}?min_position={p}")).await;
        assert_eq!(r.body["balance"], json!(100));
    }
    let (hits, _, _) = app.state.cache.stats();
    assert!(hits >= 8, "repeated reads are served from the cache ({:?})", app.state.cache.stats());
    let p = app.deposit(a, 1, "EUR").await.body["position"].as_i64().expect("position");
    eventually("projection applied the deposit", 20, || async { app.checkpoint("accounts").await >= p }).await;
    // Invalidation ran before readers were woken: a plain eventual read sees it now.
    eventually("cache invalidated", 5, || async {
        app.get(&format!("/v1/accounts/{a}")).await.body["balance"] == json!(101)
    })
    .await;
    let admin = app.get("/v1/admin/projections").await;
    assert!(admin.body["account_cache"]["hits"].as_u64().expect("hits") >= 4);
    let names: Vec<&str> =
        admin.body["projections"].as_array().expect("list").iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["accounts", "transfers"]);
    // Cache invalidations also travel over NATS for other API instances.
    let mut sub = app.state.nats.subscribe(app.state.names.cache_invalidation_subject()).await.expect("subscribe");
    app.state.nats.flush().await.expect("flush");
    app.deposit(a, 1, "EUR").await;
    let announced = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(message) = sub.next().await {
            let applied: ledger_api::read::coherence::Applied =
                serde_json::from_slice(&message.payload).expect("announcement");
            if applied.projection == "accounts" {
                return applied;
            }
        }
        panic!("subscription ended");
    })
    .await
    .expect("announced in time");
    assert!(announced.accounts.contains(&a));
}

/// Projection commits do not wait for their fsync (`apply_delivered`): a crash of
/// Postgres may lose the last batches, each whole with its checkpoint. What comes next
/// is then delivered above a gap, and the gap is read from the log: nothing is skipped.
#[tokio::test]
async fn a_delivery_above_a_gap_applies_the_gap_from_the_log_first() {
    use ledger_projections::Projection;
    // The API alone: no worker applies anything behind the test's back.
    let app = TestApp::spawn_mode(test_config(), Mode::Api).await;
    let a = app.open_account("EUR", 0).await;
    for amount in [10, 20, 30] {
        assert_eq!(app.deposit(a, amount, "EUR").await.status, StatusCode::CREATED);
    }
    let head = app.state.store.head().await.expect("head");
    // As if the batches of the last two deposits were lost: the projection stands two
    // events behind the head, and only the last event is delivered.
    let checkpoint = ledger_projections::apply::catch_up(&app.pool, Projection::Accounts, Some(head - 2), 100)
        .await
        .expect("catch up");
    assert_eq!(checkpoint, head - 2);
    let last = app.state.store.read_all(head - 1, 1).await.expect("the last event");
    assert_eq!(last.iter().map(|e| e.position).collect::<Vec<_>>(), vec![head]);
    let applied =
        ledger_projections::apply::apply_delivered(&app.pool, Projection::Accounts, &last).await.expect("applied");
    assert_eq!((applied.position, applied.applied), (head, 2), "the gap and the delivered event");
    let (balance, position): (i64, i64) =
        sqlx::query_as("select balance::bigint, position from accounts_view where id = $1")
            .bind(a)
            .fetch_one(&app.pool)
            .await
            .expect("the view");
    assert_eq!((balance, position), (60, head));
    let entries: i64 = sqlx::query_scalar("select count(*) from account_entries where account_id = $1")
        .bind(a)
        .fetch_one(&app.pool)
        .await
        .expect("statement");
    assert_eq!(entries, 3, "one statement line per deposit, none twice");
}

/// Applies the log from `after` to the head through `memo`, as one delivery holding the
/// last `again` events before `after` too (a redelivery), shuffled.
async fn deliver_through(
    app: &TestApp,
    memo: &ledger_projections::accounts::AccountsMemo,
    after: i64,
    again: i64,
    rng: &mut rand::rngs::StdRng,
) -> Result<Vec<(ledger_projections::Projection, ledger_projections::apply::Applied)>, ledger_projections::ApplyError> {
    use rand::seq::SliceRandom;
    let from = (after - again).max(0);
    let head = app.state.store.head().await.expect("head");
    let mut events = app.state.store.read_all(from, head - from).await.expect("the log");
    events.shuffle(rng);
    ledger_projections::apply::apply_delivered_all(&app.pool, memo, &ledger_projections::Projection::ALL, &events).await
}

/// Rebuilds the accounts projection, as `POST /v1/admin/projections/accounts/rebuild`
/// does, and waits for its switch.
async fn rebuild_accounts(app: &TestApp) -> Result<i64, ledger_projections::rebuild::RebuildError> {
    ledger_projections::rebuild::RebuildLock::acquire(
        &app.state.config.database_url,
        ledger_projections::Projection::Accounts,
    )
    .await?
    .rebuild(&app.pool, |_, _| {})
    .await
}

/// The API alone (only the test applies events), accounts `a` and `b`, `a` funded with
/// 100, and a generator seeded with `seed`.
async fn two_accounts(seed: u64) -> (TestApp, Uuid, Uuid, rand::rngs::StdRng) {
    use rand::SeedableRng;
    let app = TestApp::spawn_mode(test_config(), Mode::Api).await;
    let (a, b) = (app.open_account("EUR", 0).await, app.open_account("EUR", 0).await);
    assert_eq!(app.deposit(a, 100, "EUR").await.status, StatusCode::CREATED);
    (app, a, b, rand::rngs::StdRng::seed_from_u64(seed))
}

/// The projector's memo of accounts (`accounts::AccountsMemo`) against the log's fold:
/// random deposits, transfers and holds, each batch applied through one of two memos
/// (two processes' projectors), a memo-less catch-up or a rebuild of the accounts view,
/// in a random order, with earlier events delivered again beside the new ones. After
/// every step the view is the fold of the log, and no step fails: a memo whose view
/// someone else moved is not used. (That a memo is used is shown by the next test: a
/// batch read from the view would not fail there.)
#[tokio::test]
async fn account_memos_of_two_projectors_and_rebuilds_keep_the_view_the_logs_fold() {
    use ledger_projections::Projection;
    use ledger_projections::accounts::AccountsMemo;
    use rand::{Rng, SeedableRng};
    let seed = std::env::var("LEDGER_PROPERTY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("LEDGER_PROPERTY_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // The API alone: only the test applies events.
    let app = TestApp::spawn_mode(test_config(), Mode::Api).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let id = app.open_account("EUR", 0).await;
        assert_eq!(app.deposit(id, 100_000, "EUR").await.status, StatusCode::CREATED);
        ids.push(id);
    }
    let memos = [AccountsMemo::default(), AccountsMemo::default()];
    let mut holds: Vec<Uuid> = Vec::new();
    let mut ways = [0usize; 4];
    for step in 0..24 {
        for _ in 0..rng.random_range(1..=4) {
            let (x, y) = (rng.random_range(0..5), rng.random_range(1..5));
            let (from, to) = (ids[x], ids[(x + y) % 5]);
            let amount = rng.random_range(1..500);
            let r = match rng.random_range(0..8) {
                0 => app.deposit(from, amount, "EUR").await,
                1 | 2 => {
                    let body = json!({ "account_id": from, "to": to, "amount": amount, "currency": "EUR" });
                    let r = app.post("/v1/holds", &Uuid::new_v4().to_string(), &body).await;
                    holds.push(r.id());
                    r
                }
                3 if !holds.is_empty() => {
                    let hold = holds.swap_remove(rng.random_range(0..holds.len()));
                    let action = if rng.random_bool(0.5) { "void" } else { "capture" };
                    app.post(&format!("/v1/holds/{hold}/{action}"), &Uuid::new_v4().to_string(), &json!({})).await
                }
                _ => app.transfer(from, to, amount, "EUR").await,
            };
            assert!(r.status.is_success(), "step {step}: {} {}", r.status, r.body);
        }
        let at = app.checkpoint("accounts").await;
        let again = rng.random_range(0..4);
        let way = rng.random_range(0..6);
        ways[way.min(3)] += 1;
        match way {
            0..=3 => {
                let memo = &memos[way % 2];
                deliver_through(&app, memo, at, again, &mut rng)
                    .await
                    .unwrap_or_else(|e| panic!("step {step}: a batch through memo {}: {e}", way % 2));
            }
            4 => {
                ledger_projections::apply::catch_up_applied(&app.pool, &Projection::ALL, None, 7)
                    .await
                    .unwrap_or_else(|e| panic!("step {step}: catch-up: {e}"));
            }
            _ => {
                rebuild_accounts(&app).await.unwrap_or_else(|e| panic!("step {step}: rebuild: {e}"));
            }
        }
        app.assert_read_models_match_log().await;
    }
    eprintln!("batches through memo 0 or 1, catch-ups and rebuilds: {ways:?}");
}

/// A memo is used only where its own last commit left the view, and even then each
/// account only from the version it remembers: an account moved by someone else under
/// an unchanged checkpoint fails the batch whole (nothing written, the checkpoint where
/// it was), and the next batch through the same memo reads the view again.
#[tokio::test]
async fn an_account_moved_under_the_memo_fails_the_batch_whole() {
    use ledger_projections::Projection;
    use ledger_projections::accounts::AccountsMemo;
    let (app, a, b, mut rng) = two_accounts(7).await;
    let memo = AccountsMemo::default();
    deliver_through(&app, &memo, 0, 0, &mut rng).await.expect("the first batch");
    let at = app.checkpoint("accounts").await;
    // Someone else's write, under the same checkpoint.
    let moved = "update accounts_view set version = version + 1, balance = balance + 5 where id = $1";
    sqlx::query(moved).bind(a).execute(&app.pool).await.expect("moved by hand");
    assert_eq!(app.transfer(a, b, 10, "EUR").await.status, StatusCode::CREATED);
    let failed = deliver_through(&app, &memo, at, 0, &mut rng).await;
    assert!(
        matches!(failed, Err(ledger_projections::ApplyError::Moved { expected: (0, 2), found: (0, 1) })),
        "the batch fails: {failed:?}"
    );
    assert_eq!(app.checkpoint("accounts").await, at, "nothing of the batch committed");
    let lines: i64 = sqlx::query_scalar("select count(*) from account_entries where position > $1")
        .bind(at)
        .fetch_one(&app.pool)
        .await
        .expect("statement");
    assert_eq!(lines, 0, "no statement line of the failed batch");
    sqlx::query("update accounts_view set version = version - 1, balance = balance - 5 where id = $1")
        .bind(a)
        .execute(&app.pool)
        .await
        .expect("put back");
    let applied = deliver_through(&app, &memo, at, 0, &mut rng).await.expect("applied from the view");
    assert!(applied.iter().any(|(p, x)| *p == Projection::Accounts && x.position > at));
    app.assert_read_models_match_log().await;
    // An account that should be in the view and is not: not inserted from the memo
    // (which keeps no owner), the batch fails whole; a rebuild repairs the view.
    let at = app.checkpoint("accounts").await;
    sqlx::query("delete from accounts_view where id = $1").bind(a).execute(&app.pool).await.expect("deleted");
    assert_eq!(app.transfer(b, a, 1, "EUR").await.status, StatusCode::CREATED);
    let failed = deliver_through(&app, &memo, at, 0, &mut rng).await;
    assert!(
        matches!(failed, Err(ledger_projections::ApplyError::Moved { expected: (0, 2), found: (1, 1) })),
        "the batch fails: {failed:?}"
    );
    let rows: i64 = sqlx::query_scalar("select count(*) from accounts_view where id = $1")
        .bind(a)
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!((rows, app.checkpoint("accounts").await), (0, at), "nothing of the batch committed");
    rebuild_accounts(&app).await.expect("rebuilt");
    app.assert_read_models_match_log().await;
}

/// A rebuild repairs a view that drifted from the log, and stays repaired: the memo of
/// a projector that wrote the drifted rows is not used after the rebuild's switch, even
/// when the switch leaves the checkpoint at the very position the memo was taken at
/// (the switch writes the row, another `xmin`; a memo keyed by position alone would write the
/// drifted balance back with the next event).
#[tokio::test]
async fn a_rebuild_that_ends_where_the_memo_was_is_not_undone_by_it() {
    use ledger_projections::accounts::AccountsMemo;
    let (app, a, b, mut rng) = two_accounts(11).await;
    deliver_through(&app, &AccountsMemo::default(), 0, 0, &mut rng).await.expect("a batch");
    // Drifted: a balance the log does not have, at the version it does.
    sqlx::query("update accounts_view set balance = balance + 899 where id = $1")
        .bind(a)
        .execute(&app.pool)
        .await
        .expect("drifted");
    // A projector that reads `a` from the drifted view and so remembers it drifted.
    let memo = AccountsMemo::default();
    assert_eq!(app.deposit(a, 5, "EUR").await.status, StatusCode::CREATED);
    let at = app.checkpoint("accounts").await;
    deliver_through(&app, &memo, at, 0, &mut rng).await.expect("a batch");
    let head = app.state.store.head().await.expect("head");
    rebuild_accounts(&app).await.expect("rebuilt");
    assert_eq!(app.checkpoint("accounts").await, head, "the switch ends where the memo was taken");
    assert_eq!(app.transfer(a, b, 10, "EUR").await.status, StatusCode::CREATED);
    deliver_through(&app, &memo, head, 0, &mut rng).await.expect("a batch after the rebuild");
    app.assert_read_models_match_log().await;
}

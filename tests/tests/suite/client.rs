//! The Rust client (`ledger-client`) against the real service: a typed method per
//! route, idempotency keys (generated, given, re-sent on retry), problem answers as
//! typed errors, read-your-writes, and retries with the same key against a peer that
//! fails first.

use ledger_client::wire::{self, Amount, Currency, ErrorCode};
use ledger_client::{Client, Read, RetryPolicy};
use ledger_tests::{ADMIN_TOKEN, TestApp, typed_client};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

fn eur() -> Currency {
    Currency::parse("EUR").expect("a currency code")
}

fn amount(n: i64) -> Amount {
    Amount::new(n).expect("an amount")
}

fn open(owner: &str) -> wire::OpenAccountRequest {
    wire::OpenAccountRequest {
        currency: eur(),
        owner: Some(owner.try_into().expect("an owner")),
        overdraft_limit: None,
        id: None,
        metadata: None,
        subject: None,
    }
}

#[tokio::test]
async fn every_route_through_the_typed_client() {
    let app = TestApp::spawn().await;
    let ledger = &app.ledger;
    let owner = format!("client-{}@example.com", Uuid::new_v4().simple());
    let alice = ledger.open_account(&open(&owner), None).await.expect("opens");
    let bob = ledger.open_account(&open(&owner), None).await.expect("opens");
    assert_eq!((alice.http_status, alice.currency.as_str(), alice.balance), (201, "EUR", 0));

    let metadata = wire::Metadata::try_from(serde_json::json!({ "order": 42 })).expect("metadata");
    let deposit = wire::DepositRequest {
        effective_at: None,
        account_id: alice.id,
        amount: amount(2500),
        currency: eur(),
        reference: Some("top-up".try_into().expect("a reference")),
        metadata: Some(metadata.clone()),
    };
    let first = ledger.deposit(&deposit, Some("client-deposit")).await.expect("deposits");
    let again = ledger.deposit(&deposit, Some("client-deposit")).await.expect("replays");
    assert!(!first.replayed && again.replayed);
    assert_eq!(first.body, again.body, "a replay is the first answer");
    assert_eq!(first.metadata, Some(metadata.0));

    let transfer = wire::TransferRequest {
        effective_at: None,
        from: alice.id,
        to: bob.id,
        amount: amount(1000),
        currency: eur(),
        reference: None,
        metadata: None,
    };
    let t = ledger.transfer(&transfer, None).await.expect("transfers");
    assert_eq!((t.http_status, t.from, t.to, t.amount), (201, alice.id, bob.id, 1000));
    assert_eq!(ledger.get_transfer(t.id, Read::Strong).await.expect("reads").id, t.id);
    let reason = wire::ReverseRequest { reason: "sent by mistake".try_into().expect("a reason") };
    let back = ledger.reverse(t.id, &reason, None).await.expect("reverses");
    assert_eq!(back.reverses, Some(t.id));

    // A broken rule is a typed problem, with its stable code.
    let too_much = wire::TransferRequest { effective_at: None, amount: amount(1_000_000), ..transfer.clone() };
    let refused = ledger.transfer(&too_much, None).await.expect_err("insufficient funds");
    assert_eq!((refused.status(), refused.code()), (Some(422), Some(ErrorCode::InsufficientFunds)));
    let unknown = wire::TransferRequest { effective_at: None, to: Uuid::now_v7(), ..transfer.clone() };
    let missing = ledger.transfer(&unknown, None).await.expect_err("no such account");
    assert_eq!(missing.code(), Some(ErrorCode::AccountNotFound));
    // A key used for another request is refused, not retried.
    let other = wire::DepositRequest { effective_at: None, amount: amount(1), ..deposit.clone() };
    let reused = ledger.deposit(&other, Some("client-deposit")).await.expect_err("key reused");
    assert_eq!(reused.code(), Some(ErrorCode::IdempotencyKeyReused));

    let strong = ledger.account_read(alice.id, Read::Strong).await.expect("reads");
    assert_eq!(strong.balance, 2500);
    let at_least = ledger.account_read(alice.id, Read::AtLeast(back.position.expect("a position"))).await;
    assert_eq!(at_least.expect("the read model catches up").balance, 2500);
    let owned = ledger.accounts_by_owner(&owner).await.expect("lists");
    let mut ids: Vec<Uuid> = owned.accounts.iter().map(|a| a.id).collect();
    ids.sort();
    let mut expected = vec![alice.id, bob.id];
    expected.sort();
    assert_eq!(ids, expected);
    let page = ledger.transactions(alice.id, &wire::TransactionsQuery { limit: Some(2), cursor: None }).await;
    let page = page.expect("a statement page");
    assert_eq!(page.entries.len(), 2);
    let rest = wire::TransactionsQuery { limit: Some(10), cursor: page.next_cursor.clone() };
    assert_eq!(ledger.transactions(alice.id, &rest).await.expect("the next page").entries.len(), 1);
    let stream = ledger.account_events(alice.id, &wire::StreamEventsQuery::default()).await.expect("its stream");
    assert_eq!(stream.events.first().map(|e| e.event_type.as_str()), Some("AccountOpened"));
    let then = wire::BalanceQuery { effective_at: None, as_of: None, at_position: Some(first.position) };
    assert_eq!(ledger.balance_at(alice.id, &then).await.expect("a past balance").balance, 2500);

    let log = ledger.events(&wire::EventsQuery { after: Some(0), limit: Some(1000) }).await.expect("the log");
    assert_eq!(log.next_after, log.events.last().map_or(0, |e| e.position));
    assert!(ledger.system_accounts().await.expect("system accounts").accounts.iter().any(|a| a.currency == "EUR"));
    let audit = wire::AuditQuery { stream_id: Some(alice.id), ..Default::default() };
    assert!(!ledger.audit(&audit).await.expect("the audit trail").events.is_empty());
    assert!(ledger.verify_chain().await.expect("verifies").ok);

    let closing = ledger.close_account(alice.id, None).await.expect_err("alice holds money");
    assert_eq!(closing.code(), Some(ErrorCode::AccountNotEmpty));
    let empty = ledger.open_account(&open(&owner), None).await.expect("opens");
    assert_eq!(ledger.close_account(empty.id, None).await.expect("closes").status, wire::AccountStatus::Closed);

    let projections = ledger.projections().await.expect("projections");
    assert_eq!(projections.projections.len(), 2);
    assert_eq!(ledger.breakers().await.expect("breakers").breakers.len(), 2);
    assert!(ledger.dead_letters().await.expect("dead letters").dead_letters.is_empty());
    let name = wire::TokenName::try_from(format!("client-{}", Uuid::new_v4().simple())).expect("a token name");
    let token = ledger.create_token(&wire::TokenRequest { name, role: wire::Role::Client, ledgers: None }, None).await;
    let token = token.expect("a token").token.clone().expect("the secret, once");
    let client_role = typed_client(&app.base, &token);
    let forbidden = client_role.projections().await.expect_err("clients may not operate");
    assert_eq!(forbidden.code(), Some(ErrorCode::Forbidden));
    assert_eq!(client_role.account(alice.id).await.expect("clients read").id, alice.id);
    let rebuild = ledger.rebuild(wire::ProjectionName::Transfers, None).await.expect("rebuild starts");
    assert_eq!(rebuild.http_status, 202);
    assert_eq!(ledger.live().await.expect("live").status, "live");
    assert_eq!(ledger.ready().await.expect("ready").status, wire::ReadyStatus::Ready);
    app.assert_read_models_match_log().await;
}

#[tokio::test]
async fn read_your_writes_sees_each_write_of_this_client() {
    let app = TestApp::spawn().await;
    let ledger = Client::builder(&app.base, ADMIN_TOKEN).read_your_writes(true).build().expect("a client");
    let a = ledger.open_account(&open("ryw@example.com"), None).await.expect("opens");
    for n in 1..=20_i64 {
        let deposit = wire::DepositRequest {
            effective_at: None,
            account_id: a.id,
            amount: amount(n),
            currency: eur(),
            reference: None,
            metadata: None,
        };
        let d = ledger.deposit(&deposit, None).await.expect("deposits");
        assert_eq!(ledger.last_position(), d.position);
        // Eventual, yet never older than the client's own last write.
        let read = ledger.account(a.id).await.expect("reads");
        assert_eq!(read.balance, i128::from(n * (n + 1) / 2), "after deposit {n}");
        assert!(read.as_of_position.expect("X-Ledger-Position") >= d.position);
    }
}

/// A peer that answers the first requests with canned failures and records the
/// `Idempotency-Key` of every request it got.
async fn flaky_peer(answers: Vec<String>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let base = format!("http://{}", listener.local_addr().expect("an address"));
    let keys = Arc::new(Mutex::new(Vec::new()));
    let seen = keys.clone();
    tokio::spawn(async move {
        for answer in answers {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then the Content-Length body (small: one command).
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
            let key = text.lines().find_map(|l| l.strip_prefix("idempotency-key: ")).unwrap_or("").trim().to_owned();
            seen.lock().expect("keys").push(key);
            let _ = socket.write_all(answer.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    (base, keys)
}

fn http(status: &str, content_type: &str, extra: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
        body.len()
    )
}

fn problem(status: u16, code: &str) -> String {
    format!(r#"{{"type":"urn:ledger:problem:{code}","title":"x","status":{status},"detail":"x","code":"{code}"}}"#)
}

#[tokio::test]
async fn retries_resend_the_same_key_and_stop_at_business_answers() {
    let account = Uuid::now_v7();
    let deposit = serde_json::json!({ "id": Uuid::now_v7(), "account_id": account, "amount": 5, "currency": "EUR",
                                      "reference": null, "metadata": null, "position": 7,
                                      "effective_at": "2026-01-02T03:04:05Z", "recorded_at": "2026-01-02T03:04:05Z" });
    let answers = vec![
        http("503 Service Unavailable", "application/problem+json", "retry-after: 0\r\n", &problem(503, "unavailable")),
        http("409 Conflict", "application/problem+json", "", &problem(409, "idempotency_key_in_flight")),
        http("429 Too Many Requests", "application/problem+json", "", &problem(429, "rate_limited")),
        http("201 Created", "application/json", "", &deposit.to_string()),
    ];
    let (base, keys) = flaky_peer(answers).await;
    let policy =
        RetryPolicy { attempts_max: 5, delay_base: Duration::from_millis(5), delay_max: Duration::from_millis(20) };
    let ledger = Client::builder(&base, "t").retry(policy).build().expect("a client");
    let request = wire::DepositRequest {
        effective_at: None,
        account_id: account,
        amount: amount(5),
        currency: eur(),
        reference: None,
        metadata: None,
    };
    let reply = ledger.deposit(&request, None).await.expect("succeeds on the fourth attempt");
    assert_eq!((reply.attempts, reply.position, ledger.last_position()), (4, 7, 7));
    let keys = keys.lock().expect("keys").clone();
    assert_eq!(keys.len(), 4);
    assert!(!keys[0].is_empty() && keys.iter().all(|k| k == &keys[0]), "one generated key, re-sent: {keys:?}");

    // A business answer is final: sent once.
    let answers =
        vec![http("422 Unprocessable Entity", "application/problem+json", "", &problem(422, "insufficient_funds"))];
    let (base, keys) = flaky_peer(answers).await;
    let ledger = Client::builder(&base, "t").retry(policy).build().expect("a client");
    let refused = ledger.deposit(&request, Some("my-key")).await.expect_err("refused");
    assert_eq!(refused.code(), Some(ErrorCode::InsufficientFunds));
    assert_eq!(*keys.lock().expect("keys"), vec!["my-key".to_owned()]);

    // Attempts are bounded: the last failure is returned.
    let failing =
        (0..3).map(|_| http("500 Internal Server Error", "application/problem+json", "", &problem(500, "internal")));
    let (base, keys) = flaky_peer(failing.collect()).await;
    let ledger =
        Client::builder(&base, "t").retry(RetryPolicy { attempts_max: 3, ..policy }).build().expect("a client");
    assert_eq!(ledger.deposit(&request, None).await.expect_err("gives up").code(), Some(ErrorCode::Internal));
    assert_eq!(keys.lock().expect("keys").len(), 3);
}

#[tokio::test]
async fn transactions_through_the_typed_client() {
    let app = TestApp::spawn().await;
    let ledger = Client::builder(&app.base, ADMIN_TOKEN).read_your_writes(true).build().expect("a client");
    let (a, b, c) = (
        ledger.open_account(&open("tx@example.com"), None).await.expect("opens").id,
        ledger.open_account(&open("tx@example.com"), None).await.expect("opens").id,
        ledger.open_account(&open("tx@example.com"), None).await.expect("opens").id,
    );
    let deposit = wire::DepositRequest {
        effective_at: None,
        account_id: a,
        amount: amount(500),
        currency: eur(),
        reference: None,
        metadata: None,
    };
    ledger.deposit(&deposit, None).await.expect("deposits");
    let posting = |from, to, n| wire::PostingRequest { from, to, amount: amount(n), currency: eur() };
    let yesterday = chrono::Utc::now() - chrono::Duration::days(1);
    let request = wire::TransactionRequest {
        id: None,
        postings: wire::Postings::try_from(vec![posting(a, b, 100), posting(a, c, 50)]).expect("two postings"),
        reference: Some("order-9".try_into().expect("a reference")),
        metadata: Some(wire::Metadata::try_from(serde_json::json!({ "order": 9 })).expect("metadata")),
        effective_at: Some(wire::Timestamp::try_from(yesterday.to_rfc3339()).expect("a time")),
        conditions: Some(
            vec![wire::ConditionRequest { account_id: a, expected_version: Some(2), available_at_least: Some(150) }]
                .try_into()
                .expect("one condition"),
        ),
    };
    let t = ledger.post_transaction(&request, None).await.expect("posts");
    assert_eq!((t.http_status, t.postings.len(), t.effective_at.timestamp()), (201, 2, yesterday.timestamp()));
    assert!(wire::Postings::try_from(Vec::new()).is_err(), "the client cannot even build an empty transaction");
    let again = ledger.post_transaction(&request, None).await.expect_err("the condition's version moved on");
    assert_eq!(again.code(), Some(ErrorCode::VersionConflict));
    let found = ledger.get_transaction(t.id, Read::Eventual).await.expect("reads");
    assert_eq!(found.body, t.body, "read-your-writes: the read model has it");
    let search = wire::TransactionSearch { metadata: vec![("order".into(), "9".into())], ..Default::default() };
    let page = ledger.search_transactions(&search, Read::Eventual).await.expect("queries");
    assert_eq!(page.transactions.iter().map(|t| t.id).collect::<Vec<_>>(), vec![t.id]);
    let by_account = wire::TransactionSearch { account_id: Some(c), ..Default::default() };
    assert_eq!(ledger.search_transactions(&by_account, Read::Strong).await.expect("queries").transactions.len(), 1);
    let reason = wire::ReverseRequest { reason: "refund".try_into().expect("a reason") };
    let back = ledger.reverse_transaction(t.id, &reason, None).await.expect("reverses");
    assert_eq!(back.reverses, Some(t.id));
    let balance = wire::BalanceQuery {
        effective_at: Some(yesterday + chrono::Duration::seconds(1)),
        as_of: None,
        at_position: None,
    };
    let then = ledger.balance_at(a, &balance).await.expect("a bitemporal balance");
    // Yesterday the deposit (recorded today) had not happened; the transaction had, and
    // its reversal (recorded today) had not.
    assert_eq!(then.balance, -150);
}

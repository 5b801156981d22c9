//! Given/when/then tests of the Decider, and a property test against a tiny
//! reference model.
#![allow(clippy::type_complexity, clippy::needless_range_loop)]

use crate::decide::*;
use crate::*;
use proptest::prelude::*;
use uuid::Uuid;

fn eur() -> Currency {
    Currency::parse("EUR").expect("valid")
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn amount(n: i64) -> Amount {
    Amount::new(n).expect("valid amount")
}

/// Runs `command` against the ledger built from `given`; applies what it decided.
pub(crate) fn run(given: &mut Ledger, command: Command) -> Result<Vec<Event>, DomainError> {
    for stream in command.missing_streams(given) {
        given.insert(stream, StreamState::default());
    }
    let events = decide(&command, given)?;
    for e in &events {
        given.apply(e);
    }
    Ok(events)
}

fn open(ledger: &mut Ledger, n: u128, overdraft: i64) {
    run(
        ledger,
        Command::OpenAccount(OpenAccount {
            account_id: id(n),
            currency: eur(),
            owner: Some(format!("owner{n}")),
            overdraft_limit: Money::new(overdraft),
            metadata: None,
            subject: None,
        }),
    )
    .expect("open succeeds");
}

fn deposit(ledger: &mut Ledger, n: u128, minor: i64) -> Result<Vec<Event>, DomainError> {
    run(
        ledger,
        Command::MakeDeposit(MakeDeposit {
            effective_at: None,
            metadata: None,
            deposit_id: Uuid::from_u128(0xD000 + n + minor as u128),
            account_id: id(n),
            amount: amount(minor),
            currency: eur(),
            reference: None,
        }),
    )
}

fn transfer_cmd(t: u128, from: u128, to: u128, minor: i64) -> Command {
    Command::PostTransfer(PostTransfer {
        effective_at: None,
        metadata: None,
        transfer_id: id(t),
        from: id(from),
        to: id(to),
        amount: amount(minor),
        currency: eur(),
        reference: None,
    })
}

#[test]
fn first_account_in_a_currency_opens_its_system_account() {
    let mut ledger = Ledger::new();
    open(&mut ledger, 1, 0);
    let system = ledger.account(system_account_id(eur())).expect("system account exists");
    assert!(system.system);
    open(&mut ledger, 2, 0);
    assert_eq!(ledger.version(system_account_id(eur())), 1, "opened once");
}

#[test]
fn deposit_then_transfer_moves_money_and_conserves_it() {
    let mut ledger = Ledger::new();
    open(&mut ledger, 1, 0);
    open(&mut ledger, 2, 0);
    deposit(&mut ledger, 1, 500).expect("deposit");
    run(&mut ledger, transfer_cmd(100, 1, 2, 200)).expect("transfer");
    assert_eq!(ledger.account(id(1)).map(|a| a.balance), Some(Money::new(300)));
    assert_eq!(ledger.account(id(2)).map(|a| a.balance), Some(Money::new(200)));
    assert_eq!(ledger.account(system_account_id(eur())).map(|a| a.balance), Some(Money::new(-500)));
    assert!(ledger.balance_sums().values().all(|s| *s == 0));
}

#[test]
fn transfer_rejections() {
    let mut ledger = Ledger::new();
    open(&mut ledger, 1, 100);
    open(&mut ledger, 2, 0);
    let usd = Currency::parse("USD").expect("valid");
    let cases: Vec<(Command, fn(&DomainError) -> bool)> = vec![
        (transfer_cmd(10, 1, 1, 5), |e| matches!(e, DomainError::SameAccount)),
        (transfer_cmd(11, 1, 2, 101), |e| matches!(e, DomainError::InsufficientFunds { .. })),
        (transfer_cmd(12, 1, 9, 5), |e| matches!(e, DomainError::AccountNotFound { .. })),
        (
            Command::PostTransfer(PostTransfer {
                effective_at: None,
                metadata: None,
                transfer_id: id(13),
                from: id(1),
                to: id(2),
                amount: amount(5),
                currency: usd,
                reference: None,
            }),
            |e| matches!(e, DomainError::CurrencyMismatch { .. }),
        ),
    ];
    for (command, expected) in cases {
        let err = run(&mut ledger, command.clone()).expect_err("rejected");
        assert!(expected(&err), "{command:?} gave {err:?}");
    }
    // Within the overdraft limit is allowed.
    run(&mut ledger, transfer_cmd(14, 1, 2, 100)).expect("overdraft used");
    assert_eq!(ledger.account(id(1)).map(|a| a.balance), Some(Money::new(-100)));
}

#[test]
fn reversal_is_a_compensating_transfer_and_happens_once() {
    let mut ledger = Ledger::new();
    open(&mut ledger, 1, 0);
    open(&mut ledger, 2, 0);
    deposit(&mut ledger, 1, 50).expect("deposit");
    run(&mut ledger, transfer_cmd(100, 1, 2, 50)).expect("transfer");
    let reverse = |r: u128| {
        Command::ReverseTransfer(ReverseTransfer { reversal_id: id(r), transfer_id: id(100), reason: "oops".into() })
    };
    let events = run(&mut ledger, reverse(101)).expect("reversal");
    assert!(matches!(&events[0], Event::TransferPosted(t) if t.reverses == Some(id(100)) && t.from == id(2)));
    assert_eq!(ledger.account(id(1)).map(|a| a.balance), Some(Money::new(50)));
    let err = run(&mut ledger, reverse(102)).expect_err("second reversal");
    assert!(matches!(err, DomainError::AlreadyReversed { reversed_by, .. } if reversed_by == id(101)));
}

#[test]
fn withdrawal_holds_then_settles_or_fails() {
    let mut ledger = Ledger::new();
    open(&mut ledger, 1, 0);
    deposit(&mut ledger, 1, 100).expect("deposit");
    let request = |w: u128, minor: i64| {
        Command::RequestWithdrawal(RequestWithdrawal {
            metadata: None,
            withdrawal_id: id(w),
            account_id: id(1),
            amount: amount(minor),
            currency: eur(),
            destination: "iban".into(),
        })
    };
    run(&mut ledger, request(200, 60)).expect("hold");
    let a = ledger.account(id(1)).expect("account").clone();
    assert_eq!((a.balance, a.pending_holds, a.available()), (Money::new(100), Money::new(60), Money::new(40)));
    assert!(matches!(run(&mut ledger, request(201, 41)), Err(DomainError::InsufficientFunds { .. })));
    run(&mut ledger, Command::SettleWithdrawal(SettleWithdrawal { withdrawal_id: id(200), provider_ref: None }))
        .expect("settle");
    let a = ledger.account(id(1)).expect("account").clone();
    assert_eq!((a.balance, a.pending_holds), (Money::new(40), Money::ZERO));
    let again =
        run(&mut ledger, Command::FailWithdrawal(FailWithdrawal { withdrawal_id: id(200), reason: "x".into() }));
    assert!(matches!(again, Err(DomainError::WithdrawalNotPending { .. })));
    run(&mut ledger, request(202, 40)).expect("hold");
    run(&mut ledger, Command::FailWithdrawal(FailWithdrawal { withdrawal_id: id(202), reason: "rejected".into() }))
        .expect("fail");
    assert_eq!(ledger.account(id(1)).map(|a| a.available()), Some(Money::new(40)));
}

#[test]
fn close_requires_empty_account_and_blocks_later_use() {
    let mut ledger = Ledger::new();
    open(&mut ledger, 1, 0);
    deposit(&mut ledger, 1, 10).expect("deposit");
    let close = Command::CloseAccount { account_id: id(1) };
    assert!(matches!(run(&mut ledger, close.clone()), Err(DomainError::AccountNotEmpty { .. })));
    open(&mut ledger, 2, 0);
    run(&mut ledger, transfer_cmd(300, 1, 2, 10)).expect("empty it");
    run(&mut ledger, close.clone()).expect("close");
    assert!(matches!(deposit(&mut ledger, 1, 5), Err(DomainError::AccountClosed { .. })));
    assert!(matches!(run(&mut ledger, close), Err(DomainError::AccountClosed { .. })));
}

#[test]
fn balances_never_overflow() {
    let mut ledger = Ledger::new();
    open(&mut ledger, 1, 0);
    // i64::MAX / AMOUNT_MAX = 9223 full deposits fit; the next one must be refused.
    let fits = i64::MAX / AMOUNT_MAX;
    for i in 0..fits {
        deposit(&mut ledger, 1, AMOUNT_MAX - (i % 7)).expect("fits in i64");
    }
    let err = deposit(&mut ledger, 1, AMOUNT_MAX).expect_err("would overflow");
    assert!(matches!(err, DomainError::BalanceOverflow { .. }));
    assert!(ledger.balance_sums().values().all(|s| *s == 0));
}

#[test]
fn funds_held_on_a_customer_stay_within_64_bits() {
    // Given a balance near i64::MAX and the largest overdraft, so that what the funds
    // check allows to be held exceeds i64::MAX (issue 26: the read models keep holds in
    // 64 bits, and a projection panicked on more),
    let mut ledger = Ledger::new();
    open(&mut ledger, 1, AMOUNT_MAX);
    open(&mut ledger, 2, 0);
    for _ in 0..i64::MAX / AMOUNT_MAX {
        deposit(&mut ledger, 1, AMOUNT_MAX).expect("fits in i64");
    }
    let top_up = i64::MAX - ledger.account(id(1)).and_then(|a| a.balance.to_i64()).expect("opened");
    deposit(&mut ledger, 1, top_up).expect("up to i64::MAX exactly");
    let mut placed = 0u128;
    let place = |ledger: &mut Ledger, n: u128| {
        run(
            ledger,
            Command::PlaceHold(PlaceHold {
                hold_id: id(0x10_0000 + n),
                account_id: id(1),
                to: id(2),
                amount: amount(AMOUNT_MAX),
                currency: eur(),
                expires_at: None,
                reference: None,
                metadata: None,
            }),
        )
    };
    // when holds of the largest amount are placed until one is refused,
    let refused = loop {
        match place(&mut ledger, placed) {
            Ok(_) => placed += 1,
            Err(e) => break e,
        }
    };
    // then it is refused as an overflow while the funds would still allow it, and the
    // holds never pass 64 bits.
    assert!(matches!(refused, DomainError::BalanceOverflow { .. }), "{refused:?}");
    let a = ledger.account(id(1)).expect("opened");
    assert!(a.pending_holds.to_i64().is_some() && a.available() >= Money::new(-AMOUNT_MAX), "{a:?}");
    let withdrawal = RequestWithdrawal {
        withdrawal_id: id(0x20_0000),
        account_id: id(1),
        amount: amount(AMOUNT_MAX),
        currency: eur(),
        destination: "d".into(),
        metadata: None,
    };
    let refused = run(&mut ledger, Command::RequestWithdrawal(withdrawal)).expect_err("no room for more holds");
    assert!(matches!(refused, DomainError::BalanceOverflow { .. }), "{refused:?}");
}

#[test]
fn events_round_trip_through_store_parts() {
    let mut ledger = Ledger::new();
    open(&mut ledger, 1, 0);
    for e in deposit(&mut ledger, 1, 7).expect("deposit") {
        let (t, data) = e.to_parts();
        assert_eq!(Event::from_data(t, &data).expect("parses in place"), e);
        // A type it is not, or none at all, is refused, never read as another event.
        assert!(Event::from_data("NoSuchEvent", &data).is_err());
        assert!(Event::from_data("TransferPosted", &data).is_err());
        assert!(Event::from_parts(t, serde_json::json!({})).is_err());
        assert_eq!(Event::from_parts(t, data).expect("parses"), e);
    }
}

/// A random step of the property test: indices pick among a few accounts.
#[derive(Clone, Debug)]
enum Step {
    Deposit(usize, i64),
    Transfer(usize, usize, i64),
    Withdraw(usize, i64),
    Settle(usize),
    Fail(usize),
    Reverse(usize),
    Close(usize),
}

fn step() -> impl Strategy<Value = Step> {
    let acct = 0usize..4;
    let amt = 1i64..2_000;
    prop_oneof![
        (acct.clone(), amt.clone()).prop_map(|(a, m)| Step::Deposit(a, m)),
        (acct.clone(), acct.clone(), amt.clone()).prop_map(|(a, b, m)| Step::Transfer(a, b, m)),
        (acct.clone(), amt).prop_map(|(a, m)| Step::Withdraw(a, m)),
        (0usize..8).prop_map(Step::Settle),
        (0usize..8).prop_map(Step::Fail),
        (0usize..8).prop_map(Step::Reverse),
        acct.prop_map(Step::Close),
    ]
}

/// The reference model: plain integers per account, with the rules restated simply.
#[derive(Default, Clone)]
struct Model {
    balance: [i64; 4],
    holds: [i64; 4],
    closed: [bool; 4],
}

const LIMITS: [i64; 4] = [0, 0, 500, 1_000];

proptest! {
    #[test]
    fn random_commands_conserve_money_and_respect_limits(steps in prop::collection::vec(step(), 1..60)) {
        let mut ledger = Ledger::new();
        let mut log: Vec<Event> = Vec::new();
        for (i, limit) in LIMITS.iter().enumerate() {
            open(&mut ledger, i as u128 + 1, *limit);
        }
        let mut model = Model::default();
        let mut transfers: Vec<(Uuid, usize, usize, i64)> = Vec::new();
        let mut withdrawals: Vec<(Uuid, usize, i64)> = Vec::new();
        for (n, s) in steps.iter().enumerate() {
            let fresh = Uuid::from_u128(0x1_0000 + n as u128);
            let acct = |i: usize| id(i as u128 + 1);
            let (command, expect_ok) = match s.clone() {
                Step::Deposit(a, m) => (
                    Command::MakeDeposit(MakeDeposit { effective_at: None, metadata: None, deposit_id: fresh, account_id: acct(a), amount: amount(m), currency: eur(), reference: None }),
                    !model.closed[a],
                ),
                Step::Transfer(a, b, m) => (
                    transfer_cmd(fresh.as_u128(), a as u128 + 1, b as u128 + 1, m),
                    a != b && !model.closed[a] && !model.closed[b] && model.balance[a] - model.holds[a] - m >= -LIMITS[a],
                ),
                Step::Withdraw(a, m) => (
                    Command::RequestWithdrawal(RequestWithdrawal { metadata: None, withdrawal_id: fresh, account_id: acct(a), amount: amount(m), currency: eur(), destination: "d".into() }),
                    !model.closed[a] && model.balance[a] - model.holds[a] - m >= -LIMITS[a],
                ),
                Step::Settle(k) | Step::Fail(k) if withdrawals.is_empty() || k >= withdrawals.len() => continue,
                Step::Settle(k) => (Command::SettleWithdrawal(SettleWithdrawal { withdrawal_id: withdrawals[k].0, provider_ref: None }), ledger.withdrawal(withdrawals[k].0).map(|w| w.status) == Some(WithdrawalStatus::Pending)),
                Step::Fail(k) => (Command::FailWithdrawal(FailWithdrawal { withdrawal_id: withdrawals[k].0, reason: "r".into() }), ledger.withdrawal(withdrawals[k].0).map(|w| w.status) == Some(WithdrawalStatus::Pending)),
                Step::Reverse(k) if k >= transfers.len() => continue,
                Step::Reverse(k) => {
                    let (t, a, b, m) = transfers[k];
                    let ok = ledger.transfer(t).and_then(|t| t.reversed_by).is_none()
                        && !model.closed[a] && !model.closed[b]
                        && model.balance[b] - model.holds[b] - m >= -LIMITS[b];
                    (Command::ReverseTransfer(ReverseTransfer { reversal_id: fresh, transfer_id: t, reason: "r".into() }), ok)
                }
                Step::Close(a) => (Command::CloseAccount { account_id: acct(a) }, !model.closed[a] && model.balance[a] == 0 && model.holds[a] == 0),
            };
            let result = run(&mut ledger, command);
            prop_assert_eq!(result.is_ok(), expect_ok, "step {:?}: {:?}", s, result);
            let Ok(events) = result else { continue };
            log.extend(events);
            match s.clone() {
                Step::Deposit(a, m) => model.balance[a] += m,
                Step::Transfer(a, b, m) => { model.balance[a] -= m; model.balance[b] += m; transfers.push((fresh, a, b, m)); }
                Step::Withdraw(a, m) => { model.holds[a] += m; withdrawals.push((fresh, a, m)); }
                Step::Settle(k) => { let (_, a, m) = withdrawals[k]; model.holds[a] -= m; model.balance[a] -= m; }
                Step::Fail(k) => { let (_, a, m) = withdrawals[k]; model.holds[a] -= m; }
                Step::Reverse(k) => { let (_, a, b, m) = transfers[k]; model.balance[a] += m; model.balance[b] -= m; }
                Step::Close(a) => model.closed[a] = true,
            }
            prop_assert!(ledger.balance_sums().values().all(|s| *s == 0), "money not conserved");
            for i in 0..4 {
                let acc = ledger.account(id(i as u128 + 1)).expect("opened");
                prop_assert_eq!(acc.balance.to_i64(), Some(model.balance[i]));
                prop_assert_eq!(acc.pending_holds.to_i64(), Some(model.holds[i]));
                prop_assert!(acc.available() >= Money::new(-LIMITS[i]), "overdraft breached");
            }
        }
        // Replaying the recorded events (after the openings) reproduces the state.
        let mut replayed = Ledger::new();
        for (i, limit) in LIMITS.iter().enumerate() {
            open(&mut replayed, i as u128 + 1, *limit);
        }
        for e in &log {
            replayed.apply(e);
            // Every event reads back from the store's parts, in place or owned, as the
            // tagged document serde itself writes reads back.
            let (t, data) = e.to_parts();
            let document = serde_json::to_value(e).expect("serializes");
            prop_assert_eq!(&serde_json::from_value::<Event>(document).expect("the tagged document"), e);
            prop_assert_eq!(&Event::from_data(t, &data).expect("in place"), e);
            prop_assert_eq!(&Event::from_parts(t, data).expect("owned"), e);
        }
        let non_empty = |l: &Ledger| -> Vec<(Uuid, StreamState)> {
            l.streams().filter(|(_, s)| s.version > 0).map(|(k, s)| (*k, s.clone())).collect()
        };
        prop_assert_eq!(non_empty(&replayed), non_empty(&ledger));
    }
}

#[test]
fn reserved_ids_cannot_be_claimed() {
    let usd = Currency::parse("USD").expect("valid");
    for reserved in [system_account_id(usd), system_account_id(eur()), Uuid::new_v8([7; 16])] {
        let mut ledger = Ledger::new();
        let before = ledger.clone();
        let opened = run(
            &mut ledger,
            Command::OpenAccount(OpenAccount {
                account_id: reserved,
                currency: usd,
                owner: None,
                overdraft_limit: Money::ZERO,
                metadata: None,
                subject: None,
            }),
        );
        assert_eq!(opened, Err(DomainError::ReservedId { id: reserved }));
        assert_eq!(ledger.balance_sums(), before.balance_sums());
    }
    // A currency's system account is still opened by the ledger itself, with its first account.
    let mut ledger = Ledger::new();
    open(&mut ledger, 1, 0);
    assert!(ledger.account(system_account_id(eur())).is_some_and(|a| a.system));
}

#[test]
fn transfer_checks_run_in_the_contracts_order() {
    let mut ledger = Ledger::new();
    open(&mut ledger, 1, 0);
    let transfer = |from: u128, to: u128, currency: Currency| {
        Command::PostTransfer(PostTransfer {
            effective_at: None,
            metadata: None,
            transfer_id: id(0x7000 + from * 16 + to),
            from: id(from),
            to: id(to),
            amount: amount(1),
            currency,
            reference: None,
        })
    };
    // Unknown beats same-account; same-account beats currency; funds come last.
    assert_eq!(run(&mut ledger, transfer(9, 9, eur())), Err(DomainError::AccountNotFound { account_id: id(9) }));
    let usd = Currency::parse("USD").expect("valid");
    assert_eq!(run(&mut ledger, transfer(1, 1, usd)), Err(DomainError::SameAccount));
    open(&mut ledger, 2, 0);
    assert!(matches!(run(&mut ledger, transfer(1, 2, usd)), Err(DomainError::CurrencyMismatch { .. })));
    assert!(matches!(run(&mut ledger, transfer(1, 2, eur())), Err(DomainError::InsufficientFunds { .. })));
}

fn open_for(ledger: &mut Ledger, n: u128, subject: &str) -> Result<Vec<Event>, DomainError> {
    let command = Command::OpenAccount(OpenAccount {
        account_id: id(n),
        currency: eur(),
        owner: None,
        overdraft_limit: Money::ZERO,
        metadata: None,
        subject: Some(subject.to_owned()),
    });
    let events = decide(&command, ledger)?;
    for e in &events {
        ledger.apply(e);
    }
    Ok(events)
}

#[test]
fn a_subject_is_erased_once_per_opening_and_holds_a_bounded_number_of_accounts() {
    let mut ledger = Ledger::new();
    let erase = |ledger: &Ledger| {
        decide(&Command::EraseSubject(EraseSubject { subject: "s".into(), reason: "r".into() }), ledger)
    };
    assert_eq!(erase(&ledger), Err(DomainError::SubjectNotFound));
    open_for(&mut ledger, 1, "s").expect("opens");
    open_for(&mut ledger, 2, "s").expect("opens");
    open_for(&mut ledger, 3, "other").expect("opens");
    let events = erase(&ledger).expect("erases");
    assert_eq!(
        events,
        vec![Event::SubjectErased(events::SubjectErased {
            subject: "s".into(),
            accounts: vec![id(1), id(2)],
            reason: "r".into()
        })]
    );
    for e in &events {
        ledger.apply(e);
    }
    let a = ledger.account(id(1)).expect("account");
    assert!(a.erased && a.owner.is_none(), "{a:?}");
    assert!(!ledger.account(id(3)).expect("account").erased, "another subject's account is not");
    assert_eq!(erase(&ledger), Err(DomainError::SubjectAlreadyErased { accounts: vec![id(1), id(2)] }));
    // A new account after the erasure is readable until the next one.
    open_for(&mut ledger, 4, "s").expect("opens");
    assert_eq!(ledger.subject("s").map(|s| s.accounts.clone()), Some(vec![id(4)]));
    for n in 5..(4 + SUBJECT_ACCOUNTS_MAX as u128) {
        open_for(&mut ledger, n, "s").expect("within the bound");
    }
    assert_eq!(
        open_for(&mut ledger, 10_000, "s"),
        Err(DomainError::SubjectAccountsLimit { max: SUBJECT_ACCOUNTS_MAX })
    );
    // No client can name a subject's stream as an account.
    let stream = subject_stream_id("s");
    assert!(crate::decide::is_reserved_id(stream));
}

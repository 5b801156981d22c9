//! Holds and multi-posting transactions without a database: given/when/then examples
//! of the contract's rules, and a property test of random sequences against a
//! reference model of plain integers (balances, funds held, each hold's state).
#![allow(clippy::needless_range_loop)]

use crate::decide::*;
use crate::tests::run;
use crate::*;
use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use uuid::Uuid;

fn eur() -> Currency {
    Currency::parse("EUR").expect("valid")
}

fn amount(n: i64) -> Amount {
    Amount::new(n).expect("valid amount")
}

fn account(n: usize) -> Uuid {
    Uuid::from_u128(0xA000 + n as u128)
}

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::UNIX_EPOCH + Duration::days(20_000) + Duration::seconds(seconds)
}

/// A book with accounts `0..limits.len()` (overdraft limits as given), each funded with
/// `funded` by a deposit.
fn given(limits: &[i64], funded: i64) -> Ledger {
    let mut ledger = Ledger::new();
    for (n, limit) in limits.iter().enumerate() {
        let open = OpenAccount {
            account_id: account(n),
            currency: eur(),
            owner: None,
            overdraft_limit: Money::new(*limit),
            metadata: None,
            subject: None,
        };
        run(&mut ledger, Command::OpenAccount(open)).expect("opens");
        if funded > 0 {
            let deposit = MakeDeposit {
                deposit_id: Uuid::from_u128(0xD000 + n as u128),
                account_id: account(n),
                amount: amount(funded),
                currency: eur(),
                reference: None,
                metadata: None,
                effective_at: None,
            };
            run(&mut ledger, Command::MakeDeposit(deposit)).expect("funds");
        }
    }
    ledger
}

fn place(hold: u128, from: usize, to: usize, minor: i64, expires_at: Option<DateTime<Utc>>) -> Command {
    Command::PlaceHold(PlaceHold {
        hold_id: Uuid::from_u128(hold),
        account_id: account(from),
        to: account(to),
        amount: amount(minor),
        currency: eur(),
        expires_at,
        reference: None,
        metadata: None,
    })
}

fn capture(hold: u128, minor: Option<i64>, now: DateTime<Utc>) -> Command {
    Command::CaptureHold(CaptureHold {
        hold_id: Uuid::from_u128(hold),
        amount: minor.map(amount),
        effective_at: None,
        now,
    })
}

fn transaction(id: u128, legs: &[(usize, usize, i64)]) -> Command {
    Command::PostTransaction(PostTransaction {
        transaction_id: Uuid::from_u128(id),
        postings: legs
            .iter()
            .map(|&(from, to, minor)| Leg {
                from: account(from),
                to: account(to),
                amount: amount(minor),
                currency: eur(),
            })
            .collect(),
        reference: None,
        metadata: None,
        effective_at: None,
        conditions: Vec::new(),
    })
}

/// (balance, pending holds) of account `n`.
fn then_account(ledger: &Ledger, n: usize) -> (i64, i64) {
    let a = ledger.account(account(n)).expect("opened");
    (a.balance.to_i64().expect("64 bits"), a.pending_holds.to_i64().expect("64 bits"))
}

#[test]
fn a_hold_reserves_funds_then_a_partial_capture_moves_part_and_releases_the_rest() {
    let mut ledger = given(&[0, 0], 1_000);
    run(&mut ledger, place(1, 0, 1, 600, None)).expect("placed");
    assert_eq!(then_account(&ledger, 0), (1_000, 600), "balance unchanged, 600 held");
    assert_eq!(ledger.account(account(0)).expect("opened").available(), Money::new(400));
    let refused = run(&mut ledger, transaction(2, &[(0, 1, 401)]));
    assert!(matches!(refused, Err(DomainError::InsufficientFunds { .. })), "held funds are not available: {refused:?}");
    run(&mut ledger, capture(1, Some(250), at(0))).expect("captured");
    assert_eq!(then_account(&ledger, 0), (750, 0), "250 moved, the other 350 released");
    assert_eq!(then_account(&ledger, 1), (1_250, 0));
    let again = run(&mut ledger, capture(1, None, at(0)));
    assert!(matches!(again, Err(DomainError::HoldNotPending { status: HoldStatus::Captured, .. })), "{again:?}");
}

#[test]
fn a_hold_is_captured_voided_or_expired_once_and_never_past_its_expiry() {
    let mut ledger = given(&[0, 0], 1_000);
    run(&mut ledger, place(1, 0, 1, 100, Some(at(60)))).expect("placed");
    let late = run(&mut ledger, capture(1, None, at(60)));
    assert_eq!(late, Err(DomainError::HoldExpired { hold_id: Uuid::from_u128(1) }), "at expires_at is too late");
    let early = run(&mut ledger, Command::ExpireHold(ExpireHold { hold_id: Uuid::from_u128(1), now: at(59) }));
    assert_eq!(early, Err(DomainError::HoldNotDue { hold_id: Uuid::from_u128(1) }));
    run(&mut ledger, Command::ExpireHold(ExpireHold { hold_id: Uuid::from_u128(1), now: at(60) })).expect("expired");
    assert_eq!(then_account(&ledger, 0), (1_000, 0), "released, nothing moved");
    let void = run(&mut ledger, Command::VoidHold(VoidHold { hold_id: Uuid::from_u128(1) }));
    assert!(matches!(void, Err(DomainError::HoldNotPending { status: HoldStatus::Expired, .. })), "{void:?}");

    run(&mut ledger, place(2, 0, 1, 100, None)).expect("placed");
    let over = run(&mut ledger, capture(2, Some(101), at(0)));
    assert!(matches!(over, Err(DomainError::CaptureExceedsHold { .. })), "{over:?}");
    run(&mut ledger, Command::VoidHold(VoidHold { hold_id: Uuid::from_u128(2) })).expect("voided");
    assert_eq!(then_account(&ledger, 0), (1_000, 0));
}

#[test]
fn a_transaction_is_checked_on_each_accounts_net_change_and_recorded_whole_or_not_at_all() {
    let mut ledger = given(&[0, 0, 0], 100);
    // Account 0 pays 150 in one posting but gets 100 back in another: its net is -50.
    run(&mut ledger, transaction(1, &[(0, 1, 150), (2, 0, 100)])).expect("net within funds");
    assert_eq!((then_account(&ledger, 0).0, then_account(&ledger, 1).0, then_account(&ledger, 2).0), (50, 250, 0));
    // The second posting would overdraw account 2: nothing of the transaction is recorded.
    let refused = run(&mut ledger, transaction(2, &[(1, 0, 10), (2, 1, 1)]));
    assert!(matches!(refused, Err(DomainError::InsufficientFunds { account_id: Some(a), .. }) if a == account(2)));
    assert_eq!((then_account(&ledger, 0).0, then_account(&ledger, 1).0), (50, 250), "all or nothing");
    let same = run(&mut ledger, transaction(3, &[(1, 1, 5)]));
    assert_eq!(same, Err(DomainError::SameAccount));
    let empty = run(&mut ledger, transaction(4, &[]));
    assert_eq!(empty, Err(DomainError::PostingsCount { count: 0 }));
}

/// One step of the property test over three accounts (overdraft limits `LIMITS`).
#[derive(Clone, Debug)]
enum Step {
    Place { from: usize, to: usize, minor: i64, expires_in: Option<i64> },
    Capture { hold: usize, minor: Option<i64> },
    Void { hold: usize },
    Expire { hold: usize },
    Transaction { legs: Vec<(usize, usize, i64)> },
    Tick { seconds: i64 },
}

const LIMITS: [i64; 3] = [0, 300, 0];

fn step() -> impl Strategy<Value = Step> {
    let acct = 0usize..3;
    let minor = 1i64..700;
    prop_oneof![
        (acct.clone(), acct.clone(), minor.clone(), prop::option::of(1i64..30))
            .prop_map(|(from, to, minor, expires_in)| Step::Place { from, to, minor, expires_in }),
        (0usize..8, prop::option::of(1i64..700)).prop_map(|(hold, minor)| Step::Capture { hold, minor }),
        (0usize..8).prop_map(|hold| Step::Void { hold }),
        (0usize..8).prop_map(|hold| Step::Expire { hold }),
        prop::collection::vec((acct.clone(), acct, minor), 1..4).prop_map(|legs| Step::Transaction { legs }),
        (1i64..20).prop_map(|seconds| Step::Tick { seconds }),
    ]
}

/// A hold as the model sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct ModelHold {
    id: Uuid,
    from: usize,
    to: usize,
    minor: i64,
    expires_at: Option<i64>,
    pending: bool,
}

proptest! {
    #[test]
    fn holds_and_transactions_conserve_money_and_never_spend_what_is_held(steps in prop::collection::vec(step(), 1..50)) {
        let mut ledger = given(&LIMITS, 1_000);
        let mut balance = [1_000i64; 3];
        let mut held = [0i64; 3];
        let mut holds: Vec<ModelHold> = Vec::new();
        let mut now = 0i64;
        let available = |balance: &[i64; 3], held: &[i64; 3], a: usize| balance[a] - held[a];
        for (n, s) in steps.iter().enumerate() {
            let fresh = 0x1_0000 + n as u128;
            let (command, expected) = match s.clone() {
                Step::Tick { seconds } => { now += seconds; continue; }
                Step::Place { from, to, minor, expires_in } => {
                    let ok = from != to && available(&balance, &held, from) - minor >= -LIMITS[from];
                    (place(fresh, from, to, minor, expires_in.map(|e| at(now + e))), ok)
                }
                Step::Capture { hold, .. } | Step::Void { hold } | Step::Expire { hold } if hold >= holds.len() => continue,
                Step::Capture { hold, minor } => {
                    let h = holds[hold];
                    let live = h.pending && h.expires_at.is_none_or(|e| now < e);
                    (capture(holds[hold].id.as_u128(), minor, at(now)), live && minor.is_none_or(|m| m <= h.minor))
                }
                Step::Void { hold } => (Command::VoidHold(VoidHold { hold_id: holds[hold].id }), holds[hold].pending),
                Step::Expire { hold } => {
                    let h = holds[hold];
                    let due = h.expires_at.is_some_and(|e| now >= e);
                    (Command::ExpireHold(ExpireHold { hold_id: holds[hold].id, now: at(now) }), h.pending && due)
                }
                Step::Transaction { legs } => {
                    let mut net = [0i64; 3];
                    for &(from, to, minor) in &legs {
                        net[from] -= minor;
                        net[to] += minor;
                    }
                    let ok = legs.iter().all(|(from, to, _)| from != to)
                        && (0..3).all(|a| net[a] >= 0 || available(&balance, &held, a) + net[a] >= -LIMITS[a]);
                    (transaction(fresh, &legs), ok)
                }
            };
            let result = run(&mut ledger, command);
            prop_assert_eq!(result.is_ok(), expected, "step {}: {:?} gave {:?}", n, s, result);
            if result.is_ok() {
                match s.clone() {
                    Step::Place { from, to, minor, expires_in } => {
                        held[from] += minor;
                        let id = Uuid::from_u128(fresh);
                        holds.push(ModelHold { id, from, to, minor, expires_at: expires_in.map(|e| now + e), pending: true });
                    }
                    Step::Capture { hold, minor } => {
                        let h = &mut holds[hold];
                        let moved = minor.unwrap_or(h.minor);
                        held[h.from] -= h.minor;
                        balance[h.from] -= moved;
                        balance[h.to] += moved;
                        h.pending = false;
                    }
                    Step::Void { hold } | Step::Expire { hold } => {
                        let h = &mut holds[hold];
                        held[h.from] -= h.minor;
                        h.pending = false;
                    }
                    Step::Transaction { legs } => {
                        for (from, to, minor) in legs {
                            balance[from] -= minor;
                            balance[to] += minor;
                        }
                    }
                    Step::Tick { .. } => {}
                }
            }
            prop_assert!(ledger.balance_sums().values().all(|s| *s == 0), "money not conserved");
            for a in 0..3 {
                prop_assert_eq!(then_account(&ledger, a), (balance[a], held[a]), "account {} after step {}", a, n);
                prop_assert!(balance[a] - held[a] >= -LIMITS[a], "account {} spent what was held", a);
            }
        }
    }
}

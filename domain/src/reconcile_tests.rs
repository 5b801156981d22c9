//! Given/when/then tests of the reconciliation rules: PROVIDER.md's table, the lines
//! that cannot be trusted (v1.1), hostile amounts and histories, and a property test:
//! whatever the statement says, nothing panics, money is conserved, and a second run
//! over the same statement moves nothing.

use super::*;
use crate::decide::*;
use crate::*;
use proptest::prelude::*;
use uuid::Uuid;

const ACCOUNT: u128 = 1;
const WITHDRAWAL: u128 = 200;
const RUN: u128 = 900;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn eur() -> Currency {
    Currency::parse("EUR").expect("valid")
}

use crate::tests::run;

fn deposit(ledger: &mut Ledger, n: u128, minor: i64) {
    let deposit_id = Uuid::from_u128(0xD000_0000 + n);
    let c = MakeDeposit {
        effective_at: None,
        metadata: None,
        deposit_id,
        account_id: id(ACCOUNT),
        amount: amount(minor),
        currency: eur(),
        reference: None,
    };
    run(ledger, Command::MakeDeposit(c)).expect("deposit");
}

fn amount(minor: i64) -> Amount {
    Amount::new(minor).expect("valid amount")
}

fn withdraw(ledger: &mut Ledger, w: u128, minor: i64) {
    let c = RequestWithdrawal {
        metadata: None,
        withdrawal_id: id(w),
        account_id: id(ACCOUNT),
        amount: amount(minor),
        currency: eur(),
        destination: "NL00BANK0001".into(),
    };
    run(ledger, Command::RequestWithdrawal(c)).expect("withdrawal");
}

fn bring_to(ledger: &mut Ledger, w: u128, status: WithdrawalStatus) {
    let command = match status {
        WithdrawalStatus::Pending => return,
        WithdrawalStatus::Settled => {
            Command::SettleWithdrawal(SettleWithdrawal { withdrawal_id: id(w), provider_ref: Some(format!("prv_{w}")) })
        }
        WithdrawalStatus::Failed => {
            Command::FailWithdrawal(FailWithdrawal { withdrawal_id: id(w), reason: "r".into() })
        }
    };
    run(ledger, command).expect("status reached");
}

fn start(ledger: &mut Ledger, run_id: Uuid) {
    let (from, to) = (chrono::DateTime::UNIX_EPOCH, chrono::DateTime::UNIX_EPOCH + chrono::Duration::days(1));
    run(ledger, Command::StartReconciliation(StartReconciliation { run_id, from, to })).expect("started");
}

/// An account holding 1 000 with one withdrawal of 300 in `status`, and a started run.
fn given(status: WithdrawalStatus) -> Ledger {
    let mut ledger = Ledger::new();
    let c = OpenAccount {
        account_id: id(ACCOUNT),
        currency: eur(),
        owner: None,
        overdraft_limit: Money::ZERO,
        metadata: None,
        subject: None,
    };
    run(&mut ledger, Command::OpenAccount(c)).expect("open");
    deposit(&mut ledger, 1, 1_000);
    withdraw(&mut ledger, WITHDRAWAL, 300);
    bring_to(&mut ledger, WITHDRAWAL, status);
    start(&mut ledger, id(RUN));
    ledger
}

fn line(settled: bool, amount: i64, currency: &str) -> ProviderRecord {
    ProviderRecord {
        provider_ref: format!("prv_{WITHDRAWAL}"),
        settled,
        amount,
        currency: Some(currency.to_owned()),
        defect: None,
        line: None,
    }
}

fn defective(defect: LineDefect) -> ProviderRecord {
    ProviderRecord {
        provider_ref: String::new(),
        settled: false,
        amount: 0,
        currency: None,
        defect: Some(defect),
        line: Some(serde_json::json!({ "reference": id(WITHDRAWAL), "amount": 1.5 })),
    }
}

fn unreadable(field: &str) -> LineDefect {
    LineDefect::FieldUnreadable { field: field.to_owned() }
}

fn command(run_id: Uuid, lines: Vec<ProviderRecord>) -> ReconcilePayout {
    let mut lines = lines.into_iter();
    ReconcilePayout {
        run_id,
        reference: id(WITHDRAWAL).to_string(),
        withdrawal_id: Some(id(WITHDRAWAL)),
        provider: lines.next(),
        also_listed: lines.collect(),
    }
}

/// What a run may not change for an untrusted line: the account, the system account
/// and the withdrawal.
fn money_state(ledger: &Ledger) -> (Option<Account>, Option<Account>, Option<Withdrawal>) {
    (
        ledger.account(id(ACCOUNT)).cloned(),
        ledger.account(system_account_id(eur())).cloned(),
        ledger.withdrawal(id(WITHDRAWAL)).cloned(),
    )
}

fn only_mismatch(events: &[Event]) -> &ReconciliationMismatchFound {
    match events {
        [Event::ReconciliationMismatchFound(m)] => m,
        other => panic!("expected one mismatch, got {other:?}"),
    }
}

#[test]
fn untrusted_lines_are_flagged_for_a_person_in_every_state_and_again_on_every_run() {
    use MismatchKind::*;
    let cases: Vec<(&str, Vec<ProviderRecord>, MismatchKind)> = vec![
        ("zero", vec![line(true, 0, "EUR")], InvalidAmount),
        ("negative", vec![line(true, -1, "EUR")], InvalidAmount),
        ("rejected with a negative amount", vec![line(false, -300, "EUR")], InvalidAmount),
        ("i64::MAX", vec![line(true, i64::MAX, "EUR")], InvalidAmount),
        ("i64::MIN", vec![line(true, i64::MIN, "EUR")], InvalidAmount),
        ("AMOUNT_MAX + 1", vec![line(true, AMOUNT_MAX + 1, "EUR")], InvalidAmount),
        ("not an integer", vec![defective(LineDefect::AmountNotInteger)], InvalidAmount),
        ("garbled status", vec![defective(unreadable("status"))], MalformedLine),
        ("missing currency", vec![defective(unreadable("currency"))], MalformedLine),
        ("foreign currency", vec![line(true, 300, "USD")], CurrencyMismatch),
        ("lower-case currency", vec![line(true, 300, "eur")], CurrencyMismatch),
        ("garbled currency code", vec![line(true, 300, "€")], CurrencyMismatch),
        ("listed twice, equal", vec![line(true, 300, "EUR"), line(true, 300, "EUR")], DuplicateReference),
        ("listed twice, different", vec![line(true, 300, "EUR"), line(true, 350, "EUR")], DuplicateReference),
        ("settled and rejected", vec![line(true, 300, "EUR"), line(false, 300, "EUR")], DuplicateReference),
        (
            "listed twice, one malformed",
            vec![line(true, 300, "EUR"), defective(LineDefect::AmountNotInteger)],
            DuplicateReference,
        ),
        ("listed thrice", vec![line(true, 1, "EUR"), line(true, 2, "EUR"), line(true, 3, "EUR")], DuplicateReference),
    ];
    for status in [WithdrawalStatus::Pending, WithdrawalStatus::Settled, WithdrawalStatus::Failed] {
        for (name, lines, kind) in &cases {
            let mut ledger = given(status);
            let before = money_state(&ledger);
            for run_id in [id(RUN), id(RUN + 1)] {
                if run_id != id(RUN) {
                    start(&mut ledger, run_id);
                }
                let events = run(&mut ledger, Command::ReconcilePayout(command(run_id, lines.clone())))
                    .unwrap_or_else(|e| panic!("{name} ({status:?}): refused with {e:?}"));
                let m = only_mismatch(&events);
                assert_eq!((m.kind.as_str(), m.resolution.as_str()), (kind.as_str(), "flagged"), "{name} ({status:?})");
                assert_eq!(m.withdrawal_id, Some(id(WITHDRAWAL)), "{name}");
                assert!(m.ours.is_some() && m.theirs.is_some(), "{name}: both sides shown");
                assert_eq!(money_state(&ledger), before, "{name} ({status:?}): nothing moved");
            }
            assert!(ledger.balance_sums().values().all(|s| *s == 0));
        }
    }
}

#[test]
fn every_line_of_a_duplicated_reference_is_shown() {
    let mut ledger = given(WithdrawalStatus::Settled);
    let lines = vec![line(true, 300, "EUR"), line(true, 350, "EUR"), defective(unreadable("settled_at"))];
    let events = run(&mut ledger, Command::ReconcilePayout(command(id(RUN), lines))).expect("decided");
    let theirs = only_mismatch(&events).theirs.clone().expect("theirs");
    assert_eq!(theirs["lines_total"], 3);
    let amounts: Vec<_> = theirs["lines"].as_array().expect("lines").iter().map(|l| l["amount"].clone()).collect();
    assert_eq!(amounts, vec![serde_json::json!(300), serde_json::json!(350), serde_json::Value::Null]);
    assert_eq!(theirs["lines"][2]["unreadable"], "settled_at");

    let many: Vec<ProviderRecord> = (0..100).map(|n| line(true, n + 1, "EUR")).collect();
    let events = run(&mut ledger, Command::ReconcilePayout(command(id(RUN), many))).expect("decided");
    let theirs = only_mismatch(&events).theirs.clone().expect("theirs");
    assert_eq!(theirs["lines_total"], 100);
    assert_eq!(theirs["lines"].as_array().map(Vec::len), Some(STATEMENT_LINES_SHOWN_MAX));
}

#[test]
fn lines_of_no_known_withdrawal_are_flagged_by_what_is_wrong_with_them() {
    let mut ledger = given(WithdrawalStatus::Settled);
    let stranger = |lines: Vec<ProviderRecord>, withdrawal_id: Option<Uuid>| {
        let mut c = command(id(RUN), lines);
        c.reference = withdrawal_id.map_or_else(|| "not-ours".to_owned(), |w| w.to_string());
        c.withdrawal_id = withdrawal_id;
        c
    };
    let cases = [
        (stranger(vec![line(true, 999, "EUR")], None), MismatchKind::UnknownReference),
        (stranger(vec![line(true, 999, "USD")], Some(id(777))), MismatchKind::UnknownReference),
        (stranger(vec![line(true, 0, "EUR")], None), MismatchKind::InvalidAmount),
        (stranger(vec![line(true, 5, "EUR"), line(true, 5, "EUR")], None), MismatchKind::DuplicateReference),
        (stranger(vec![defective(unreadable("reference"))], None), MismatchKind::MalformedLine),
    ];
    let before = money_state(&ledger);
    for (c, kind) in cases {
        let events = run(&mut ledger, Command::ReconcilePayout(c.clone())).expect("decided");
        let m = only_mismatch(&events);
        assert_eq!((m.kind.as_str(), m.resolution.as_str()), (kind.as_str(), "flagged"), "{c:?}");
        assert_eq!(m.ours, None);
    }
    assert_eq!(money_state(&ledger), before);
}

#[test]
fn the_table_still_applies_to_well_formed_lines_and_a_second_run_moves_nothing() {
    use WithdrawalStatus::*;
    // (ledger says, provider says settled?, amount) → kind, resolution, balance after.
    let cases = [
        (Settled, true, 300, None, 700),
        (Settled, true, 350, Some((MismatchKind::AmountMismatch, "adjusted")), 650),
        (Settled, true, 1, Some((MismatchKind::AmountMismatch, "adjusted")), 999),
        (Settled, true, AMOUNT_MAX, Some((MismatchKind::AmountMismatch, "adjusted")), 1_000 - AMOUNT_MAX),
        (Pending, true, 300, Some((MismatchKind::SettledAtProvider, "settled")), 700),
        (Pending, true, 310, Some((MismatchKind::SettledAtProvider, "settled")), 690),
        (Failed, true, 300, Some((MismatchKind::SettledAtProvider, "settled")), 700),
        (Settled, false, 300, Some((MismatchKind::RejectedAtProvider, "credited_back")), 1_000),
        (Pending, false, 300, Some((MismatchKind::RejectedAtProvider, "failed")), 1_000),
        (Failed, false, 300, None, 1_000),
    ];
    for (status, settled, provider_amount, expected, balance) in cases {
        let mut ledger = given(status);
        let name = format!("{status:?} here, {settled} {provider_amount} there");
        let events =
            run(&mut ledger, Command::ReconcilePayout(command(id(RUN), vec![line(settled, provider_amount, "EUR")])))
                .expect("decided");
        match expected {
            None => assert!(events.is_empty(), "{name}: matched"),
            Some((kind, resolution)) => {
                let Some(Event::ReconciliationMismatchFound(m)) = events.last() else { panic!("{name}: {events:?}") };
                assert_eq!((m.kind.as_str(), m.resolution.as_str()), (kind.as_str(), resolution), "{name}");
                assert_eq!(m.account_below_limit, balance < 0, "{name}");
            }
        }
        assert_eq!(ledger.account(id(ACCOUNT)).map(|a| a.balance), Some(Money::new(balance)), "{name}");
        let after_first = money_state(&ledger);
        start(&mut ledger, id(RUN + 1));
        let again = run(
            &mut ledger,
            Command::ReconcilePayout(command(id(RUN + 1), vec![line(settled, provider_amount, "EUR")])),
        )
        .expect("decided");
        assert!(again.is_empty(), "{name}: the second run finds nothing: {again:?}");
        assert_eq!(money_state(&ledger), after_first, "{name}");
        assert!(ledger.balance_sums().values().all(|s| *s == 0));
    }
}

#[test]
fn a_settled_payout_missing_at_the_provider_is_flagged_on_every_run() {
    for status in [WithdrawalStatus::Settled, WithdrawalStatus::Pending, WithdrawalStatus::Failed] {
        let mut ledger = given(status);
        let before = money_state(&ledger);
        for run_id in [id(RUN), id(RUN + 1)] {
            if run_id != id(RUN) {
                start(&mut ledger, run_id);
            }
            let events = run(&mut ledger, Command::ReconcilePayout(command(run_id, Vec::new()))).expect("decided");
            if status == WithdrawalStatus::Settled {
                let m = only_mismatch(&events);
                assert_eq!((m.kind.as_str(), m.resolution.as_str()), ("missing_at_provider", "flagged"));
            } else {
                assert!(events.is_empty(), "{status:?}");
            }
        }
        assert_eq!(money_state(&ledger), before);
    }
}

#[test]
fn a_correction_that_would_overflow_a_balance_is_flagged_not_made() {
    // Withdraw AMOUNT_MAX and settle it, then fill the account close to i64::MAX: a
    // credit of that payout back would overflow the account's balance.
    let mut ledger = given(WithdrawalStatus::Settled);
    deposit(&mut ledger, 2, AMOUNT_MAX);
    withdraw(&mut ledger, WITHDRAWAL + 1, AMOUNT_MAX);
    bring_to(&mut ledger, WITHDRAWAL + 1, WithdrawalStatus::Settled);
    let balance = ledger.account(id(ACCOUNT)).map_or(0, |a| a.balance.minor_units());
    for n in 0..(i128::from(i64::MAX) - balance) / i128::from(AMOUNT_MAX) {
        deposit(&mut ledger, 10 + n as u128, AMOUNT_MAX);
    }
    let before = (ledger.account(id(ACCOUNT)).cloned(), ledger.withdrawal(id(WITHDRAWAL + 1)).cloned());
    for (settled, provider_amount, kind) in
        [(true, 1, MismatchKind::AmountMismatch), (false, AMOUNT_MAX, MismatchKind::RejectedAtProvider)]
    {
        let mut c = command(id(RUN), vec![line(settled, provider_amount, "EUR")]);
        c.withdrawal_id = Some(id(WITHDRAWAL + 1));
        c.reference = id(WITHDRAWAL + 1).to_string();
        let events = run(&mut ledger, Command::ReconcilePayout(c)).expect("flagged, not refused");
        let m = only_mismatch(&events);
        assert_eq!((m.kind.as_str(), m.resolution.as_str()), (kind.as_str(), "flagged"));
    }
    assert_eq!((ledger.account(id(ACCOUNT)).cloned(), ledger.withdrawal(id(WITHDRAWAL + 1)).cloned()), before);
}

#[test]
fn a_corrupted_settled_amount_in_the_history_cannot_make_reconciliation_panic() {
    // No decision records such a withdrawal; a tampered snapshot or log could.
    for settled_amount in [i64::MIN, i64::MIN + 1, i64::MAX, -1, 0] {
        let mut ledger = given(WithdrawalStatus::Settled);
        let mut stream = ledger.stream(id(WITHDRAWAL)).cloned().expect("withdrawal stream");
        if let Aggregate::Withdrawal(w) = &mut stream.aggregate {
            w.settled_amount = Some(Money::new(settled_amount));
        }
        ledger.insert(id(WITHDRAWAL), stream);
        for (settled, provider_amount) in [(true, 1), (true, AMOUNT_MAX), (false, 300)] {
            let decided = decide(
                &Command::ReconcilePayout(command(id(RUN), vec![line(settled, provider_amount, "EUR")])),
                &ledger,
            );
            let events = decided.expect("decided, never refused");
            // Whatever was decided can be applied: balanced, and no posting overflows.
            let mut after = ledger.clone();
            for e in &events {
                after.apply(e);
            }
        }
    }
}

#[test]
fn mismatch_kinds_have_distinct_snake_case_names() {
    let names: std::collections::BTreeSet<&str> = MismatchKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(names.len(), MismatchKind::ALL.len());
    assert!(names.iter().all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
}

#[test]
fn commands_recorded_before_v1_1_still_deserialize() {
    let old = serde_json::json!({
        "run_id": id(RUN), "reference": "r", "withdrawal_id": null,
        "provider": { "provider_ref": "p", "settled": true, "amount": 5 },
    });
    let c: ReconcilePayout = serde_json::from_value(old).expect("old shape");
    assert!(c.also_listed.is_empty());
    assert_eq!(c.provider.map(|p| (p.currency, p.defect)), Some((None, None)));
}

/// A statement line of the property test, aimed at one of four withdrawals (target
/// 0..=3) or at a reference the ledger does not know (4).
#[derive(Clone, Debug)]
struct Line {
    target: usize,
    settled: bool,
    amount: i64,
    currency: &'static str,
    defect: Option<LineDefect>,
}

fn any_line() -> impl Strategy<Value = Line> {
    let amount = prop_oneof![
        4 => 1i64..1_000,
        1 => prop::sample::select(vec![0, -1, i64::MIN, i64::MAX, AMOUNT_MAX, AMOUNT_MAX + 1, 1]),
        1 => any::<i64>(),
    ];
    let currency = prop_oneof![6 => Just("EUR"), 1 => Just("USD"), 1 => Just("eur")];
    let defect = prop_oneof![
        8 => Just(None),
        1 => Just(Some(LineDefect::AmountNotInteger)),
        1 => Just(Some(LineDefect::FieldUnreadable { field: "status".into() })),
    ];
    (0usize..5, any::<bool>(), amount, currency, defect).prop_map(|(target, settled, amount, currency, defect)| Line {
        target,
        settled,
        amount,
        currency,
        defect,
    })
}

fn any_status() -> impl Strategy<Value = WithdrawalStatus> {
    prop::sample::select(vec![WithdrawalStatus::Pending, WithdrawalStatus::Settled, WithdrawalStatus::Failed])
}

/// The statement grouped by reference, as the reconciler sends it: one command each.
fn commands(run_id: Uuid, lines: &[Line]) -> Vec<ReconcilePayout> {
    (0..5)
        .filter_map(|target| {
            let records: Vec<ProviderRecord> = lines
                .iter()
                .filter(|l| l.target == target)
                .map(|l| ProviderRecord {
                    provider_ref: format!("prv_{target}"),
                    settled: l.settled,
                    amount: l.amount,
                    currency: Some(l.currency.to_owned()),
                    defect: l.defect.clone(),
                    line: None,
                })
                .collect();
            let mut records = records.into_iter();
            let first = records.next()?;
            let withdrawal = id(WITHDRAWAL + target as u128);
            Some(ReconcilePayout {
                run_id,
                reference: withdrawal.to_string(),
                withdrawal_id: Some(withdrawal),
                provider: Some(first),
                also_listed: records.collect(),
            })
        })
        .collect()
}

proptest! {
    #[test]
    fn any_statement_is_decided_without_panic_and_a_second_run_moves_nothing(
        statuses in prop::collection::vec(any_status(), 3),
        lines in prop::collection::vec(any_line(), 0..12),
    ) {
        let mut ledger = given(WithdrawalStatus::Pending);
        deposit(&mut ledger, 2, 10_000);
        for (i, status) in statuses.iter().enumerate() {
            let w = WITHDRAWAL + 1 + i as u128;
            withdraw(&mut ledger, w, 100 * (i as i64 + 1));
            bring_to(&mut ledger, w, *status);
        }
        // Target 0 is the pending withdrawal of `given`, 1..=3 the ones above (id
        // WITHDRAWAL + target); no withdrawal has the id of target 4.
        for c in commands(id(RUN), &lines) {
            let untrusted = untrusted(&c, ledger.withdrawal(c.withdrawal_id.expect("set")));
            let events = run(&mut ledger, Command::ReconcilePayout(c.clone()));
            prop_assert!(events.is_ok(), "{:?} refused: {:?}", c, events);
            let events = events.unwrap_or_default();
            if let Some(kind) = untrusted {
                let moved = events.iter().any(|e| !matches!(e, Event::ReconciliationMismatchFound(_)));
                prop_assert!(!moved, "{:?}: an untrusted line moved money: {:?}", kind, events);
                prop_assert_eq!(events.len(), 1);
            }
            prop_assert!(ledger.balance_sums().values().all(|s| *s == 0), "money not conserved");
        }
        let after_first: Vec<_> = ledger.streams()
            .filter(|(_, s)| matches!(s.aggregate, Aggregate::Account(_) | Aggregate::Withdrawal(_)))
            .map(|(k, s)| (*k, s.clone()))
            .collect();
        start(&mut ledger, id(RUN + 1));
        for c in commands(id(RUN + 1), &lines) {
            let events = run(&mut ledger, Command::ReconcilePayout(c.clone()));
            prop_assert!(events.is_ok(), "{:?} refused: {:?}", c, events);
            for e in events.unwrap_or_default() {
                let flagged = matches!(&e, Event::ReconciliationMismatchFound(m) if m.resolution == crate::reconcile::Resolution::Flagged);
                prop_assert!(flagged, "the second run decided more than a flag: {:?}", e);
            }
        }
        let after_second: Vec<_> = ledger.streams()
            .filter(|(_, s)| matches!(s.aggregate, Aggregate::Account(_) | Aggregate::Withdrawal(_)))
            .map(|(k, s)| (*k, s.clone()))
            .collect();
        prop_assert_eq!(after_second, after_first);
    }
}

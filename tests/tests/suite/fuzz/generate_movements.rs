//! Planners for money movements: deposits, transfers, reversals and withdrawals, and the
//! model's decision for each (following the Clarifications' order of checks).

use crate::fuzz::expect::{Decision, Effect, Planned, expectation, path_expectation};
use crate::fuzz::fuzzer::Fuzz;
use crate::fuzz::model::{Account, Class, TransferRec};
use crate::fuzz::wire::Body;
use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::Value;
use uuid::Uuid;

impl Fuzz {
    /// Deposit (`debit` false) or withdrawal (`debit` true) decision for a valid body.
    pub(crate) fn decide_single(&self, account: Uuid, currency: &str, amount: i128, debit: bool) -> Decision {
        let a = match self.model.classify(account) {
            Class::Reserved => return Decision::Refuse(vec![404, 409, 422]),
            Class::Unknown => return Decision::Reject(vec![(404, "account_not_found")]),
            Class::Customer(a) => a,
        };
        let mut errors = Vec::new();
        if !a.open {
            errors.push((422, "account_closed"));
        }
        if a.currency != currency {
            errors.push((422, "currency_mismatch"));
        }
        if !errors.is_empty() {
            // "Order of checks": not found, closed, same account, currency mismatch.
            return Decision::Reject(errors[..1].to_vec());
        }
        if debit {
            if a.available() - amount < -a.overdraft {
                return Decision::Reject(vec![(422, "insufficient_funds")]);
            }
            if a.holds + amount > i128::from(i64::MAX) {
                return Decision::Refuse(vec![422]);
            }
            return Decision::Accept(202);
        }
        // A customer balance stays within 64 bits; a system account's is kept in 128
        // (issue 26: no client can exhaust it).
        let overflow = a.balance + amount > i128::from(i64::MAX);
        if overflow { Decision::Refuse(vec![422]) } else { Decision::Accept(201) }
    }

    pub(crate) fn decide_transfer(&self, from: Uuid, to: Uuid, currency: &str, amount: i128) -> Decision {
        let (f, t) = (self.model.classify(from), self.model.classify(to));
        if matches!(f, Class::Reserved) || matches!(t, Class::Reserved) {
            return Decision::Refuse(vec![404, 409, 422]);
        }
        let mut errors = Vec::new();
        let known: Vec<&Account> = [&f, &t]
            .into_iter()
            .filter_map(|c| match c {
                Class::Customer(a) => Some(a),
                _ => None,
            })
            .collect();
        if known.len() < 2 {
            errors.push((404, "account_not_found"));
        }
        if known.iter().any(|a| !a.open) {
            errors.push((422, "account_closed"));
        }
        if from == to {
            errors.push((422, "same_account"));
        }
        if known.iter().any(|a| a.currency != currency) {
            errors.push((422, "currency_mismatch"));
        }
        if !errors.is_empty() {
            // "Order of checks": not found, closed, same account, currency mismatch.
            return Decision::Reject(errors[..1].to_vec());
        }
        let (Class::Customer(f), Class::Customer(t)) = (f, t) else { unreachable!("both are known") };
        if f.available() - amount < -f.overdraft {
            return Decision::Reject(vec![(422, "insufficient_funds")]);
        }
        if t.balance + amount > i128::from(i64::MAX) {
            return Decision::Refuse(vec![422]);
        }
        Decision::Accept(201)
    }

    /// Movement metadata (v1.1): plausible requests sometimes carry valid metadata.
    pub(crate) fn movement_metadata(&mut self, b: &mut Body, hostile: bool) -> Option<Option<Value>> {
        b.field("metadata", self.g_metadata(hostile, "mv_metadata", 0.1))
    }

    pub(crate) fn plan_deposit(&mut self) -> Planned {
        let hostile = self.hostile_part(&["account", "amount", "currency", "reference", "metadata", "top"]);
        let target = if self.rng.random_bool(0.05) {
            self.model.customers.choose(&mut self.rng).and_then(|id| self.model.accounts.get(id)).cloned()
        } else {
            self.pick_open_account(None)
        };
        let (want_id, want_currency) = match &target {
            Some(a) => (a.id, a.currency),
            None => (self.unknown_id(), "EUR"),
        };
        let mut b = Body::default();
        let account = b.field("account_id", self.g_ref("account_id", hostile == Some("account"), want_id));
        let amount = b.field("amount", self.g_amount("amount", hostile == Some("amount"), 1000));
        let currency =
            b.field("currency", self.g_currency("currency", hostile == Some("currency"), want_currency, true));
        b.field("reference", self.g_text("reference", hostile == Some("reference"), false));
        let metadata = self.movement_metadata(&mut b, hostile == Some("metadata"));
        if hostile == Some("top") {
            self.mutate_top(&mut b);
        }
        let (decision, effect) = match (account, currency, amount) {
            (Some(account), Some(currency), Some(amount)) => (
                self.decide_single(account, currency, amount, false),
                Effect::Deposit { account, currency, amount, metadata },
            ),
            _ => (Decision::Open, Effect::None),
        };
        let expect = expectation(b.validity(), decision);
        let (label, req, expect) = self.command("deposit", "/v1/deposits".into(), &b, expect);
        let mut touches: Vec<Uuid> = account.into_iter().collect();
        touches.extend(currency.and_then(|c| self.model.systems.get(c).copied()));
        Planned { label, req, expect, effect, touches }
    }

    pub(crate) fn plan_transfer(&mut self) -> Planned {
        let hostile = self.hostile_part(&["from", "to", "amount", "currency", "reference", "metadata", "top"]);
        let from = self.pick_funded_account();
        let (from_id, currency, typical) = match &from {
            Some(a) => (a.id, a.currency, (a.available() + a.overdraft).clamp(1, 5000)),
            None => (self.unknown_id(), "EUR", 100),
        };
        let roll = self.rng.random_range(0..100);
        let to = match roll {
            0..=3 => Some(from_id),
            4..=7 => self.model.customers.choose(&mut self.rng).copied(),
            _ => {
                let others: Vec<Uuid> = self
                    .model
                    .open_customers()
                    .into_iter()
                    .filter(|a| a.currency == currency && a.id != from_id)
                    .map(|a| a.id)
                    .collect();
                others.choose(&mut self.rng).copied()
            }
        };
        let to_id = match to {
            Some(id) => id,
            None => self.unknown_id(),
        };
        let typical = if self.rng.random_bool(0.1) { typical * 3 } else { typical };
        let mut b = Body::default();
        let from = b.field("from", self.g_ref("from", hostile == Some("from"), from_id));
        let to = b.field("to", self.g_ref("to", hostile == Some("to"), to_id));
        let amount = b.field("amount", self.g_amount("amount", hostile == Some("amount"), typical));
        let currency = b.field("currency", self.g_currency("currency", hostile == Some("currency"), currency, true));
        b.field("reference", self.g_text("reference", hostile == Some("reference"), false));
        let metadata = self.movement_metadata(&mut b, hostile == Some("metadata"));
        if hostile == Some("top") {
            self.mutate_top(&mut b);
        }
        let (decision, effect) = match (from, to, currency, amount) {
            (Some(from), Some(to), Some(currency), Some(amount)) => (
                self.decide_transfer(from, to, currency, amount),
                Effect::Transfer { from, to, currency, amount, metadata },
            ),
            _ => (Decision::Open, Effect::None),
        };
        let expect = expectation(b.validity(), decision);
        let (label, req, expect) = self.command("transfer", "/v1/transfers".into(), &b, expect);
        Planned { label, req, expect, effect, touches: [from, to].into_iter().flatten().collect() }
    }

    pub(crate) fn pick_funded_account(&mut self) -> Option<Account> {
        let open = self.model.open_customers();
        let funded: Vec<&Account> = open.iter().filter(|a| a.available() + a.overdraft > 0).collect();
        if !funded.is_empty() && self.rng.random_bool(0.9) {
            return funded.choose(&mut self.rng).map(|a| (*a).clone());
        }
        open.choose(&mut self.rng).cloned()
    }

    pub(crate) fn plan_reverse(&mut self) -> Planned {
        let hostile = self.hostile_part(&["path", "reason", "reason", "top"]);
        let unreversed: Vec<TransferRec> = self.model.transfers.iter().filter(|t| !t.reversed).cloned().collect();
        let target = if !unreversed.is_empty() && self.rng.random_bool(0.75) {
            unreversed.choose(&mut self.rng).cloned()
        } else {
            self.model.transfers.choose(&mut self.rng).cloned()
        };
        let mut b = Body::default();
        b.field("reason", self.g_text("reason", hostile == Some("reason"), true));
        if hostile == Some("top") {
            self.mutate_top(&mut b);
        }
        let path_variant = if hostile == Some("path") || target.is_none() {
            self.variant("path", &["unknown", "account_id", "garbage", "nul", "ff", "upper", "long"])
        } else {
            None
        };
        let (segment, decision, effect) = match (path_variant, &target) {
            (None | Some("upper"), Some(t)) => {
                let segment = if path_variant.is_some() { t.id.to_string().to_uppercase() } else { t.id.to_string() };
                let decision = self.decide_reverse(t);
                let decision = if path_variant.is_some() {
                    match decision {
                        Decision::Accept(_) => Decision::Open,
                        Decision::Reject(mut c) => {
                            c.push((404, "not_found"));
                            Decision::Reject(c)
                        }
                        other => other,
                    }
                } else {
                    decision
                };
                (segment, decision, Effect::Reverse { transfer: t.id })
            }
            (Some("account_id"), _) => {
                let id = self.model.customers.choose(&mut self.rng).copied().unwrap_or_else(Uuid::nil);
                (id.to_string(), Decision::Reject(vec![(404, "not_found")]), Effect::None)
            }
            (Some("garbage"), _) => ("not-a-uuid".into(), Decision::Refuse(vec![400, 404]), Effect::None),
            (Some("nul"), _) => ("%00".into(), Decision::Refuse(vec![400, 404]), Effect::None),
            (Some("ff"), _) => ("%FF".into(), Decision::Refuse(vec![400, 404]), Effect::None),
            (Some("long"), _) => ("a".repeat(3000), Decision::Refuse(vec![400, 404, 414]), Effect::None),
            _ => (self.unknown_id().to_string(), Decision::Reject(vec![(404, "not_found")]), Effect::None),
        };
        let expect = path_expectation(path_variant, &b, decision);
        let (mut label, req, expect) = self.command("reverse", format!("/v1/transfers/{segment}/reverse"), &b, expect);
        if let Some(v) = path_variant {
            label += &format!("+path={v}");
        }
        let touches = target.map(|t| vec![t.from, t.to]).unwrap_or_default();
        Planned { label, req, expect, effect, touches }
    }

    pub(crate) fn decide_reverse(&self, t: &TransferRec) -> Decision {
        let mut errors = Vec::new();
        if t.reversed {
            errors.push((422, "already_reversed"));
        }
        let (Some(payer), Some(payee)) =
            (self.model.accounts.get(&t.to).cloned(), self.model.accounts.get(&t.from).cloned())
        else {
            return Decision::Open;
        };
        if !payer.open || !payee.open {
            errors.push((422, "account_closed"));
        }
        let decision = if !errors.is_empty() {
            Decision::Reject(errors)
        } else if payer.available() - t.amount < -payer.overdraft {
            Decision::Reject(vec![(422, "insufficient_funds")])
        } else {
            Decision::Accept(201)
        };
        // Reversing a reversal is a transfer like any other, or refused: the contract
        // does not say.
        match (t.is_reversal, decision) {
            (true, Decision::Accept(_)) => Decision::Open,
            (true, _) => Decision::Refuse(vec![404, 409, 422]),
            (false, d) => d,
        }
    }

    pub(crate) fn plan_withdraw(&mut self) -> Planned {
        let hostile = self.hostile_part(&["account", "amount", "currency", "destination", "metadata", "top"]);
        let target = self.pick_funded_account();
        let (want_id, want_currency, typical) = match &target {
            Some(a) => (a.id, a.currency, (a.available() + a.overdraft).clamp(1, 2000)),
            None => (self.unknown_id(), "EUR", 100),
        };
        let typical = if self.rng.random_bool(0.1) { typical * 3 } else { typical };
        let mut b = Body::default();
        let account = b.field("account_id", self.g_ref("account_id", hostile == Some("account"), want_id));
        let amount = b.field("amount", self.g_amount("amount", hostile == Some("amount"), typical));
        let currency =
            b.field("currency", self.g_currency("currency", hostile == Some("currency"), want_currency, true));
        b.field("destination", self.g_text("destination", hostile == Some("destination"), true));
        let metadata = self.movement_metadata(&mut b, hostile == Some("metadata"));
        if hostile == Some("top") {
            self.mutate_top(&mut b);
        }
        let (decision, effect) = match (account, currency, amount) {
            (Some(account), Some(currency), Some(amount)) => {
                (self.decide_single(account, currency, amount, true), Effect::Withdraw { account, amount, metadata })
            }
            _ => (Decision::Open, Effect::None),
        };
        let expect = expectation(b.validity(), decision);
        let (label, req, expect) = self.command("withdraw", "/v1/withdrawals".into(), &b, expect);
        Planned { label, req, expect, effect, touches: account.into_iter().collect() }
    }
}

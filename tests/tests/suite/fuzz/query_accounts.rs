//! Account queries: by id (with the consistency parameters), by owner, and balances, current
//! and historical (`at_position`, `as_of`).

use crate::fuzz::fuzzer::Fuzz;
use crate::fuzz::model::Account;
use crate::fuzz::wire::{Req, Resp, pct};
use crate::fuzz::{OWNERS, VALIDATION};
use rand::Rng;
use rand::seq::IndexedRandom;
use std::collections::BTreeSet;
use uuid::Uuid;

impl Fuzz {
    pub(crate) async fn q_account(&mut self) {
        let head = self.model.head;
        let params = [
            ("none", String::new(), true),
            ("eventual", "?consistency=eventual".into(), true),
            ("strong", "?consistency=strong".into(), true),
            ("min_position", format!("?min_position={head}"), true),
            ("min_position=-1", "?min_position=-1".into(), false),
            ("min_position=abc", "?min_position=abc".into(), false),
            ("min_position=2^67", "?min_position=99999999999999999999".into(), false),
            ("min_position=1e3", "?min_position=1e3".into(), false),
            ("STRONG", "?consistency=STRONG".into(), false),
            ("consistency=", "?consistency=".into(), false),
            ("consistency=nul", "?consistency=%00".into(), false),
            ("strong+min", "?consistency=strong&min_position=1".into(), false),
            ("dup", "?consistency=strong&consistency=eventual".into(), false),
            ("unknown_ff", "?x=%FF".into(), false),
        ];
        let (pname, query, valid) = params.choose(&mut self.rng).cloned().expect("params");
        let target = self.model.customers.choose(&mut self.rng).copied();
        let variants = ["known", "known", "known", "known", "unknown", "reserved", "nul", "ff", "long", "upper"];
        let v = if target.is_some() { variants.choose(&mut self.rng).copied().expect("variants") } else { "unknown" };
        let segment = match (v, target) {
            ("known", Some(id)) => id.to_string(),
            ("upper", Some(id)) => id.to_string().to_uppercase(),
            ("reserved", _) => {
                let reserved: Vec<Uuid> = self.model.reserved().into_iter().collect();
                reserved.choose(&mut self.rng).expect("reserved").to_string()
            }
            ("nul", _) => "%00".into(),
            ("ff", _) => "%FF%FE".into(),
            ("long", _) => "b".repeat(5000),
            _ => self.unknown_id().to_string(),
        };
        let label = format!("q.account/{v}+{pname}");
        let (req, resp) = self.query(&label, format!("/v1/accounts/{segment}{query}")).await;
        match (v, target) {
            ("known", Some(id)) if valid => {
                if resp.status == 503 {
                    return;
                }
                if resp.status != 200 {
                    return self.query_fail(&label, "a known account is not 200", &req, &resp);
                }
                let a = self.model.accounts.get(&id).cloned().expect("a model account");
                if pname != "none" && pname != "eventual" {
                    let diffs = Fuzz::diff(&a, &resp.body, true);
                    if !diffs.is_empty() {
                        let what = format!("{pname} read differs from the model: {}", diffs.join("; "));
                        self.query_fail(&label, &what, &req, &resp);
                    }
                }
            }
            ("known", Some(_)) => {
                if resp.status == 404 {
                    self.query_fail(&label, "a known account answered 404", &req, &resp);
                }
                self.lenient(&label, &req, &resp);
            }
            ("unknown", _) if valid => {
                if (resp.status, resp.code()) != (404, "account_not_found") {
                    self.query_fail(&label, "an unknown account is not 404 account_not_found", &req, &resp);
                }
            }
            _ => {
                if resp.ok() && v != "reserved" && v != "upper" {
                    self.query_fail(&label, "a malformed id answered 2xx", &req, &resp);
                }
            }
        }
    }

    pub(crate) async fn q_owner(&mut self) {
        let head = self.model.head;
        let owner = *OWNERS.choose(&mut self.rng).expect("owners");
        let variants =
            ["known", "known", "known", "nul", "ff", "bad_utf8", "long", "empty", "missing", "plus", "dup", "unknown"];
        let v = *variants.choose(&mut self.rng).expect("variants");
        let query = match v {
            "known" => format!("owner={}&min_position={head}", pct(owner)),
            "nul" => "owner=a%00b".into(),
            "ff" => "owner=%FF".into(),
            "bad_utf8" => "owner=%C3%28".into(),
            "long" => format!("owner={}", "o".repeat(10_000)),
            "empty" => "owner=".into(),
            "missing" => "consistency=eventual".into(),
            "plus" => "owner=a+b%2Bc".into(),
            "dup" => format!("owner={}&owner=x", pct(owner)),
            _ => format!("owner=nobody-{}@example.com", self.rng.random::<u32>()),
        };
        let label = format!("q.owner/{v}");
        let (req, resp) = self.query(&label, format!("/v1/accounts?{query}")).await;
        let ids: BTreeSet<Uuid> = resp.body["accounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()))
            .collect();
        match v {
            "known" if resp.status != 503 => {
                let want: BTreeSet<Uuid> = self
                    .model
                    .accounts
                    .values()
                    .filter(|a| a.owner.as_ref().is_some_and(|o| o.as_deref() == Some(owner)))
                    .map(|a| a.id)
                    .collect();
                let unknown: BTreeSet<Uuid> =
                    self.model.accounts.values().filter(|a| a.owner.is_none()).map(|a| a.id).collect();
                let extra: Vec<&Uuid> = ids.difference(&want).filter(|i| !unknown.contains(i)).collect();
                let missing: Vec<&Uuid> = want.difference(&ids).collect();
                if resp.status != 200 || !extra.is_empty() || !missing.is_empty() {
                    let what = format!("owner look-up: missing {missing:?}, extra {extra:?}");
                    self.query_fail(&label, &what, &req, &resp);
                }
            }
            "unknown" => {
                if resp.status != 200 || !ids.is_empty() {
                    self.query_fail(&label, "an unknown owner is not 200 with no accounts", &req, &resp);
                }
            }
            _ => self.lenient(&label, &req, &resp),
        }
    }

    pub(crate) async fn q_balance(&mut self) {
        let clean: Vec<Account> = self.model.accounts.values().filter(|a| !a.system && !a.tainted).cloned().collect();
        let Some(a) = clean.choose(&mut self.rng).cloned() else { return };
        let head = self.model.head;
        let n = self.rng.random_range(0..=head);
        let variants = [
            "at",
            "at",
            "at",
            "at_head",
            "beyond",
            "negative",
            "garbage",
            "huge",
            "1e3",
            "future",
            "epoch",
            "as_of_bad",
            "as_of_nul",
            "both",
            "neither",
            "unknown",
        ];
        let v = *variants.choose(&mut self.rng).expect("variants");
        let (id, query) = match v {
            "at" => (a.id, format!("at_position={n}")),
            "at_head" => (a.id, format!("at_position={head}")),
            "beyond" => (a.id, format!("at_position={}", head + 1_000_000)),
            "negative" => (a.id, "at_position=-1".into()),
            "garbage" => (a.id, "at_position=abc".into()),
            "huge" => (a.id, "at_position=99999999999999999999".into()),
            "1e3" => (a.id, "at_position=1e3".into()),
            "future" => (a.id, "as_of=2999-01-01T00:00:00Z".into()),
            "epoch" => (a.id, "as_of=1970-01-01T00:00:00Z".into()),
            "as_of_bad" => (a.id, "as_of=yesterday".into()),
            "as_of_nul" => (a.id, "as_of=%00".into()),
            "both" => (a.id, format!("at_position={head}&as_of=2999-01-01T00:00:00Z")),
            "neither" => (a.id, String::new()),
            _ => (self.unknown_id(), format!("at_position={head}")),
        };
        let label = format!("q.balance/{v}");
        let (req, resp) = self.query(&label, format!("/v1/accounts/{id}/balance?{query}")).await;
        let at = match v {
            "at" => Some(n),
            "at_head" | "future" => Some(i64::MAX),
            _ => None,
        };
        if let Some(at) = at {
            return self.check_balance_at(&label, &a, at, &req, &resp);
        }
        match v {
            "beyond" => {
                if (resp.status, resp.code()) != (422, "validation_error") {
                    let what = "at_position beyond the head is not 422 validation_error (Clarifications)";
                    self.query_fail(&label, what, &req, &resp);
                }
            }
            "epoch" => {
                let zero = resp.status == 200 && resp.body["balance"] == 0;
                if !(zero || (resp.status, resp.code()) == (404, "account_not_found")) {
                    self.query_fail(&label, "before the account existed: not 404 nor a zero balance", &req, &resp);
                }
            }
            "unknown" => {
                if (resp.status, resp.code()) != (404, "account_not_found") {
                    self.query_fail(&label, "an unknown account is not 404 account_not_found", &req, &resp);
                }
            }
            _ => {
                if !VALIDATION.contains(&(resp.status, resp.code())) {
                    self.query_fail(&label, "a malformed as_of/at_position is not a validation_error", &req, &resp);
                }
            }
        }
    }

    /// The balance at a position equals the model's history there.
    pub(crate) fn check_balance_at(&mut self, label: &str, a: &Account, at: i64, req: &Req, resp: &Resp) {
        let then = a.history.iter().rev().find(|(p, _, _)| *p <= at);
        match then {
            None => {
                let zero = resp.status == 200 && resp.body["balance"] == 0;
                if !(zero || (resp.status, resp.code()) == (404, "account_not_found")) {
                    self.query_fail(label, "before the account existed: not 404 nor a zero balance", req, resp);
                }
            }
            Some((_, balance, holds)) => {
                let ok = resp.status == 200
                    && resp.body["balance"].as_i64().map(i128::from) == Some(*balance)
                    && resp.body["available"].as_i64().map(i128::from) == Some(balance - holds);
                let position_ok = at == i64::MAX || resp.body["as_of_position"] == at;
                if !ok || !position_ok {
                    let what =
                        format!("historical balance differs from the model's (balance {balance}, holds {holds})");
                    self.query_fail(label, &what, req, resp);
                }
            }
        }
    }
}

//! Invariant checks against the server: on every answer (no 5xx, problem documents with stable
//! codes, read positions), after every step (each account's strong read equals the model, money
//! is conserved, the system-account list, the hash chain), and at the end (eventual reads
//! converge, historical balances, pending withdrawals, the fold of the whole log).

use crate::fuzz::STABLE_CODES;
use crate::fuzz::fuzzer::Fuzz;
use crate::fuzz::model::Account;
use crate::fuzz::wire::{Req, Resp};
use rand::seq::IndexedRandom;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

impl Fuzz {
    /// The checks every answer must pass, whatever the request.
    pub(crate) fn check_common(&mut self, label: &str, req: &Req, resp: &Resp) {
        if resp.status == 0 {
            return;
        }
        let waited = req.path.contains("min_position=") || req.path.contains("consistency=strong");
        if resp.status == 503 && resp.code() == "consistency_timeout" && waited && req.method == Method::GET {
            self.consistency_timeouts += 1;
        } else if resp.status >= 500 {
            self.fail(
                format!("{label} :: answered {} {}", resp.status, resp.code()),
                format!("{} -> {}", req.describe(), resp.short()),
            );
        }
        // 414 and 431 come from the HTTP parser before the application sees the request.
        if resp.status >= 400 && resp.status != 414 && resp.status != 431 {
            let problem = resp.header("content-type").is_some_and(|c| c.starts_with("application/problem+json"));
            let coded = STABLE_CODES.contains(&resp.code());
            let status_field = resp.body["status"].as_u64() == Some(u64::from(resp.status));
            if !(problem && coded && status_field) {
                self.fail(
                    format!("{label} :: {} is not a problem document with a stable code", resp.status),
                    format!("{} -> {} (content-type {:?})", req.describe(), resp.short(), resp.header("content-type")),
                );
            }
        }
        if resp.ok() && req.method == Method::GET && resp.position_header().is_none() {
            self.fail(
                format!("{label} :: read without X-Ledger-Position"),
                format!("{} -> {}", req.describe(), resp.short()),
            );
        }
    }

    pub(crate) async fn strong(&mut self, id: Uuid) -> Resp {
        let req = Req::get(format!("/v1/accounts/{id}?consistency=strong"));
        let resp = self.send(&req).await;
        self.check_common("check/strong", &req, &resp);
        resp
    }

    /// The differences between a view and the model's account.
    pub(crate) fn diff(a: &Account, v: &Value, full: bool) -> Vec<String> {
        let mut d = Vec::new();
        let num = |f: &str| v[f].as_i64().map(i128::from);
        for (field, want) in [("balance", a.balance), ("available", a.available()), ("pending_holds", a.holds)] {
            if num(field) != Some(want) {
                d.push(format!("{field} {} (model {want})", v[field]));
            }
        }
        let status = if a.open { "open" } else { "closed" };
        if v["status"] != status {
            d.push(format!("status {} (model {status})", v["status"]));
        }
        if !full {
            return d;
        }
        if v["currency"] != a.currency {
            d.push(format!("currency {} (model {})", v["currency"], a.currency));
        }
        if !a.system && num("overdraft_limit") != Some(a.overdraft) {
            d.push(format!("overdraft_limit {} (model {})", v["overdraft_limit"], a.overdraft));
        }
        if let Some(o) = &a.owner
            && v["owner"] != json!(o)
        {
            d.push(format!("owner {} (model {o:?})", v["owner"]));
        }
        if let Some(m) = &a.metadata
            && v["metadata"] != m.clone().unwrap_or(Value::Null)
        {
            d.push(format!("metadata {} (model {m:?})", v["metadata"]));
        }
        d
    }

    /// The strong read of `id` equals the model; returns the view.
    pub(crate) async fn check_account(&mut self, id: Uuid, after: &str) -> Option<Value> {
        let resp = self.strong(id).await;
        let a = self.model.accounts.get(&id).cloned()?;
        if resp.status != 200 {
            self.fail(
                format!("state :: strong read of a model account answered {}", resp.status),
                format!("after {after}: account {id}: {}", resp.short()),
            );
            return None;
        }
        if resp.position_header().is_some_and(|p| p < self.model.head) {
            self.fail(
                "state :: strong read behind an acknowledged write".into(),
                format!("X-Ledger-Position {:?} < {}", resp.position_header(), self.model.head),
            );
        }
        let diffs = Fuzz::diff(&a, &resp.body, true);
        if !diffs.is_empty() {
            let fields: Vec<&str> = diffs.iter().filter_map(|d| d.split(' ').next()).collect();
            let family = after.split(['+', ':']).next().unwrap_or(after).to_owned();
            self.fail(
                format!("state after {family} :: {} differ from the model", fields.join(",")),
                format!("account {id} ({}) after {after}: {}; view {}", a.currency, diffs.join("; "), resp.body),
            );
            self.adopt(id, &resp.body);
        }
        Some(resp.body)
    }

    /// Keep-going: takes the server's state of an account as the model's from now on.
    pub(crate) fn adopt(&mut self, id: Uuid, v: &Value) {
        let Some(a) = self.model.accounts.get_mut(&id) else { return };
        let num = |f: &str| v[f].as_i64().map(i128::from);
        a.balance = num("balance").unwrap_or(a.balance);
        a.holds = num("pending_holds").unwrap_or(a.holds);
        a.overdraft = num("overdraft_limit").unwrap_or(a.overdraft);
        a.open = v["status"] != "closed";
        a.owner = Some(v["owner"].as_str().map(str::to_owned));
        a.metadata = Some(Some(v["metadata"].clone()).filter(|m| !m.is_null()));
        a.tainted = true;
        self.rebalance_systems();
    }

    /// After adopting server state, the system accounts absorb the difference so the
    /// model's own conservation holds (the server's is checked separately).
    pub(crate) fn rebalance_systems(&mut self) {
        for (currency, sys) in self.model.systems.clone() {
            let others: i128 =
                self.model.accounts.values().filter(|a| a.currency == currency && a.id != sys).map(|a| a.balance).sum();
            if let Some(s) = self.model.accounts.get_mut(&sys) {
                if s.balance != -others {
                    s.tainted = true;
                }
                s.balance = -others;
            }
        }
    }

    pub(crate) async fn resync(&mut self, id: Uuid) {
        if !self.model.accounts.contains_key(&id) {
            return;
        }
        let resp = self.strong(id).await;
        if resp.status == 200 {
            self.adopt(id, &resp.body);
        }
    }

    /// Every account equals the model, and money is conserved per currency.
    pub(crate) async fn sweep(&mut self, after: &str) {
        let ids: Vec<Uuid> = self.model.accounts.keys().copied().collect();
        let mut sums: BTreeMap<String, i128> = BTreeMap::new();
        let mut complete = true;
        for id in ids {
            match self.check_account(id, after).await {
                Some(v) => {
                    let currency = v["currency"].as_str().unwrap_or("?").to_owned();
                    *sums.entry(currency).or_default() += v["balance"].as_i64().map_or(0, i128::from);
                }
                None => complete = false,
            }
        }
        if complete && sums.values().any(|s| *s != 0) {
            self.fail(
                "conservation :: balances do not sum to 0 per currency".into(),
                format!("sums over every account, system accounts included: {sums:?}"),
            );
        }
        let req = Req::get("/v1/system-accounts");
        let resp = self.send(&req).await;
        self.check_common("system-accounts", &req, &resp);
        let listed: BTreeMap<String, String> = resp.body["accounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| (a["currency"].as_str().unwrap_or("").to_owned(), a["id"].as_str().unwrap_or("").to_owned()))
            .collect();
        let model: BTreeMap<String, String> =
            self.model.systems.iter().map(|(c, id)| ((*c).to_owned(), id.to_string())).collect();
        if listed != model {
            self.fail(
                "system-accounts :: the list differs from the currencies in use".into(),
                format!("listed {listed:?}, model {model:?}"),
            );
        }
    }

    pub(crate) async fn verify_chain(&mut self) {
        let req = Req::get("/v1/audit/verify");
        let resp = self.send(&req).await;
        self.check_common("audit-verify", &req, &resp);
        if resp.status != 200 || resp.body["ok"] != true {
            self.fail("audit-verify :: the hash chain does not verify".into(), resp.short());
        }
    }

    /// Eventual reads converge to the model (bounded poll).
    pub(crate) async fn converge(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let ids: Vec<Uuid> = self.model.accounts.keys().copied().collect();
        for id in ids {
            let a = self.model.accounts.get(&id).cloned().expect("a model account");
            loop {
                let req = Req::get(format!("/v1/accounts/{id}"));
                let resp = self.send(&req).await;
                self.check_common("final/eventual", &req, &resp);
                let diffs = Fuzz::diff(&a, &resp.body, false);
                if resp.status == 200 && diffs.is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    let what = format!("eventual read does not converge to the model: {}", diffs.join("; "));
                    self.query_fail("final/eventual", &what, &req, &resp);
                    break;
                }
                // The step of a bounded poll (the deadline above), as in `ledger_tests::eventually`.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// `at_position` at every position an account changed equals the model's history.
    pub(crate) async fn final_history(&mut self) {
        let clean: Vec<Account> = self.model.accounts.values().filter(|a| !a.system && !a.tainted).cloned().collect();
        for a in clean {
            let points: Vec<i64> = a.history.iter().map(|(p, _, _)| *p).collect();
            let chosen: Vec<i64> = points.choose_multiple(&mut self.rng, 4).copied().collect();
            for at in chosen {
                let (req, resp) =
                    self.query("final/history", format!("/v1/accounts/{}/balance?at_position={at}", a.id)).await;
                self.check_balance_at("final/history", &a, at, &req, &resp);
            }
        }
    }

    pub(crate) async fn final_withdrawals(&mut self) {
        for w in self.model.withdrawals.clone() {
            let (req, resp) =
                self.query("final/withdrawal", format!("/v1/withdrawals/{}?consistency=strong", w.id)).await;
            if resp.status != 200 || resp.body["status"] != "pending" {
                self.query_fail(
                    "final/withdrawal",
                    "a payout that cannot reach the provider is not pending",
                    &req,
                    &resp,
                );
            }
        }
    }

    /// Folds the whole log (the replay): every account equals the model, no other
    /// customer account exists, and money is conserved per currency.
    pub(crate) async fn fold_log(&mut self) {
        let mut ledger = ledger_domain::Ledger::new();
        let mut after = 0;
        loop {
            let page = self.store.read_all(after, 1000).await.expect("log readable");
            if page.is_empty() {
                break;
            }
            for e in &page {
                if e.position != after + 1 {
                    self.fail("replay :: positions have a gap".into(), format!("{after} then {}", e.position));
                }
                after = e.position;
                match e.event() {
                    Ok(event) => {
                        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ledger.apply(&event)));
                        if applied.is_err() {
                            self.fail("replay :: an event breaks the fold".into(), format!("position {}", e.position));
                        }
                    }
                    Err(err) => {
                        self.fail("replay :: an event does not decode".into(), format!("{}: {err}", e.position))
                    }
                }
            }
        }
        for (currency, sum) in ledger.balance_sums() {
            if sum != 0 {
                self.fail("replay :: the folded log does not conserve money".into(), format!("{currency}: {sum}"));
            }
        }
        let mut folded_customers = 0;
        for (id, state) in ledger.streams() {
            let ledger_domain::Aggregate::Account(f) = &state.aggregate else { continue };
            if !f.system {
                folded_customers += 1;
            }
            let Some(a) = self.model.accounts.get(id) else {
                let what =
                    format!("account {id} ({}, system {}) is in the log, not in the model", f.currency, f.system);
                self.fail("replay :: an account the model does not know".into(), what);
                continue;
            };
            let (balance, holds) = (f.balance.minor_units(), f.pending_holds.minor_units());
            if (balance, holds) != (a.balance, a.holds) {
                let what = format!("{id}: folded balance {balance} holds {holds}, model {} {}", a.balance, a.holds);
                self.fail("replay :: the folded log differs from the model".into(), what);
            }
        }
        if folded_customers != self.model.customers.len() {
            let what = format!("{folded_customers} in the log, {} in the model", self.model.customers.len());
            self.fail("replay :: customer account count".into(), what);
        }
    }
}

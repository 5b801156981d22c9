//! Running a planned command: sending it, checking the answer against the expectation and the
//! log's growth against what was accepted, and folding an accepted command into the model
//! (checking the fields of its response as it goes).

use crate::fuzz::expect::{Effect, Expect, Planned};
use crate::fuzz::fuzzer::Fuzz;
use crate::fuzz::idempotency::Sent;
use crate::fuzz::model::{Account, TransferRec, WithdrawalRec};
use crate::fuzz::wire::{Req, Resp};
use crate::fuzz::{BUSINESS_CODES, CURRENCIES};
use rand::Rng;
use serde_json::{Value, json};
use uuid::Uuid;

impl Fuzz {
    pub(crate) async fn run_command(&mut self, p: Planned) {
        self.label = p.label.clone();
        let head_before = self.model.head;
        let resp = self.send(&p.req).await;
        self.note(format!("{}: {} -> {}", p.label, p.req.describe(), resp.short()));
        self.check_common(&p.label, &p.req, &resp);
        if resp.status == 0 {
            return;
        }
        let code = resp.code().to_owned();
        let matches = match &p.expect {
            Expect::Accept(s) => resp.status == *s,
            Expect::OneOf(list) => list.iter().any(|(s, c)| *s == resp.status && *c == code),
            Expect::Refuse(statuses) => !resp.ok() && statuses.contains(&resp.status),
            Expect::Open => resp.status < 500,
        };
        if !matches {
            self.fail(
                format!("{} :: expected {:?}, got {} {code}", p.label, p.expect, resp.status),
                format!("{} -> {}", p.req.describe(), resp.short()),
            );
        }
        let wrongly_accepted = resp.ok() && !matches!(p.expect, Expect::Accept(_) | Expect::Open);
        if resp.ok() {
            let touched = self.accepted(&p, &resp).await;
            if wrongly_accepted && self.keep_going {
                for id in touched.iter().chain(p.touches.iter()) {
                    self.resync(*id).await;
                }
            }
        } else if resp.status < 500 && BUSINESS_CODES.contains(&code.as_str()) {
            self.sent.push(Sent { label: p.label.clone(), req: p.req.clone(), status: resp.status, body: resp.body });
        }
        // Every account is compared with the model after each step (`sweep`).
        self.check_log_growth(head_before, &p.label).await;
    }

    /// The log grew only by the events of accepted commands (and the payout worker's
    /// dead letters): a refused command appended nothing.
    pub(crate) async fn check_log_growth(&mut self, head_before: i64, label: &str) {
        let req = Req::get(format!("/v1/events?after={}&limit=1000", self.log_seen));
        let resp = self.send(&req).await;
        self.check_common("check/log", &req, &resp);
        let events: Vec<Value> = resp.body["events"].as_array().cloned().unwrap_or_default();
        for e in &events {
            let position = e["position"].as_i64().unwrap_or(0);
            self.log_seen = self.log_seen.max(position);
            let ours = position > head_before && position <= self.model.head;
            if e["type"] == "PayoutDeadLettered" {
                self.dead_letters += 1;
            }
            if e["type"] != "PayoutDeadLettered" && !ours {
                self.fail(
                    format!("{label} :: the log gained an event no accepted command answered"),
                    format!("{} at position {position} (accepted up to {})", e["type"], self.model.head),
                );
            }
        }
    }

    /// Folds an accepted command into the model; returns the accounts it touched.
    pub(crate) async fn accepted(&mut self, p: &Planned, resp: &Resp) -> Vec<Uuid> {
        let replayed = resp.header("idempotent-replayed") == Some("true");
        if replayed {
            self.fail(
                format!("{} :: a fresh key was answered as a replay", p.label),
                format!("{} -> {}", p.req.describe(), resp.short()),
            );
            return Vec::new();
        }
        let position = resp.body["position"].as_i64();
        match position {
            Some(pos) if pos > self.model.head => self.model.head = pos,
            _ => self.fail(
                format!("{} :: write without a new position", p.label),
                format!("head was {}: {} -> {}", self.model.head, p.req.describe(), resp.short()),
            ),
        }
        let position = self.model.head;
        self.sent.push(Sent {
            label: p.label.clone(),
            req: p.req.clone(),
            status: resp.status,
            body: resp.body.clone(),
        });
        if let (Some(c), Some(pos)) = (&p.req.correlation, resp.body["position"].as_i64())
            && c.starts_with(b"fz-corr-")
        {
            let c = String::from_utf8_lossy(c).into_owned();
            if resp.header("x-correlation-id") != Some(c.as_str()) {
                self.fail(
                    format!("{} :: X-Correlation-Id not echoed", p.label),
                    format!("sent {c}, got {:?}", resp.header("x-correlation-id")),
                );
            }
            self.correlations.push((c, pos));
        }
        let touched = self.apply(p, resp, position).await;
        self.model.assert_conserved();
        if self.rng.random_bool(0.3) {
            self.read_new_id(p, resp).await;
        }
        touched
    }

    /// "A by-id read never answers 404 for an id the service has returned."
    pub(crate) async fn read_new_id(&mut self, p: &Planned, resp: &Resp) {
        let Some(id) = resp.body["id"].as_str() else { return };
        let path = match p.effect {
            Effect::Open { .. } | Effect::Close { .. } => format!("/v1/accounts/{id}"),
            Effect::Transfer { .. } | Effect::Reverse { .. } => format!("/v1/transfers/{id}"),
            Effect::Withdraw { .. } => format!("/v1/withdrawals/{id}"),
            _ => return,
        };
        let req = Req::get(path);
        let r = self.send(&req).await;
        self.check_common(&p.label, &req, &r);
        if r.status != 200 || r.body["id"].as_str() != Some(id) {
            let family = p.label.split('/').next().unwrap_or("").to_owned();
            self.fail(
                format!("{family} :: eventual read of a just-returned id answered {}", r.status),
                format!("{} -> {}", req.describe(), r.short()),
            );
        }
    }

    pub(crate) fn record(&mut self, id: Uuid, position: i64) {
        if let Some(a) = self.model.accounts.get_mut(&id) {
            a.history.push((position, a.balance, a.holds));
        }
    }

    pub(crate) fn response_mismatch(&mut self, label: &str, what: &str, resp: &Resp, expected: String) {
        self.fail(format!("{label} :: response {what}"), format!("expected {expected}; got {}", resp.short()));
    }

    pub(crate) fn check_echo(&mut self, label: &str, resp: &Resp, metadata: &Option<Option<Value>>) {
        if let Some(Some(m)) = metadata
            && resp.body["metadata"] != *m
        {
            self.response_mismatch(label, "metadata is not returned as sent", resp, format!("metadata {m}"));
        }
    }

    pub(crate) async fn apply(&mut self, p: &Planned, resp: &Resp, position: i64) -> Vec<Uuid> {
        let label = p.label.clone();
        let body = &resp.body;
        let id = body["id"].as_str().and_then(|s| Uuid::parse_str(s).ok());
        match p.effect.clone() {
            Effect::None => Vec::new(),
            Effect::Open { id: want, currency, overdraft, owner, metadata } => {
                self.apply_open(&label, resp, position, want, currency, overdraft, owner, metadata).await
            }
            Effect::Deposit { account, currency, amount, metadata } => {
                self.check_echo(&label, resp, &metadata);
                if resp.status != 201
                    || body["account_id"] != json!(account)
                    || body["amount"] != json!(amount as i64)
                    || body["currency"] != json!(currency)
                    || id.is_none()
                {
                    self.response_mismatch(&label, "fields", resp, format!("201 deposit of {amount} to {account}"));
                }
                let system = self.model.systems.get(currency).copied();
                if let Some(a) = self.model.accounts.get_mut(&account) {
                    a.balance += amount;
                }
                if let Some(s) = system.and_then(|s| self.model.accounts.get_mut(&s)) {
                    s.balance -= amount;
                }
                self.record(account, position);
                system.iter().for_each(|s| self.record(*s, position));
                [Some(account), system].into_iter().flatten().collect()
            }
            Effect::Transfer { from, to, currency, amount, metadata } => {
                self.check_echo(&label, resp, &metadata);
                let fields = body["from"] == json!(from)
                    && body["to"] == json!(to)
                    && body["amount"] == json!(amount as i64)
                    && body["currency"] == json!(currency)
                    && body["status"] == "completed";
                if resp.status != 201 || !fields || id.is_none() {
                    self.response_mismatch(&label, "fields", resp, format!("201 transfer {amount} {from} -> {to}"));
                }
                self.move_money(from, to, amount, position);
                let id = id.unwrap_or_else(Uuid::nil);
                let rec = TransferRec { id, from, to, amount, reversed: false, is_reversal: false };
                self.model.transfers.push(rec);
                vec![from, to]
            }
            Effect::Reverse { transfer } => {
                let t = self.model.transfers.iter().find(|t| t.id == transfer).cloned().expect("a model transfer");
                let fields = body["reverses"] == json!(transfer)
                    && body["from"] == json!(t.to)
                    && body["to"] == json!(t.from)
                    && body["amount"] == json!(t.amount as i64);
                if resp.status != 201 || !fields || id.is_none() {
                    self.response_mismatch(&label, "fields", resp, format!("201 reversal of {transfer}"));
                }
                self.model.transfers.iter_mut().filter(|x| x.id == transfer).for_each(|x| x.reversed = true);
                self.move_money(t.to, t.from, t.amount, position);
                let id = id.unwrap_or_else(Uuid::nil);
                let rec =
                    TransferRec { id, from: t.to, to: t.from, amount: t.amount, reversed: false, is_reversal: true };
                self.model.transfers.push(rec);
                vec![t.from, t.to]
            }
            Effect::Withdraw { account, amount, metadata } => {
                self.check_echo(&label, resp, &metadata);
                if resp.status != 202 || body["status"] != "pending" || id.is_none() {
                    self.response_mismatch(&label, "fields", resp, "202 pending".into());
                }
                if let Some(a) = self.model.accounts.get_mut(&account) {
                    a.holds += amount;
                }
                self.record(account, position);
                self.model.withdrawals.push(WithdrawalRec { id: id.unwrap_or_else(Uuid::nil), account, amount });
                vec![account]
            }
            Effect::Close { account } => {
                if resp.status != 200 || body["status"] != "closed" || body["id"] != json!(account) {
                    self.response_mismatch(&label, "fields", resp, format!("200 closed {account}"));
                }
                if let Some(a) = self.model.accounts.get_mut(&account) {
                    a.open = false;
                }
                self.record(account, position);
                vec![account]
            }
        }
    }

    pub(crate) fn move_money(&mut self, from: Uuid, to: Uuid, amount: i128, position: i64) {
        // A wrongly accepted transfer may name an account the model does not know.
        if let Some(a) = self.model.accounts.get_mut(&from) {
            a.balance -= amount;
        }
        if let Some(a) = self.model.accounts.get_mut(&to) {
            a.balance += amount;
        }
        self.record(from, position);
        self.record(to, position);
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn apply_open(
        &mut self,
        label: &str,
        resp: &Resp,
        position: i64,
        want: Option<Uuid>,
        currency: Option<&'static str>,
        overdraft: Option<i128>,
        owner: Option<Option<String>>,
        metadata: Option<Option<Value>>,
    ) -> Vec<Uuid> {
        let body = &resp.body;
        let got_id = body["id"].as_str().and_then(|s| Uuid::parse_str(s).ok());
        let got_currency = body["currency"].as_str().and_then(|c| CURRENCIES.iter().find(|x| **x == c).copied());
        let got_overdraft = body["overdraft_limit"].as_i64().map(i128::from);
        let mut wrong = Vec::new();
        if resp.status != 201 {
            wrong.push("status");
        }
        if got_id.is_none() || (want.is_some() && got_id != want) {
            wrong.push("id");
        }
        if got_currency.is_none() || (currency.is_some() && got_currency != currency) {
            wrong.push("currency");
        }
        if overdraft.is_some() && got_overdraft != overdraft {
            wrong.push("overdraft_limit");
        }
        if body["balance"] != 0 || body["available"] != 0 || body["pending_holds"] != 0 || body["status"] != "open" {
            wrong.push("balance/available/pending_holds/status");
        }
        if let Some(o) = &owner
            && body["owner"] != json!(o)
        {
            wrong.push("owner");
        }
        if let Some(m) = &metadata
            && (body["metadata"] != m.clone().unwrap_or(Value::Null))
        {
            wrong.push("metadata (not returned as sent)");
        }
        if !wrong.is_empty() {
            let expected =
                format!("id {want:?}, currency {currency:?}, overdraft {overdraft:?}, metadata {metadata:?}");
            self.response_mismatch(label, &wrong.join(", "), resp, expected);
        }
        let (Some(id), Some(currency)) = (got_id.or(want), got_currency.or(currency)) else { return Vec::new() };
        let account = Account {
            id,
            currency,
            system: false,
            overdraft: overdraft.or(got_overdraft).unwrap_or(0),
            open: true,
            balance: 0,
            holds: 0,
            owner,
            metadata,
            history: vec![(position, 0, 0)],
            tainted: false,
        };
        self.model.accounts.insert(id, account);
        self.model.customers.push(id);
        if !self.model.systems.contains_key(currency) {
            self.learn_system_account(currency, position).await;
        }
        vec![id]
    }

    pub(crate) async fn learn_system_account(&mut self, currency: &'static str, position: i64) {
        let req = Req::get("/v1/system-accounts");
        let resp = self.send(&req).await;
        self.check_common("system-accounts", &req, &resp);
        let found = resp.body["accounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["currency"] == currency)
            .and_then(|a| a["id"].as_str())
            .and_then(|s| Uuid::parse_str(s).ok());
        let Some(id) = found else {
            self.fail(
                "system-accounts :: no system account for a currency in use".into(),
                format!("{currency}: {}", resp.short()),
            );
            return;
        };
        let account = Account {
            id,
            currency,
            system: true,
            overdraft: 0,
            open: true,
            balance: 0,
            holds: 0,
            owner: None,
            metadata: None,
            history: vec![(position, 0, 0)],
            tainted: false,
        };
        self.model.accounts.entry(id).or_insert(account);
        self.model.systems.insert(currency, id);
    }
}

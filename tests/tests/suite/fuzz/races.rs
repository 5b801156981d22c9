//! Steps that race (issue 26): one bulk key sent twice at once (to one writer process or
//! two, with the same body or with item keys regenerated), a transaction whose condition
//! names an account the other process drains meanwhile, a hold captured with an
//! effective time before it was placed (then its business-time balances read), and
//! transactions with more conditions than allowed (alone and as a bulk item).
//!
//! Each folds only what the server says it executed into the model; the per-step sweep
//! then compares every account with it, so money moved twice shows as a difference.

use crate::fuzz::expect::Decision;
use crate::fuzz::fuzzer::{Fuzz, transport};
use crate::fuzz::model::Account;
use crate::fuzz::wire::{Req, Resp};
use rand::Rng;
use rand::seq::IndexedRandom;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

fn post(path: impl Into<String>, key: &str, body: &Value) -> Req {
    Req {
        method: Method::POST,
        path: path.into(),
        key: Some(key.as_bytes().to_vec()),
        body: Some(body.to_string().into_bytes()),
        correlation: None,
    }
}

fn item(path: &str, key: Uuid, body: Value) -> Value {
    json!({ "method": "POST", "path": path, "idempotency_key": key, "body": body })
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Fuzz {
    /// Open customer accounts of one currency, at least `n` of them, shuffled.
    fn same_currency(&mut self, n: usize) -> Option<Vec<Account>> {
        let open = self.model.open_customers();
        let currencies: Vec<&'static str> = open.iter().map(|a| a.currency).collect();
        let currency = *currencies.choose(&mut self.rng)?;
        let mut pick: Vec<Account> = open.into_iter().filter(|a| a.currency == currency).collect();
        if pick.len() < n {
            return None;
        }
        rand::seq::SliceRandom::shuffle(pick.as_mut_slice(), &mut self.rng);
        Some(pick)
    }

    /// Sends two requests at once (the second after `delay`), to the given apps.
    async fn race(&mut self, first: (&Req, bool), second: (&Req, bool), delay: Duration) -> (Resp, Resp) {
        self.requests += 2;
        let app = |other: bool| if other { &self.second } else { &self.app };
        let (a, b) = tokio::join!(transport(app(first.1), &self.ledger, first.0), async {
            tokio::time::sleep(delay).await;
            transport(app(second.1), &self.ledger, second.0).await
        });
        let a = a.unwrap_or_else(|e| self.transport_failed(first.0, e));
        let b = b.unwrap_or_else(|e| self.transport_failed(second.0, e));
        (a, b)
    }

    fn advance_head(&mut self, position: Option<i64>) {
        if let Some(p) = position {
            self.model.head = self.model.head.max(p);
        }
    }

    /// One bulk key, two bulks at once: exactly one executes, and what it executed is what
    /// the model applies; the other is answered 409, 422 or (same body, after) its replay.
    pub(crate) async fn step_bulk_race(&mut self) {
        self.label = "race/bulk".into();
        let Some(accounts) = self.same_currency(2) else { return self.step_query().await };
        let currency = accounts[0].currency;
        let n = self.rng.random_range(1..=4);
        let legs: Vec<(Uuid, Uuid, i128)> = (0..n)
            .map(|_| {
                let pair: Vec<&Account> = accounts.choose_multiple(&mut self.rng, 2).collect();
                let cap = (pair[0].available() + pair[0].overdraft).clamp(1, 1_000_000);
                (pair[0].id, pair[1].id, self.rng.random_range(1..=cap + cap / 4))
            })
            .collect();
        let bulk = |legs: &[(Uuid, Uuid, i128)]| {
            let items: Vec<Value> = legs
                .iter()
                .map(|(f, t, m)| {
                    item(
                        "/v1/transfers",
                        Uuid::new_v4(),
                        json!({ "from": f, "to": t, "amount": m, "currency": currency }),
                    )
                })
                .collect();
            json!({ "items": items })
        };
        let (body_a, same) = (bulk(&legs), self.rng.random_bool(0.5));
        let body_b = if same { body_a.clone() } else { bulk(&legs) };
        let key = Uuid::new_v4().to_string();
        let (req_a, req_b) = (post("/v1/bulk", &key, &body_a), post("/v1/bulk", &key, &body_b));
        let (other, delay) = (self.rng.random_bool(0.5), Duration::from_millis(self.rng.random_range(0..30)));
        let head_before = self.model.head;
        let (a, b) = self.race((&req_a, false), (&req_b, other), delay).await;
        self.note(format!("race/bulk ({n} transfers, same body: {same}): {} / {}", a.short(), b.short()));
        self.check_common("race/bulk", &req_a, &a);
        self.check_common("race/bulk", &req_b, &b);
        let executed: Vec<&Resp> =
            [&a, &b].into_iter().filter(|r| r.status == 200 && r.header("idempotent-replayed").is_none()).collect();
        let [run] = executed.as_slice() else {
            return self.fail(
                "race/bulk :: not exactly one of two bulks with one key executed".into(),
                format!("{} / {}", a.short(), b.short()),
            );
        };
        for r in [&a, &b] {
            let fine = r.status == 200
                || (r.status == 409 && r.code() == "idempotency_key_in_flight")
                || (r.status == 422 && r.code() == "idempotency_key_reused");
            let replay_differs = r.header("idempotent-replayed").is_some() && r.body != run.body;
            if !fine || replay_differs {
                self.fail("race/bulk :: the other bulk's answer".into(), format!("{} / {}", a.short(), b.short()));
            }
        }
        let results = run.body["results"].as_array().cloned().unwrap_or_default();
        let run = (*run).clone();
        for ((from, to, amount), result) in legs.iter().zip(results) {
            let decided = self.decide_transfer(*from, *to, currency, *amount);
            let position = result["body"]["position"].as_i64();
            match (decided, result["status"].as_u64()) {
                (Decision::Accept(201), Some(201)) => {
                    self.advance_head(position);
                    self.move_money(*from, *to, *amount, position.unwrap_or(0));
                }
                (Decision::Reject(codes), Some(s))
                    if codes.iter().any(|(c, code)| u64::from(*c) == s && result["body"]["code"] == *code) => {}
                (_, status) => self.fail(
                    "race/bulk :: an item's answer is not the model's".into(),
                    format!("{amount} {from} -> {to}: {status:?} in {}", run.short()),
                ),
            }
        }
        self.check_log_growth(head_before, "race/bulk").await;
    }

    /// A transaction conditioned on account C's funds, sent to the second process while
    /// the first drains C: if both are recorded, the transaction must come first.
    pub(crate) async fn step_condition_race(&mut self) {
        self.label = "race/condition".into();
        let Some(accounts) = self.same_currency(4) else { return self.step_query().await };
        let (x, y) = (&accounts[0], &accounts[1]);
        // Drained in one transfer: its available must be an amount one command may move.
        let drainable = |a: &&Account| (1..=crate::fuzz::AMOUNT_MAX).contains(&a.available());
        let Some(c) = accounts[2..].iter().find(drainable).cloned() else {
            return self.step_query().await;
        };
        let z = accounts.iter().find(|a| ![x.id, y.id, c.id].contains(&a.id)).cloned().expect("four accounts");
        if !matches!(self.decide_transfer(x.id, y.id, x.currency, 1), Decision::Accept(_)) {
            return self.step_query().await;
        }
        let required = c.available();
        let transaction = json!({
            "postings": [{ "from": x.id, "to": y.id, "amount": 1, "currency": x.currency }],
            "conditions": [{ "account_id": c.id, "available_at_least": required }],
        });
        let drain = json!({ "from": c.id, "to": z.id, "amount": required, "currency": c.currency });
        let req_t = post("/v1/transactions", &Uuid::new_v4().to_string(), &transaction);
        let req_d = post("/v1/transfers", &Uuid::new_v4().to_string(), &drain);
        let head_before = self.model.head;
        let delay = Duration::from_millis(self.rng.random_range(0..5));
        let (t, d) = self.race((&req_t, true), (&req_d, false), delay).await;
        self.note(format!("race/condition: {} / {}", t.short(), d.short()));
        self.check_common("race/condition", &req_t, &t);
        self.check_common("race/condition", &req_d, &d);
        let (pt, pd) = (t.body["position"].as_i64(), d.body["position"].as_i64());
        if d.status != 201 || !(t.status == 201 || (t.status == 422 && t.code() == "condition_failed")) {
            return self.fail("race/condition :: answers".into(), format!("{} / {}", t.short(), d.short()));
        }
        if t.status == 201 && pd < pt {
            self.fail(
                "race/condition :: a transaction was recorded after its condition account was drained".into(),
                format!("transaction at {pt:?}, drain at {pd:?}"),
            );
        }
        let mut recorded = vec![(pd, (c.id, z.id, required))];
        if t.status == 201 {
            recorded.push((pt, (x.id, y.id, 1)));
        }
        recorded.sort_by_key(|(p, _)| *p);
        for (position, (from, to, amount)) in recorded {
            self.advance_head(position);
            self.move_money(from, to, amount, position.unwrap_or(0));
        }
        self.check_log_growth(head_before, "race/condition").await;
    }

    /// A hold placed now and captured with an effective time before it was placed; then
    /// the payer's balance at some business time answers (no fold over a subsequence
    /// of the hold's life).
    pub(crate) async fn step_backdated_capture(&mut self) {
        self.label = "capture/backdated".into();
        let Some(accounts) = self.same_currency(2) else { return self.step_query().await };
        let (x, y) = (accounts[0].clone(), accounts[1].clone());
        if x.available() + x.overdraft < 1 {
            return self.step_query().await;
        }
        let held = self.rng.random_range(1..=(x.available() + x.overdraft).min(1_000_000));
        let head_before = self.model.head;
        let place = json!({ "account_id": x.id, "to": y.id, "amount": held, "currency": x.currency });
        let req = post("/v1/holds", &Uuid::new_v4().to_string(), &place);
        let placed = self.send(&req).await;
        self.check_common("capture/backdated", &req, &placed);
        if placed.status != 201 {
            return self.fail("capture/backdated :: placing the hold".into(), placed.short());
        }
        let position = placed.body["position"].as_i64();
        self.advance_head(position);
        if let Some(a) = self.model.accounts.get_mut(&x.id) {
            a.holds += held;
        }
        self.record(x.id, position.unwrap_or(0));
        let captured = self.rng.random_range(1..=held);
        let before = chrono::Utc::now() - chrono::Duration::seconds(self.rng.random_range(1..3600));
        let capture = json!({ "amount": captured, "effective_at": rfc3339(before) });
        let hold = placed.body["id"].as_str().unwrap_or_default().to_owned();
        let req = post(format!("/v1/holds/{hold}/capture"), &Uuid::new_v4().to_string(), &capture);
        let done = self.send(&req).await;
        self.check_common("capture/backdated", &req, &done);
        if done.status != 200 {
            return self.fail("capture/backdated :: capturing the hold".into(), done.short());
        }
        let position = done.body["position"].as_i64();
        self.advance_head(position);
        if let Some(a) = self.model.accounts.get_mut(&x.id) {
            a.holds -= held;
        }
        self.move_money(x.id, y.id, captured, position.unwrap_or(0));
        let when = chrono::Utc::now() - chrono::Duration::seconds(self.rng.random_range(0..7200));
        let query = format!("/v1/accounts/{}/balance?effective_at={}", x.id, rfc3339(when).replace('+', "%2B"));
        let req = Req::get(query);
        let read = self.send(&req).await;
        self.check_common("capture/backdated", &req, &read);
        if read.status != 200 || read.body["pending_holds"].as_i64().is_none_or(|h| h < 0) {
            self.fail("capture/backdated :: a business-time balance".into(), read.short());
        }
        self.check_log_growth(head_before, "capture/backdated").await;
    }

    /// Transactions with more conditions than the contract's bound: refused at the edge,
    /// alone (422, or 413 past the body limit) and as a bulk item (its own answer).
    pub(crate) async fn step_huge_conditions(&mut self) {
        self.label = "conditions/huge".into();
        let Some(accounts) = self.same_currency(2) else { return self.step_query().await };
        let n = *[101usize, 400, 3000].choose(&mut self.rng).expect("sizes");
        let conditions: Vec<Value> =
            (0..n).map(|_| json!({ "account_id": Uuid::new_v4(), "available_at_least": 1 })).collect();
        let transaction = json!({
            "postings": [{ "from": accounts[0].id, "to": accounts[1].id, "amount": 1, "currency": accounts[0].currency }],
            "conditions": conditions,
        });
        let head_before = self.model.head;
        let alone = post("/v1/transactions", &Uuid::new_v4().to_string(), &transaction);
        let r = self.send(&alone).await;
        self.check_common("conditions/huge", &alone, &r);
        let refused = |status: u64, code: &str| {
            (status == 422 && code == "validation_error") || (status == 413 && code == "payload_too_large")
        };
        if !refused(u64::from(r.status), r.code()) {
            self.fail(format!("conditions/huge :: {n} conditions"), r.short());
        }
        let bulk = json!({ "items": [item("/v1/transactions", Uuid::new_v4(), transaction)] });
        let req = post("/v1/bulk", &Uuid::new_v4().to_string(), &bulk);
        let r = self.send(&req).await;
        self.check_common("conditions/huge", &req, &r);
        let first = &r.body["results"][0];
        if r.status != 200
            || !refused(first["status"].as_u64().unwrap_or(0), first["body"]["code"].as_str().unwrap_or(""))
        {
            self.fail(format!("conditions/huge :: {n} conditions in a bulk item"), r.short());
        }
        self.check_log_growth(head_before, "conditions/huge").await;
    }
}

//! The query step: its dispatch by kind, the helpers every query uses, and the reads of
//! transfers, withdrawals and unknown routes.

use crate::fuzz::fuzzer::Fuzz;
use crate::fuzz::wire::{Req, Resp};
use rand::Rng;
use rand::seq::IndexedRandom;
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

impl Fuzz {
    pub(crate) async fn query(&mut self, label: &str, path: String) -> (Req, Resp) {
        self.label = label.to_owned();
        let req = Req::get(path);
        let resp = self.send(&req).await;
        self.note(format!("{label}: {} -> {}", req.describe(), resp.short()));
        self.check_common(label, &req, &resp);
        (req, resp)
    }

    pub(crate) fn query_fail(&mut self, label: &str, what: &str, req: &Req, resp: &Resp) {
        self.fail(format!("{label} :: {what}"), format!("{} -> {}", req.describe(), resp.short()));
    }

    /// For parameters the contract does not fix: any 2xx, or a 4xx `validation_error`.
    pub(crate) fn lenient(&mut self, label: &str, req: &Req, resp: &Resp) {
        if (400..500).contains(&resp.status) && resp.code() != "validation_error" && resp.status != 404 {
            self.query_fail(label, "a malformed parameter is not a validation_error", req, resp);
        }
    }

    pub(crate) async fn step_query(&mut self) {
        let kinds = [
            ("account", 5),
            ("owner", 3),
            ("balance", 4),
            ("events", 3),
            ("audit", 3),
            ("statement", 4),
            ("stream", 2),
            ("transfer", 2),
            ("withdrawal", 1),
            ("route", 1),
        ];
        let kind = kinds.choose_weighted(&mut self.rng, |k| k.1).expect("weights").0;
        match kind {
            "account" => self.q_account().await,
            "owner" => self.q_owner().await,
            "balance" => self.q_balance().await,
            "events" => self.q_events().await,
            "audit" => self.q_audit().await,
            "statement" => self.q_statement().await,
            "stream" => self.q_stream().await,
            "transfer" => self.q_transfer().await,
            "withdrawal" => self.q_withdrawal().await,
            _ => self.q_route().await,
        }
    }

    pub(crate) async fn q_transfer(&mut self) {
        let Some(t) = self.model.transfers.choose(&mut self.rng).cloned() else { return };
        let variants = ["strong", "eventual", "unknown", "garbage"];
        let v = *variants.choose(&mut self.rng).expect("variants");
        let path = match v {
            "strong" => format!("/v1/transfers/{}?consistency=strong", t.id),
            "eventual" => format!("/v1/transfers/{}", t.id),
            "unknown" => format!("/v1/transfers/{}", self.unknown_id()),
            _ => "/v1/transfers/%00".into(),
        };
        let label = format!("q.transfer/{v}");
        let (req, resp) = self.query(&label, path).await;
        match v {
            "strong" => {
                let reversed = !resp.body["reversed_by"].is_null();
                let fields = resp.body["from"] == json!(t.from)
                    && resp.body["to"] == json!(t.to)
                    && resp.body["amount"] == json!(t.amount as i64);
                if resp.status != 200 || reversed != t.reversed || !fields {
                    let what = format!("the transfer differs from the model (reversed {})", t.reversed);
                    self.query_fail(&label, &what, &req, &resp);
                }
            }
            "eventual" => {
                if resp.status != 200 {
                    self.query_fail(&label, "a transfer the service returned is not 200", &req, &resp);
                }
            }
            _ => {
                if resp.status != 404 {
                    self.query_fail(&label, "an unknown transfer is not 404", &req, &resp);
                }
            }
        }
    }

    pub(crate) async fn q_withdrawal(&mut self) {
        let Some(w) = self.model.withdrawals.choose(&mut self.rng).cloned() else { return };
        let strong = self.rng.random_bool(0.5);
        let query = if strong { "?consistency=strong" } else { "" };
        let label = format!("q.withdrawal/{}", if strong { "strong" } else { "eventual" });
        let (req, resp) = self.query(&label, format!("/v1/withdrawals/{}{query}", w.id)).await;
        let fields = resp.body["account_id"] == json!(w.account) && resp.body["amount"] == json!(w.amount as i64);
        if resp.status != 200 || (strong && (resp.body["status"] != "pending" || !fields)) {
            self.query_fail(&label, "the withdrawal is not the model's pending one", &req, &resp);
        }
    }

    pub(crate) async fn q_route(&mut self) {
        let id = self.model.customers.first().copied().unwrap_or_else(Uuid::nil);
        let routes = [
            (Method::GET, "/v1/nope".to_owned()),
            (Method::GET, "/v1/deposits".to_owned()),
            (Method::DELETE, format!("/v1/accounts/{id}")),
            (Method::PUT, "/v1/transfers".to_owned()),
            (Method::GET, format!("/v1/accounts/{id}/close")),
        ];
        let (method, path) = routes.choose(&mut self.rng).cloned().expect("routes");
        let label = format!("q.route/{method} {}", path.split('/').nth(2).unwrap_or(""));
        self.label = label.clone();
        let req = Req { method, path, key: None, body: None, correlation: None };
        let resp = self.send(&req).await;
        self.note(format!("{label}: {} -> {}", req.describe(), resp.short()));
        self.check_common(&label, &req, &resp);
        if resp.status != 404 && resp.status != 405 {
            self.query_fail(&label, "an unknown route or method is not 404/405", &req, &resp);
        }
    }
}

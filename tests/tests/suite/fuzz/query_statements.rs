//! Statement queries: pages, limits and cursors, and paging that must join into the whole
//! statement.

use crate::fuzz::VALIDATION;
use crate::fuzz::fuzzer::Fuzz;
use crate::fuzz::wire::{Req, Resp, pct};
use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::Value;
use uuid::Uuid;

impl Fuzz {
    pub(crate) async fn q_statement(&mut self) {
        let Some(id) = self.model.customers.choose(&mut self.rng).copied() else { return };
        let head = self.model.head;
        let variants = [
            "full",
            "full",
            "page",
            "paging",
            "strong",
            "limit_0",
            "limit_1001",
            "limit_neg",
            "limit_abc",
            "limit_1.5",
            "cursor_abc",
            "cursor_neg",
            "cursor_nul",
            "cursor_ff",
            "cursor_huge",
            "cursor_long",
            "unknown",
        ];
        let v = *variants.choose(&mut self.rng).expect("variants");
        if v == "paging" {
            return self.q_paging(id).await;
        }
        let limit = self.rng.random_range(1..=10);
        let (target, query) = match v {
            "full" => (id, format!("limit=1000&min_position={head}")),
            "page" => (id, format!("limit={limit}&min_position={head}")),
            "strong" => (id, "limit=1000&consistency=strong".into()),
            "limit_0" => (id, "limit=0".into()),
            "limit_1001" => (id, "limit=1001".into()),
            "limit_neg" => (id, "limit=-1".into()),
            "limit_abc" => (id, "limit=abc".into()),
            "limit_1.5" => (id, "limit=1.5".into()),
            "cursor_abc" => (id, "cursor=abc".into()),
            "cursor_neg" => (id, "cursor=-1".into()),
            "cursor_nul" => (id, "cursor=%00".into()),
            "cursor_ff" => (id, "cursor=%FF".into()),
            "cursor_huge" => (id, "cursor=99999999999999999999".into()),
            "cursor_long" => (id, format!("cursor={}", "c".repeat(5000))),
            _ => (self.unknown_id(), format!("min_position={head}")),
        };
        let label = format!("q.statement/{v}");
        let (req, resp) = self.query(&label, format!("/v1/accounts/{target}/transactions?{query}")).await;
        match v {
            "full" | "page" | "strong" => {
                if resp.status == 503 {
                    return;
                }
                let max = if v == "page" { limit as usize } else { 1000 };
                self.check_statement(&label, id, max, &req, &resp);
            }
            "limit_0" | "limit_1001" | "limit_neg" | "limit_abc" | "limit_1.5" => {
                if !VALIDATION.contains(&(resp.status, resp.code())) {
                    self.query_fail(&label, "a limit outside 1–1000 is not a validation_error", &req, &resp);
                }
            }
            "unknown" => {
                if (resp.status, resp.code()) != (404, "account_not_found") {
                    self.query_fail(&label, "an unknown account is not 404 account_not_found", &req, &resp);
                }
            }
            _ => self.lenient(&label, &req, &resp),
        }
    }

    /// A statement page: newest first, within the limit; a whole statement sums to the balance.
    pub(crate) fn check_statement(&mut self, label: &str, id: Uuid, max: usize, req: &Req, resp: &Resp) {
        let Some(entries) = resp.body["entries"].as_array().filter(|_| resp.status == 200) else {
            return self.query_fail(label, "a statement is not 200 with entries", req, resp);
        };
        let positions: Vec<i64> = entries.iter().filter_map(|e| e["position"].as_i64()).collect();
        let newest_first = positions.windows(2).all(|w| w[0] > w[1]) && positions.len() == entries.len();
        if !newest_first || entries.len() > max {
            return self.query_fail(label, "statement entries are not newest first within the limit", req, resp);
        }
        let a = self.model.accounts.get(&id).cloned().expect("a model account");
        if max == 1000 && entries.len() < 1000 && !a.tainted {
            let sum: i128 = entries.iter().filter_map(|e| e["amount"].as_i64()).map(i128::from).sum();
            if sum != a.balance {
                let what = format!("statement amounts sum to {sum}, the balance is {}", a.balance);
                self.query_fail(label, &what, req, resp);
            }
        }
    }

    /// Follows `next_cursor` with small pages: the pages join into the whole statement.
    pub(crate) async fn q_paging(&mut self, id: Uuid) {
        let head = self.model.head;
        let label = "q.statement/paging";
        let (req, full) =
            self.query(label, format!("/v1/accounts/{id}/transactions?limit=1000&min_position={head}")).await;
        if full.status != 200 {
            return;
        }
        let want: Vec<Value> = full.body["entries"].as_array().cloned().unwrap_or_default();
        let size = self.rng.random_range(1..=4);
        let mut got: Vec<Value> = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..200 {
            let c = cursor.as_ref().map(|c| format!("&cursor={}", pct(c))).unwrap_or_default();
            let (_, page) = self.query(label, format!("/v1/accounts/{id}/transactions?limit={size}{c}")).await;
            if page.status != 200 {
                return self.query_fail(label, "a page of a statement is not 200", &req, &page);
            }
            got.extend(page.body["entries"].as_array().cloned().unwrap_or_default());
            match page.body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        if got != want {
            let what = format!("{} entries by pages of {size}, {} in one page", got.len(), want.len());
            self.fail(format!("{label} :: the pages do not join into the statement"), what);
        }
    }
}

//! Log queries: the global event log (gapless pages), the audit search, and an account's own
//! event stream.

use crate::fuzz::fuzzer::Fuzz;
use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::Value;

impl Fuzz {
    pub(crate) async fn q_events(&mut self) {
        let head = self.model.head;
        let afters = ["rand", "rand", "0", "-1", "abc", "beyond", "1e3", "huge", "missing", "nul"];
        let limits = ["rand", "rand", "1000", "0", "1001", "-1", "abc", "missing", "1.5"];
        let a = *afters.choose(&mut self.rng).expect("afters");
        let l = *limits.choose(&mut self.rng).expect("limits");
        let after_n = self.rng.random_range(0..=head);
        let limit_n = self.rng.random_range(1..=20);
        let after = match a {
            "rand" => Some(after_n.to_string()),
            "0" => Some("0".into()),
            "beyond" => Some((head + 1000).to_string()),
            "huge" => Some("99999999999999999999".into()),
            "missing" => None,
            "nul" => Some("%00".into()),
            other => Some(other.to_owned()),
        };
        let limit = match l {
            "rand" => Some(limit_n.to_string()),
            "missing" => None,
            other => Some(other.to_owned()),
        };
        let mut params = Vec::new();
        params.extend(after.as_ref().map(|x| format!("after={x}")));
        params.extend(limit.as_ref().map(|x| format!("limit={x}")));
        let label = format!("q.events/after={a}+limit={l}");
        let path = format!("/v1/events?{}", params.join("&"));
        let (req, resp) = self.query(&label, path.clone()).await;
        let valid_after = matches!(a, "rand" | "0" | "beyond" | "missing");
        let valid_limit = matches!(l, "rand" | "1000" | "missing");
        if !(valid_after && valid_limit) {
            return self.lenient(&label, &req, &resp);
        }
        let start = after.and_then(|x| x.parse::<i64>().ok()).unwrap_or(0);
        let max = limit.and_then(|x| x.parse::<usize>().ok()).unwrap_or(1000);
        let Some(events) = resp.body["events"].as_array().filter(|_| resp.status == 200) else {
            return self.query_fail(&label, "a valid page is not 200 with events", &req, &resp);
        };
        let positions: Vec<i64> = events.iter().filter_map(|e| e["position"].as_i64()).collect();
        let expected: Vec<i64> = (start + 1..).take(positions.len()).collect();
        let fields = ["position", "event_id", "stream_id", "version", "type", "data", "metadata", "recorded_at"];
        let complete = events.iter().all(|e| fields.iter().all(|f| e.get(*f).is_some()));
        if positions != expected || positions.len() > max || (start < head && positions.is_empty()) || !complete {
            return self.query_fail(&label, "the page is not the gapless run after `after`", &req, &resp);
        }
        if start + positions.len() as i64 <= head {
            let (_, again) = self.query(&label, path).await;
            if again.body["events"] != resp.body["events"] {
                self.query_fail(&label, "reading the same page of the log twice differs", &req, &again);
            }
        }
    }

    pub(crate) async fn q_audit(&mut self) {
        let variants = [
            "correlation",
            "correlation",
            "correlation",
            "actor_nul",
            "actor_ff",
            "actor_long",
            "corr_nul",
            "corr_ff",
            "stream_bad",
            "stream_known",
            "from_bad",
            "to_bad",
            "future",
            "limit_0",
            "limit_1001",
            "limit_abc",
            "cursor_abc",
            "cursor_neg",
            "cursor_nul",
        ];
        let v = *variants.choose(&mut self.rng).expect("variants");
        let correlation = self.correlations.choose(&mut self.rng).cloned();
        let known = self.model.customers.choose(&mut self.rng).copied();
        let query = match (v, &correlation, known) {
            ("correlation", Some((c, _)), _) => format!("correlation_id={c}&limit=1000"),
            ("correlation", None, _) => "limit=5".into(),
            ("actor_nul", ..) => "actor=%00".into(),
            ("actor_ff", ..) => "actor=%FF".into(),
            ("actor_long", ..) => format!("actor={}", "a".repeat(8000)),
            ("corr_nul", ..) => "correlation_id=x%00y".into(),
            ("corr_ff", ..) => "correlation_id=%FF%FE".into(),
            ("stream_bad", ..) => "stream_id=not-a-uuid".into(),
            ("stream_known", _, Some(id)) => format!("stream_id={id}&limit=1000"),
            ("from_bad", ..) => "from=yesterday".into(),
            ("to_bad", ..) => "to=%00".into(),
            ("future", ..) => "from=2999-01-01T00:00:00Z".into(),
            ("limit_0", ..) => "limit=0".into(),
            ("limit_1001", ..) => "limit=1001".into(),
            ("limit_abc", ..) => "limit=abc".into(),
            ("cursor_abc", ..) => "cursor=abc".into(),
            ("cursor_neg", ..) => "cursor=-1".into(),
            ("cursor_nul", ..) => "cursor=%00".into(),
            _ => "limit=1".into(),
        };
        let label = format!("q.audit/{v}");
        let (req, resp) = self.query(&label, format!("/v1/audit?{query}")).await;
        let events: Vec<Value> = resp.body["events"].as_array().cloned().unwrap_or_default();
        match (v, correlation, known) {
            ("correlation", Some((c, position)), _) => {
                let all = events.iter().all(|e| e["correlation_id"] == c.as_str());
                let has = events.iter().any(|e| e["position"] == position);
                if resp.status != 200 || !all || !has {
                    let what = format!("audit by correlation_id misses position {position} or has others");
                    self.query_fail(&label, &what, &req, &resp);
                }
            }
            ("stream_known", _, Some(id)) => {
                // An event of several streams (a transfer) may name another as its own:
                // each listed event must at least concern the account.
                let all = events.iter().all(|e| e.to_string().contains(&id.to_string()));
                let opened = events.iter().any(|e| e["type"] == "AccountOpened");
                if resp.status != 200 || !all || !opened {
                    self.query_fail(&label, "audit by stream_id is not that stream's events", &req, &resp);
                }
            }
            ("future", ..) => {
                if resp.status != 200 || !events.is_empty() {
                    self.query_fail(&label, "audit from the future is not 200 and empty", &req, &resp);
                }
            }
            _ => self.lenient(&label, &req, &resp),
        }
    }

    pub(crate) async fn q_stream(&mut self) {
        let Some(id) = self.model.customers.choose(&mut self.rng).copied() else { return };
        let variants = ["all", "from", "limit_0", "from_neg", "from_abc", "limit_huge", "from_beyond"];
        let v = *variants.choose(&mut self.rng).expect("variants");
        let from = self.rng.random_range(1..=5);
        let query = match v {
            "all" => "limit=1000".into(),
            "from" => format!("from_version={from}&limit=1000"),
            "limit_0" => "limit=0".into(),
            "from_neg" => "from_version=-1".into(),
            "from_abc" => "from_version=abc".into(),
            "limit_huge" => "limit=99999999999999999999".into(),
            _ => "from_version=100000".into(),
        };
        let label = format!("q.stream/{v}");
        let (req, resp) = self.query(&label, format!("/v1/accounts/{id}/events?{query}")).await;
        if v != "all" && v != "from" {
            return self.lenient(&label, &req, &resp);
        }
        let start = if v == "from" { from } else { 1 };
        let versions: Vec<i64> =
            resp.body["events"].as_array().into_iter().flatten().filter_map(|e| e["version"].as_i64()).collect();
        let expected: Vec<i64> = (start..).take(versions.len()).collect();
        if resp.status != 200 || versions != expected || (v == "all" && versions.is_empty()) {
            self.query_fail(&label, "the stream is not gapless versions from from_version", &req, &resp);
        }
    }
}

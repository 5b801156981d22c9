//! The run: choosing and running each step, the final checks in their order, and the closing
//! report (which fails the test with the list when keeping going).

use crate::fuzz::fuzzer::Fuzz;
use crate::fuzz::wire::{clip, pct};
use crate::fuzz::{ACCOUNTS_MAX, OWNERS, REPLAYS_AT_END_MAX};
use rand::seq::{IndexedRandom, SliceRandom};
use std::collections::BTreeSet;
use std::time::Duration;

impl Fuzz {
    pub(crate) async fn one_step(&mut self) {
        let customers = self.model.open_customers().len();
        let open_weight = if customers < 3 {
            200
        } else if self.model.customers.len() >= ACCOUNTS_MAX {
            0
        } else {
            10
        };
        let kinds = [
            ("open", open_weight),
            ("open_hostile", 5),
            ("metadata", 5),
            ("reserved", 6),
            ("deposit", 16),
            ("transfer", 18),
            ("reverse", 6),
            ("withdraw", 6),
            ("close", 5),
            ("replay", 4),
            ("reuse", 3),
            ("query", 30),
            ("race_bulk", 4),
            ("race_condition", 3),
            ("backdated_capture", 3),
            ("huge_conditions", 2),
        ];
        let kind = kinds.choose_weighted(&mut self.rng, |k| k.1).expect("weights").0;
        let (force, prefer): (Option<&'static str>, &[&'static str]) = match kind {
            "open_hostile" => {
                (Some(*["currency", "owner", "overdraft", "id", "top"].choose(&mut self.rng).expect("parts")), &[])
            }
            "metadata" => (Some("metadata"), &[]),
            "reserved" => (
                Some(*["id", "account", "from", "to", "path"].choose(&mut self.rng).expect("parts")),
                &["reserved", "reserved_used", "reserved_unused"],
            ),
            _ => (None, &[]),
        };
        self.force = force;
        self.prefer = prefer.to_vec();
        let kind = match (kind, force) {
            ("open_hostile" | "metadata", _) | ("reserved", Some("id")) => "open",
            ("reserved", Some("account")) => *["deposit", "withdraw"].choose(&mut self.rng).expect("kinds"),
            ("reserved", Some("path")) => "close",
            ("reserved", _) => "transfer",
            (kind, _) => kind,
        };
        let planned = match kind {
            "open" => self.plan_open(),
            "deposit" => self.plan_deposit(),
            "transfer" => self.plan_transfer(),
            "reverse" => self.plan_reverse(),
            "withdraw" => self.plan_withdraw(),
            "close" => self.plan_close(),
            "replay" => return self.step_replay().await,
            "reuse" => return self.step_reuse().await,
            "race_bulk" => return self.step_bulk_race().await,
            "race_condition" => return self.step_condition_race().await,
            "backdated_capture" => return self.step_backdated_capture().await,
            "huge_conditions" => return self.step_huge_conditions().await,
            _ => return self.step_query().await,
        };
        self.force = None;
        self.prefer.clear();
        self.run_command(planned).await;
    }

    pub(crate) async fn finish(&mut self) {
        self.step = self.steps + 1;
        self.label = "final".into();
        self.note("final checks".into());
        self.sweep("the run").await;
        self.verify_chain().await;
        let mut sample = self.sent.clone();
        sample.shuffle(&mut self.rng);
        for sent in sample.into_iter().take(REPLAYS_AT_END_MAX) {
            self.replay(sent, "final replay").await;
        }
        self.sweep("the final replays").await;
        self.converge().await;
        for owner in OWNERS {
            self.label = format!("final owner {owner}");
            let head = self.model.head;
            let (req, resp) =
                self.query("final/owner", format!("/v1/accounts?owner={}&min_position={head}", pct(owner))).await;
            let ids: BTreeSet<String> = resp.body["accounts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["id"].as_str().map(str::to_owned))
                .collect();
            let want: BTreeSet<String> = self
                .model
                .accounts
                .values()
                .filter(|a| a.owner.as_ref().is_some_and(|o| o.as_deref() == Some(owner)))
                .map(|a| a.id.to_string())
                .collect();
            if resp.status == 200 && !want.is_subset(&ids) {
                self.query_fail("final/owner", &format!("look-up misses {:?}", want.difference(&ids)), &req, &resp);
            }
        }
        let customers = self.model.customers.clone();
        for id in customers.iter().copied() {
            let head = self.model.head;
            let (req, resp) = self
                .query("final/statement", format!("/v1/accounts/{id}/transactions?limit=1000&min_position={head}"))
                .await;
            if resp.status != 503 {
                self.check_statement("final/statement", id, 1000, &req, &resp);
            }
        }
        self.final_history().await;
        self.final_withdrawals().await;
        self.fold_log().await;
        self.verify_chain().await;
    }

    pub(crate) fn report(&self, elapsed: Duration) {
        let steps_per_s = self.steps as f64 / elapsed.as_secs_f64().max(0.001);
        eprintln!(
            "fuzz: seed {} — {} steps, {} requests in {:.1} s ({steps_per_s:.1} steps/s); {} accounts, {} transfers, \
             {} withdrawals ({} dead-lettered), head {}; {} consistency timeouts",
            self.seed,
            self.steps,
            self.requests,
            elapsed.as_secs_f64(),
            self.model.customers.len(),
            self.model.transfers.len(),
            self.model.withdrawals.len(),
            self.dead_letters,
            self.model.head,
            self.consistency_timeouts,
        );
        if !self.failures.is_empty() {
            let list: Vec<String> =
                self.failures.iter().map(|f| format!("  [{}] ×{}: {}", f.key, f.count, clip(&f.first, 600))).collect();
            panic!(
                "fuzz (seed {}, {} steps): {} distinct failures:\n{}",
                self.seed,
                self.steps,
                self.failures.len(),
                list.join("\n")
            );
        }
    }
}

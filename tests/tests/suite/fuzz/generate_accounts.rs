//! Planners for account commands: open (with client-supplied, existing and reserved ids) and
//! close (with malformed paths and bodies), each with the model's decision.

use crate::fuzz::expect::{Decision, Effect, Expect, Planned, expectation, path_expectation};
use crate::fuzz::fuzzer::Fuzz;
use crate::fuzz::model::Account;
use crate::fuzz::wire::{Body, Field, Validity, js};
use crate::fuzz::{CURRENCIES, OWNERS, VALIDATION};
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use std::collections::BTreeSet;
use uuid::Uuid;

impl Fuzz {
    pub(crate) fn pick_open_account(&mut self, currency: Option<&str>) -> Option<Account> {
        let open: Vec<Account> =
            self.model.open_customers().into_iter().filter(|a| currency.is_none_or(|c| a.currency == c)).collect();
        open.choose(&mut self.rng).cloned()
    }

    pub(crate) fn plan_open(&mut self) -> Planned {
        let hostile = self.hostile_part(&["currency", "owner", "overdraft", "id", "id", "metadata", "metadata", "top"]);
        let mut b = Body::default();
        let want = *CURRENCIES.choose(&mut self.rng).expect("currencies");
        let currency = b.field("currency", self.g_currency("currency", hostile == Some("currency"), want, false));
        let owner_hostile = hostile == Some("owner");
        let owner = if !owner_hostile && self.rng.random_bool(0.6) {
            let o = OWNERS.choose(&mut self.rng).expect("owners").to_string();
            b.field("owner", Field::valid(js(&o), Some(o)))
        } else {
            b.field("owner", self.g_text("owner", owner_hostile, false))
        };
        let overdraft = b.field("overdraft_limit", self.g_overdraft(hostile == Some("overdraft")));
        let id = self.g_open_id(hostile == Some("id"));
        let id_tag = id.tag.clone();
        let id = b.field("id", id);
        let metadata = b.field("metadata", self.g_metadata(hostile == Some("metadata"), "metadata", 0.4));
        if hostile == Some("top") {
            self.mutate_top(&mut b);
        }
        let exists = id.is_some_and(|i| self.model.stream_exists(i) && !self.model.reserved().contains(&i));
        let decision = match id {
            Some(i) if self.model.reserved().contains(&i) => Decision::Refuse(vec![409, 422]),
            Some(i) if self.model.stream_exists(i) => Decision::Reject(vec![(409, "version_conflict")]),
            Some(i) if i.is_nil() => Decision::Open,
            None if id_tag.is_some() && b.validity() != Validity::Invalid => Decision::Open,
            _ => Decision::Accept(201),
        };
        let mut expect = expectation(b.validity(), decision);
        if exists && b.validity() == Validity::Invalid {
            // "A client-supplied id that already exists is 409, whatever the body."
            expect = Expect::OneOf(vec![VALIDATION[0], VALIDATION[1], (409, "version_conflict")]);
        }
        let (label, req, expect) = self.command("open", "/v1/accounts".into(), &b, expect);
        let effect = Effect::Open { id, currency, overdraft, owner, metadata };
        Planned { label, req, expect, effect, touches: Vec::new() }
    }

    pub(crate) fn g_open_id(&mut self, hostile: bool) -> Field<Uuid> {
        if !hostile {
            if self.rng.random_bool(0.2) {
                let id = self.uuid();
                return Field::valid(js(&id.to_string()), id);
            }
            return Field::absent(None);
        }
        let variants = [
            "existing",
            "reserved_used",
            "reserved_unused",
            "reserved_unused",
            "transfer_id",
            "withdrawal_id",
            "nil",
            "upper_fresh",
            "garbage",
            "number",
            "v7_fresh",
        ];
        let Some(v) = self.variant("id", &variants) else { return Field::absent(None) };
        let fresh = self.uuid();
        let unused: Vec<Uuid> = {
            let used: BTreeSet<Uuid> = self.model.systems.values().copied().collect();
            self.model.reserved().difference(&used).copied().collect()
        };
        let pick = |rng: &mut StdRng, ids: Vec<Uuid>| ids.choose(rng).copied().unwrap_or(fresh);
        let (raw, validity, value) = match v {
            "existing" => {
                let id = pick(&mut self.rng, self.model.customers.clone());
                (js(&id.to_string()), Validity::Valid, Some(id))
            }
            "reserved_used" => {
                let id = pick(&mut self.rng, self.model.systems.values().copied().collect());
                (js(&id.to_string()), Validity::Valid, Some(id))
            }
            "reserved_unused" => {
                let id = pick(&mut self.rng, unused);
                (js(&id.to_string()), Validity::Valid, Some(id))
            }
            "transfer_id" => {
                let id = pick(&mut self.rng, self.model.transfers.iter().map(|t| t.id).collect());
                (js(&id.to_string()), Validity::Valid, Some(id))
            }
            "withdrawal_id" => {
                let id = pick(&mut self.rng, self.model.withdrawals.iter().map(|w| w.id).collect());
                (js(&id.to_string()), Validity::Valid, Some(id))
            }
            "nil" => (js(&Uuid::nil().to_string()), Validity::Valid, Some(Uuid::nil())),
            "upper_fresh" => (js(&fresh.to_string().to_uppercase()), Validity::Open, Some(fresh)),
            "garbage" => (js("acct-1"), Validity::Invalid, None),
            "number" => ("12345".to_owned(), Validity::Invalid, None),
            _ => {
                let random: [u8; 10] = self.rng.random();
                let id = uuid::Builder::from_unix_timestamp_millis(1_700_000_000_000, &random).into_uuid();
                (js(&id.to_string()), Validity::Valid, Some(id))
            }
        };
        Field::hostile(format!("id={v}"), Some(raw), validity, value)
    }

    pub(crate) fn plan_close(&mut self) -> Planned {
        let hostile = self.hostile_part(&["path", "body"]);
        let empty: Vec<Uuid> =
            self.model.open_customers().into_iter().filter(|a| a.balance == 0 && a.holds == 0).map(|a| a.id).collect();
        let target = if !empty.is_empty() && self.rng.random_bool(0.6) {
            empty.choose(&mut self.rng).copied()
        } else {
            self.model.customers.choose(&mut self.rng).copied()
        };
        let mut b = Body::default();
        let body_variant = if hostile == Some("body") {
            self.variant("close_body", &["empty", "array", "unknown_field", "null", "string", "invalid"])
        } else {
            None
        };
        let (raw, validity): (&[u8], Validity) = match body_variant {
            Some("empty") => (b"", Validity::Open),
            Some("array") => (b"[]", Validity::Invalid),
            Some("unknown_field") => (b"{\"reason\":\"done\"}", Validity::Open),
            Some("null") => (b"null", Validity::Invalid),
            Some("string") => (b"\"close\"", Validity::Invalid),
            Some(_) => (b"{\"a\":", Validity::Invalid),
            None => (b"{}", Validity::Valid),
        };
        b.raw = Some(raw.to_vec());
        b.merge(validity);
        if let Some(v) = body_variant {
            b.tags.push(format!("close_body={v}"));
        }
        let path_variant = if hostile == Some("path") || target.is_none() {
            self.variant("path", &["unknown", "reserved", "nul", "garbage", "upper"])
        } else {
            None
        };
        let (segment, decision, account) = match (path_variant, target) {
            (None | Some("upper"), Some(id)) => {
                let a = self.model.accounts.get(&id).cloned().expect("a model account");
                let decision = if !a.open {
                    Decision::Open
                } else if a.balance != 0 || a.holds != 0 {
                    Decision::Reject(vec![(422, "account_not_empty")])
                } else {
                    Decision::Accept(200)
                };
                let segment = if path_variant.is_some() { id.to_string().to_uppercase() } else { id.to_string() };
                (segment, decision, Some(id))
            }
            (Some("reserved"), _) => {
                let reserved: Vec<Uuid> = self.model.reserved().into_iter().collect();
                let id = *reserved.choose(&mut self.rng).expect("reserved ids");
                (id.to_string(), Decision::Refuse(vec![404, 409, 422]), None)
            }
            (Some("nul"), _) => ("%00".into(), Decision::Refuse(vec![400, 404]), None),
            (Some("garbage"), _) => ("not-an-id".into(), Decision::Refuse(vec![400, 404]), None),
            _ => (self.unknown_id().to_string(), Decision::Reject(vec![(404, "account_not_found")]), None),
        };
        let decision = match (path_variant, decision) {
            (Some("upper"), Decision::Accept(_)) => Decision::Open,
            (Some("upper"), Decision::Reject(mut c)) => {
                c.push((404, "account_not_found"));
                Decision::Reject(c)
            }
            (_, d) => d,
        };
        let expect = path_expectation(path_variant, &b, decision);
        let (mut label, req, expect) = self.command("close", format!("/v1/accounts/{segment}/close"), &b, expect);
        if let Some(v) = path_variant {
            label += &format!("+path={v}");
        }
        let effect = account.map_or(Effect::None, |account| Effect::Close { account });
        Planned { label, req, expect, effect, touches: account.into_iter().collect() }
    }
}

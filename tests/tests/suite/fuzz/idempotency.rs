//! Idempotency: the answered commands kept for replay, replays that must answer identically,
//! and a stored key re-sent with another request.

use crate::fuzz::expect::Expect;
use crate::fuzz::fuzzer::Fuzz;
use crate::fuzz::wire::{Req, clip};
use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::Value;

/// A command request the server answered, kept for replays.
#[derive(Clone)]
pub(crate) struct Sent {
    pub(crate) label: String,
    pub(crate) req: Req,
    pub(crate) status: u16,
    pub(crate) body: Value,
}

impl Fuzz {
    pub(crate) async fn replay(&mut self, sent: Sent, label: &str) {
        self.label = format!("replay of {}", sent.label);
        let resp = self.send(&sent.req).await;
        self.note(format!("{label} of {}: {} -> {}", sent.label, sent.req.describe(), resp.short()));
        self.check_common(label, &sent.req, &resp);
        let replayed = resp.header("idempotent-replayed") == Some("true");
        if resp.status != sent.status || resp.body != sent.body || !replayed {
            let family = sent.label.split('/').next().unwrap_or("").to_owned();
            let class = if (200..300).contains(&sent.status) { "success" } else { "business rejection" };
            self.fail(
                format!("{label} :: a {family} {class} does not replay identically"),
                format!(
                    "{}: first {} {}; again {} (Idempotent-Replayed {:?})",
                    sent.req.describe(),
                    sent.status,
                    clip(&sent.body.to_string(), 300),
                    resp.short(),
                    resp.header("idempotent-replayed")
                ),
            );
        }
    }

    pub(crate) async fn step_replay(&mut self) {
        let Some(sent) = self.sent.choose(&mut self.rng).cloned() else { return self.step_query().await };
        self.replay(sent, "replay").await;
    }

    /// The same key with another request: 422 `idempotency_key_reused`, nothing runs.
    pub(crate) async fn step_reuse(&mut self) {
        let stored: Vec<Sent> = self.sent.iter().filter(|s| (200..300).contains(&s.status)).cloned().collect();
        let Some(old) = stored.choose(&mut self.rng).cloned() else { return self.step_query().await };
        self.calm = true;
        let mut p = if self.rng.random_bool(0.5) { self.plan_deposit() } else { self.plan_transfer() };
        self.calm = false;
        let body_of = |r: &Req| r.body.as_ref().and_then(|b| serde_json::from_slice::<Value>(b).ok());
        if p.req.path == old.req.path && body_of(&p.req) == body_of(&old.req) {
            return;
        }
        p.req.key = old.req.key.clone();
        p.label = format!("reuse/{}", p.label);
        p.expect = Expect::OneOf(vec![(422, "idempotency_key_reused")]);
        self.run_command(p).await;
    }
}

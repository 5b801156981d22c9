//! What a planned command should get: the model's decision for a valid body, the expectation
//! it becomes once the body's validity is known, and the effect an accepted command has on the
//! model.

use crate::fuzz::VALIDATION;
use crate::fuzz::wire::{Body, Req, Validity};
use serde_json::Value;
use uuid::Uuid;

/// What the model says of a command whose body is valid.
pub(crate) enum Decision {
    Accept(u16),
    Reject(Vec<(u16, &'static str)>),
    /// Never accepted; any of these statuses.
    Refuse(Vec<u16>),
    Open,
}

#[derive(Clone, Debug)]
pub(crate) enum Expect {
    Accept(u16),
    OneOf(Vec<(u16, &'static str)>),
    Refuse(Vec<u16>),
    Open,
}

pub(crate) fn expectation(validity: Validity, decision: Decision) -> Expect {
    match (validity, decision) {
        (Validity::Invalid, _) => Expect::OneOf(VALIDATION.to_vec()),
        (Validity::Valid, Decision::Accept(s)) => Expect::Accept(s),
        (_, Decision::Accept(_)) | (_, Decision::Open) => Expect::Open,
        (Validity::Valid, Decision::Reject(c)) => Expect::OneOf(c),
        // An open body (e.g. padded past a size limit) may also be refused as such.
        (_, Decision::Reject(mut c)) => {
            c.extend(VALIDATION);
            c.push((413, "payload_too_large"));
            Expect::OneOf(c)
        }
        (Validity::Valid, Decision::Refuse(s)) => Expect::Refuse(s),
        (_, Decision::Refuse(mut s)) => {
            s.extend([400, 413]);
            Expect::Refuse(s)
        }
    }
}

/// A malformed path and a malformed body: which is reported first is not fixed.
pub(crate) fn path_expectation(path_variant: Option<&str>, body: &Body, decision: Decision) -> Expect {
    // (A hostile key with a malformed path: the same, see `Fuzz::command`.)
    if path_variant.is_some_and(|v| v != "upper") && body.validity() == Validity::Invalid {
        return Expect::Refuse(vec![400, 404, 414, 422]);
    }
    expectation(body.validity(), decision)
}

/// What an accepted command does to the model (`None` fields: adopt the response's).
#[derive(Clone, Debug)]
pub(crate) enum Effect {
    None,
    Open {
        id: Option<Uuid>,
        currency: Option<&'static str>,
        overdraft: Option<i128>,
        owner: Option<Option<String>>,
        metadata: Option<Option<Value>>,
    },
    Deposit {
        account: Uuid,
        currency: &'static str,
        amount: i128,
        metadata: Option<Option<Value>>,
    },
    Transfer {
        from: Uuid,
        to: Uuid,
        currency: &'static str,
        amount: i128,
        metadata: Option<Option<Value>>,
    },
    Reverse {
        transfer: Uuid,
    },
    Withdraw {
        account: Uuid,
        amount: i128,
        metadata: Option<Option<Value>>,
    },
    Close {
        account: Uuid,
    },
}

pub(crate) struct Planned {
    pub(crate) label: String,
    pub(crate) req: Req,
    pub(crate) expect: Expect,
    pub(crate) effect: Effect,
    pub(crate) touches: Vec<Uuid>,
}

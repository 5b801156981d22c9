//! Field types of request bodies. Each parses its value fully (parse, don't validate):
//! a body that deserializes is valid, whoever built it, and a client that constructs
//! one with `TryFrom` finds out before sending what the server would refuse.

use crate::limits::{
    METADATA_BYTES_MAX, METADATA_KEY_CHARS_MAX, METADATA_KEYS_MAX, METADATA_STRING_CHARS_MAX, TEXT_BYTES_MAX,
    TOKEN_NAME_CHARS_MAX,
};
use ledger_domain::Money;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use uuid::Uuid;

/// Free text (`owner`, `reference`, `destination`, `reason`): 1 to [`TEXT_BYTES_MAX`]
/// bytes, no U+0000.
// From any JSON value: a value of another type is refused without being echoed (serde's
// own message would quote it, and an owner is personal data).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Value")]
pub struct Text(pub String);

impl TryFrom<Value> for Text {
    type Error = String;
    fn try_from(v: Value) -> Result<Text, String> {
        match v {
            Value::String(s) => Text::try_from(s),
            _ => Err("must be a string".into()),
        }
    }
}

impl TryFrom<String> for Text {
    type Error = String;
    fn try_from(s: String) -> Result<Text, String> {
        match () {
            _ if s.is_empty() => Err("must not be empty".into()),
            _ if s.len() > TEXT_BYTES_MAX => Err(format!("must be at most {TEXT_BYTES_MAX} bytes")),
            _ if s.contains('\0') => Err("must not contain U+0000".into()),
            _ => Ok(Text(s)),
        }
    }
}

impl TryFrom<&str> for Text {
    type Error = String;
    fn try_from(s: &str) -> Result<Text, String> {
        Text::try_from(s.to_owned())
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Metadata by the rules of API.md ("Metadata", "Numbers"); see [`metadata_refusal`].
/// Personal (`pii.`) keys are an account's only (API.md v1.2 "Personal data"):
/// refused here, allowed in [`AccountMetadata`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Value")]
pub struct Metadata(pub Value);

impl TryFrom<Value> for Metadata {
    type Error = String;
    fn try_from(v: Value) -> Result<Metadata, String> {
        if v.as_object().is_some_and(|m| m.keys().any(|k| ledger_domain::is_personal_key(k))) {
            return Err("`pii.` keys hold personal data and are allowed in an account's metadata only".into());
        }
        match metadata_refusal(&v) {
            Some(why) => Err(why),
            None => Ok(Metadata(v)),
        }
    }
}

impl Serialize for Metadata {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// An account's metadata: [`Metadata`]'s rules, and `pii.` keys allowed (their values
/// are personal data: sealed under the account's subject's key).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Value")]
pub struct AccountMetadata(pub Value);

impl TryFrom<Value> for AccountMetadata {
    type Error = String;
    fn try_from(v: Value) -> Result<AccountMetadata, String> {
        match metadata_refusal(&v) {
            Some(why) => Err(why),
            None => Ok(AccountMetadata(v)),
        }
    }
}

impl Serialize for AccountMetadata {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// The most characters of a subject.
pub const SUBJECT_CHARS_MAX: usize = 128;

/// Whether `s` is a subject: 1–128 characters of `[A-Za-z0-9_.:@-]`.
pub fn valid_subject(s: &str) -> bool {
    (1..=SUBJECT_CHARS_MAX).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'))
}

/// A subject (API.md v1.2 "Personal data"): a pseudonymous id of the person or
/// company an account belongs to, 1–128 characters of `[A-Za-z0-9_.:@-]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct SubjectId(pub String);

impl TryFrom<String> for SubjectId {
    type Error = String;
    fn try_from(s: String) -> Result<SubjectId, String> {
        if valid_subject(&s) {
            Ok(SubjectId(s))
        } else {
            Err(format!("must be 1 to {SUBJECT_CHARS_MAX} characters of [A-Za-z0-9_.:@-]"))
        }
    }
}

impl Serialize for SubjectId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Why `value` is refused as metadata by the rules of API.md ("Metadata", "Numbers"),
/// if it is: an object of at most [`METADATA_KEYS_MAX`] keys of 1–64 characters of
/// `[A-Za-z0-9_.-]`, each value a string (at most [`METADATA_STRING_CHARS_MAX`]
/// characters, no U+0000), a signed 64-bit integer written without fraction or
/// exponent, `true`, `false` or `null`; at most [`METADATA_BYTES_MAX`] bytes compact.
/// Such a value reads back from `jsonb` exactly as sent, so it hashes the same when the
/// chain is verified.
pub fn metadata_refusal(value: &Value) -> Option<String> {
    let Value::Object(map) = value else {
        return Some("must be a JSON object".into());
    };
    if map.len() > METADATA_KEYS_MAX {
        return Some(format!("may have at most {METADATA_KEYS_MAX} keys"));
    }
    for (key, v) in map {
        let key_ok = (1..=METADATA_KEY_CHARS_MAX).contains(&key.len())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !key_ok {
            return Some(format!(
                "keys must be 1 to {METADATA_KEY_CHARS_MAX} characters of [A-Za-z0-9_.-], got {:?}",
                key.escape_debug().to_string()
            ));
        }
        let value_ok = match v {
            Value::Null | Value::Bool(_) => true,
            Value::Number(n) => n.is_i64(),
            Value::String(s) => s.chars().count() <= METADATA_STRING_CHARS_MAX && !s.contains('\0'),
            Value::Array(_) | Value::Object(_) => false,
        };
        if !value_ok {
            return Some(format!(
                "`{key}` must be a string of at most {METADATA_STRING_CHARS_MAX} characters without U+0000, \
                 a 64-bit integer, true, false or null"
            ));
        }
    }
    if value.to_string().len() > METADATA_BYTES_MAX {
        return Some(format!("must be at most {METADATA_BYTES_MAX} bytes"));
    }
    None
}

/// An id the client chooses for a new stream: any UUID outside the version-8 space the
/// ledger reserves for its own streams (API.md "Ids").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "Uuid", into = "Uuid")]
pub struct NewId(pub Uuid);

impl TryFrom<Uuid> for NewId {
    type Error = &'static str;
    fn try_from(id: Uuid) -> Result<NewId, &'static str> {
        if ledger_domain::decide::is_reserved_id(id) {
            Err("is in the range the ledger reserves for its own ids (UUID version 8)")
        } else {
            Ok(NewId(id))
        }
    }
}

impl From<NewId> for Uuid {
    fn from(id: NewId) -> Uuid {
        id.0
    }
}

/// An overdraft limit: 0 ..= 10^15 minor units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct OverdraftLimit(pub Money);

impl TryFrom<i64> for OverdraftLimit {
    type Error = String;
    fn try_from(n: i64) -> Result<OverdraftLimit, String> {
        if (0..=ledger_domain::AMOUNT_MAX).contains(&n) {
            Ok(OverdraftLimit(Money::new(n)))
        } else {
            Err(format!("must be an integer from 0 to {}", ledger_domain::AMOUNT_MAX))
        }
    }
}

impl From<OverdraftLimit> for i64 {
    fn from(limit: OverdraftLimit) -> i64 {
        limit.0.to_i64().expect("an overdraft limit is at most 10^15")
    }
}

/// A transaction's postings: 1 to [`crate::limits::POSTINGS_MAX`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<crate::requests::PostingRequest>")]
pub struct Postings(pub Vec<crate::requests::PostingRequest>);

impl TryFrom<Vec<crate::requests::PostingRequest>> for Postings {
    type Error = String;
    fn try_from(postings: Vec<crate::requests::PostingRequest>) -> Result<Postings, String> {
        let max = crate::limits::POSTINGS_MAX;
        if (1..=max).contains(&postings.len()) {
            Ok(Postings(postings))
        } else {
            Err(format!("must hold 1 to {max} postings, not {}", postings.len()))
        }
    }
}

impl Serialize for Postings {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// A transaction's conditions: at most [`crate::limits::CONDITIONS_MAX`], so the
/// writer's work per command stays bounded.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<crate::requests::ConditionRequest>")]
pub struct Conditions(pub Vec<crate::requests::ConditionRequest>);

impl TryFrom<Vec<crate::requests::ConditionRequest>> for Conditions {
    type Error = String;
    fn try_from(conditions: Vec<crate::requests::ConditionRequest>) -> Result<Conditions, String> {
        let max = crate::limits::CONDITIONS_MAX;
        if conditions.len() <= max {
            Ok(Conditions(conditions))
        } else {
            Err(format!("must hold at most {max} conditions, not {}", conditions.len()))
        }
    }
}

impl Serialize for Conditions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Whether `name` is a token name: 1 to [`TOKEN_NAME_CHARS_MAX`] characters of
/// `[A-Za-z0-9_.-]`.
pub fn valid_token_name(name: &str) -> bool {
    (1..=TOKEN_NAME_CHARS_MAX).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A token's name: 1–64 characters of `[A-Za-z0-9_.-]` (its principal is `token:<name>`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct TokenName(pub String);

impl TryFrom<String> for TokenName {
    type Error = String;
    fn try_from(name: String) -> Result<TokenName, String> {
        if valid_token_name(&name) {
            Ok(TokenName(name))
        } else {
            Err(format!("must be 1 to {TOKEN_NAME_CHARS_MAX} characters of [A-Za-z0-9_.-]"))
        }
    }
}

impl Serialize for TokenName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

pub use ledger_domain::access::{DEFAULT_LEDGER, LEDGER_NAME_CHARS_MAX, valid_ledger_name};

/// A ledger's name, checked by [`valid_ledger_name`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "String")]
#[schema(value_type = String, pattern = "^[a-z][a-z0-9-]{0,62}$")]
pub struct LedgerName(pub String);

impl TryFrom<String> for LedgerName {
    type Error = String;
    fn try_from(name: String) -> Result<LedgerName, String> {
        if valid_ledger_name(&name) {
            Ok(LedgerName(name))
        } else {
            Err(format!("must be 1 to {LEDGER_NAME_CHARS_MAX} characters of [a-z0-9-], starting with a letter"))
        }
    }
}

impl Serialize for LedgerName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl std::fmt::Display for LedgerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses an RFC 3339 timestamp whose UTC form is still RFC 3339 (years 0000–9999:
/// `0000-01-01T00:00:00+23:59` is refused, it would be year -1 in UTC), so every time
/// the ledger stores, compares or sends on to the provider can be written back.
pub fn timestamp(raw: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::Datelike;
    let t = chrono::DateTime::parse_from_rfc3339(raw).ok()?.with_timezone(&chrono::Utc);
    (0..=9999).contains(&t.year()).then_some(t)
}

/// An RFC 3339 timestamp whose UTC form is still RFC 3339 (years 0000–9999).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Timestamp(pub chrono::DateTime<chrono::Utc>);

impl TryFrom<String> for Timestamp {
    type Error = &'static str;
    fn try_from(raw: String) -> Result<Timestamp, &'static str> {
        timestamp(&raw).map(Timestamp).ok_or("must be an RFC 3339 timestamp of years 0000–9999")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true).serialize(s)
    }
}

//! The request bodies of the commands: one `Deserialize + ToSchema` type per route,
//! used by the handler itself and by the OpenAPI document, so the two cannot drift.
//! Each field's type parses it fully (parse, don't validate): a body that deserializes
//! is valid, and whatever does not is one 422 `validation_error` naming the field.

use crate::error::ApiError;
use ledger_domain::{Amount, Currency, Money};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// Parses a command's JSON body (already checked to be JSON by `CommandBody`) as `T`;
/// a body that is not an object, or a field that does not parse, is 422 naming it.
pub fn parse<T: serde::de::DeserializeOwned>(json: &Value) -> Result<T, ApiError> {
    if !json.is_object() {
        return Err(ApiError::validation("the body must be a JSON object"));
    }
    serde_path_to_error::deserialize(json).map_err(|e| {
        let field = e.path().to_string();
        ApiError::validation(format!("`{field}`: {}", e.inner()))
    })
}

/// Free text (`owner`, `reference`, `destination`, `reason`): 1 to
/// [`crate::limits::TEXT_BYTES_MAX`] bytes, no U+0000.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Text(pub String);

impl TryFrom<String> for Text {
    type Error = String;
    fn try_from(s: String) -> Result<Text, String> {
        let max = crate::limits::TEXT_BYTES_MAX;
        match () {
            _ if s.is_empty() => Err("must not be empty".into()),
            _ if s.len() > max => Err(format!("must be at most {max} bytes")),
            _ if s.contains('\0') => Err("must not contain U+0000".into()),
            _ => Ok(Text(s)),
        }
    }
}

/// Metadata by the rules of API.md ("Metadata", "Numbers"); see
/// [`crate::validate::metadata_refusal`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Value")]
pub struct Metadata(pub Value);

impl TryFrom<Value> for Metadata {
    type Error = String;
    fn try_from(v: Value) -> Result<Metadata, String> {
        match crate::validate::metadata_refusal(&v) {
            Some(why) => Err(why),
            None => Ok(Metadata(v)),
        }
    }
}

/// An id the client chooses for a new stream: any UUID outside the version-8 space the
/// ledger reserves for its own streams (API.md "Ids").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Uuid")]
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

/// An overdraft limit: 0 ..= 10^15 minor units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
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

/// `POST /v1/accounts`.
#[derive(Deserialize, ToSchema)]
pub struct OpenAccountRequest {
    /// ISO-4217 style code: three upper-case letters.
    #[schema(value_type = String, pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: Currency,
    /// Free text (e.g. an e-mail, 1–1024 bytes, no NUL) for the indexed look-up `GET /v1/accounts?owner=`.
    #[schema(value_type = Option<String>, example = "alice@example.com")]
    pub owner: Option<Text>,
    /// How far below zero `available` may go, in minor units (default 0).
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    pub overdraft_limit: Option<OverdraftLimit>,
    /// The account's id; the server generates a v7 UUID when absent. An id that exists
    /// is 409 `version_conflict`; a version-8 UUID is 422 `validation_error` (that space
    /// is reserved for the ledger's own streams, such as system accounts).
    #[schema(value_type = Option<Uuid>)]
    pub id: Option<NewId>,
    /// Kept with the account and returned as sent: an object of at most 64 keys, each
    /// 1–64 characters of `[A-Za-z0-9_.-]`; each value a string (≤ 1,024 characters, no
    /// U+0000), a signed 64-bit integer (no fraction, no exponent), `true`, `false` or
    /// `null`; at most 8 KiB compact. Anything else is 422 `validation_error`.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Metadata>,
}

/// A command that takes no fields: an empty object (or no body at all).
#[derive(Deserialize, ToSchema)]
pub struct EmptyRequest {}

/// `POST /v1/deposits`: money entering from the outside world through the currency's
/// system account.
#[derive(Deserialize, ToSchema)]
pub struct DepositRequest {
    pub account_id: Uuid,
    /// Minor units (cents), 1 ..= 10^15.
    #[schema(value_type = i64, minimum = 1, maximum = 1_000_000_000_000_000_i64, example = 2500)]
    pub amount: Amount,
    /// Must be the account's currency.
    #[schema(value_type = String, pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: Currency,
    /// Free text, 1–1024 bytes.
    #[schema(value_type = Option<String>)]
    pub reference: Option<Text>,
    /// The client's metadata, returned as sent (the rules of `OpenAccountRequest.metadata`).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Metadata>,
}

/// `POST /v1/transfers`.
#[derive(Deserialize, ToSchema)]
pub struct TransferRequest {
    /// The debited account.
    pub from: Uuid,
    /// The credited account (not `from`).
    pub to: Uuid,
    /// Minor units (cents), 1 ..= 10^15.
    #[schema(value_type = i64, minimum = 1, maximum = 1_000_000_000_000_000_i64, example = 1000)]
    pub amount: Amount,
    /// The currency of both accounts.
    #[schema(value_type = String, pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: Currency,
    /// Free text, 1–1024 bytes.
    #[schema(value_type = Option<String>)]
    pub reference: Option<Text>,
    /// The client's metadata, returned as sent (the rules of `OpenAccountRequest.metadata`).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Metadata>,
}

/// `POST /v1/transfers/{id}/reverse`.
#[derive(Deserialize, ToSchema)]
pub struct ReverseRequest {
    /// Why the transfer is reversed (1–1024 bytes); recorded on the reversing transfer.
    #[schema(value_type = String)]
    pub reason: Text,
}

/// `POST /v1/withdrawals`.
#[derive(Deserialize, ToSchema)]
pub struct WithdrawalRequest {
    pub account_id: Uuid,
    /// Minor units (cents), 1 ..= 10^15.
    #[schema(value_type = i64, minimum = 1, maximum = 1_000_000_000_000_000_i64, example = 700)]
    pub amount: Amount,
    #[schema(value_type = String, pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: Currency,
    /// Where the provider pays out to (1–1024 bytes), e.g. an IBAN.
    #[schema(value_type = String, example = "NL00BANK0001")]
    pub destination: Text,
    /// The client's metadata, returned as sent (the rules of `OpenAccountRequest.metadata`).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Metadata>,
}

/// A token's name: 1–64 characters of `[A-Za-z0-9_.-]` (its principal is `token:<name>`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct TokenName(pub String);

impl TryFrom<String> for TokenName {
    type Error = String;
    fn try_from(name: String) -> Result<TokenName, String> {
        if crate::auth::valid_token_name(&name) {
            Ok(TokenName(name))
        } else {
            Err(format!("must be 1 to {} characters of [A-Za-z0-9_.-]", crate::limits::TOKEN_NAME_CHARS_MAX))
        }
    }
}

/// What a token may do: `admin` everything; `operator` /v1/admin except tokens, plus all
/// reads; `client` commands and reads outside /v1/admin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Operator,
    Client,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Client => "client",
        }
    }
}

/// `POST /v1/admin/tokens`.
#[derive(Deserialize, ToSchema)]
pub struct TokenRequest {
    /// 1–64 characters of `[A-Za-z0-9_.-]`; each name is issued once.
    #[schema(value_type = String, pattern = "^[A-Za-z0-9_.-]{1,64}$", example = "checkout-service")]
    pub name: TokenName,
    pub role: Role,
}

/// An RFC 3339 timestamp whose UTC form is still RFC 3339 (years 0000–9999).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Timestamp(pub chrono::DateTime<chrono::Utc>);

impl TryFrom<String> for Timestamp {
    type Error = &'static str;
    fn try_from(raw: String) -> Result<Timestamp, &'static str> {
        crate::validate::timestamp(&raw).map(Timestamp).ok_or("must be an RFC 3339 timestamp of years 0000–9999")
    }
}

/// `POST /v1/admin/reconciliations`: the window to compare (default: the 24 hours
/// before `to`, which defaults to now); `from` must be before `to`.
#[derive(Deserialize, ToSchema)]
pub struct ReconciliationRequest {
    #[schema(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    pub from: Option<Timestamp>,
    #[schema(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    pub to: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refusal<T: serde::de::DeserializeOwned>(body: Value) -> String {
        match parse::<T>(&body) {
            Ok(_) => panic!("{body} should be refused"),
            Err(e) => {
                assert_eq!((e.status.as_u16(), e.code), (422, crate::error::ErrorCode::ValidationError), "{body}");
                e.detail
            }
        }
    }

    #[test]
    fn every_refusal_names_its_field() {
        let id = Uuid::now_v7();
        let ok = json!({ "account_id": id, "amount": 5, "currency": "EUR" });
        assert!(parse::<DepositRequest>(&ok).is_ok());
        for (field, value) in [
            ("amount", json!(0)),
            ("amount", json!(7.0)),
            ("amount", json!("5")),
            ("amount", json!(1_000_000_000_000_001_i64)),
            ("currency", json!("eur")),
            ("account_id", json!("not-a-uuid")),
            ("reference", json!("")),
            ("reference", json!("a\u{0}b")),
            ("metadata", json!({ "n": 1.5 })),
            ("metadata", json!({ "bad key": 1 })),
        ] {
            let mut body = ok.clone();
            body[field] = value;
            let detail = refusal::<DepositRequest>(body);
            assert!(detail.starts_with(&format!("`{field}`")), "{field}: {detail}");
        }
        assert!(refusal::<DepositRequest>(json!({ "amount": 5, "currency": "EUR" })).contains("account_id"));
        refusal::<EmptyRequest>(json!([]));
        let reserved = Uuid::new_v8([1; 16]);
        assert!(refusal::<OpenAccountRequest>(json!({ "currency": "EUR", "id": reserved })).starts_with("`id`"));
        assert!(
            refusal::<OpenAccountRequest>(json!({ "currency": "EUR", "overdraft_limit": -1 })).contains("overdraft")
        );
        assert!(refusal::<TokenRequest>(json!({ "name": "a b", "role": "admin" })).starts_with("`name`"));
        assert!(refusal::<TokenRequest>(json!({ "name": "ok", "role": "root" })).starts_with("`role`"));
        let window = json!({ "from": "0000-01-01T00:00:00+23:59" });
        assert!(refusal::<ReconciliationRequest>(window).starts_with("`from`"));
    }
}

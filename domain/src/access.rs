//! Who may do what: the roles an API token is issued with.

use serde::{Deserialize, Serialize};

/// What a token may do: `admin` everything; `operator` /v1/admin except tokens, plus all
/// reads; `client` commands and reads outside /v1/admin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Operator,
    Client,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Operator, Role::Client];

    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Client => "client",
        }
    }

    pub fn parse(role: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == role)
    }
}

/// The longest ledger name (API.md "Ledgers").
pub const LEDGER_NAME_CHARS_MAX: usize = 63;

/// The ledger every unprefixed route addresses; it always exists.
pub const DEFAULT_LEDGER: &str = "default";

/// Whether `name` is a ledger name: 1–63 characters of `[a-z0-9-]`, starting with a letter.
pub fn valid_ledger_name(name: &str) -> bool {
    (1..=LEDGER_NAME_CHARS_MAX).contains(&name.len())
        && name.as_bytes()[0].is_ascii_lowercase()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

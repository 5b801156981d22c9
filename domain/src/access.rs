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

//! The HTTP contract of the ledger (`API.md`) as Rust types, the one source of what
//! goes over the wire. The server's handlers deserialize these requests and serialize
//! these responses, its OpenAPI document derives its schemas from them, and the client
//! crate (`ledger-client`) sends and reads the same types, so none of the three can
//! drift from the others.
//!
//! - [`limits`]: what one request may hold (text, metadata, ids, pages).
//! - [`fields`]: field types that parse fully (parse, don't validate): `Text`,
//!   `Metadata`, `NewId`, `OverdraftLimit`, `TokenName`, `Timestamp`. The domain's
//!   enums that the API shows as they are (`Role`, `MismatchKind`, `Resolution`,
//!   `HoldStatus`) are
//!   re-exported with their schemas.
//! - [`requests`]: one body type per command route.
//! - [`responses`]: one body type per answer, and the problem document of errors.
//! - [`queries`]: the query parameters of the read routes.
//! - [`problem`]: the stable error codes and the RFC 9457 problem document.

pub mod fields;
pub mod limits;
pub mod problem;
pub mod queries;
pub mod requests;
pub mod responses;

pub use fields::{
    AccountMetadata, LedgerName, Metadata, NewId, OverdraftLimit, Postings, SubjectId, Text, Timestamp, TokenName,
    valid_subject,
};
pub use ledger_domain::{Amount, Currency, HoldStatus, MismatchKind, Resolution, Role};
pub use problem::{ErrorCode, Problem};
pub use queries::*;
pub use requests::*;
pub use responses::*;

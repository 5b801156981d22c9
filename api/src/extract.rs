//! Extractors whose rejections are [`ApiError`]s: a query string and a path segment
//! are checked at the edge (valid UTF-8, no control characters such as NUL, bounded
//! length, no parameter given twice), so no malformed input reaches SQL, and a bad
//! request is always a problem document, never a plain-text rejection.

use crate::error::ApiError;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use std::collections::HashMap;

/// Longest query parameter value accepted, in bytes.
pub const PARAM_BYTES_MAX: usize = 1024;
/// Most query parameters accepted on one request.
pub const PARAMS_MAX: usize = 32;

/// The query parameters of a request, checked.
pub struct Params(pub HashMap<String, String>);

/// Why a text taken from a URL is refused, if it is.
fn refused(text: &str) -> Option<&'static str> {
    if text.len() > PARAM_BYTES_MAX {
        Some("is too long")
    } else if text.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map_err(|_| ApiError::bad_request("the query string is not valid UTF-8 form encoding"))?;
        if pairs.len() > PARAMS_MAX {
            return Err(ApiError::bad_request(format!("at most {PARAMS_MAX} query parameters are accepted")));
        }
        let mut params = HashMap::with_capacity(pairs.len());
        for (name, value) in pairs {
            if let Some(why) = refused(&name).or_else(|| refused(&value)) {
                return Err(ApiError::bad_request(format!("query parameter `{}` {why}", name.escape_debug())));
            }
            if params.contains_key(&name) {
                return Err(ApiError::bad_request(format!("query parameter `{name}` is given more than once")));
            }
            params.insert(name, value);
        }
        Ok(Params(params))
    }
}

/// The one path parameter of a route (an id), as text; one that is not valid UTF-8
/// names nothing, so 404.
pub struct Segment(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(raw)) if refused(&raw).is_none() => Ok(Segment(raw)),
            _ => Err(ApiError::not_found("no such resource")),
        }
    }
}

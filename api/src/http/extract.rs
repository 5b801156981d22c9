//! Extractors whose rejections are [`ApiError`]s: a query string and a path segment
//! are checked at the edge (valid UTF-8, no control characters such as NUL, bounded
//! length, no parameter given twice), so no malformed input reaches SQL, and a bad
//! request is always a problem document, never a plain-text rejection.

use crate::http::error::ApiError;
use crate::http::limits::{PARAM_BYTES_MAX, PARAMS_MAX};
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use std::collections::HashMap;

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
        parse_query(parts.uri.query().unwrap_or("")).map(Params)
    }
}

/// Parses `application/x-www-form-urlencoded` query text strictly: a parameter whose
/// decoded bytes are not UTF-8 is refused (never replaced by U+FFFD).
pub fn parse_query(raw: &str) -> Result<HashMap<String, String>, ApiError> {
    let mut params = HashMap::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        if params.len() == PARAMS_MAX {
            return Err(ApiError::bad_request(format!("at most {PARAMS_MAX} query parameters are accepted")));
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (name, value) = (decode(name, true)?, decode(value, true)?);
        if let Some(why) = refused(&name).or_else(|| refused(&value)) {
            return Err(ApiError::bad_request(format!("query parameter `{}` {why}", name.escape_debug())));
        }
        if params.contains_key(&name) {
            return Err(ApiError::bad_request(format!("query parameter `{name}` is given more than once")));
        }
        params.insert(name, value);
    }
    Ok(params)
}

/// A path segment taken from raw text (a bulk item's `{id}`), as [`Segment`] takes it
/// from the URL: percent-decoded as the router decodes (`+` stays `+`), then held to
/// the same limits; one that is malformed or refused names nothing (404).
pub fn raw_segment(raw: &str) -> Result<String, ApiError> {
    match decode(raw, false) {
        Ok(segment) if refused(&segment).is_none() => Ok(segment),
        _ => Err(ApiError::not_found("no such resource")),
    }
}

/// Percent-decodes one form-encoded component (`+` is a space when `plus_is_space`).
fn decode(component: &str, plus_is_space: bool) -> Result<String, ApiError> {
    let malformed = || ApiError::bad_request("the query string is not valid UTF-8 form encoding");
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).ok_or_else(malformed)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| malformed())?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| malformed())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_decoded_strictly() {
        let ok = parse_query("owner=a%40b.c&x=1+2&empty=&flag").expect("valid");
        assert_eq!(ok["owner"], "a@b.c");
        assert_eq!(ok["x"], "1 2");
        assert_eq!((ok["empty"].as_str(), ok["flag"].as_str()), ("", ""));
        for bad in ["owner=%FF", "owner=%", "owner=%4", "owner=%zz", "owner=%00", "a=1&a=2", "x=%C3%28", "k%0A=v"] {
            assert!(parse_query(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_query("owner=%C3%A9").expect("valid")["owner"], "é");
        assert_eq!(raw_segment("a%2Db+c").ok().as_deref(), Some("a-b+c"), "a path segment keeps its '+'");
        assert!(raw_segment("%FF").is_err() && raw_segment(&"a".repeat(PARAM_BYTES_MAX + 1)).is_err());
        let many: Vec<String> = (0..=PARAMS_MAX).map(|i| format!("p{i}=1")).collect();
        assert!(parse_query(&many.join("&")).is_err());
    }
}

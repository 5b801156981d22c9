//! Query strings from the wire types' query structs: each field that is set becomes
//! `name=value`, percent-encoded (RFC 3986 unreserved characters kept).

use crate::Error;
use serde::Serialize;
use serde_json::Value;

pub fn encode(query: &impl Serialize) -> Result<String, Error> {
    let value = serde_json::to_value(query).map_err(|e| Error::Config(format!("a query does not serialize: {e}")))?;
    let fields = match value {
        Value::Object(fields) => fields,
        Value::Null => return Ok(String::new()),
        other => return Err(Error::Config(format!("a query must be a struct, not {other}"))),
    };
    let mut out = String::new();
    for (name, value) in fields {
        let text = match value {
            Value::Null => continue,
            Value::String(s) => s,
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            other => return Err(Error::Config(format!("query field {name} is not a scalar: {other}"))),
        };
        out.push(if out.is_empty() { '?' } else { '&' });
        percent(&name, &mut out);
        out.push('=');
        percent(&text, &mut out);
    }
    Ok(out)
}

/// One `name=value` pair, percent-encoded.
pub fn pair(name: &str, value: &str) -> String {
    let mut out = String::new();
    percent(name, &mut out);
    out.push('=');
    percent(value, &mut out);
    out
}

fn percent(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_fields_are_encoded_and_unset_ones_left_out() {
        let q = ledger_wire::AuditQuery { actor: Some("token:a b&c".into()), limit: Some(5), ..Default::default() };
        assert_eq!(encode(&q).expect("encodes"), "?actor=token%3Aa%20b%26c&limit=5");
        assert_eq!(encode(&()).expect("encodes"), "");
        let t = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05+01:00").expect("a time").to_utc();
        let q = ledger_wire::BalanceQuery { as_of: Some(t), at_position: None, effective_at: None };
        assert_eq!(encode(&q).expect("encodes"), "?as_of=2026-01-02T02%3A04%3A05Z");
    }
}

//! Requests and responses as they travel, and command bodies built field by field as JSON
//! text (so that any part can be malformed), each field with its standing against the contract.

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::Value;

#[derive(Clone, Debug)]
pub(crate) struct Req {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) body: Option<Vec<u8>>,
    pub(crate) correlation: Option<Vec<u8>>,
}

impl Req {
    pub(crate) fn get(path: impl Into<String>) -> Req {
        Req { method: Method::GET, path: path.into(), key: None, body: None, correlation: None }
    }

    pub(crate) fn describe(&self) -> String {
        let mut s = format!("{} {}", self.method, clip(&self.path, 300));
        if let Some(k) = &self.key {
            s += &format!(" [Idempotency-Key {}]", clip(&String::from_utf8_lossy(k), 40));
        } else if self.method == Method::POST {
            s += " [no Idempotency-Key]";
        }
        if let Some(c) = &self.correlation {
            s += &format!(" [X-Correlation-Id {}]", clip(&String::from_utf8_lossy(c), 40));
        }
        if let Some(b) = &self.body {
            s += &format!(" {}", clip(&String::from_utf8_lossy(b), 400));
        }
        s
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
    pub(crate) text: String,
}

impl Resp {
    pub(crate) fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub(crate) fn short(&self) -> String {
        format!("{} {}", self.status, clip(&self.text, 400))
    }

    pub(crate) fn position_header(&self) -> Option<i64> {
        self.header("x-ledger-position").and_then(|p| p.parse().ok())
    }
}

pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let head: String = s.chars().take(max).collect();
    format!("{head}…({} chars)", s.chars().count())
}

/// How a field (or a whole body) stands against the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Validity {
    Valid,
    /// The contract does not say: accepting and refusing (4xx) are both fine.
    Open,
    /// 400/422 `validation_error`.
    Invalid,
}

/// A generated field: its JSON text (`None`: absent), standing and meaning.
pub(crate) struct Field<T> {
    pub(crate) raw: Option<String>,
    pub(crate) validity: Validity,
    pub(crate) value: Option<T>,
    pub(crate) tag: Option<String>,
}

impl<T> Field<T> {
    pub(crate) fn valid(raw: String, value: T) -> Field<T> {
        Field { raw: Some(raw), validity: Validity::Valid, value: Some(value), tag: None }
    }

    pub(crate) fn absent(value: Option<T>) -> Field<T> {
        Field { raw: None, validity: Validity::Valid, value, tag: None }
    }

    pub(crate) fn hostile(tag: String, raw: Option<String>, validity: Validity, value: Option<T>) -> Field<T> {
        Field { raw, validity, value, tag: Some(tag) }
    }
}

#[derive(Default)]
pub(crate) struct Body {
    pub(crate) fields: Vec<(String, String)>,
    pub(crate) validity: Option<Validity>,
    pub(crate) tags: Vec<String>,
    /// Replaces the object entirely (a top-level mutation).
    pub(crate) raw: Option<Vec<u8>>,
}

impl Body {
    pub(crate) fn field<T>(&mut self, name: &str, f: Field<T>) -> Option<T> {
        if let Some(raw) = f.raw {
            self.fields.push((name.to_owned(), raw));
        }
        self.merge(f.validity);
        self.tags.extend(f.tag);
        f.value
    }

    pub(crate) fn merge(&mut self, v: Validity) {
        self.validity = Some(self.validity.map_or(v, |w| w.max(v)));
    }

    pub(crate) fn validity(&self) -> Validity {
        self.validity.unwrap_or(Validity::Valid)
    }

    pub(crate) fn json(&self) -> String {
        let fields: Vec<String> = self.fields.iter().map(|(k, v)| format!("{}:{v}", js(k))).collect();
        format!("{{{}}}", fields.join(","))
    }

    pub(crate) fn bytes(&self) -> Vec<u8> {
        self.raw.clone().unwrap_or_else(|| self.json().into_bytes())
    }
}

/// A JSON string literal.
pub(crate) fn js(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// Percent-encodes a query value.
pub(crate) fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

//! Reading the provider's lines (statement entries and look-up answers) one by one
//! into the domain's `ProviderRecord`. Nothing here judges a line: a line that cannot
//! be read as written keeps its defect and a bounded copy of its text, and
//! reconciliation flags it for a person. Nothing a line says can make this panic, and
//! nothing read here can make the mismatch event unstorable (`hash::check_storable`):
//! the kept line is JSON text in a string, and a text field with a control character
//! (U+0000 included) is garbled.

use chrono::DateTime;
use ledger_domain::decide::ProviderRecord;
use ledger_domain::reconcile::LineDefect;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The longest reference, provider reference or currency read from a line, in bytes;
/// a longer one is garbled (ours are 36-byte UUIDs and 3-letter codes).
pub const TEXT_BYTES_MAX: usize = 255;

/// How much of an unreadable line is kept for the person who resolves it, in bytes.
pub const LINE_BYTES_MAX: usize = 2_048;

/// One line of the provider's statement, or its answer to a look-up, read as far as
/// it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderLine {
    /// The caller's reference the line names, when it names one as text.
    pub reference: Option<String>,
    /// What the line says; `record.defect` when it could not be read as written.
    pub record: ProviderRecord,
    /// The line gives an amount (a look-up need not: PROVIDER.md does not promise one).
    pub amount_given: bool,
}

/// Which contract a line follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `{"provider_ref","reference","amount","currency","status","settled_at"}`, all required.
    StatementLine,
    /// `{"provider_ref","status"}`, with `amount` and `currency` when the provider says.
    LookUp,
}

/// Reads one line from its raw text (syntactically JSON: its envelope parsed).
pub(crate) fn read(raw: &RawValue, shape: Shape) -> ProviderLine {
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(line) => read_value(&line, raw.get(), shape),
        Err(_) => read_unparsable(raw.get()),
    }
}

fn unreadable(field: &str) -> LineDefect {
    LineDefect::FieldUnreadable { field: field.to_owned() }
}

/// A text field within bounds: present, a non-blank string of at most
/// `TEXT_BYTES_MAX` bytes without control characters.
fn text<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    fields.get(name).and_then(Value::as_str).filter(|s| plain_text(s))
}

fn plain_text(s: &str) -> bool {
    !s.trim().is_empty() && s.len() <= TEXT_BYTES_MAX && !s.chars().any(char::is_control)
}

fn status(fields: &Map<String, Value>) -> Option<bool> {
    match fields.get("status").and_then(Value::as_str) {
        Some("settled") => Some(true),
        Some("rejected") => Some(false),
        _ => None,
    }
}

/// The first defect of a line, in the order of the contract's fields.
fn defect(fields: &Map<String, Value>, shape: Shape) -> Option<LineDefect> {
    let statement = shape == Shape::StatementLine;
    if text(fields, "provider_ref").is_none() {
        return Some(unreadable("provider_ref"));
    }
    if statement && text(fields, "reference").is_none() {
        return Some(unreadable("reference"));
    }
    match fields.get("amount") {
        Some(Value::Number(n)) if n.as_i64().is_none() => return Some(LineDefect::AmountNotInteger),
        Some(Value::Number(_)) => {}
        None | Some(Value::Null) if !statement => {}
        Some(_) | None => return Some(unreadable("amount")),
    }
    let currency_given = !matches!(fields.get("currency"), None | Some(Value::Null));
    if (statement || currency_given) && text(fields, "currency").is_none() {
        return Some(unreadable("currency"));
    }
    if status(fields).is_none() {
        return Some(unreadable("status"));
    }
    let settled_at = fields.get("settled_at").and_then(Value::as_str);
    if statement && settled_at.is_none_or(|t| DateTime::parse_from_rfc3339(t).is_err()) {
        return Some(unreadable("settled_at"));
    }
    None
}

fn read_value(line: &Value, written: &str, shape: Shape) -> ProviderLine {
    let Some(fields) = line.as_object() else {
        let record = record(None, Some(unreadable("line")), written);
        return ProviderLine { reference: None, record, amount_given: false };
    };
    let defect = defect(fields, shape);
    let amount = fields.get("amount").filter(|a| !a.is_null());
    let record = ProviderRecord {
        settled: status(fields).unwrap_or(false),
        amount: amount.and_then(Value::as_i64).unwrap_or(0),
        currency: text(fields, "currency").map(str::to_owned),
        ..record(text(fields, "provider_ref"), defect, written)
    };
    ProviderLine { reference: text(fields, "reference").map(str::to_owned), record, amount_given: amount.is_some() }
}

/// A record of what could be read. A line with a defect keeps its text as written
/// (as a JSON string: a float or an escaped U+0000 in it stays storable), cut to
/// `LINE_BYTES_MAX` bytes.
fn record(provider_ref: Option<&str>, defect: Option<LineDefect>, written: &str) -> ProviderRecord {
    ProviderRecord {
        provider_ref: provider_ref.unwrap_or_default().to_owned(),
        settled: false,
        amount: 0,
        currency: None,
        line: defect.is_some().then(|| Value::String(truncated(written.trim()))),
        defect,
    }
}

fn truncated(text: &str) -> String {
    if text.len() <= LINE_BYTES_MAX {
        return text.to_owned();
    }
    let mut end = LINE_BYTES_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The names of a line whose text is JSON but not a `Value`: a number beyond `f64`
/// (`1e400`). Fields not named here are skipped unparsed.
#[derive(Deserialize)]
struct Names {
    #[serde(default)]
    reference: Option<String>,
    #[serde(default)]
    provider_ref: Option<String>,
    #[serde(default)]
    amount: Option<Box<RawValue>>,
}

fn read_unparsable(text: &str) -> ProviderLine {
    let names = serde_json::from_str::<Names>(text).ok();
    let bounded_text = |s: Option<String>| s.filter(|s| plain_text(s));
    let amount_unreadable =
        names.as_ref().and_then(|n| n.amount.as_ref()).is_some_and(|a| serde_json::from_str::<Value>(a.get()).is_err());
    let defect = if amount_unreadable { LineDefect::AmountNotInteger } else { unreadable("line") };
    let (reference, provider_ref) = names.map_or((None, None), |n| (n.reference, n.provider_ref));
    let provider_ref = bounded_text(provider_ref);
    let record = record(provider_ref.as_deref(), Some(defect), text);
    ProviderLine { reference: bounded_text(reference), record, amount_given: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"provider_ref":"prv_1","reference":"w1","amount":300,"currency":"EUR",
        "status":"settled","settled_at":"2026-01-01T12:00:00Z"}"#;

    /// `GOOD` with one field replaced (`null` text: removed).
    fn with(field: &str, value: &str) -> String {
        let mut line: Map<String, Value> = serde_json::from_str(GOOD).expect("valid");
        line.remove(field);
        let mut text = Value::Object(line).to_string();
        if value != "null" {
            text.insert_str(1, &format!("\"{field}\":{value},"));
        }
        text
    }

    fn statement_line(text: &str) -> ProviderLine {
        let raw = RawValue::from_string(text.to_owned()).expect("syntactically JSON");
        read(&raw, Shape::StatementLine)
    }

    #[test]
    fn a_well_formed_line_reads_without_defect() {
        let line = statement_line(GOOD);
        assert_eq!(line.reference.as_deref(), Some("w1"));
        let r = &line.record;
        assert_eq!(
            (r.provider_ref.as_str(), r.settled, r.amount, r.currency.as_deref()),
            ("prv_1", true, 300, Some("EUR"))
        );
        assert_eq!((r.defect.clone(), r.line.clone()), (None, None));
        // Amounts out of range and foreign currencies are read as written: the domain judges them.
        for (field, value) in
            [("amount", "0"), ("amount", "-5"), ("amount", "9223372036854775807"), ("currency", "\"USD\"")]
        {
            assert_eq!(statement_line(&with(field, value)).record.defect, None, "{field}={value}");
        }
    }

    #[test]
    fn each_unreadable_field_is_named() {
        let long = format!("\"{}\"", "x".repeat(TEXT_BYTES_MAX + 1));
        let cases: Vec<(String, LineDefect, Option<&str>)> = vec![
            (with("amount", "1.5"), LineDefect::AmountNotInteger, Some("w1")),
            (with("amount", "1e2"), LineDefect::AmountNotInteger, Some("w1")),
            (with("amount", "9223372036854775808"), LineDefect::AmountNotInteger, Some("w1")),
            (with("amount", "-9223372036854775809"), LineDefect::AmountNotInteger, Some("w1")),
            (with("amount", "1e400"), LineDefect::AmountNotInteger, Some("w1")),
            (with("amount", "\"300\""), unreadable("amount"), Some("w1")),
            (with("amount", "null"), unreadable("amount"), Some("w1")),
            (with("currency", "null"), unreadable("currency"), Some("w1")),
            (with("currency", "978"), unreadable("currency"), Some("w1")),
            (with("status", "\"paid\""), unreadable("status"), Some("w1")),
            (with("status", "null"), unreadable("status"), Some("w1")),
            (with("settled_at", "\"yesterday\""), unreadable("settled_at"), Some("w1")),
            (with("provider_ref", "\"\""), unreadable("provider_ref"), Some("w1")),
            (with("reference", "42"), unreadable("reference"), None),
            (with("reference", &long), unreadable("reference"), None),
            (with("reference", "null"), unreadable("reference"), None),
            (with("reference", r#""w\u0000""#), unreadable("reference"), None),
            (with("provider_ref", r#""p\n1""#), unreadable("provider_ref"), Some("w1")),
            ("42".to_owned(), unreadable("line"), None),
            ("[1,2]".to_owned(), unreadable("line"), None),
            ("null".to_owned(), unreadable("line"), None),
            (r#"{"reference":"w1","x":1e400}"#.to_owned(), unreadable("line"), Some("w1")),
        ];
        for (text, defect, reference) in cases {
            let line = statement_line(&text);
            assert_eq!(line.record.defect, Some(defect), "{text}");
            assert_eq!(line.reference.as_deref(), reference, "{text}");
            assert!(line.record.line.is_some(), "{text}: the line is kept");
            let stored = serde_json::to_value(&line.record).expect("serializes");
            assert_eq!(crate::hash::check_storable(&stored), Ok(()), "{text}: storable");
        }
    }

    #[test]
    fn unreadable_lines_are_kept_as_written_in_a_string() {
        let line = statement_line(&with("amount", "1e2"));
        let kept = line.record.line.expect("kept");
        assert!(kept.as_str().is_some_and(|t| t.contains("\"amount\":1e2")), "{kept}");
    }

    #[test]
    fn unreadable_lines_are_kept_bounded() {
        let huge = with("status", &format!("\"{}\"", "é".repeat(LINE_BYTES_MAX)));
        let line = statement_line(&huge);
        let kept = line.record.line.expect("kept");
        let kept = kept.as_str().expect("truncated to text");
        assert!(kept.len() <= LINE_BYTES_MAX + '…'.len_utf8(), "{} bytes", kept.len());
    }

    #[test]
    fn a_look_up_needs_no_amount_or_currency_but_a_given_one_must_be_readable() {
        let look_up = |text: &str| read(&RawValue::from_string(text.to_owned()).expect("JSON"), Shape::LookUp);
        let plain = look_up(r#"{"provider_ref":"prv_1","status":"rejected","reason":"no"}"#);
        assert_eq!((plain.record.defect, plain.amount_given, plain.record.settled), (None, false, false));
        let full = look_up(r#"{"provider_ref":"prv_1","status":"settled","amount":310,"currency":"EUR"}"#);
        assert_eq!((full.record.defect, full.amount_given, full.record.amount), (None, true, 310));
        let bad = look_up(r#"{"provider_ref":"prv_1","status":"settled","amount":3.5}"#);
        assert_eq!(bad.record.defect, Some(LineDefect::AmountNotInteger));
        let bad = look_up(r#"{"provider_ref":"prv_1","status":"settled","currency":7}"#);
        assert_eq!(bad.record.defect, Some(unreadable("currency")));
        assert_eq!(look_up(r#"{"status":"settled"}"#).record.defect, Some(unreadable("provider_ref")));
    }
}

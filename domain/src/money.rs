//! Money and currency value types. Money is an `i64` count of minor units with checked
//! arithmetic only: a balance never wraps and never panics on overflow.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The largest amount a single command may move (API.md: 1 ..= 10^15 minor units).
pub const AMOUNT_MAX: i64 = 1_000_000_000_000_000;

/// A signed quantity of minor units (balances, limits, deltas).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Money(i64);

impl Money {
    pub const ZERO: Money = Money(0);

    pub const fn new(minor_units: i64) -> Money {
        Money(minor_units)
    }

    pub const fn minor_units(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).map(Money)
    }

    pub fn checked_neg(self) -> Option<Money> {
        self.0.checked_neg().map(Money)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A strictly positive amount of at most [`AMOUNT_MAX`] minor units: what a command moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Amount(i64);

/// Why a number is not a valid [`Amount`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount must be at least 1 minor unit, got {0}")]
    NotPositive(i64),
    #[error("amount must be at most {AMOUNT_MAX} minor units, got {0}")]
    TooLarge(i64),
}

impl Amount {
    pub fn new(minor_units: i64) -> Result<Amount, AmountError> {
        if minor_units < 1 {
            return Err(AmountError::NotPositive(minor_units));
        }
        if minor_units > AMOUNT_MAX {
            return Err(AmountError::TooLarge(minor_units));
        }
        Ok(Amount(minor_units))
    }

    pub const fn minor_units(self) -> i64 {
        self.0
    }

    pub const fn money(self) -> Money {
        Money(self.0)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl TryFrom<i64> for Amount {
    type Error = AmountError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Amount::new(value)
    }
}

impl From<Amount> for i64 {
    fn from(value: Amount) -> i64 {
        value.0
    }
}

/// An ISO-4217 style currency code: exactly three upper-case ASCII letters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

/// Why a string is not a currency code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("currency must be three upper-case letters, got {0:?}")]
pub struct CurrencyError(pub String);

impl Currency {
    pub fn parse(code: &str) -> Result<Currency, CurrencyError> {
        let bytes = code.as_bytes();
        match bytes {
            [a, b, c] if bytes.iter().all(u8::is_ascii_uppercase) => Ok(Currency([*a, *b, *c])),
            _ => Err(CurrencyError(code.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("constructed from ASCII upper-case letters only")
    }

    pub const fn bytes(&self) -> [u8; 3] {
        self.0
    }
}

impl TryFrom<String> for Currency {
    type Error = CurrencyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Currency::parse(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> String {
        value.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amount_limits() {
        for (input, ok) in [
            (0, false),
            (-1, false),
            (i64::MIN, false),
            (1, true),
            (AMOUNT_MAX, true),
            (AMOUNT_MAX + 1, false),
            (i64::MAX, false),
        ] {
            assert_eq!(Amount::new(input).is_ok(), ok, "amount {input}");
        }
    }

    #[test]
    fn money_arithmetic_is_checked() {
        assert_eq!(Money::new(i64::MAX).checked_add(Money::new(1)), None);
        assert_eq!(Money::new(i64::MIN).checked_sub(Money::new(1)), None);
        assert_eq!(Money::new(i64::MIN).checked_neg(), None);
        assert_eq!(Money::new(2).checked_sub(Money::new(5)), Some(Money::new(-3)));
    }

    #[test]
    fn currency_codes() {
        for (input, ok) in
            [("EUR", true), ("eur", false), ("EU", false), ("EURO", false), ("E1R", false), ("ÉUR", false)]
        {
            assert_eq!(Currency::parse(input).is_ok(), ok, "currency {input}");
        }
        let c = Currency::parse("USD").expect("valid code");
        assert_eq!(serde_json::to_string(&c).expect("serializes"), "\"USD\"");
        assert!(serde_json::from_str::<Currency>("\"usd\"").is_err());
    }
}

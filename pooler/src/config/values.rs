//! Value codecs: how one setting's text becomes a typed value and back.
//!
//! Each codec is a module with `parse` and `render`, so the settings table can name one per
//! field and the compiler checks that the field's type matches. `render` returns `None`
//! for an unset optional value, whose line is then left out of the file.

use std::fmt::Display;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::duration::{format_duration, parse_duration, BareUnit};
use super::error::ValueError;

/// Free text, taken verbatim (a query, an address, a directory).
pub(crate) mod text {
    use super::*;

    pub(crate) fn parse(value: &str) -> Result<String, ValueError> {
        Ok(value.to_owned())
    }

    pub(crate) fn render(value: &str) -> Option<String> {
        Some(value.to_owned())
    }
}

/// Optional text; an empty value means "not set", as in PgBouncer.
pub(crate) mod opt_text {
    use super::*;

    pub(crate) fn parse(value: &str) -> Result<Option<String>, ValueError> {
        Ok(Some(value.to_owned()).filter(|v| !v.is_empty()))
    }

    pub(crate) fn render(value: &Option<String>) -> Option<String> {
        value.clone()
    }
}

/// Optional file path; an empty value means "not set".
pub(crate) mod opt_path {
    use super::*;

    pub(crate) fn parse(value: &str) -> Result<Option<PathBuf>, ValueError> {
        Ok(Some(PathBuf::from(value)).filter(|_| !value.is_empty()))
    }

    pub(crate) fn render(value: &Option<PathBuf>) -> Option<String> {
        value.as_ref().map(|p| p.to_string_lossy().into_owned())
    }
}

/// A non-negative decimal whole number, as `[databases]` and `[peers]` entries take them
/// (PgBouncer reads those with `atoi`).
pub(crate) mod count {
    use super::*;

    pub(crate) fn parse(value: &str) -> Result<u32, ValueError> {
        let digits = value.trim();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ValueError::expected("a whole number", value));
        }
        digits
            .parse()
            .map_err(|_| ValueError(format!("{value:?} is too large (at most {})", u32::MAX)))
    }
}

/// A `[pgbouncer]` integer as PgBouncer's `cf_set_int` reads it (`strtol` with base 0):
/// `0x14` is hexadecimal, `010` octal, with an optional sign. `None` when it is not one;
/// a value past `i64` saturates, for the caller's range check to refuse.
fn c_integer(value: &str) -> Option<i64> {
    let trimmed = value.trim();
    let (negative, unsigned) = match trimmed.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, trimmed.strip_prefix('+').unwrap_or(trimmed)),
    };
    let (digits, radix) = if let Some(hex) = unsigned
        .strip_prefix("0x")
        .or_else(|| unsigned.strip_prefix("0X"))
    {
        (hex, 16)
    } else if unsigned.len() > 1 && unsigned.starts_with('0') {
        (&unsigned[1..], 8)
    } else {
        (unsigned, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = i64::from_str_radix(digits, radix).unwrap_or(i64::MAX);
    Some(if negative { -magnitude } else { magnitude })
}

/// A `[pgbouncer]` count: decimal, hexadecimal (`0x14`) or octal (`010`), as in PgBouncer.
/// A negative count is 0: PgBouncer accepts it and treats it as 0 (off, no limit, none).
pub(crate) mod number {
    use super::*;

    pub(crate) fn parse(value: &str) -> Result<u32, ValueError> {
        let n = c_integer(value).ok_or_else(|| ValueError::expected("a whole number", value))?;
        u32::try_from(n.max(0))
            .map_err(|_| ValueError(format!("{value:?} is too large (at most {})", u32::MAX)))
    }

    pub(crate) fn render(value: &u32) -> Option<String> {
        Some(value.to_string())
    }
}

/// A `[pgbouncer]` port: decimal, hexadecimal or octal, as in PgBouncer.
pub(crate) mod number_port {
    use super::*;

    pub(crate) fn parse(value: &str) -> Result<u16, ValueError> {
        c_integer(value)
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| ValueError::expected("a port number (0-65535)", value))
    }

    pub(crate) fn render(value: &u16) -> Option<String> {
        Some(value.to_string())
    }
}

/// A TCP port number.
pub(crate) mod port {
    use super::*;

    pub(crate) fn parse(value: &str) -> Result<u16, ValueError> {
        let digits = value.trim();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ValueError::expected("a port number (0-65535)", value));
        }
        digits
            .parse()
            .map_err(|_| ValueError::expected("a port number (0-65535)", value))
    }
}

/// A boolean: `yes`/`no`, `on`/`off`, `true`/`false`, or an integer where anything but 0
/// is on (PgBouncer reads most switches as integers); written as `1`/`0`.
pub(crate) mod flag {
    use super::*;

    pub(crate) fn parse(value: &str) -> Result<bool, ValueError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "yes" | "on" | "true" => Ok(true),
            "no" | "off" | "false" => Ok(false),
            other => c_integer(other).map(|n| n != 0).ok_or_else(|| {
                ValueError::expected("a boolean (1/0, yes/no, on/off, true/false)", value)
            }),
        }
    }

    pub(crate) fn render(value: &bool) -> Option<String> {
        Some(if *value { "1" } else { "0" }.to_owned())
    }
}

/// A comma-separated list of names; blanks around items and empty items are dropped.
pub(crate) mod list {
    use super::*;

    pub(crate) fn parse(value: &str) -> Result<Vec<String>, ValueError> {
        Ok(value
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect())
    }

    pub(crate) fn render(value: &[String]) -> Option<String> {
        Some(value.join(", "))
    }
}

/// A duration whose bare numbers count seconds.
pub(crate) mod seconds {
    use super::*;

    pub(crate) fn parse(value: &str) -> Result<Duration, ValueError> {
        parse_duration(value, BareUnit::Seconds)
    }

    pub(crate) fn render(value: &Duration) -> Option<String> {
        Some(format_duration(*value, BareUnit::Seconds))
    }
}

/// A duration whose bare numbers count milliseconds.
pub(crate) mod millis {
    use super::*;

    pub(crate) fn parse(value: &str) -> Result<Duration, ValueError> {
        parse_duration(value, BareUnit::Milliseconds)
    }

    pub(crate) fn render(value: &Duration) -> Option<String> {
        Some(format_duration(*value, BareUnit::Milliseconds))
    }
}

/// A Unix permission mode, always read as octal (`0777`, `777` and `0o777` are the same),
/// written as `0777`.
pub(crate) mod mode {
    use super::*;

    pub(crate) fn parse(value: &str) -> Result<u32, ValueError> {
        let trimmed = value.trim();
        let digits = trimmed.strip_prefix("0o").unwrap_or(trimmed);
        if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(ValueError::expected(
                "an octal file mode such as 0777",
                value,
            ));
        }
        u32::from_str_radix(digits, 8)
            .map_err(|_| ValueError::expected("an octal file mode such as 0777", value))
    }

    pub(crate) fn render(value: &u32) -> Option<String> {
        Some(format!("0{value:o}"))
    }
}

/// One of a fixed set of words, through the type's `FromStr` and `Display`.
pub(crate) mod choice {
    use super::*;

    pub(crate) fn parse<T: FromStr<Err = ValueError>>(value: &str) -> Result<T, ValueError> {
        value.trim().parse()
    }

    pub(crate) fn render<T: Display>(value: &T) -> Option<String> {
        Some(value.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(count::parse("0"), Ok(0));
        assert_eq!(count::parse(" 42 "), Ok(42));
        assert_eq!(count::parse("4294967295"), Ok(u32::MAX));
        assert_eq!(
            count::parse("lots"),
            Err(ValueError("expected a whole number, got \"lots\"".into()))
        );
        for bad in ["", "-1", "+1", "1.5", "0x10", "1 2"] {
            assert!(count::parse(bad).is_err(), "{bad}");
        }
        let err = count::parse("4294967296").expect_err("overflow");
        assert!(err.0.contains("too large"), "{err}");
    }

    #[test]
    fn ports() {
        assert_eq!(port::parse("6432"), Ok(6432));
        assert_eq!(port::parse("0"), Ok(0));
        assert!(port::parse("65536").is_err());
        assert!(port::parse("http").is_err());
    }

    #[test]
    fn pgbouncer_numbers_read_as_strtol_does() {
        assert_eq!(number::parse("0x14"), Ok(20));
        assert_eq!(number::parse("0X1f"), Ok(31));
        assert_eq!(number::parse("010"), Ok(8));
        assert_eq!(number::parse("0"), Ok(0));
        assert_eq!(number::parse("+7"), Ok(7));
        assert_eq!(number::parse(" 42 "), Ok(42));
        assert_eq!(number::parse("-1"), Ok(0));
        assert_eq!(number::parse("-0x10"), Ok(0));
        for bad in ["", "08", "0x", "12abc", "--1", "1.5"] {
            assert!(number::parse(bad).is_err(), "{bad}");
        }
        let err = number::parse("0x100000000").expect_err("overflow");
        assert!(err.0.contains("too large"), "{err}");
        assert!(number::parse("99999999999999999999999").is_err());
        assert_eq!(number_port::parse("0x1920"), Ok(6432));
        assert!(number_port::parse("70000").is_err());
        assert!(number_port::parse("-1").is_err());
        // [databases] entries use atoi in PgBouncer: no prefixes there.
        assert!(count::parse("0x14").is_err());
    }

    #[test]
    fn flags() {
        for yes in ["1", "yes", "YES", "on", "On", "true", "TRUE"] {
            assert_eq!(flag::parse(yes), Ok(true), "{yes}");
        }
        // PgBouncer reads its switches as integers: any other than 0 is on.
        for yes in ["2", "0x1", "45"] {
            assert_eq!(flag::parse(yes), Ok(true), "{yes}");
        }
        for no in ["0", "00", "0x0", "no", "off", "false", "False"] {
            assert_eq!(flag::parse(no), Ok(false), "{no}");
        }
        let err = flag::parse("maybe").expect_err("not a boolean");
        assert!(err.0.starts_with("expected a boolean"), "{err}");
        assert_eq!(flag::render(&true).as_deref(), Some("1"));
        assert_eq!(flag::render(&false).as_deref(), Some("0"));
    }

    #[test]
    fn lists() {
        assert_eq!(list::parse(""), Ok(vec![]));
        assert_eq!(
            list::parse(" a, b ,,c "),
            Ok(vec!["a".to_owned(), "b".to_owned(), "c".to_owned()])
        );
        assert_eq!(
            list::render(&["a".to_owned(), "b".to_owned()]).as_deref(),
            Some("a, b")
        );
    }

    #[test]
    fn modes() {
        assert_eq!(mode::parse("0777"), Ok(0o777));
        assert_eq!(mode::parse("777"), Ok(0o777));
        assert_eq!(mode::parse("0o700"), Ok(0o700));
        assert_eq!(mode::parse("0"), Ok(0));
        assert!(mode::parse("0778").is_err());
        assert!(mode::parse("rwx").is_err());
        assert!(mode::parse("").is_err());
        assert_eq!(mode::render(&0o777).as_deref(), Some("0777"));
        assert_eq!(mode::render(&0).as_deref(), Some("00"));
        assert_eq!(mode::parse("00"), Ok(0));
    }

    #[test]
    fn optional_values_treat_empty_as_unset() {
        assert_eq!(opt_text::parse(""), Ok(None));
        assert_eq!(opt_text::parse("x"), Ok(Some("x".to_owned())));
        assert_eq!(opt_path::parse(""), Ok(None));
        assert_eq!(opt_path::parse("/a"), Ok(Some(PathBuf::from("/a"))));
        assert_eq!(opt_path::render(&None), None);
    }
}

/// `peer_id`: 0 (peering off) or a peer id as `[peers]` keys take them.
pub(crate) mod peer_id {
    use super::*;

    pub(crate) fn parse(value: &str) -> Result<u16, ValueError> {
        match value.trim() {
            "0" => Ok(0),
            id => super::super::peers::parse_peer_id(id),
        }
    }

    pub(crate) fn render(value: &u16) -> Option<String> {
        Some(value.to_string())
    }
}

//! Time values: PgBouncer's plain (possibly fractional) numbers plus unit suffixes.
//!
//! PgBouncer reads every timeout as a decimal number of seconds (`0.5`, `3600`), except a
//! few socket options counted in milliseconds. Weir accepts the same, and also an explicit
//! unit (`250ms`, `5min`) so that nobody has to do arithmetic in a config file. Parsing is
//! exact decimal arithmetic rather than floating point, so that rendering a value and
//! parsing it again yields the very same [`Duration`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::ValueError;

const NANOS_PER_MICRO: u128 = 1_000;
const NANOS_PER_MILLI: u128 = 1_000_000;
const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// The unit a bare number (one without a suffix) is counted in. PgBouncer documents each
/// time setting with one: nearly all use seconds, `tcp_user_timeout` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BareUnit {
    /// A bare `30` means 30 seconds.
    Seconds,
    /// A bare `30` means 30 milliseconds.
    Milliseconds,
}

impl BareUnit {
    fn nanos(self) -> u128 {
        match self {
            BareUnit::Seconds => NANOS_PER_SECOND,
            BareUnit::Milliseconds => NANOS_PER_MILLI,
        }
    }
}

/// Parses a time value: a non-negative decimal number (`15`, `0.5`, `.25`) counted in
/// `bare`, or the same followed by one of the units `us`, `ms`, `s`, `min`, `h`, `d`
/// (`250ms`, `1.5 h`). Precision below one nanosecond is dropped.
pub fn parse_duration(text: &str, bare: BareUnit) -> Result<Duration, ValueError> {
    let expected = || {
        ValueError::expected(
            match bare {
                BareUnit::Seconds => {
                    "a duration in seconds (e.g. \"30\" or \"0.5\") or with a unit \
                     (us, ms, s, min, h, d)"
                }
                BareUnit::Milliseconds => {
                    "a duration in milliseconds (e.g. \"500\") or with a unit \
                     (us, ms, s, min, h, d)"
                }
            },
            text,
        )
    };
    let trimmed = text.trim();
    let number_end = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(expected());
    }
    let unit_nanos = match unit.trim().to_ascii_lowercase().as_str() {
        "" => bare.nanos(),
        "us" => NANOS_PER_MICRO,
        "ms" => NANOS_PER_MILLI,
        "s" => NANOS_PER_SECOND,
        "min" => 60 * NANOS_PER_SECOND,
        "h" => 3_600 * NANOS_PER_SECOND,
        "d" => 86_400 * NANOS_PER_SECOND,
        _ => return Err(expected()),
    };
    let too_large = || ValueError(format!("duration {text:?} is too large"));

    let mut total: u128 = 0;
    for digit in whole.bytes() {
        total = total
            .checked_mul(10)
            .and_then(|t| t.checked_add(u128::from(digit - b'0')))
            .ok_or_else(too_large)?;
    }
    total = total.checked_mul(unit_nanos).ok_or_else(too_large)?;

    // Digits past the 30th cannot matter at nanosecond resolution for any unit here.
    let mut scale: u128 = 1;
    let mut fraction_value: u128 = 0;
    for digit in fraction.bytes().take(30) {
        scale *= 10;
        fraction_value = fraction_value * 10 + u128::from(digit - b'0');
    }
    total = total
        .checked_add(fraction_value * unit_nanos / scale)
        .ok_or_else(too_large)?;

    let secs = u64::try_from(total / NANOS_PER_SECOND).map_err(|_| too_large())?;
    // The remainder of a division by 10^9 always fits.
    let nanos = u32::try_from(total % NANOS_PER_SECOND).map_err(|_| too_large())?;
    Ok(Duration::new(secs, nanos))
}

/// Renders a duration as a bare number in `bare` units, with as many decimals as needed to
/// be exact (`3600`, `0.5`, `0.000001`), which both PgBouncer and [`parse_duration`] read
/// back to the same value.
pub fn format_duration(duration: Duration, bare: BareUnit) -> String {
    let total = duration.as_nanos();
    let unit = bare.nanos();
    let whole = total / unit;
    let rest = total % unit;
    if rest == 0 {
        return whole.to_string();
    }
    let width = match bare {
        BareUnit::Seconds => 9,
        BareUnit::Milliseconds => 6,
    };
    let digits = format!("{rest:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(text: &str) -> Duration {
        parse_duration(text, BareUnit::Seconds).expect("valid duration")
    }

    #[test]
    fn bare_numbers_are_seconds_and_may_be_fractional() {
        assert_eq!(secs("0"), Duration::ZERO);
        assert_eq!(secs("15"), Duration::from_secs(15));
        assert_eq!(secs("0.5"), Duration::from_millis(500));
        assert_eq!(secs(".25"), Duration::from_millis(250));
        assert_eq!(secs("5."), Duration::from_secs(5));
        assert_eq!(secs("3600.0"), Duration::from_secs(3600));
        assert_eq!(secs(" 7 "), Duration::from_secs(7));
        assert_eq!(secs("0.000000001"), Duration::from_nanos(1));
        assert_eq!(secs("0.0000000001"), Duration::ZERO);
    }

    #[test]
    fn unit_suffixes() {
        assert_eq!(secs("250us"), Duration::from_micros(250));
        assert_eq!(secs("250ms"), Duration::from_millis(250));
        assert_eq!(secs("30s"), Duration::from_secs(30));
        assert_eq!(secs("5min"), Duration::from_secs(300));
        assert_eq!(secs("1.5h"), Duration::from_secs(5400));
        assert_eq!(secs("2d"), Duration::from_secs(172_800));
        assert_eq!(secs("10 MS"), Duration::from_millis(10));
        assert_eq!(secs("0.5ms"), Duration::from_micros(500));
    }

    #[test]
    fn bare_milliseconds() {
        let ms = |t| parse_duration(t, BareUnit::Milliseconds).expect("valid duration");
        assert_eq!(ms("500"), Duration::from_millis(500));
        assert_eq!(ms("1.5"), Duration::from_micros(1500));
        assert_eq!(ms("2s"), Duration::from_secs(2));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            " ",
            ".",
            "-1",
            "+1",
            "abc",
            "1.2.3",
            "1e3",
            "5 minutes",
            "ms",
            "1 s s",
            "0x10",
        ] {
            let err = parse_duration(bad, BareUnit::Seconds).expect_err(bad);
            assert!(err.0.starts_with("expected a duration"), "{bad}: {err}");
            assert!(err.0.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn rejects_overflow() {
        let err = parse_duration("99999999999999999999999999999d", BareUnit::Seconds)
            .expect_err("too large");
        assert!(err.0.contains("too large"), "{err}");
        let err = parse_duration("18446744073709551616", BareUnit::Seconds).expect_err("big");
        assert!(err.0.contains("too large"), "{err}");
        assert_eq!(secs("18446744073709551615"), Duration::from_secs(u64::MAX));
    }

    #[test]
    fn formats_exactly_and_round_trips() {
        assert_eq!(
            format_duration(Duration::from_secs(3600), BareUnit::Seconds),
            "3600"
        );
        assert_eq!(
            format_duration(Duration::from_millis(500), BareUnit::Seconds),
            "0.5"
        );
        assert_eq!(
            format_duration(Duration::from_nanos(1), BareUnit::Seconds),
            "0.000000001"
        );
        assert_eq!(format_duration(Duration::ZERO, BareUnit::Seconds), "0");
        assert_eq!(
            format_duration(Duration::from_millis(1500), BareUnit::Milliseconds),
            "1500"
        );
        assert_eq!(
            format_duration(Duration::from_nanos(1_500), BareUnit::Milliseconds),
            "0.0015"
        );
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_nanos(123_456_789),
            Duration::from_millis(1),
            Duration::from_secs(86_400 * 365),
            Duration::new(42, 7),
            Duration::new(u64::MAX, 999_999_999),
        ] {
            for unit in [BareUnit::Seconds, BareUnit::Milliseconds] {
                let text = format_duration(d, unit);
                assert_eq!(parse_duration(&text, unit), Ok(d), "{text}");
            }
        }
    }
}

//! Durations in the spec, written the way Kubernetes users write them elsewhere (`30s`,
//! `5m`, `1h30m`), as in the Gateway API: one to four groups of up to five digits, each
//! with a unit `h`, `m`, `s` or `ms`.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// The pattern a duration must match, shared by the CEL rule and the Rust parser's tests.
pub(crate) const PATTERN: &str = "^([0-9]{1,5}(h|m|s|ms)){1,4}$";

/// The message for a malformed duration, at admission and offline alike.
pub(crate) const MESSAGE: &str = "must be a duration like 30s, 5m or 1h30m (units h, m, s, ms)";

/// A duration as written in the spec, such as `90s` or `1h30m`. Kept as text so that what
/// the user wrote is what the API server stores and shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DurationSpec(pub String);

/// A duration not written in the accepted form (see [`DurationSpec`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} {MESSAGE}")]
pub struct InvalidDuration {
    /// The text given.
    pub value: String,
}

impl DurationSpec {
    /// The duration, or an error when the text is not a duration this API accepts.
    pub fn to_duration(&self) -> Result<Duration, InvalidDuration> {
        parse(&self.0).ok_or_else(|| InvalidDuration {
            value: self.0.clone(),
        })
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses exactly the language of [`PATTERN`].
fn parse(text: &str) -> Option<Duration> {
    let mut rest = text;
    let mut total = Duration::ZERO;
    let mut groups = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=5).contains(&digits) {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total += unit * u32::try_from(value).ok()?;
        groups += 1;
    }
    (1..=4).contains(&groups).then_some(total)
}

impl JsonSchema for DurationSpec {
    fn schema_name() -> Cow<'static, str> {
        "DurationSpec".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 32,
            "x-kubernetes-validations": [{
                "rule": format!("self.matches('{PATTERN}')"),
                "message": MESSAGE,
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Option<Duration> {
        DurationSpec(text.to_owned()).to_duration().ok()
    }

    #[test]
    fn accepts_kubernetes_style_durations() {
        assert_eq!(d("0s"), Some(Duration::ZERO));
        assert_eq!(d("30s"), Some(Duration::from_secs(30)));
        assert_eq!(d("5m"), Some(Duration::from_secs(300)));
        assert_eq!(d("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(d("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(d("1h1m1s1ms"), Some(Duration::from_millis(3_661_001)));
        assert_eq!(d("99999h"), Some(Duration::from_secs(99_999 * 3600)));
    }

    #[test]
    fn refuses_what_the_pattern_refuses() {
        for bad in [
            "",
            "30",
            "s",
            "1.5s",
            "-1s",
            "1d",
            "100000s",
            "1h1m1s1ms1h",
            "1 s",
            " 1s",
            "1S",
            "1sm",
        ] {
            let err = DurationSpec(bad.to_owned()).to_duration();
            assert!(err.is_err(), "{bad:?}");
        }
        let err = DurationSpec("1d".into())
            .to_duration()
            .expect_err("no days");
        assert_eq!(
            err.to_string(),
            "\"1d\" must be a duration like 30s, 5m or 1h30m (units h, m, s, ms)"
        );
    }

    #[test]
    fn schema_carries_the_rule() {
        let schema =
            serde_json::to_value(DurationSpec::json_schema(&mut SchemaGenerator::default()))
                .expect("json");
        assert_eq!(
            schema["x-kubernetes-validations"][0]["rule"],
            "self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')"
        );
    }
}

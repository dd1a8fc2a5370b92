//! `spec.database.maxConnections`: a number, or `auto` to read it from the database.

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::rules::MAX_CONNECTIONS_FORM;

/// The database's `max_connections`, as the spec states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxConnections {
    /// The operator reads `max_connections` and the reserved slots from the database.
    Auto,
    /// A fixed value (the admission rules require at least 1).
    Count(i64),
}

impl Serialize for MaxConnections {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            MaxConnections::Auto => serializer.serialize_str("auto"),
            MaxConnections::Count(n) => serializer.serialize_i64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for MaxConnections {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntOrAuto;

        impl Visitor<'_> for IntOrAuto {
            type Value = MaxConnections;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or \"auto\"")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(MaxConnections::Count(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(MaxConnections::Count)
                    .map_err(|_| E::custom(MAX_CONNECTIONS_FORM))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == "auto" {
                    Ok(MaxConnections::Auto)
                } else {
                    Err(E::custom(MAX_CONNECTIONS_FORM))
                }
            }
        }

        deserializer.deserialize_any(IntOrAuto)
    }
}

impl JsonSchema for MaxConnections {
    fn schema_name() -> Cow<'static, str> {
        "MaxConnections".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // The form (a positive number or "auto") is checked by a rule on the database
        // object, where the message can name the field.
        json_schema!({ "x-kubernetes-int-or-string": true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_auto_round_trip() {
        for (json, value) in [
            ("\"auto\"", MaxConnections::Auto),
            ("500", MaxConnections::Count(500)),
            ("-1", MaxConnections::Count(-1)),
        ] {
            let parsed: MaxConnections = serde_json::from_str(json).expect(json);
            assert_eq!(parsed, value);
            assert_eq!(serde_json::to_string(&parsed).expect("serializes"), json);
        }
    }

    #[test]
    fn other_strings_are_refused_with_the_admission_message() {
        let err = serde_json::from_str::<MaxConnections>("\"lots\"").expect_err("refused");
        assert!(err.to_string().contains(MAX_CONNECTIONS_FORM), "{err}");
        assert!(serde_json::from_str::<MaxConnections>("1.5").is_err());
    }
}

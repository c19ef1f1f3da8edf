//! Durations as text in configuration: `"30s"`, `"1m30s"`, `"250ms"`
//! (humantime's syntax), written back the same way.
//!
//! A small adapter over `humantime` rather than `humantime-serde`: the error
//! says what the users read first, `invalid duration "3x"`, with
//! the accepted form, where `humantime-serde` says `invalid value: string
//! "3x", expected a duration`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// What a duration looks like, for error messages.
const EXPECTED: &str = "a number and a unit, as \"250ms\", \"30s\" or \"1m30s\"";

/// `#[serde(with = "duration::option")]` for an `Option<Duration>` field
/// that is left out when `None`.
pub(crate) mod option {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => serializer.collect_str(&humantime::format_duration(*duration)),
            None => serializer.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        deserializer.deserialize_option(OptionVisitor)
    }

    struct OptionVisitor;

    impl<'de> Visitor<'de> for OptionVisitor {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a duration: {EXPECTED}")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(DurationVisitor).map(Some)
        }
    }
}

/// Reads a duration from text.
struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a duration: {EXPECTED}")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        parse(text).map_err(E::custom)
    }
}

/// `text` as a duration, or the reason it is not one.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|_| format!("invalid duration {text:?} (expected {EXPECTED})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_reads_as_humantime_says() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert!(parse("3x")
            .unwrap_err()
            .starts_with("invalid duration \"3x\""));
        assert!(parse("30").is_err(), "a unit is required");
        assert!(parse("").is_err());
    }

    #[test]
    fn written_durations_read_back_the_same() {
        for nanos in [0, 1, 999, 1_000_000, 90_000_000_000, 123_456_789_012_345] {
            let duration = Duration::from_nanos(nanos);
            let text = humantime::format_duration(duration).to_string();
            assert_eq!(parse(&text), Ok(duration), "{text}");
        }
    }
}

//! How a choice with options is written, the same in every format: its
//! name alone (`"round_robin"`, `"session"`), or a map of one entry, the
//! name to its options (`{ maglev = { table_size = 65537 } }`,
//! `{ header = "x-user-id" }`).
//!
//! serde's own enum forms do not read alike everywhere: YAML readers
//! (serde_yaml 0.9 and its forks) want a `!maglev` tag instead of the map,
//! and an internally tagged enum loses the field paths of its options. A
//! name, or a map of one entry, is plain data in TOML, YAML and JSON, and
//! each option is read in place, so its path is kept.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserializer, Serialize, Serializer};

/// A choice written by name, or as a map of its name to its options.
pub(crate) trait Named: Sized {
    /// What the value is, for messages: "a policy".
    const WHAT: &'static str;
    /// Every name.
    const NAMES: &'static [&'static str];

    /// The value a name alone stands for (its options at their defaults).
    fn by_name<E: de::Error>(name: &str) -> Result<Self, E>;

    /// The value of `name` with its options, the map's next value.
    fn with_options<'de, A: MapAccess<'de>>(name: &str, map: &mut A) -> Result<Self, A::Error>;
}

/// Reads a [`Named`] value.
pub(crate) fn deserialize<'de, D: Deserializer<'de>, T: Named>(
    deserializer: D,
) -> Result<T, D::Error> {
    deserializer.deserialize_any(NamedVisitor(PhantomData))
}

/// Writes a name alone.
pub(crate) fn serialize_name<S: Serializer>(serializer: S, name: &str) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(name)
}

/// Writes a name with its options.
pub(crate) fn serialize_with<S: Serializer>(
    serializer: S,
    name: &str,
    options: &impl Serialize,
) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(1))?;
    map.serialize_entry(name, options)?;
    map.end()
}

/// The error for a name that takes no options, given some.
pub(crate) fn no_options<E: de::Error>(name: &str) -> E {
    E::custom(format!("`{name}` takes no options: write the name alone"))
}

/// The error for a name that needs a value, given alone.
pub(crate) fn needs_value<E: de::Error>(name: &str) -> E {
    E::custom(format!("`{name}` needs a value: {{ {name} = ... }}"))
}

struct NamedVisitor<T>(PhantomData<T>);

impl<'de, T: Named> Visitor<'de> for NamedVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: a name ({}), or a map of one name to its options",
            T::WHAT,
            T::NAMES.join(", ")
        )
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<T, E> {
        T::by_name(name)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let Some(name) = map.next_key::<String>()? else {
            return Err(de::Error::invalid_length(0, &self));
        };
        let value = T::with_options(&name, &mut map)?;
        match map.next_key::<String>()? {
            None => Ok(value),
            Some(second) => Err(de::Error::custom(format!(
                "one name with its options, not two (`{name}` and `{second}`)"
            ))),
        }
    }
}

//! A table of settings read only as a table.
//!
//! serde's derived structs also read a list, filling their fields by
//! position: in JSON or TOML, `outlier = [true, 3]` would be
//! `enabled = true, consecutive_failures = 3`, where YAML readers refuse
//! it. Read through here, a list where a table belongs is an error at its
//! path in every format (`outlier: invalid type: sequence, expected a
//! table of settings`).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// Reads a `T` from a table only: a seed for `MapAccess::next_value_seed`,
/// or a deserializer's whole input.
pub(crate) struct Table<T>(PhantomData<T>);

impl<T> Table<T> {
    pub(crate) fn new() -> Self {
        Table(PhantomData)
    }
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for Table<T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Table<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table of settings")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map))
    }

    /// YAML's empty value (`maglev:` with nothing under it): no settings.
    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        T::deserialize(de::value::MapDeserializer::new(
            std::iter::empty::<((), ())>(),
        ))
    }
}

/// `#[serde(deserialize_with = "table::option")]` for an `Option` of a
/// table, left out (or null) as `None`.
pub(crate) fn option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    deserializer.deserialize_option(OptionTable(PhantomData))
}

struct OptionTable<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for OptionTable<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table of settings")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        Table::new().deserialize(deserializer).map(Some)
    }
}

//! What serde's visitors read arrays, maps and enums through: items
//! counted against the announced length (or up to the break), map keys
//! handed to [`Keys`] as they come, an enum as a bare name or a one-entry
//! map.

use serde::de::{self, DeserializeSeed, Visitor};

use super::keys::Keys;
use super::{DeError, Deserializer, Result};
use crate::head::Header;

/// Items of an array or entries of a map; `left` is `None` for an
/// indefinite length until its break is read (`ended`).
pub(super) struct Access<'a, 'de> {
    pub(super) de: &'a mut Deserializer<'de>,
    pub(super) left: Option<usize>,
    pub(super) ended: bool,
}

impl<'de> Access<'_, 'de> {
    /// Whether another item follows (and counts it).
    fn next(&mut self) -> Result<bool> {
        match self.left {
            Some(0) => Ok(false),
            Some(n) => {
                self.left = Some(n - 1);
                Ok(true)
            }
            None if self.ended => Ok(false),
            None => match self.de.peek()? {
                (Header::Break, n) => {
                    self.de.pos += n;
                    self.ended = true;
                    Ok(false)
                }
                _ => Ok(true),
            },
        }
    }

    fn hint(&self) -> Option<usize> {
        // Never more than the bytes left: a hostile length must not size an
        // allocation in the visitor (serde caps hints too, this is cheap).
        self.left
            .map(|n| n.min(self.de.buf.len().saturating_sub(self.de.pos)))
    }
}

impl<'de> de::SeqAccess<'de> for Access<'_, 'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if !self.next()? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        self.hint()
    }
}

/// The entries of a map, and its keys so far to refuse a repeated one.
pub(super) struct MapAccess<'a, 'de> {
    pub(super) items: Access<'a, 'de>,
    pub(super) keys: Keys,
}

impl<'de> de::MapAccess<'de> for MapAccess<'_, 'de> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if !self.items.next()? {
            return Ok(None);
        }
        let at = self.items.de.pos;
        let k = seed.deserialize(&mut *self.items.de)?;
        // The key is one whole, well-formed item at `at`: the seed read it.
        self.keys.add(self.items.de.buf, at)?;
        Ok(Some(k))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.items.de)
    }

    fn size_hint(&self) -> Option<usize> {
        self.items.hint()
    }
}

/// An enum: a bare variant name (`map == false`) or a one-entry map.
pub(super) struct Enum<'a, 'de> {
    pub(super) de: &'a mut Deserializer<'de>,
    pub(super) map: bool,
}

impl<'de> de::EnumAccess<'de> for Enum<'_, 'de> {
    type Error = DeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let v = seed.deserialize(&mut *self.de)?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for Enum<'_, 'de> {
    type Error = DeError;

    fn unit_variant(self) -> Result<()> {
        if self.map {
            return Err(de::Error::custom(
                "invalid type: map, expected a unit variant as a bare text string",
            ));
        }
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        if !self.map {
            return Err(de::Error::custom(
                "invalid type: unit variant, expected a one-entry map",
            ));
        }
        seed.deserialize(&mut *self.de)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        if !self.map {
            return Err(de::Error::custom(
                "invalid type: unit variant, expected a one-entry map",
            ));
        }
        de::Deserializer::deserialize_seq(&mut *self.de, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        if !self.map {
            return Err(de::Error::custom(
                "invalid type: unit variant, expected a one-entry map",
            ));
        }
        de::Deserializer::deserialize_map(&mut *self.de, visitor)
    }
}

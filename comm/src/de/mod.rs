//! A serde [`Deserializer`](serde::Deserializer) for one CBOR data item held
//! in a byte slice, built on this crate's head reader ([`crate::head`]).
//!
//! ciborium's deserializer reads through a [`ciborium_io::Read`] stream: every
//! byte string is copied into a scratch buffer, and one longer than the
//! scratch buffer (4 KiB by default) is assembled chunk by chunk in a growing
//! `Vec`. A frame body is already in memory, so this deserializer hands out
//! byte and text strings borrowed from it (`visit_borrowed_bytes`,
//! `visit_borrowed_str`): a `#[serde(with = "serde_bytes")] Vec<u8>` payload
//! costs one copy.
//!
//! It follows ciborium's deserializer wherever a well-formed encoding from
//! ciborium's serializer is concerned, so the two sides agree on the wire.
//! The differences are all refusals of input that ciborium's serializer never
//! produces, or that ciborium would misread:
//!
//! - an enum's unit variant must be a bare text string and any other variant
//!   a one-entry map (ciborium reads `{"info": x}` as the unit variant `info`
//!   and leaves `x` unread);
//! - an array or map must hold exactly as many items as the visitor takes;
//! - chunks of an indefinite-length string must be definite-length strings of
//!   the same major type (RFC 8949 §3.2.3);
//! - tags other than the bignum tags 2 and 3 are skipped (ciborium hands them
//!   to `ciborium::tag` types, which messages here do not use);
//! - nesting is limited to [`RECURSION_LIMIT`] levels (ciborium: 256), to
//!   bound stack use on a small guest stack;
//! - a map with a repeated key is refused (`WIRE.md` R-CBOR-1), whatever
//!   the visitor does with the key: serde's derived struct visitors only
//!   catch a repeated *known* field, and ciborium none. Keys are compared
//!   by value ([`Keys`]), not by encoding.
//!
//! Nothing is allocated from a length read off the wire: definite lengths
//! are only used to slice the body, and indefinite-length strings grow by
//! chunks that are themselves inside the body.
//!
//! Why not `minicbor-serde` (checked at 0.7, the latest; no_std + alloc,
//! borrows from a slice like this one): its serde layer has no nesting
//! limit (nested arrays in a hostile body recurse until the guest's stack
//! is gone), does not check that an array or map was read to its end or
//! that a map's keys differ (R-CBOR-1), reads `{"info": x}` as the unit
//! variant `info` as ciborium does, refuses tags in `deserialize_any` and
//! chunked text where a string is expected (both well-formed CBOR this
//! decoder accepts), and reads half floats only with its `half` feature.
//! Each of these would need a wrapper as large as this module, on a 0.x
//! crate under the BlueOak-1.0.0 licence. The serializer stays ciborium's.
//!
//! The module, by concern: this file holds the [`Deserializer`] (heads
//! from [`crate::head`], strings, integers, the envelope, serde's entry
//! points); `envelope` the `[id, message]` body; `error` its error type; `access` the sequence, map and enum
//! access serde's visitors drive; `keys` the repeated-key check; `tests`
//! the unit tests.

mod access;
mod envelope;
mod error;
mod keys;
#[cfg(test)]
mod tests;

use alloc::string::String;
use alloc::vec::Vec;

use serde::de::{self, Visitor};

use self::access::{Access, Enum, MapAccess};
pub(crate) use self::error::DeError;
use self::error::expected;
use self::keys::Keys;
use crate::defs::RECURSION_LIMIT;
use crate::head::{self, HeadError, Header, simple, tag};

type Result<T> = core::result::Result<T, DeError>;

/// A string read from the body: borrowed if it had a definite length,
/// assembled from its chunks if not.
enum Chunks<'de> {
    Borrowed(&'de [u8]),
    Owned(Vec<u8>),
}

/// Deserializes one CBOR data item from the start of a byte slice.
pub(crate) struct Deserializer<'de> {
    buf: &'de [u8],
    pos: usize,
    depth: usize,
}

impl<'de> Deserializer<'de> {
    /// A deserializer for the item at the start of `buf`.
    pub(crate) fn new(buf: &'de [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            depth: RECURSION_LIMIT,
        }
    }

    /// How many bytes have been consumed.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// The next header and its encoded length, without consuming it.
    fn peek(&self) -> Result<(Header, usize)> {
        head::pull(self.buf, self.pos).map_err(|e| match e {
            HeadError::Eof => DeError::Eof,
            HeadError::Syntax => DeError::Syntax(self.pos),
        })
    }

    fn pull(&mut self) -> Result<Header> {
        let (h, n) = self.peek()?;
        self.pos += n;
        Ok(h)
    }

    /// The next header that is not a tag (tags are skipped, as ciborium does
    /// for typed reads).
    fn pull_untagged(&mut self) -> Result<Header> {
        loop {
            match self.pull()? {
                Header::Tag(_) => continue,
                h => return Ok(h),
            }
        }
    }

    /// Consumes `len` bytes of string content. `len` comes from the wire, so
    /// it is only compared with what is left of the body.
    fn take(&mut self, len: usize) -> Result<&'de [u8]> {
        let end = self.pos.checked_add(len).ok_or(DeError::Eof)?;
        let s = self.buf.get(self.pos..end).ok_or(DeError::Eof)?;
        self.pos = end;
        Ok(s)
    }

    /// The content of a byte (`text == false`) or text string whose header,
    /// at offset `at`, announced `len`.
    fn string(&mut self, len: Option<usize>, text: bool, at: usize) -> Result<Chunks<'de>> {
        let check = |s: &[u8], at| {
            if text && core::str::from_utf8(s).is_err() {
                Err(DeError::Syntax(at))
            } else {
                Ok(())
            }
        };
        if let Some(len) = len {
            let s = self.take(len)?;
            check(s, at)?;
            return Ok(Chunks::Borrowed(s));
        }
        let mut out = Vec::new();
        loop {
            let at = self.pos;
            match self.pull()? {
                Header::Break => return Ok(Chunks::Owned(out)),
                Header::Bytes(Some(n)) if !text => out.extend_from_slice(self.take(n)?),
                Header::Text(Some(n)) if text => {
                    let s = self.take(n)?;
                    check(s, at)?;
                    out.extend_from_slice(s);
                }
                _ => return Err(DeError::Syntax(at)),
            }
        }
    }

    fn text(&mut self, len: Option<usize>, at: usize) -> Result<Text<'de>> {
        Ok(match self.string(len, true, at)? {
            // Checked by `string`: each chunk is valid UTF-8, so is the whole.
            Chunks::Borrowed(s) => {
                Text::Borrowed(core::str::from_utf8(s).map_err(|_| DeError::Syntax(at))?)
            }
            Chunks::Owned(v) => Text::Owned(String::from_utf8(v).map_err(|_| DeError::Syntax(at))?),
        })
    }

    fn recurse<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.depth == 0 {
            return Err(DeError::TooDeep);
        }
        self.depth -= 1;
        let r = f(self);
        self.depth += 1;
        r
    }

    /// An integer, possibly a bignum (tags 2 and 3), as ciborium reads it:
    /// (negative, raw) where a negative value is `-1 - raw`.
    fn integer(&mut self, first: Option<Header>) -> Result<(bool, u128)> {
        let mut first = first;
        loop {
            let h = match first.take() {
                Some(h) => h,
                None => self.pull()?,
            };
            let neg = match h {
                Header::Positive(x) => return Ok((false, x.into())),
                Header::Negative(x) => return Ok((true, x.into())),
                Header::Tag(tag::BIGPOS) => false,
                Header::Tag(tag::BIGNEG) => true,
                Header::Tag(_) => continue,
                h => return Err(expected(h, "integer")),
            };
            let at = self.pos;
            let digits = match self.pull()? {
                Header::Bytes(len) => self.string(len, false, at)?,
                h => return Err(expected(h, "bytes")),
            };
            let digits = match &digits {
                Chunks::Borrowed(s) => s,
                Chunks::Owned(v) => v.as_slice(),
            };
            let first_nonzero = digits.iter().position(|&b| b != 0).unwrap_or(digits.len());
            let digits = &digits[first_nonzero..];
            if digits.len() > 16 {
                return Err(de::Error::custom("bigint too large"));
            }
            let mut be = [0u8; 16];
            be[16 - digits.len()..].copy_from_slice(digits);
            return Ok((neg, u128::from_be_bytes(be)));
        }
    }

    /// Checks that an array or map visitor took every item it announced.
    fn finish(&mut self, left: Option<usize>) -> Result<()> {
        match left {
            Some(0) => Ok(()),
            Some(_) => Err(de::Error::custom(
                "array or map has more items than expected",
            )),
            None => match self.pull()? {
                Header::Break => Ok(()),
                _ => Err(de::Error::custom(
                    "array or map has more items than expected",
                )),
            },
        }
    }

    fn seq<V: Visitor<'de>>(&mut self, len: Option<usize>, visitor: V) -> Result<V::Value> {
        self.recurse(|me| {
            let mut access = Access {
                de: me,
                left: len,
                ended: false,
            };
            let v = visitor.visit_seq(&mut access)?;
            let left = if access.ended { Some(0) } else { access.left };
            me.finish(left)?;
            Ok(v)
        })
    }

    fn map<V: Visitor<'de>>(&mut self, len: Option<usize>, visitor: V) -> Result<V::Value> {
        self.recurse(|me| {
            let mut access = MapAccess {
                items: Access {
                    de: me,
                    left: len,
                    ended: false,
                },
                keys: Keys::new(),
            };
            let v = visitor.visit_map(&mut access)?;
            access.keys.finish(access.items.de.buf)?;
            let left = if access.items.ended {
                Some(0)
            } else {
                access.items.left
            };
            me.finish(left)?;
            Ok(v)
        })
    }
}

enum Text<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl<'de> de::Deserializer<'de> for &mut Deserializer<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        // Tags other than the bignums are skipped; they do not count as
        // nesting (WIRE.md R-CBOR-7) and take no stack.
        let h = loop {
            match self.peek()? {
                (Header::Tag(t), n) if t != tag::BIGPOS && t != tag::BIGNEG => self.pos += n,
                (h, _) => break h,
            }
        };
        match h {
            Header::Positive(_) => self.deserialize_u64(visitor),
            Header::Negative(x) if i64::try_from(x).is_ok() => self.deserialize_i64(visitor),
            Header::Negative(_) => self.deserialize_i128(visitor),
            Header::Bytes(_) => self.deserialize_byte_buf(visitor),
            Header::Text(_) => self.deserialize_string(visitor),
            Header::Array(_) => self.deserialize_seq(visitor),
            Header::Map(_) => self.deserialize_map(visitor),
            Header::Tag(t @ (tag::BIGPOS | tag::BIGNEG)) => {
                self.pull()?;
                match self.integer(Some(Header::Tag(t)))? {
                    (false, raw) => visitor.visit_u128(raw),
                    (true, raw) => match i128::try_from(raw) {
                        Ok(x) => visitor.visit_i128(x ^ !0),
                        Err(_) => Err(de::Error::custom("integer too large")),
                    },
                }
            }
            Header::Float(_) => self.deserialize_f64(visitor),
            Header::Simple(simple::FALSE | simple::TRUE) => self.deserialize_bool(visitor),
            Header::Simple(simple::NULL | simple::UNDEFINED) => self.deserialize_option(visitor),
            h => Err(expected(h, "a known CBOR item")),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.pull_untagged()? {
            Header::Simple(simple::FALSE) => visitor.visit_bool(false),
            Header::Simple(simple::TRUE) => visitor.visit_bool(true),
            h => Err(expected(h, "bool")),
        }
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let r = match self.integer(None)? {
            (false, raw) => i64::try_from(raw),
            (true, raw) => i64::try_from(raw).map(|x| x ^ !0),
        };
        match r {
            Ok(x) => visitor.visit_i64(x),
            Err(_) => Err(de::Error::custom("integer too large")),
        }
    }

    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let r = match self.integer(None)? {
            (false, raw) => i128::try_from(raw),
            (true, raw) => i128::try_from(raw).map(|x| x ^ !0),
        };
        match r {
            Ok(x) => visitor.visit_i128(x),
            Err(_) => Err(de::Error::custom("integer too large")),
        }
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.integer(None)? {
            (false, raw) => match u64::try_from(raw) {
                Ok(x) => visitor.visit_u64(x),
                Err(_) => Err(de::Error::custom("integer too large")),
            },
            (true, _) => Err(de::Error::custom("unexpected negative integer")),
        }
    }

    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.integer(None)? {
            (false, raw) => visitor.visit_u128(raw),
            (true, _) => Err(de::Error::custom("unexpected negative integer")),
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.pull_untagged()? {
            Header::Float(x) => visitor.visit_f64(x),
            h => Err(expected(h, "float")),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let at = self.pos;
        match self.pull_untagged()? {
            Header::Text(len @ Some(0..=4)) => {
                let t = self.text(len, at)?;
                let s = match &t {
                    Text::Borrowed(s) => s,
                    Text::Owned(s) => s.as_str(),
                };
                let mut chars = s.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => visitor.visit_char(c),
                    _ => Err(de::Error::custom("invalid type: text, expected char")),
                }
            }
            h => Err(expected(h, "char")),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_string(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        loop {
            let at = self.pos;
            return match self.pull()? {
                Header::Tag(_) => continue,
                Header::Text(len) => match self.text(len, at)? {
                    Text::Borrowed(s) => visitor.visit_borrowed_str(s),
                    Text::Owned(s) => visitor.visit_string(s),
                },
                h => Err(expected(h, "str")),
            };
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_byte_buf(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        loop {
            let at = self.pos;
            return match self.pull()? {
                // A bignum is an integer, not bytes (WIRE.md R-CBOR-6).
                Header::Tag(t @ (tag::BIGPOS | tag::BIGNEG)) => Err(de::Error::custom(
                    alloc::format!("invalid type: bignum (tag {t}), expected bytes"),
                )),
                Header::Tag(_) => continue,
                Header::Bytes(len) => match self.string(len, false, at)? {
                    Chunks::Borrowed(b) => visitor.visit_borrowed_bytes(b),
                    Chunks::Owned(v) => visitor.visit_byte_buf(v),
                },
                // As ciborium: an array of integers is accepted for bytes.
                Header::Array(len) => self.seq(len, visitor),
                h => Err(expected(h, "bytes")),
            };
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.peek()? {
            (Header::Simple(simple::NULL | simple::UNDEFINED), n) => {
                self.pos += n;
                visitor.visit_none()
            }
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.pull_untagged()? {
            Header::Simple(simple::NULL | simple::UNDEFINED) => visitor.visit_unit(),
            h => Err(expected(h, "unit")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.pull_untagged()? {
            Header::Array(len) => self.seq(len, visitor),
            h => Err(expected(h, "array")),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.pull_untagged()? {
            Header::Map(len) => self.map(len, visitor),
            h => Err(expected(h, "map")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        loop {
            let at = self.pos;
            return match self.pull()? {
                Header::Tag(_) => continue,
                // `{ variant: content }`
                Header::Map(Some(1)) => {
                    self.recurse(|me| visitor.visit_enum(Enum { de: me, map: true }))
                }
                // The same map with an indefinite length: exactly one entry,
                // then the break.
                Header::Map(None) => self.recurse(|me| {
                    if let (Header::Break, _) = me.peek()? {
                        return Err(de::Error::custom(
                            "invalid type: empty map, expected a one-entry map",
                        ));
                    }
                    let v = visitor.visit_enum(Enum { de: me, map: true })?;
                    me.finish(None)?;
                    Ok(v)
                }),
                // A unit variant: its name. Put the header back for the
                // identifier.
                Header::Text(_) => {
                    self.pos = at;
                    self.recurse(|me| visitor.visit_enum(Enum { de: me, map: false }))
                }
                h => Err(expected(h, "enum (text or one-entry map)")),
            };
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        loop {
            let at = self.pos;
            return match self.pull()? {
                Header::Tag(_) => continue,
                // Definite or chunked: a field or variant name may be an
                // indefinite-length string like any other.
                Header::Text(len) => match self.text(len, at)? {
                    Text::Borrowed(s) => visitor.visit_borrowed_str(s),
                    Text::Owned(s) => visitor.visit_string(s),
                },
                Header::Bytes(len) => match self.string(len, false, at)? {
                    Chunks::Borrowed(b) => visitor.visit_borrowed_bytes(b),
                    Chunks::Owned(v) => visitor.visit_byte_buf(v),
                },
                h => Err(expected(h, "str or bytes")),
            };
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_any(visitor)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

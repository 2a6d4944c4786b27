//! A serde [`Deserializer`](serde::Deserializer) for one CBOR data item held
//! in a byte slice, built on `ciborium-ll` (ciborium's own low-level decoder).
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
//!   bound stack use on a small guest stack.
//!
//! Nothing is allocated from a length read off the wire: definite lengths
//! are only used to slice the body, and indefinite-length strings grow by
//! chunks that are themselves inside the body.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use ciborium_ll::{Decoder, Header, simple, tag};
use serde::de::{self, DeserializeSeed, Visitor};

/// Deepest nesting of arrays, maps and enums accepted in a body.
pub(crate) const RECURSION_LIMIT: usize = 128;

/// Why a body could not be deserialized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeError {
    /// The body ended inside a data item.
    Eof,
    /// The body is not well-formed CBOR at this offset.
    Syntax(usize),
    /// Well-formed CBOR with the wrong shape for the target type.
    Custom(String),
    /// Nested deeper than [`RECURSION_LIMIT`].
    TooDeep,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Eof => f.write_str("end of body inside a CBOR item"),
            Self::Syntax(o) => write!(f, "invalid CBOR at byte {o}"),
            Self::Custom(m) => f.write_str(m),
            Self::TooDeep => f.write_str("nesting too deep"),
        }
    }
}

impl core::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::Custom(msg.to_string())
    }

    // serde's defaults format the `Unexpected` value, and its `Display`
    // prints floats: that links `core`'s float formatting (about 10 KiB)
    // into the guest for an error message. `Short` says the same without
    // printing a float's value.
    #[cold]
    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Self::Custom(alloc::format!(
            "invalid type: {}, expected {exp}",
            Short(unexp)
        ))
    }

    #[cold]
    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Self::Custom(alloc::format!(
            "invalid value: {}, expected {exp}",
            Short(unexp)
        ))
    }
}

/// serde's wording of an [`Unexpected`](de::Unexpected) value, except that
/// a float's value is not printed (see [`DeError`]'s `invalid_type`).
struct Short<'a>(de::Unexpected<'a>);

impl fmt::Display for Short<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use de::Unexpected as U;
        match self.0 {
            U::Bool(b) => write!(f, "boolean `{b}`"),
            U::Unsigned(i) => write!(f, "integer `{i}`"),
            U::Signed(i) => write!(f, "integer `{i}`"),
            U::Float(_) => f.write_str("floating point"),
            U::Char(c) => write!(f, "character `{c}`"),
            U::Str(s) => write!(f, "string {}", crate::error::Quoted(s)),
            U::Bytes(_) => f.write_str("byte array"),
            U::Unit => f.write_str("unit value"),
            U::Option => f.write_str("Option value"),
            U::NewtypeStruct => f.write_str("newtype struct"),
            U::Seq => f.write_str("sequence"),
            U::Map => f.write_str("map"),
            U::Enum => f.write_str("enum"),
            U::UnitVariant => f.write_str("unit variant"),
            U::NewtypeVariant => f.write_str("newtype variant"),
            U::TupleVariant => f.write_str("tuple variant"),
            U::StructVariant => f.write_str("struct variant"),
            U::Other(o) => f.write_str(o),
        }
    }
}

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

fn expected(h: Header, what: &str) -> DeError {
    let got = match h {
        Header::Positive(_) | Header::Negative(_) => "integer",
        Header::Bytes(_) => "bytes",
        Header::Text(_) => "text",
        Header::Array(_) => "array",
        Header::Map(_) => "map",
        Header::Tag(_) => "tag",
        Header::Float(_) => "float",
        Header::Simple(simple::FALSE | simple::TRUE) => "bool",
        Header::Simple(simple::NULL | simple::UNDEFINED) => "null",
        Header::Simple(_) => "simple value",
        Header::Break => "break",
    };
    DeError::Custom(alloc::format!("invalid type: {got}, expected {what}"))
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
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let mut d = Decoder::from(rest);
        match d.pull() {
            Ok(h) => Ok((h, d.offset())),
            Err(ciborium_ll::Error::Io(_)) => Err(DeError::Eof),
            Err(ciborium_ll::Error::Syntax(o)) => Err(DeError::Syntax(self.pos + o)),
        }
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

    /// Reads a body `[id, message]`: an array whose first item is a `u32`
    /// and whose second is a `T`. The id is returned whenever it could be
    /// read, even if the message (or the array's end) is bad. The array
    /// counts as one level of nesting.
    pub(crate) fn envelope<T: de::Deserialize<'de>>(&mut self) -> (Option<u32>, Result<T>) {
        let len = match self.pull_untagged() {
            Ok(Header::Array(len)) => len,
            Ok(h) => return (None, Err(expected(h, "array [id, message]"))),
            Err(e) => return (None, Err(e)),
        };
        // `new` starts at RECURSION_LIMIT > 0: the envelope always fits.
        self.depth -= 1;
        let r = self.envelope_items(len);
        self.depth += 1;
        r
    }

    fn envelope_items<T: de::Deserialize<'de>>(
        &mut self,
        len: Option<usize>,
    ) -> (Option<u32>, Result<T>) {
        let short = || de::Error::custom("array too short, expected [id, message]");
        let at_end = |me: &Self, left: Option<usize>| match left {
            Some(n) => Ok(n == 0),
            None => me.peek().map(|(h, _)| h == Header::Break),
        };
        match at_end(self, len) {
            Ok(true) => return (None, Err(short())),
            Ok(false) => {}
            Err(e) => return (None, Err(e)),
        }
        let id = match <u32 as de::Deserialize>::deserialize(&mut *self) {
            Ok(id) => id,
            Err(e) => return (None, Err(e)),
        };
        let left = len.map(|n| n - 1);
        let msg = (|| {
            if at_end(self, left)? {
                return Err(short());
            }
            let v = T::deserialize(&mut *self)?;
            self.finish(left.map(|n| n - 1))?;
            Ok(v)
        })();
        (Some(id), msg)
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
            let mut access = Access {
                de: me,
                left: len,
                ended: false,
            };
            let v = visitor.visit_map(&mut access)?;
            let left = if access.ended { Some(0) } else { access.left };
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

/// Items of an array or entries of a map; `left` is `None` for an
/// indefinite length until its break is read (`ended`).
struct Access<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    left: Option<usize>,
    ended: bool,
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

impl<'de> de::MapAccess<'de> for Access<'_, 'de> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if !self.next()? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        self.hint()
    }
}

/// An enum: a bare variant name (`map == false`) or a one-entry map.
struct Enum<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    map: bool,
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

#[cfg(test)]
mod tests {
    use alloc::vec;

    use serde::Deserialize;

    use super::*;

    fn de<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T> {
        let mut d = Deserializer::new(b);
        let v = T::deserialize(&mut d)?;
        assert_eq!(d.position(), b.len(), "whole input consumed");
        Ok(v)
    }

    #[test]
    fn integers_of_every_width_and_bignums() {
        assert_eq!(de::<u8>(&[0x18, 0xff]), Ok(255));
        assert_eq!(de::<u64>(&[0x1b, 0, 0, 0, 0, 0, 0, 0, 1]), Ok(1));
        assert_eq!(de::<i64>(&[0x20]), Ok(-1));
        assert_eq!(
            de::<i128>(&[0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Ok(-(1 << 64))
        );
        // Tag 2 (positive bignum) over 9 bytes: 2^64.
        assert_eq!(
            de::<u128>(&[0xc2, 0x49, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
            Ok(1 << 64)
        );
        assert!(matches!(de::<u8>(&[0x19, 1, 0]), Err(DeError::Custom(_))));
        assert!(matches!(de::<u32>(&[0x20]), Err(DeError::Custom(_))));
    }

    #[test]
    fn type_errors_name_a_float_without_its_value() {
        use serde::de::{Error as _, Unexpected};
        assert_eq!(
            DeError::invalid_type(Unexpected::Float(1.5), &"an integer"),
            DeError::Custom("invalid type: floating point, expected an integer".into())
        );
        assert_eq!(
            DeError::invalid_value(Unexpected::Str("x\n"), &"a name"),
            DeError::Custom("invalid value: string \"x\\n\", expected a name".into())
        );
    }

    #[test]
    fn strings_borrow_and_tags_are_skipped() {
        assert_eq!(de::<&str>(b"\x63abc"), Ok("abc"));
        assert_eq!(de::<&str>(b"\xd8\x20\x63abc"), Ok("abc"));
        assert_eq!(
            de::<serde_bytes_like::Bytes<'_>>(b"\x42ab").map(|b| b.0),
            Ok(&b"ab"[..])
        );
        assert_eq!(de::<char>(b"\x62\xc3\xa9"), Ok('é'));
        assert_eq!(de::<Option<u8>>(b"\xf6"), Ok(None));
        assert_eq!(de::<Option<u8>>(b"\x01"), Ok(Some(1)));
        assert_eq!(de::<f64>(b"\xf9\x3c\x00"), Ok(1.0));
        assert_eq!(de::<bool>(b"\xf5"), Ok(true));
    }

    #[test]
    fn indefinite_lengths() {
        assert_eq!(de::<String>(b"\x7f\x61a\x61b\xff"), Ok("ab".into()));
        assert_eq!(de::<Vec<u8>>(b"\x9f\x01\x02\xff"), Ok(vec![1, 2]));
        // A chunk of the wrong type, or an indefinite chunk.
        assert_eq!(de::<String>(b"\x7f\x41a\xff"), Err(DeError::Syntax(1)));
        assert_eq!(de::<String>(b"\x7f\x7f\xff\xff"), Err(DeError::Syntax(1)));
        // Never closed.
        assert_eq!(de::<Vec<u8>>(b"\x9f\x01"), Err(DeError::Eof));
    }

    #[derive(Debug, PartialEq, serde::Deserialize)]
    enum E {
        #[serde(rename = "u")]
        U,
        #[serde(rename = "n")]
        N(u8),
    }

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct S {
        field: u8,
    }

    #[test]
    fn bignum_tags_are_not_bytes_other_tags_are_skipped() {
        let b = de::<serde_bytes_like::Bytes<'_>>(b"\xd8\x64\x42ab").map(|b| b.0);
        assert_eq!(b, Ok(&b"ab"[..]));
        for t in [0xc2, 0xc3] {
            let body = [t, 0x42, 1, 2];
            let r = de::<serde_bytes_like::Bytes<'_>>(&body).map(|b| b.0);
            assert!(matches!(r, Err(DeError::Custom(_))), "{r:?}");
        }
    }

    #[test]
    fn indefinite_maps_and_chunked_names() {
        // `{_ "n": 1}`: an enum as an indefinite-length one-entry map.
        assert_eq!(de::<E>(b"\xbf\x61n\x01\xff"), Ok(E::N(1)));
        // Its name chunked, and a unit variant's name chunked.
        assert_eq!(de::<E>(b"\xbf\x7f\x61n\xff\x01\xff"), Ok(E::N(1)));
        assert_eq!(de::<E>(b"\x7f\x61u\xff"), Ok(E::U));
        // A chunked field name in an indefinite-length struct map.
        assert_eq!(
            de::<S>(b"\xbf\x7f\x63fie\x62ld\xff\x07\xff"),
            Ok(S { field: 7 })
        );
        // Zero or two entries are not an enum.
        assert!(matches!(de::<E>(b"\xbf\xff"), Err(DeError::Custom(_))));
        assert!(matches!(
            de::<E>(b"\xbf\x61n\x01\x61n\x01\xff"),
            Err(DeError::Custom(_))
        ));
    }

    #[test]
    fn arrays_must_be_consumed_entirely() {
        assert_eq!(de::<(u8, u8)>(b"\x82\x01\x02"), Ok((1, 2)));
        assert!(matches!(
            de::<(u8, u8)>(b"\x83\x01\x02\x03"),
            Err(DeError::Custom(_))
        ));
        assert!(matches!(
            de::<(u8, u8)>(b"\x9f\x01\x02\x03\xff"),
            Err(DeError::Custom(_))
        ));
    }

    #[test]
    fn huge_announced_lengths_allocate_nothing() {
        // An array of 2^64 - 1 items, and a map of as many entries.
        let mut a = vec![0x9b];
        a.extend_from_slice(&[0xff; 8]);
        assert_eq!(de::<Vec<u8>>(&a), Err(DeError::Eof));
        a[0] = 0xbb;
        assert_eq!(
            de::<alloc::collections::BTreeMap<u8, u8>>(&a),
            Err(DeError::Eof)
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let mut v = vec![0x81; RECURSION_LIMIT + 1];
        v.push(0x80);
        assert_eq!(
            de::<serde::de::IgnoredAny>(&v).map(|_| ()),
            Err(DeError::TooDeep)
        );
        // Exactly the limit: the outermost item is level 1.
        let mut v = vec![0x81; RECURSION_LIMIT - 1];
        v.push(0x80);
        assert!(de::<serde::de::IgnoredAny>(&v).is_ok());
        // Tags are skipped, not nested: many of them cost neither depth nor
        // stack.
        let mut v = vec![0xc6; 10_000];
        v.push(0x01);
        assert!(de::<serde::de::IgnoredAny>(&v).is_ok());
    }

    /// A minimal borrowed-bytes type (serde_bytes' `Bytes` without the dependency
    /// on its `Deserialize` for references).
    mod serde_bytes_like {
        use core::fmt;

        use serde::de::{Deserialize, Deserializer, Error, Visitor};

        #[derive(Debug, PartialEq)]
        pub(super) struct Bytes<'a>(pub(super) &'a [u8]);

        impl<'de> Deserialize<'de> for Bytes<'de> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Bytes<'de>;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("borrowed bytes")
                    }
                    fn visit_borrowed_bytes<E: Error>(
                        self,
                        v: &'de [u8],
                    ) -> Result<Self::Value, E> {
                        Ok(Bytes(v))
                    }
                }
                d.deserialize_bytes(V)
            }
        }
    }
}

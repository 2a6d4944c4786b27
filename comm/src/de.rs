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

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cmp::Ordering;
use core::fmt;

use crate::head::{self, HeadError, Header, simple, tag};
use serde::de::{self, DeserializeSeed, Visitor};

use crate::defs::RECURSION_LIMIT;

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
    /// An enum's variant name that the target type does not know: serde's
    /// [`unknown_variant`](de::Error::unknown_variant), recorded as such so
    /// that it becomes [`Error::UnknownVariant`](crate::Error::UnknownVariant)
    /// (`ERROR` code 4) by its type, not by the wording of a message.
    UnknownVariant {
        /// The name received.
        name: String,
        /// The names the target type knows.
        expected: &'static [&'static str],
    },
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Eof => f.write_str("end of body inside a CBOR item"),
            Self::Syntax(o) => write!(f, "invalid CBOR at byte {o}"),
            Self::Custom(m) => f.write_str(m),
            Self::TooDeep => f.write_str("nesting too deep"),
            // serde's own wording, as its default `unknown_variant` has it.
            Self::UnknownVariant { name, expected } => {
                write!(f, "unknown variant `{name}`, ")?;
                match expected {
                    [] => f.write_str("there are no variants"),
                    [a] => write!(f, "expected `{a}`"),
                    [a, b] => write!(f, "expected `{a}` or `{b}`"),
                    names => {
                        f.write_str("expected one of ")?;
                        for (i, n) in names.iter().enumerate() {
                            if i > 0 {
                                f.write_str(", ")?;
                            }
                            write!(f, "`{n}`")?;
                        }
                        Ok(())
                    }
                }
            }
        }
    }
}

impl core::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::Custom(msg.to_string())
    }

    #[cold]
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Self::UnknownVariant {
            name: variant.into(),
            expected,
        }
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
    #[inline]
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

/// The entries of a map, and its keys so far to refuse a repeated one.
struct MapAccess<'a, 'de> {
    items: Access<'a, 'de>,
    keys: Keys,
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

/// Keys compared with each other as they come, without allocating: the
/// maps of this protocol's messages have at most 6 entries (and a newer
/// peer's a few more).
const INLINE_KEYS: usize = 8;

/// The keys of one map read so far, as offsets into the body, to refuse a
/// repeated key (`WIRE.md` R-CBOR-1).
///
/// Cost, for a map of `n` entries whose keys take `K` bytes in all:
/// - `n <= INLINE_KEYS` (8): nothing allocated, 48 bytes in the frame of
///   each map being read (127 nested maps in an `ERROR` body took 10 KiB
///   more stack than before the check: 54 KiB instead of 44 KiB on
///   x86_64, release). Each key is compared with the ones before it as it
///   arrives, so a repeat is refused at once: at most 7 comparisons per
///   key, each stopping at the first difference. A key written shortest
///   as a definite string or small integer (every sender's form,
///   R-CBOR-4, R-CBOR-5) is told apart by its head byte (type and
///   length) and first byte, else one `memcmp` of its encoding; any other
///   key is compared by value ([`cmp_keys`]). At most `7 * K` bytes are
///   looked at. (Decoding an `Info` response, a `HELLO` and an `ERROR`
///   took 10% more instructions than without the check; a `Reverse`
///   request, whose one map is the enum's, exactly as many.)
/// - `n > INLINE_KEYS`: the offsets of all keys go into a `Vec<u32>` (4
///   bytes per entry; an entry is at least 2 bytes of body, so at most
///   twice the body's length, plus the `Vec`'s growth), sorted by value
///   when the map ends: `O(n log n)` comparisons, `O(K log n)` bytes
///   looked at. A repeat among the keys after the 8th is then refused at
///   the end of the map, not at the repeat (`WIRE.md` R-ERR-8 allows it).
struct Keys {
    inline: [u32; INLINE_KEYS],
    n: u8,
    /// Boxed: 8 bytes in every map's frame instead of a `Vec`'s 24 (the
    /// frames of nested maps add up on a small guest stack).
    #[allow(clippy::box_collection)] // 8 bytes of stack per map, not 24.
    spill: Option<alloc::boxed::Box<Vec<u32>>>,
}

impl Keys {
    fn new() -> Self {
        Self {
            inline: [0; INLINE_KEYS],
            n: 0,
            // No allocation until a map has more than INLINE_KEYS entries.
            spill: None,
        }
    }

    /// Adds the key at `at` in `buf`; an error if it repeats an earlier
    /// key of the inline part.
    #[inline]
    fn add(&mut self, buf: &[u8], at: usize) -> Result<()> {
        // The first key repeats nothing (and is most maps' only one).
        if self.n == 0
            && let Ok(at32) = u32::try_from(at)
        {
            self.inline[0] = at32;
            self.n = 1;
            return Ok(());
        }
        self.add_more(buf, at)
    }

    /// [`Keys::add`] after the first key. Not inlined: its locals stay out
    /// of the frames of the deserializer's recursion.
    #[inline(never)]
    fn add_more(&mut self, buf: &[u8], at: usize) -> Result<()> {
        // Frame bodies are shorter than 4 GiB (the header's length is a u32).
        let at32 = u32::try_from(at).map_err(|_| DeError::Custom("body over 4 GiB".into()))?;
        let n = usize::from(self.n);
        if n < INLINE_KEYS {
            let new = short_key(buf, at);
            for &prev in &self.inline[..n] {
                let p = prev as usize;
                let same = match (new, buf.get(p)) {
                    // Both short: the same head byte is the same type and
                    // length; then the first byte of the name, which tells
                    // nearly all field names apart without a `memcmp`.
                    (Some(x), Some(&h)) if h == x[0] => {
                        (x.len() < 2 || buf.get(p + 1) == x.get(1))
                            && buf.get(p..p + x.len()) == Some(x)
                    }
                    (Some(_), Some(&h)) if is_short_head(h) => false,
                    _ => cmp_keys(buf, p, at) == Ordering::Equal,
                };
                if same {
                    return Err(repeated(p, at));
                }
            }
            self.inline[n] = at32;
            self.n += 1;
            return Ok(());
        }
        self.spill
            .get_or_insert_with(|| alloc::boxed::Box::new(self.inline.to_vec()))
            .push(at32);
        Ok(())
    }

    /// At the end of the map: an error if a key of a map of more than
    /// [`INLINE_KEYS`] entries repeats another.
    #[inline]
    fn finish(&mut self, buf: &[u8]) -> Result<()> {
        match self.spill.take() {
            None => Ok(()),
            Some(keys) => Self::check_sorted(buf, *keys),
        }
    }

    #[inline(never)]
    fn check_sorted(buf: &[u8], mut keys: Vec<u32>) -> Result<()> {
        heap_sort(&mut keys, |a, b| {
            cmp_keys(buf, a as usize, b as usize).then(a.cmp(&b))
        });
        for w in keys.windows(2) {
            if cmp_keys(buf, w[0] as usize, w[1] as usize) == Ordering::Equal {
                return Err(repeated(w[0] as usize, w[1] as usize));
            }
        }
        Ok(())
    }
}

/// Heapsort: O(n log n) with no allocation, in a few hundred bytes of
/// code. `slice::sort_unstable_by` took 13 KB of the bare-metal guest's
/// image (a 11% larger firmware) for a check that runs only on maps of
/// more than 8 keys.
fn heap_sort(v: &mut [u32], mut cmp: impl FnMut(u32, u32) -> Ordering) {
    let mut sift = |v: &mut [u32], mut root: usize, end: usize| loop {
        let mut child = 2 * root + 1;
        if child >= end {
            return;
        }
        if child + 1 < end && cmp(v[child], v[child + 1]) == Ordering::Less {
            child += 1;
        }
        if cmp(v[root], v[child]) != Ordering::Less {
            return;
        }
        v.swap(root, child);
        root = child;
    };
    for start in (0..v.len() / 2).rev() {
        sift(v, start, v.len());
    }
    for end in (1..v.len()).rev() {
        v.swap(0, end);
        sift(v, 0, end);
    }
}

#[cold]
fn repeated(first: usize, again: usize) -> DeError {
    DeError::Custom(alloc::format!(
        "repeated map key: the key at byte {again} is the key at byte {first} again"
    ))
}

/// The encoding of the key at `at` if it is written shortest and
/// definite (a text or byte string under 24 bytes, an integer from -24 to
/// 23, no tag). Two such keys are the same exactly when their encodings
/// are; any other pair is compared by value ([`cmp_keys`]).
#[inline]
fn short_key(buf: &[u8], at: usize) -> Option<&[u8]> {
    let first = *buf.get(at)?;
    let len = match first {
        0x00..=0x17 | 0x20..=0x37 => 1,
        0x40..=0x57 | 0x60..=0x77 => 1 + usize::from(first & 0x1f),
        _ => return None,
    };
    buf.get(at..at + len)
}

/// Whether `h` starts a key [`short_key`] takes.
#[inline]
fn is_short_head(h: u8) -> bool {
    matches!(h, 0x00..=0x17 | 0x20..=0x37 | 0x40..=0x57 | 0x60..=0x77)
}

/// Orders the data items at `a` and `b` of `buf` by value (a total order
/// whose equality is `WIRE.md` R-CBOR-1's "same key"): tags other than the
/// bignum tags 2 and 3 are skipped, as the decoder skips them (R-CBOR-6);
/// then the major type decides, then the value whatever its encoding:
/// integers of any width, strings by their content however it is chunked,
/// floats of any width by value (bit for bit as an `f64`), arrays item by
/// item, maps entry by entry in the order written. Both items were read
/// by the deserializer already, so they are well-formed and nested at
/// most [`RECURSION_LIMIT`] deep.
fn cmp_keys(buf: &[u8], a: usize, b: usize) -> Ordering {
    let mut x = Cursor(Deserializer::new(buf));
    x.0.pos = a;
    let mut y = Cursor(Deserializer::new(buf));
    y.0.pos = b;
    cmp_item(&mut x, &mut y)
}

/// A read position for [`cmp_keys`]. It reads heads with the
/// deserializer's own [`Deserializer::pull`], the one head reader
/// ([`crate::head`]).
struct Cursor<'a>(Deserializer<'a>);

impl<'a> Cursor<'a> {
    fn head(&mut self) -> Option<Header> {
        self.0.pull().ok()
    }

    /// The next head that is not a skipped tag.
    fn item(&mut self) -> Option<Header> {
        loop {
            match self.head()? {
                Header::Tag(t) if t != tag::BIGPOS && t != tag::BIGNEG => continue,
                h => return Some(h),
            }
        }
    }

    fn take(&mut self, len: usize) -> &'a [u8] {
        self.0.take(len).unwrap_or_default()
    }

    /// The next chunk of a string of length `len` (`None`: chunked), or
    /// `None` at its end. `left` is the definite length not yet taken.
    fn chunk(&mut self, left: &mut Option<Option<usize>>) -> Option<&'a [u8]> {
        match *left {
            Some(Some(n)) => {
                *left = None;
                Some(self.take(n))
            }
            Some(None) => match self.head()? {
                Header::Bytes(Some(n)) | Header::Text(Some(n)) => Some(self.take(n)),
                _ => {
                    *left = None;
                    None
                }
            },
            None => None,
        }
    }

    /// Whether a container with `left` items to go (`None`: indefinite,
    /// until its break) has another; consumes the break.
    fn more(&mut self, left: &mut Option<usize>) -> bool {
        match left {
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
            None => match self.0.peek() {
                Ok((Header::Break, n)) => {
                    self.0.pos += n;
                    *left = Some(0);
                    false
                }
                _ => true,
            },
        }
    }
}

fn cmp_item(x: &mut Cursor<'_>, y: &mut Cursor<'_>) -> Ordering {
    let rank = |h: &Header| match h {
        Header::Positive(_) => 0u8,
        Header::Negative(_) => 1,
        Header::Bytes(_) => 2,
        Header::Text(_) => 3,
        Header::Array(_) => 4,
        Header::Map(_) => 5,
        Header::Tag(_) => 6,
        Header::Simple(_) => 7,
        Header::Float(_) => 8,
        Header::Break => 9,
    };
    let (hx, hy) = match (x.item(), y.item()) {
        (Some(hx), Some(hy)) => (hx, hy),
        // Not reached for items the deserializer read; never "the same".
        _ => return x.0.pos.cmp(&y.0.pos).then(Ordering::Less),
    };
    match (hx, hy) {
        (Header::Positive(a), Header::Positive(b)) => a.cmp(&b),
        // -1 - a against -1 - b.
        (Header::Negative(a), Header::Negative(b)) => b.cmp(&a),
        (Header::Bytes(a), Header::Bytes(b)) | (Header::Text(a), Header::Text(b)) => {
            cmp_strings(x, a, y, b)
        }
        (Header::Array(a), Header::Array(b)) => cmp_items(x, a, y, b, 1),
        (Header::Map(a), Header::Map(b)) => cmp_items(x, a, y, b, 2),
        (Header::Tag(a), Header::Tag(b)) => a.cmp(&b).then_with(|| cmp_item(x, y)),
        (Header::Simple(a), Header::Simple(b)) => a.cmp(&b),
        (Header::Float(a), Header::Float(b)) => a.to_bits().cmp(&b.to_bits()),
        (hx, hy) => rank(&hx).cmp(&rank(&hy)),
    }
}

/// Compares two strings' contents as byte sequences, across chunks.
fn cmp_strings(
    x: &mut Cursor<'_>,
    a: Option<usize>,
    y: &mut Cursor<'_>,
    b: Option<usize>,
) -> Ordering {
    let (mut lx, mut ly) = (Some(a), Some(b));
    let (mut sx, mut sy): (&[u8], &[u8]) = (&[], &[]);
    loop {
        while sx.is_empty() {
            match x.chunk(&mut lx) {
                Some(s) => sx = s,
                None => break,
            }
        }
        while sy.is_empty() {
            match y.chunk(&mut ly) {
                Some(s) => sy = s,
                None => break,
            }
        }
        let n = sx.len().min(sy.len());
        if n == 0 {
            return sx.len().cmp(&sy.len());
        }
        match sx[..n].cmp(&sy[..n]) {
            Ordering::Equal => (sx, sy) = (&sx[n..], &sy[n..]),
            o => return o,
        }
    }
}

/// Compares the items of two arrays (`per` 1) or maps (`per` 2) in order;
/// the shorter is less if one is a prefix of the other.
fn cmp_items(
    x: &mut Cursor<'_>,
    a: Option<usize>,
    y: &mut Cursor<'_>,
    b: Option<usize>,
    per: usize,
) -> Ordering {
    let (mut lx, mut ly) = (a, b);
    loop {
        match (x.more(&mut lx), y.more(&mut ly)) {
            (false, false) => return Ordering::Equal,
            (false, true) => return Ordering::Less,
            (true, false) => return Ordering::Greater,
            (true, true) => {
                for _ in 0..per {
                    match cmp_item(x, y) {
                        Ordering::Equal => {}
                        o => return o,
                    }
                }
            }
        }
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
    fn an_unknown_variant_is_typed_and_worded_as_serde_words_it() {
        use serde::de::Error as _;
        const NAMES: [&str; 3] = ["rev", "info", "off"];
        for n in 0..=NAMES.len() {
            let expected: &'static [&'static str] = &NAMES[..n];
            let ours = DeError::unknown_variant("su`m\n", expected);
            assert!(matches!(&ours, DeError::UnknownVariant { name, .. } if name == "su`m\n"));
            let serdes = serde::de::value::Error::unknown_variant("su`m\n", expected);
            assert_eq!(ours.to_string(), serdes.to_string());
        }
        // A message that merely reads like one is not one.
        let custom = DeError::custom("unknown variant `sum`");
        assert!(matches!(custom, DeError::Custom(_)));
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
        // A tag on a chunk (WIRE.md R-CBOR-5): not well-formed.
        assert_eq!(de::<String>(b"\x7f\xc6\x61a\xff"), Err(DeError::Syntax(1)));
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

    /// A chain of enums: `{"a": {"a": ... "u"}}`.
    #[derive(Debug, PartialEq, serde::Deserialize)]
    enum Chain {
        #[serde(rename = "a")]
        A(alloc::boxed::Box<Chain>),
        #[serde(rename = "u")]
        U,
    }

    #[test]
    fn an_enum_is_one_level_as_a_map_or_a_bare_name() {
        // `maps` one-entry maps, then the bare name "u": maps + 1 levels.
        let chain = |maps: usize| {
            let mut v = Vec::new();
            for _ in 0..maps {
                v.extend_from_slice(b"\xa1\x61a");
            }
            v.extend_from_slice(b"\x61u");
            v
        };
        assert!(de::<Chain>(&chain(RECURSION_LIMIT - 1)).is_ok());
        assert_eq!(de::<Chain>(&chain(RECURSION_LIMIT)), Err(DeError::TooDeep));
        // At level 129 the name is not even read: too deep, not unknown.
        let mut v = chain(RECURSION_LIMIT);
        *v.last_mut().unwrap() = b'z';
        assert_eq!(de::<Chain>(&v), Err(DeError::TooDeep));
        // An unknown name at level 2 wins over content nested too deep.
        let mut v = b"\xa1\x61a\xa1\x61z".to_vec();
        v.extend(core::iter::repeat_n(0x81, 200));
        v.push(0x80);
        assert!(
            matches!(de::<Chain>(&v), Err(DeError::UnknownVariant { name, .. }) if name == "z")
        );
    }

    /// `{k1: 0, k2: 0, ...}` with each key as given (encoded), values 0.
    fn map_of(keys: &[&[u8]]) -> Vec<u8> {
        let mut m = vec![0xbf];
        for k in keys {
            m.extend_from_slice(k);
            m.push(0);
        }
        m.push(0xff);
        m
    }

    fn repeats<'a, T: Deserialize<'a>>(b: &'a [u8]) -> bool {
        matches!(de::<T>(b), Err(DeError::Custom(m)) if m.starts_with("repeated map key"))
    }

    #[test]
    fn a_repeated_key_is_refused_known_or_not() {
        type Any = serde::de::IgnoredAny;
        // {"field": 1, "x": 2, "x": 3}: an unknown key repeated.
        let b = b"\xa3\x65field\x01\x61x\x02\x61x\x03";
        assert!(repeats::<S>(b));
        assert!(repeats::<Any>(b));
        // A known one: the check comes before serde's own.
        assert!(repeats::<S>(b"\xa2\x65field\x01\x65field\x01"));
        // Nested, in a value that is ignored: {"field": 1, "y": {"a": 0, "a": 0}}.
        assert!(repeats::<S>(
            b"\xa2\x65field\x01\x61y\xa2\x61a\x00\x61a\x00"
        ));
        // Different keys, and the same key in two different maps: fine.
        assert_eq!(
            de::<S>(b"\xa3\x65field\x01\x61x\xa1\x61x\x00\x61y\xa1\x61x\x00"),
            Ok(S { field: 1 })
        );
        assert_eq!(
            de::<alloc::collections::BTreeMap<u8, u8>>(b"\xa2\x01\x00\x02\x00").map(|m| m.len()),
            Ok(2)
        );
    }

    #[test]
    fn keys_are_compared_by_value_not_by_encoding() {
        type Any = serde::de::IgnoredAny;
        let same: &[(&[u8], &[u8])] = &[
            // The same short key twice: one byte, and longer.
            (b"\x60", b"\x60"),
            (b"\x01", b"\x01"),
            (b"\x61a", b"\x61a"),
            (b"\x63abc", b"\x63abc"),
            // "ab" definite, chunked (two ways), with a non-shortest head,
            // tagged.
            (b"\x62ab", b"\x7f\x61a\x61b\xff"),
            (b"\x7f\x62ab\xff", b"\x7f\x61a\x60\x61b\xff"),
            (b"\x62ab", b"\x78\x02ab"),
            (b"\x62ab", b"\xd8\x20\x62ab"),
            (b"\x42ab", b"\x5f\x41a\x41b\xff"),
            // 1 and -2 at every width.
            (b"\x01", b"\x1b\x00\x00\x00\x00\x00\x00\x00\x01"),
            (b"\x21", b"\x38\x01"),
            // Empty strings, arrays definite and not, floats of any width.
            (b"\x60", b"\x7f\xff"),
            (b"\x82\x01\x61a", b"\x9f\x01\x7f\x61a\xff\xff"),
            (b"\xf9\x3c\x00", b"\xfb\x3f\xf0\x00\x00\x00\x00\x00\x00"),
            (b"\xa1\x61a\x01", b"\xbf\x61a\x01\xff"),
        ];
        for (a, b) in same {
            assert!(repeats::<Any>(&map_of(&[a, b])), "{a:02x?} = {b:02x?}");
            assert!(repeats::<Any>(&map_of(&[b, a])), "{b:02x?} = {a:02x?}");
        }
        let different: &[(&[u8], &[u8])] = &[
            (b"\x63abc", b"\x63abd"), // same length and first letter
            (b"\x60", b"\x40"),
            (b"\x62ab", b"\x42ab"),             // text is not bytes
            (b"\x62ab", b"\x7f\x61a\x61c\xff"), // content
            (b"\x62ab", b"\x7f\x61a\xff"),      // a prefix
            (b"\x01", b"\x20"),                 // 1 and -1
            (b"\x01", b"\xf9\x3c\x00"),         // 1 and 1.0
            (b"\x01", b"\xc2\x41\x01"),         // 1 and bignum 1
            (b"\xf4", b"\xf5"),
            (b"\x82\x01\x02", b"\x82\x02\x01"),
            (b"\x81\x01", b"\x82\x01\x01"),
            (b"\xa1\x61a\x01", b"\xa1\x61a\x02"),
        ];
        for (a, b) in different {
            assert!(de::<Any>(&map_of(&[a, b])).is_ok(), "{a:02x?} vs {b:02x?}");
            assert!(de::<Any>(&map_of(&[b, a])).is_ok(), "{b:02x?} vs {a:02x?}");
        }
    }

    #[test]
    fn heap_sort_sorts() {
        for n in 0..40u32 {
            let mut v: Vec<u32> = (0..n).map(|i| (i * 7919 + 13) % 31).collect();
            let mut want = v.clone();
            want.sort_unstable();
            heap_sort(&mut v, |a, b| a.cmp(&b));
            assert_eq!(v, want, "{n}");
        }
    }

    #[test]
    fn large_maps_are_checked_too() {
        type Any = serde::de::IgnoredAny;
        let key = |i: u32| {
            let mut k = vec![0x7f];
            for c in alloc::format!("key{i}").bytes() {
                k.extend_from_slice(&[0x61, c]);
            }
            k.push(0xff);
            k
        };
        for n in [7u32, 8, 9, 40, 1000] {
            let keys: Vec<Vec<u8>> = (0..n).map(key).collect();
            let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            assert!(de::<Any>(&map_of(&refs)).is_ok(), "{n} keys");
            // The first key again, last; the last again, last.
            for again in [0, n - 1] {
                let mut r = refs.clone();
                r.push(&keys[again as usize]);
                assert!(repeats::<Any>(&map_of(&r)), "{n} keys, {again} again");
            }
        }
    }

    #[test]
    fn small_maps_allocate_no_key_index() {
        let mut k = Keys::new();
        let body = map_of(&[b"\x61a", b"\x61b", b"\x61c"]);
        for at in [1, 4, 7] {
            k.add(&body, at).unwrap();
        }
        assert!(k.spill.is_none());
        assert!(k.finish(&body).is_ok());
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

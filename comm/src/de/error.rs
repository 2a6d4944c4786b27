//! The deserializer's error, and the wording of its type errors.

use alloc::string::{String, ToString};
use core::fmt;

use serde::de;

use crate::head::{Header, simple};

/// Why a body could not be deserialized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeError {
    /// The body ended inside a data item.
    Eof,
    /// The body is not well-formed CBOR at this offset.
    Syntax(usize),
    /// Well-formed CBOR with the wrong shape for the target type.
    Custom(String),
    /// Nested deeper than [`RECURSION_LIMIT`](crate::defs::RECURSION_LIMIT).
    TooDeep,
    /// An enum's variant name that the target type does not know: serde's
    /// [`unknown_variant`](de::Error::unknown_variant), recorded as such so
    /// that it becomes [`Error::UnknownVariant`](crate::Error::UnknownVariant)
    /// (`ERROR` code 4) by its type, not by the wording of a message. It
    /// holds serde's message (the name and the names known) in a
    /// `Box<str>`, which fits beside `Custom`'s `String`: with the parts, or
    /// a second `String`, the error outgrew a `String`, every `Result` of
    /// the deserializer grew with it, and the x86_64 guest image by 5.5 KiB
    /// (the parts) or 2.3 KiB (a `String`).
    UnknownVariant(alloc::boxed::Box<str>),
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Eof => f.write_str("end of body inside a CBOR item"),
            Self::Syntax(o) => write!(f, "invalid CBOR at byte {o}"),
            Self::Custom(m) => f.write_str(m),
            Self::TooDeep => f.write_str("nesting too deep"),
            Self::UnknownVariant(m) => f.write_str(m),
        }
    }
}

impl DeError {
    /// serde's wording of an unknown variant, as its default
    /// `unknown_variant` has it, except that the peer's name is escaped
    /// (a backtick, a backslash and every character outside printable
    /// ASCII, as the crate quotes the peer's strings elsewhere): it goes into logs and
    /// `ERROR` details, where a newline of the peer's must not start a
    /// line of its own.
    fn unknown_variant_message(name: &str, expected: &[&str]) -> String {
        let mut m = String::from("unknown variant `");
        for c in name.chars() {
            match c {
                '`' | '\\' => {
                    m.push('\\');
                    m.push(c);
                }
                ' '..='~' => m.push(c),
                '\n' => m.push_str("\\n"),
                '\r' => m.push_str("\\r"),
                '\t' => m.push_str("\\t"),
                '\0' => m.push_str("\\0"),
                _ => {
                    use fmt::Write;
                    let _ = write!(m, "\\u{{{:x}}}", u32::from(c));
                }
            }
        }
        m.push_str("`, ");
        if expected.is_empty() {
            m.push_str("there are no variants");
            return m;
        }
        m.push_str(if expected.len() > 2 {
            "expected one of "
        } else {
            "expected "
        });
        for (i, n) in expected.iter().enumerate() {
            if i > 0 {
                m.push_str(if expected.len() == 2 { " or " } else { ", " });
            }
            m.push('`');
            m.push_str(n);
            m.push('`');
        }
        m
    }
}

impl core::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::Custom(msg.to_string())
    }

    #[cold]
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Self::UnknownVariant(Self::unknown_variant_message(variant, expected).into())
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
            U::Char(c) => {
                let mut b = [0; 4];
                write!(
                    f,
                    "character {}",
                    crate::error::Quoted(c.encode_utf8(&mut b))
                )
            }
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

pub(super) fn expected(h: Header, what: &str) -> DeError {
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

//! CBOR heads (RFC 8949 §3): the initial byte of a data item (its major
//! type and additional information) and the argument that follows it.
//!
//! The one reader and writer of heads: the serde deserializer (`de`), the
//! `[id, message]` envelope, the extensions' direct codecs ([`crate::ext`])
//! and a protocol's own fast codec (svmc's, `svmc-proto`) all go through
//! [`read_head`] and [`push_head`] here, so there is one place that says
//! which heads are well-formed. (Encoding whole messages is ciborium's
//! serializer's job; [`push_head`] writes the same shortest heads.)
//!
//! Reading never allocates: a length is returned, never used to size
//! anything here, and the callers only compare it with the bytes left.

use alloc::vec::Vec;

/// Simple values (major type 7) the deserializer names (RFC 8949 §3.3).
pub(crate) mod simple {
    /// `false`.
    pub(crate) const FALSE: u8 = 20;
    /// `true`.
    pub(crate) const TRUE: u8 = 21;
    /// `null`.
    pub(crate) const NULL: u8 = 22;
    /// `undefined`.
    pub(crate) const UNDEFINED: u8 = 23;
}

/// Tags (major type 6) the deserializer reads rather than skips (RFC 8949
/// §3.4.3).
pub(crate) mod tag {
    /// An unsigned bignum: a byte string of big-endian digits.
    pub(crate) const BIGPOS: u64 = 2;
    /// A negative bignum, `-1 - n`.
    pub(crate) const BIGNEG: u64 = 3;
}

/// One head, decoded. Lengths are `None` for an indefinite length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Header {
    /// Major type 0: an unsigned integer.
    Positive(u64),
    /// Major type 1: the integer `-1 - n`.
    Negative(u64),
    /// Major type 2: a byte string of this length.
    Bytes(Option<usize>),
    /// Major type 3: a text string of this length.
    Text(Option<usize>),
    /// Major type 4: an array of this many items.
    Array(Option<usize>),
    /// Major type 5: a map of this many entries.
    Map(Option<usize>),
    /// Major type 6: a tag.
    Tag(u64),
    /// Major type 7, additional information 0 to 24: a simple value.
    Simple(u8),
    /// Major type 7, a half, single or double precision float, as an
    /// `f64` (exactly: every narrower float is one).
    Float(f64),
    /// Major type 7, additional information 31: the end of an
    /// indefinite-length item.
    Break,
}

/// Why no head could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// The buffer ends inside the head (or before it).
    Eof,
    /// The head is not well-formed: additional information 28 to 30, or an
    /// indefinite length on an integer or a tag.
    Syntax,
}

/// The head at `buf[at..]`: its major type, its argument (`None`: an
/// indefinite length, additional information 31) and its length in bytes.
/// Any width of argument is accepted, as RFC 8949 allows for
/// well-formedness (the shortest form is a sender's duty, `WIRE.md`
/// R-CBOR-4).
#[inline]
fn raw(buf: &[u8], at: usize) -> Result<(u8, Option<u64>, usize), HeadError> {
    let first = *buf.get(at).ok_or(HeadError::Eof)?;
    let info = first & 0x1f;
    let width = match info {
        0..=23 => return Ok((first >> 5, Some(u64::from(info)), 1)),
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        31 => return Ok((first >> 5, None, 1)),
        _ => return Err(HeadError::Syntax),
    };
    let bytes = buf.get(at + 1..at + 1 + width).ok_or(HeadError::Eof)?;
    let arg = bytes.iter().fold(0, |a, &b| (a << 8) | u64::from(b));
    Ok((first >> 5, Some(arg), 1 + width))
}

/// The head at `buf[at..]` and its length in bytes: what `ciborium-ll`'s
/// decoder reads, simple values with a one-byte argument (even one under
/// 32) and floats of every width included.
#[inline]
pub(crate) fn pull(buf: &[u8], at: usize) -> Result<(Header, usize), HeadError> {
    let (major, arg, len) = raw(buf, at)?;
    let size = |n: u64| usize::try_from(n).map_err(|_| HeadError::Syntax);
    let h = match (major, arg) {
        (0, Some(n)) => Header::Positive(n),
        (1, Some(n)) => Header::Negative(n),
        (2, n) => Header::Bytes(n.map(size).transpose()?),
        (3, n) => Header::Text(n.map(size).transpose()?),
        (4, n) => Header::Array(n.map(size).transpose()?),
        (5, n) => Header::Map(n.map(size).transpose()?),
        (6, Some(n)) => Header::Tag(n),
        (7, None) => Header::Break,
        (7, Some(n)) => match len {
            1 | 2 => Header::Simple(n as u8),
            3 => Header::Float(f16_to_f64(n as u16)),
            5 => Header::Float(f32::from_bits(n as u32).into()),
            _ => Header::Float(f64::from_bits(n)),
        },
        // An indefinite integer or tag.
        _ => return Err(HeadError::Syntax),
    };
    Ok((h, len))
}

/// A half-precision float (IEEE 754 binary16) as the `f64` of the same
/// value, bit for bit what the `half` crate returns (a NaN keeps its sign
/// and payload and is made quiet).
fn f16_to_f64(h: u16) -> f64 {
    let sign = u64::from(h & 0x8000) << 48;
    let exp = u64::from((h >> 10) & 0x1f);
    let man = u64::from(h & 0x3ff);
    match exp {
        // Zero and subnormals: `man * 2^-24`, exact in an f64.
        0 => {
            let v = man as f64 / 16_777_216.0;
            if sign == 0 { v } else { -v }
        }
        0x1f if man == 0 => f64::from_bits(sign | 0x7ff0_0000_0000_0000),
        0x1f => f64::from_bits(sign | 0x7ff8_0000_0000_0000 | (man << 42)),
        _ => f64::from_bits(sign | ((exp + 1023 - 15) << 52) | (man << 42)),
    }
}

/// Appends the shortest CBOR head of major type `major` (0 to 7) with
/// argument `arg`: what ciborium's encoder writes for a uint, a string's
/// or an array's length. One of the building blocks of a protocol's own
/// direct codec (`Protocol::encode_request` and its siblings), with
/// [`read_head`] and [`crate::envelope::push_frame_head`].
pub fn push_head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    if arg < 24 {
        out.push(m | arg as u8);
    } else if arg <= 0xff {
        out.extend_from_slice(&[m | 24, arg as u8]);
    } else if arg <= 0xffff {
        let b = (arg as u16).to_be_bytes();
        out.extend_from_slice(&[m | 25, b[0], b[1]]);
    } else if arg <= 0xffff_ffff {
        let b = (arg as u32).to_be_bytes();
        out.extend_from_slice(&[m | 26, b[0], b[1], b[2], b[3]]);
    } else {
        out.push(m | 27);
        out.extend_from_slice(&arg.to_be_bytes());
    }
}

/// Reads a definite CBOR head at `body[*pos..]` (any width, as the generic
/// decoder accepts): its major type and argument, and moves `pos` past it.
/// `None` for an indefinite length, a reserved width or the end of `body`.
#[inline]
pub fn read_head(body: &[u8], pos: &mut usize) -> Option<(u8, u64)> {
    match raw(body, *pos) {
        Ok((major, Some(arg), len)) => {
            *pos += len;
            Some((major, arg))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;

    #[test]
    fn heads_of_every_width_round_trip() {
        for arg in [
            0,
            23,
            24,
            255,
            256,
            65_535,
            65_536,
            u32::MAX.into(),
            u64::MAX,
        ] {
            for major in 0..7 {
                let mut b = vec![];
                push_head(&mut b, major, arg);
                let mut pos = 0;
                assert_eq!(read_head(&b, &mut pos), Some((major, arg)));
                assert_eq!(pos, b.len());
                assert_eq!(pull(&b, 0).map(|(_, n)| n), Ok(b.len()));
            }
        }
    }

    #[test]
    fn indefinite_reserved_and_short_heads() {
        let mut pos = 0;
        assert_eq!(read_head(b"\x9f", &mut pos), None);
        assert_eq!(read_head(b"\x1c", &mut pos), None);
        assert_eq!(read_head(b"\x19\x01", &mut pos), None);
        assert_eq!(pos, 0);
        assert_eq!(pull(b"\x9f", 0), Ok((Header::Array(None), 1)));
        assert_eq!(pull(b"\xff", 0), Ok((Header::Break, 1)));
        assert_eq!(pull(b"\x1f", 0), Err(HeadError::Syntax));
        assert_eq!(pull(b"\xdf", 0), Err(HeadError::Syntax));
        assert_eq!(pull(b"\x5d", 0), Err(HeadError::Syntax));
        assert_eq!(pull(b"\x1b\0", 0), Err(HeadError::Eof));
        assert_eq!(pull(b"", 0), Err(HeadError::Eof));
        assert_eq!(pull(b"\xf8\x10", 0), Ok((Header::Simple(16), 2)));
    }

    #[test]
    fn every_half_float_reads_as_ciborium_reads_it() {
        for h in 0..=u16::MAX {
            let b = h.to_be_bytes();
            let body = [0xf9, b[0], b[1]];
            let Ok((Header::Float(ours), 3)) = pull(&body, 0) else {
                panic!("{h:04x}");
            };
            let theirs: f64 = ciborium::from_reader(&body[..]).unwrap();
            assert_eq!(ours.to_bits(), theirs.to_bits(), "{h:04x}");
        }
        let (Header::Float(x), 5) = pull(b"\xfa\x3f\xc0\x00\x00", 0).unwrap() else {
            panic!()
        };
        assert_eq!(x, 1.5);
    }
}

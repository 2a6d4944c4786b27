//! Unit tests of the deserializer, on local types.

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
        let ours = DeError::unknown_variant("sum", expected);
        assert!(
            matches!(&ours, DeError::UnknownVariant(m) if m.starts_with("unknown variant `sum`"))
        );
        let serdes = serde::de::value::Error::unknown_variant("sum", expected);
        assert_eq!(ours.to_string(), serdes.to_string());
    }
}

#[test]
fn an_unknown_variant_name_from_the_peer_cannot_break_a_log_line() {
    use serde::de::Error as _;
    let e = DeError::unknown_variant("su`m\n\\\u{1b}[2Jé", &["rev"]);
    assert_eq!(
        e.to_string(),
        "unknown variant `su\\`m\\n\\\\\\u{1b}[2J\\u{e9}`, expected `rev`"
    );
    // A message that merely reads like one is not one.
    let custom = DeError::custom("unknown variant `sum`");
    assert!(matches!(custom, DeError::Custom(_)));
}

#[test]
fn the_error_is_no_larger_than_a_string() {
    // Every `Result` of the deserializer carries it.
    assert_eq!(size_of::<DeError>(), size_of::<String>());
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
        matches!(de::<Chain>(&v), Err(DeError::UnknownVariant(m)) if m.starts_with("unknown variant `z`"))
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
                fn visit_borrowed_bytes<E: Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                    Ok(Bytes(v))
                }
            }
            d.deserialize_bytes(V)
        }
    }
}

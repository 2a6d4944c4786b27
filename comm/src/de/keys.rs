//! The repeated-key check of maps (`WIRE.md` R-CBOR-1): keys compared by
//! value, whatever their encoding, without allocating for small maps.

use alloc::vec::Vec;
use core::cmp::Ordering;

use super::{DeError, Deserializer, Result};
use crate::head::{Header, tag};

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
pub(super) struct Keys {
    inline: [u32; INLINE_KEYS],
    n: u8,
    /// Boxed: 8 bytes in every map's frame instead of a `Vec`'s 24 (the
    /// frames of nested maps add up on a small guest stack).
    #[allow(clippy::box_collection)] // 8 bytes of stack per map, not 24.
    spill: Option<alloc::boxed::Box<Vec<u32>>>,
}

impl Keys {
    pub(super) fn new() -> Self {
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
    pub(super) fn add(&mut self, buf: &[u8], at: usize) -> Result<()> {
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
    pub(super) fn finish(&mut self, buf: &[u8]) -> Result<()> {
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
/// most [`RECURSION_LIMIT`](crate::defs::RECURSION_LIMIT) deep.
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn small_maps_allocate_no_key_index() {
        let mut k = Keys::new();
        // `{_ "a": 0, "b": 0, "c": 0}`
        let body = b"\xbf\x61a\x00\x61b\x00\x61c\x00\xff";
        for at in [1, 4, 7] {
            k.add(body, at).unwrap();
        }
        assert!(k.spill.is_none());
        assert!(k.finish(body).is_ok());
    }
}

//! The `[id, message]` body of requests and responses (`WIRE.md` §3),
//! read so that the id is known even when the message is bad.

use serde::de;

use super::{Deserializer, Result, expected};
use crate::head::Header;

impl<'de> Deserializer<'de> {
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
}

//! The version check at connection start, and the trait that names a protocol.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::envelope::{self, RequestId};
use crate::error::{Error, Result};

/// Longest [`Protocol::NAME`] in bytes (`WIRE.md` §6: `tstr .size (1..64)`);
/// names must not be empty either. [`check_name`] enforces it.
pub const MAX_NAME_LEN: usize = 64;

/// Checks that `P`'s [`Protocol::NAME`] fits a `HELLO`: 1 to
/// [`MAX_NAME_LEN`] bytes, else [`Error::InvalidName`], which names the
/// protocol and the limit. `vsock-transport` calls it before it sends
/// anything on a connection.
///
/// ```
/// struct Long;
/// impl svmc_comm::Protocol for Long {
///     const NAME: &'static str = "a name much longer than the sixty-four bytes that one HELLO frame can carry";
///     const VERSION: u32 = 1;
///     type Request = ();
///     type Response = ();
/// }
/// let e = svmc_comm::handshake::check_name::<Long>().unwrap_err();
/// assert!(e.to_string().contains("HELLO"), "{e}");
/// assert!(e.to_string().contains(Long::NAME), "{e}");
/// # use svmc_comm::Protocol as _;
/// ```
pub fn check_name<P: Protocol>() -> Result<()> {
    let len = P::NAME.len();
    if len == 0 || len > MAX_NAME_LEN {
        return Err(Error::InvalidName {
            name: P::NAME,
            len,
            max: MAX_NAME_LEN,
        });
    }
    Ok(())
}

/// A request/response protocol carried by the frames of this crate.
///
/// The framing, the [`Hello`] check and the request/response loops of
/// `vsock-transport` are generic over this trait; each service defines its
/// own (svmc's is `svmc::ServiceVm` in the crate `svmc-proto`):
///
/// ```
/// use serde::{Deserialize, Serialize};
/// #[derive(Serialize, Deserialize)]
/// enum Ping { Ping(u32) }
/// #[derive(Serialize, Deserialize)]
/// enum Pong { Pong(u32) }
/// struct PingService;
/// impl svmc_comm::Protocol for PingService {
///     const NAME: &'static str = "example.ping";
///     const VERSION: u32 = 1;
///     type Request = Ping;
///     type Response = Pong;
/// }
/// let hello = svmc_comm::Hello::new::<PingService>(1024);
/// assert!(hello.check::<PingService>().is_ok());
/// ```
pub trait Protocol {
    /// A short unique name, sent in [`Hello`] so that two services on the same
    /// port are never confused: 1 to [`MAX_NAME_LEN`] (64) bytes, checked
    /// by [`check_name`] before a connection sends anything.
    const NAME: &'static str;
    /// The version. Peers with different versions refuse each other.
    const VERSION: u32;
    /// Client-to-server messages.
    type Request: Serialize + DeserializeOwned;
    /// Server-to-client messages.
    type Response: Serialize + DeserializeOwned;

    /// What a server answers instead of a response whose `RESPONSE` body
    /// would be `len` bytes, over the client's `max_body` of `max`. `None`
    /// (the default): the protocol has no such answer, and the server sends
    /// a non-fatal `ERROR` code 2 with the request's id.
    fn response_too_large(len: u64, max: u32) -> Option<Self::Response> {
        let _ = (len, max);
        None
    }

    /// What a server answers to a request it had no memory for (`requested`
    /// bytes), after reading and dropping it. `None` (the default): a
    /// non-fatal `ERROR` code 2 with the request's id.
    fn out_of_memory(requested: u64) -> Option<Self::Response> {
        let _ = requested;
        None
    }

    /// Appends the `REQUEST` frame of `request` with id `id` to `out`,
    /// except for a tail of it that is returned borrowed from `request`:
    /// the frame is the bytes appended to `out`, then the tail (a sender
    /// may write both with one vectored write, without copying the tail;
    /// `rpc::Client` copies the tail after the head and sends the frame
    /// whole, which measured faster against the firmware).
    ///
    /// The default is [`envelope::encode_request_into`] and an empty tail.
    /// A protocol may write its own messages directly (as
    /// svmc's `ServiceVm` does for a `Reverse`): the bytes must
    /// be the default's, and so must the errors.
    fn encode_request<'a>(
        id: RequestId,
        request: &'a Self::Request,
        max: u32,
        out: &mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        envelope::encode_request_into(id, request, max, out)?;
        Ok(&[])
    }

    /// [`Protocol::encode_request`] for a `RESPONSE`; the default is
    /// [`envelope::encode_response_into`] and an empty tail.
    fn encode_response<'a>(
        id: RequestId,
        response: &'a Self::Response,
        max: u32,
        out: &mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        envelope::encode_response_into(id, response, max, out)?;
        Ok(&[])
    }

    /// Decodes a `REQUEST` body. The default is [`envelope::decode`]; an
    /// override must return what it returns, for every input.
    fn decode_request(body: &[u8]) -> (Option<RequestId>, Result<Self::Request>) {
        envelope::decode(body)
    }

    /// Decodes a `RESPONSE` body. The default is [`envelope::decode`]; an
    /// override must return what it returns, for every input.
    fn decode_response(body: &[u8]) -> (Option<RequestId>, Result<Self::Response>) {
        envelope::decode(body)
    }
}

/// The body of the `HELLO` frame each side sends first on a connection.
///
/// Its encoding never changes between versions, so any version can read any
/// other's `HELLO` and report a mismatch instead of misparsing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`Protocol::NAME`] of the sender.
    pub protocol: String,
    /// [`Protocol::VERSION`] of the sender.
    pub version: u32,
    /// The largest `REQUEST`/`RESPONSE` body the sender accepts.
    pub max_body: u32,
    /// The extensions of version 2 the sender supports (`WIRE.md` §10,
    /// [`crate::ext`]); omitted on the wire when empty, which a plain
    /// version 2 peer sends and reads as ever.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ext: Vec<String>,
}

impl Hello {
    /// Our `HELLO` for protocol `P`, accepting bodies up to `max_body` bytes.
    pub fn new<P: Protocol>(max_body: u32) -> Self {
        Self {
            protocol: P::NAME.into(),
            version: P::VERSION,
            max_body,
            ext: Vec::new(),
        }
    }

    /// The same `HELLO`, listing the extensions `ext`.
    pub fn with_ext(mut self, ext: crate::ext::Extensions) -> Self {
        self.ext = ext.names();
        self
    }

    /// The extensions this `HELLO` lists that this crate knows.
    pub fn extensions(&self) -> crate::ext::Extensions {
        crate::ext::Extensions::from_names(&self.ext)
    }

    /// Decodes a peer's `HELLO` body and checks it against protocol `P`,
    /// reading `protocol` first, then `version`, and only then the other
    /// fields (`WIRE.md` R-HELLO-4): a peer with another name or version is
    /// reported as [`Error::ProtocolMismatch`] or [`Error::VersionMismatch`]
    /// whatever its other fields hold, never as [`Error::Malformed`].
    ///
    /// ```
    /// struct Svmc;
    /// impl svmc_comm::Protocol for Svmc {
    ///     const NAME: &'static str = "svmc";
    ///     const VERSION: u32 = 2;
    ///     type Request = ();
    ///     type Response = ();
    /// }
    /// // {"protocol": "svmc", "version": 1, "max_body": "lots"}
    /// let body = b"\xa3\x68protocol\x64svmc\x67version\x01\x68max_body\x64lots";
    /// assert_eq!(
    ///     svmc_comm::Hello::decode_checked::<Svmc>(body),
    ///     Err(svmc_comm::Error::VersionMismatch { ours: 2, theirs: 1 })
    /// );
    /// ```
    pub fn decode_checked<P: Protocol>(body: &[u8]) -> Result<Self> {
        #[derive(Deserialize)]
        struct Name<'a> {
            #[serde(borrow)]
            protocol: alloc::borrow::Cow<'a, str>,
        }
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let name: Name<'_> = crate::frame::decode_body_borrowed(body)?;
        if name.protocol != P::NAME {
            return Err(Error::ProtocolMismatch {
                ours: P::NAME,
                theirs: name.protocol.into_owned(),
            });
        }
        let version: Version = crate::frame::decode_body(body)?;
        if version.version != P::VERSION {
            return Err(Error::VersionMismatch {
                ours: P::VERSION,
                theirs: version.version,
            });
        }
        crate::frame::decode_body(body)
    }

    /// Checks a peer's `HELLO` against protocol `P`.
    pub fn check<P: Protocol>(&self) -> Result<()> {
        if self.protocol != P::NAME {
            return Err(Error::ProtocolMismatch {
                ours: P::NAME,
                theirs: self.protocol.clone(),
            });
        }
        if self.version != P::VERSION {
            return Err(Error::VersionMismatch {
                ours: P::VERSION,
                theirs: self.version,
            });
        }
        Ok(())
    }
}

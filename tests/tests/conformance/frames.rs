//! §2 Frames: kinds, lengths, the end of the stream inside a frame.

use super::*;

pub(crate) fn r_frame_2_unknown_kind_is_fatal(p: &Peer) -> R {
    let mut c = p.hello()?;
    c.send_raw(0x09, &[0])?;
    c.expect_error(CODE_BAD_FRAME, true, None)
}

/// R-FRAME-3: the header alone is enough to refuse (the body is never
/// sent): a `REQUEST` over the server's `max_body`, and before the
/// handshake a `HELLO` over its 256 bytes.
pub(crate) fn r_frame_3_too_large_refused_from_the_header(p: &Peer) -> R {
    let (mut c, max) = p.hello_with(DEFAULT_MAX_BODY)?;
    let mut h = vec![REQ];
    h.extend_from_slice(&(max + 1).to_be_bytes());
    c.send(&h)?;
    c.expect_error(CODE_TOO_LARGE, true, None)?;
    let mut c = p.connect()?;
    let mut h = vec![FrameKind::Hello as u8];
    h.extend_from_slice(&(frame::HELLO_MAX_BODY + 1).to_be_bytes());
    c.send(&h)?;
    c.expect_hello()?;
    c.expect_error(CODE_TOO_LARGE, true, None)
        .map_err(|e| format!("a HELLO of {} bytes: {e}", frame::HELLO_MAX_BODY + 1))
}

pub(crate) fn r_frame_5_goodbye_with_a_body_is_fatal(p: &Peer) -> R {
    let mut c = p.hello()?;
    c.send_raw(FrameKind::Goodbye as u8, &[0])?;
    c.expect_error(CODE_TOO_LARGE, true, None)
}

pub(crate) fn r_frame_6_empty_body_is_not_fatal(p: &Peer) -> R {
    let mut c = p.hello()?;
    c.send_raw(REQ, &[])?;
    c.expect_error(CODE_BAD, false, Some(None))?;
    c.expect_usable(1)?;
    c.goodbye()
}

pub(crate) fn r_frame_7_trailing_bytes_are_not_fatal(p: &Peer) -> R {
    let mut c = p.hello()?;
    c.send_raw(REQ, b"\x82\x05\x64info\x00")?;
    c.expect_error(CODE_BAD, false, Some(Some(5)))?;
    c.expect_usable(6)?;
    c.goodbye()
}

/// R-FRAME-8: a stream ending inside a frame: the server closes (an
/// `ERROR` code 1 first is allowed).
pub(crate) fn r_frame_8_truncated_frame_closes(p: &Peer) -> R {
    let mut c = p.hello()?;
    c.send(&[REQ, 0, 0, 0, 10, 0x82, 0x01, 0xa1])?;
    c.shutdown(Shutdown::Write)?;
    match c.frame() {
        Ok(f) if f.kind == FrameKind::Error as u8 => {
            let pe: ProtocolError = frame::decode_body(&f.body).map_err(|e| e.to_string())?;
            ensure(pe.code == CODE_BAD_FRAME && pe.fatal, || format!("{pe:?}"))?;
            c.expect_close()
        }
        Ok(f) => Err(format!(
            "frame kind {:#04x} after a truncated frame",
            f.kind
        )),
        Err(e) if e.contains("closed") => Ok(()),
        Err(e) => Err(e),
    }
}

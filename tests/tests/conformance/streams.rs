//! §10 request and answer streams.

use super::*;

/// R-STREAM-1: `sha256` of streams: a known vector in three chunks (one
/// empty), the empty stream, 1 000 000 bytes in 16 chunks of up to
/// 64 KiB; `sha256` without a stream is the digest of no data.
pub(crate) fn r_stream_1_sha256_of_a_stream(p: &Peer) -> R {
    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let mut c = p.hello_ext()?;
    let vector: [&[u8]; 3] = [
        b"abcdbcdecdefdefg",
        b"",
        b"efghfghighijhijkijkljklmklmnlmnomnopnopq",
    ];
    c.send(&stream_frames(p, 1, &sha256(), &vector))?;
    let want = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1";
    c.expect_answer(1, &Answer::Sha256(hex_digest(want)))?;
    c.send(&stream_frames(p, 2, &sha256(), &[]))?;
    c.expect_answer(2, &Answer::Sha256(hex_digest(EMPTY)))
        .map_err(|e| format!("the empty stream: {e}"))?;
    let million = vec![b'a'; 1_000_000];
    let pieces: Vec<&[u8]> = million.chunks(ext::CHUNK_MAX_DATA).collect();
    c.send(&stream_frames(p, 3, &sha256(), &pieces))?;
    let want = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
    c.expect_answer(3, &Answer::Sha256(hex_digest(want)))
        .map_err(|e| format!("a million 'a': {e}"))?;
    c.send(&meta_request(p, 4, None, &sha256()))?;
    c.expect_answer(4, &Answer::Sha256(hex_digest(EMPTY)))
        .map_err(|e| format!("sha256 without a stream: {e}"))?;
    c.expect_usable(5)?;
    c.goodbye()
}

/// R-STREAM-2: a `CHUNK` when no stream is open, or of another id than
/// the open stream's, is a fatal code 5.
pub(crate) fn r_stream_2_a_chunk_outside_a_stream_is_fatal(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    c.expect_usable(1)?;
    c.send(&chunk_frame(p, 5, Some(b"x")))?;
    c.expect_error(CODE_UNEXPECTED, true, None)
        .map_err(|e| format!("no stream open: {e}"))?;
    // A stream refused at once (rev takes none) is open until its end.
    let mut c = p.hello_ext()?;
    c.send(&meta_request(p, 1, Some(&stream_meta()), &rev(b"x")))?;
    c.expect_error(CODE_BAD, false, Some(Some(1)))?;
    c.send(&chunk_frame(p, 2, Some(b"x")))?;
    c.expect_error(CODE_UNEXPECTED, true, None)
        .map_err(|e| format!("a chunk of request 2 in the stream of 1: {e}"))
}

/// R-STREAM-2: a `REQUEST` while a stream is open is a fatal code 5.
pub(crate) fn r_stream_2_a_request_inside_a_stream_is_fatal(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let mut w = meta_request(p, 1, Some(&stream_meta()), &rev(b"x"));
    w.extend(chunk_frame(p, 1, Some(b"abc")));
    c.send(&w)?;
    c.expect_error(CODE_BAD, false, Some(Some(1)))?;
    c.send(&meta_request(p, 2, None, &info()))?;
    c.expect_error(CODE_UNEXPECTED, true, None)
}

/// R-STREAM-4, R-STREAM-7: requests that take no stream (`rev`, `info`)
/// sent as one: code 3 with the id, the chunks dropped, the connection
/// goes on; a `CHUNK` body that is not a `chunk-body` is a non-fatal code
/// 3 without an id, and the stream stays open.
pub(crate) fn r_stream_4_a_request_that_takes_no_stream(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let mut w = meta_request(p, 1, Some(&stream_meta()), &rev(b"abc"));
    w.extend(chunk_frame(p, 1, Some(b"xyz")));
    w.extend(raw_frame(CHUNK, b"\x01"));
    w.extend(chunk_frame(p, 1, Some(b"more")));
    w.extend(chunk_frame(p, 1, None));
    c.send(&w)?;
    c.expect_error(CODE_BAD, false, Some(Some(1)))?;
    c.expect_error(CODE_BAD, false, Some(None))
        .map_err(|e| format!("a CHUNK body that is not an array: {e}"))?;
    c.expect_usable(2)?;
    c.send(&stream_frames(p, 3, &info(), &[b"data"]))?;
    c.expect_error(CODE_BAD, false, Some(Some(3)))?;
    c.expect_usable(4)?;
    c.goodbye()
}

/// R-STREAM-3: a streamed request refused at its start (its deadline of
/// 0 passed, code 8; an unknown variant, code 4) is answered once and
/// its chunks are dropped: the connection goes on.
pub(crate) fn r_stream_3_refused_at_its_start_the_chunks_are_dropped(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let late = RequestMeta {
        deadline_ms: Some(0),
        stream: true,
        ..RequestMeta::default()
    };
    let mut w = meta_request(p, 1, Some(&late), &sha256());
    w.extend(chunk_frame(p, 1, Some(b"abc")));
    w.extend(chunk_frame(p, 1, None));
    c.send(&w)?;
    c.expect_error(CODE_DEADLINE, false, Some(Some(1)))?;
    c.expect_usable(2)
        .map_err(|e| format!("after the chunks of a stream past its deadline: {e}"))?;
    let mut unknown = Vec::new();
    cbor_text(&mut unknown, "sum");
    let mut w = raw_frame(REQ, &meta_body(3, Some(&stream_meta()), &unknown));
    w.extend(chunk_frame(p, 3, Some(b"abc")));
    w.extend(chunk_frame(p, 3, None));
    c.send(&w)?;
    c.expect_error(CODE_VARIANT, false, Some(Some(3)))?;
    c.expect_usable(4)
        .map_err(|e| format!("after the chunks of an unknown variant: {e}"))?;
    c.goodbye()
}

/// R-STREAM-5: a `CANCEL` of the open stream is answered code 9 at once,
/// before its end; the rest of its chunks are dropped.
pub(crate) fn r_stream_5_cancel_of_an_open_stream(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let mut w = meta_request(p, 1, Some(&stream_meta()), &sha256());
    w.extend(chunk_frame(p, 1, Some(b"abc")));
    w.extend(cancel_frame(p, 1));
    c.send(&w)?;
    c.expect_error(CODE_CANCELLED, false, Some(Some(1)))?;
    let mut w = chunk_frame(p, 1, Some(b"dropped"));
    w.extend(chunk_frame(p, 1, None));
    c.send(&w)?;
    c.expect_nothing()?;
    c.expect_usable(2)?;
    c.goodbye()
}

/// The CBOR of svmc's request `{"prng": {"seed": seed, "len": len}}`.
pub(crate) fn prng(seed: u64, len: u64) -> Vec<u8> {
    let mut b = vec![0xa1];
    cbor_text(&mut b, "prng");
    b.push(0xa2);
    cbor_text(&mut b, "seed");
    cbor_uint(&mut b, seed);
    cbor_text(&mut b, "len");
    cbor_uint(&mut b, len);
    b
}

/// The first `len` bytes of the xorshift64 sequence from `seed`, as §6
/// defines `prng`'s data.
pub(crate) fn xorshift(seed: u64, len: usize) -> Vec<u8> {
    let mut x = if seed == 0 { 1 } else { seed };
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub(crate) fn answer_stream_meta() -> RequestMeta {
    RequestMeta {
        stream_answer: true,
        ..RequestMeta::default()
    }
}

/// R-STREAM-8: `prng` with `stream_answer` is answered by `CHUNK`s of its
/// id holding the sequence, then `{"prng": n}`; without an answer stream
/// it is `unsupported`; the connection goes on.
pub(crate) fn r_stream_8_prng_answer_stream(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let len = 200_003;
    c.send(&meta_request(
        p,
        1,
        Some(&answer_stream_meta()),
        &prng(7, len),
    ))?;
    let (data, end) = c.answer_stream(1)?;
    ensure(data == xorshift(7, len as usize), || {
        format!("{} bytes of data, not the sequence of seed 7", data.len())
    })?;
    match end {
        Got::Response {
            id: 1,
            answer: Answer::Prng(n),
            ..
        } if n == len => {}
        other => return Err(format!("the end of the answer stream: {other:?}")),
    }
    c.send(&meta_request(p, 2, None, &prng(7, 10)))?;
    c.expect_answer(2, &Answer::Err(ServiceError::Unsupported))
        .map_err(|e| format!("prng without an answer stream: {e}"))?;
    c.expect_usable(3)?;
    c.goodbye()
}

/// R-STREAM-9: a `REQUEST` while an answer stream is sent is a fatal
/// code 5 (after whatever chunks came first).
pub(crate) fn r_stream_9_a_request_inside_an_answer_stream_is_fatal(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    c.send(&meta_request(
        p,
        1,
        Some(&answer_stream_meta()),
        &prng(1, 1 << 30),
    ))?;
    let f = c.frame()?;
    ensure(f.kind == CHUNK, || {
        format!("frame kind {:#04x} instead of a CHUNK", f.kind)
    })?;
    c.send(&meta_request(p, 2, None, &info()))?;
    loop {
        let f = c.frame()?;
        if f.kind == CHUNK {
            continue;
        }
        return match answer_of(f)? {
            Got::Error(pe) if pe.code == CODE_UNEXPECTED && pe.fatal => c.expect_close(),
            other => Err(format!("a REQUEST inside an answer stream: {other:?}")),
        };
    }
}

/// R-STREAM-10: a `CANCEL` of an answer stream stops it: a few more
/// chunks at most, then code 9 with the id; the connection goes on.
pub(crate) fn r_stream_10_cancel_of_an_answer_stream(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    c.send(&meta_request(
        p,
        1,
        Some(&answer_stream_meta()),
        &prng(1, 1 << 30),
    ))?;
    let f = c.frame()?;
    ensure(f.kind == CHUNK, || {
        format!("frame kind {:#04x} instead of a CHUNK", f.kind)
    })?;
    c.send(&cancel_frame(p, 1))?;
    let (data, end) = c.answer_stream(1)?;
    match end {
        Got::Error(pe) if pe.code == CODE_CANCELLED && !pe.fatal && pe.id == Some(RequestId(1)) => {
        }
        other => {
            return Err(format!(
                "after the CANCEL, {} bytes and {other:?}",
                data.len()
            ));
        }
    }
    c.expect_usable(2)?;
    c.goodbye()
}

//! §10 extensions: svmc's answers as these cases read them, the
//! extensions offered, and the request meta.

use super::*;

/// svmc's answers as the cases of §10 read them: `spin` and `sha256` are
/// written here from the specification (§6), so that these cases check a
/// peer whether or not the `svmc` crate of this build has them.
#[derive(Debug, PartialEq, serde::Deserialize)]
pub(crate) enum Answer {
    #[serde(rename = "rev")]
    Rev(#[serde(with = "serde_bytes")] Vec<u8>),
    #[serde(rename = "info")]
    Info(serde::de::IgnoredAny),
    #[serde(rename = "spin")]
    Spin(u32),
    #[serde(rename = "sha256")]
    Sha256(#[serde(with = "serde_bytes")] Vec<u8>),
    #[serde(rename = "prng")]
    Prng(u64),
    #[serde(rename = "err")]
    Err(ServiceError),
}

/// A response meta as read (R-META-4); `stats` as a map, as every key of
/// it is optional (R-META-5).
#[derive(Debug, Default, PartialEq, serde::Deserialize)]
pub(crate) struct AnswerMeta {
    queued_us: Option<u64>,
    handled_us: Option<u64>,
    stats: Option<std::collections::BTreeMap<String, u64>>,
}

/// One answer: a `RESPONSE` (with its meta, if it has one) or an `ERROR`.
#[derive(Debug)]
pub(crate) enum Got {
    Response {
        id: u32,
        meta: Option<AnswerMeta>,
        answer: Answer,
    },
    Error(ProtocolError),
}

/// What the cases of §10 read from a [`Raw`] connection: svmc's answers
/// with their meta, and answer streams.
pub(crate) trait Answers {
    /// The next frame, a `RESPONSE` or an `ERROR`, within `within`.
    fn answer_within(&mut self, within: Duration) -> Result<Got, String>;

    /// [`Answers::answer_within`] the answer time.
    fn answer(&mut self) -> Result<Got, String> {
        self.answer_within(ANSWER)
    }

    /// An answer stream of request `id` (R-STREAM-8): the data of its
    /// `CHUNK`s, and the answer that ends it.
    fn answer_stream(&mut self, id: u32) -> Result<(Vec<u8>, Got), String>;

    /// The next frame is the `RESPONSE` `[id, want]` or `[id, meta, want]`;
    /// returns its meta.
    fn expect_answer(&mut self, id: u32, want: &Answer) -> Result<Option<AnswerMeta>, String> {
        match self.answer()? {
            Got::Response {
                id: got,
                meta,
                answer,
            } if got == id && answer == *want => Ok(meta),
            other => Err(format!(
                "expected [{id}, {}], got {}",
                cut(format!("{want:?}")),
                cut(format!("{other:?}"))
            )),
        }
    }
}

impl Answers for Raw<'_> {
    fn answer_within(&mut self, within: Duration) -> Result<Got, String> {
        let f = self.frame_within(within)?;
        answer_of(f)
    }

    fn answer_stream(&mut self, id: u32) -> Result<(Vec<u8>, Got), String> {
        let mut data = Vec::new();
        loop {
            let f = self.frame()?;
            if f.kind != CHUNK {
                return Ok((data, answer_of(f)?));
            }
            match ext::decode_chunk(&f.body) {
                Ok((got, Some(d))) if got == RequestId(id) => data.extend_from_slice(&d),
                other => {
                    return Err(format!(
                        "in the answer stream of {id}, a CHUNK {}",
                        cut(format!("{other:?}"))
                    ));
                }
            }
        }
    }
}

/// A frame read as an answer: a `RESPONSE` or an `ERROR`.
pub(crate) fn answer_of(f: Frame) -> Result<Got, String> {
    if f.kind == FrameKind::Error as u8 {
        let pe = frame::decode_body(&f.body).map_err(|e| format!("ERROR body: {e}"))?;
        return Ok(Got::Error(pe));
    }
    ensure(f.kind == FrameKind::Response as u8, || {
        format!("frame kind {:#04x} instead of an answer", f.kind)
    })?;
    let mut body = f.body;
    let (start, meta) = ext::split_meta::<AnswerMeta>(&mut body)
        .map_err(|(_, e)| format!("the RESPONSE's meta: {e}"))?;
    let (id, answer) = envelope::decode::<Answer>(&body[start..]);
    let id = id.ok_or("a RESPONSE without an id")?.0;
    let answer = answer.map_err(|e| format!("RESPONSE {id}: {e}"))?;
    Ok(Got::Response { id, meta, answer })
}

/// The next frame is the answer `[id, {"spin": n}]` to a `spin` of `ms`
/// that ran to its end: `n` is what it measured, `ms` or a little more
/// (a server preempted at the end of its spin reports the time it took).
pub(crate) fn expect_spun(c: &mut Raw<'_>, id: u32, ms: u32) -> R {
    match c.answer()? {
        Got::Response {
            id: got,
            answer: Answer::Spin(n),
            ..
        } if got == id && (ms..ms + 100).contains(&n) => Ok(()),
        other => Err(format!(
            "expected [{id}, {{\"spin\": {ms}}}], got {}",
            cut(format!("{other:?}"))
        )),
    }
}

/// `s`, cut to 200 bytes (a payload in a message).
pub(crate) fn cut(s: String) -> String {
    match s.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s,
    }
}

/// The CBOR of svmc's request `{"spin": ms}`.
pub(crate) fn spin(ms: u32) -> Vec<u8> {
    let mut b = vec![0xa1];
    cbor_text(&mut b, "spin");
    cbor_uint(&mut b, ms.into());
    b
}

/// The CBOR of svmc's request `"sha256"`.
pub(crate) fn sha256() -> Vec<u8> {
    let mut b = Vec::new();
    cbor_text(&mut b, "sha256");
    b
}

pub(crate) fn info() -> Vec<u8> {
    let mut b = Vec::new();
    cbor_text(&mut b, "info");
    b
}

/// The CBOR of `{"rev": data}`.
pub(crate) fn rev(data: &[u8]) -> Vec<u8> {
    let mut b = vec![0xa1];
    cbor_text(&mut b, "rev");
    cbor_head(&mut b, 2, data.len() as u64);
    b.extend_from_slice(data);
    b
}

pub(crate) fn reversed(data: &[u8]) -> Answer {
    Answer::Rev(data.iter().rev().copied().collect())
}

/// The body `[id, meta, request]` (`[id, request]` without a meta).
pub(crate) fn meta_body(id: u32, meta: Option<&RequestMeta>, request: &[u8]) -> Vec<u8> {
    let mut body = vec![if meta.is_some() { 0x83 } else { 0x82 }];
    cbor_uint(&mut body, id.into());
    if let Some(m) = meta {
        frame::encode_item(m, &mut body).expect("encodes");
    }
    body.extend_from_slice(request);
    body
}

/// A well-formed `REQUEST` `[id, meta, request]` (captured).
pub(crate) fn meta_request(
    p: &Peer,
    id: u32,
    meta: Option<&RequestMeta>,
    request: &[u8],
) -> Vec<u8> {
    let body = meta_body(id, meta, request);
    p.capture(FrameKind::Request, &body, "sent REQUEST with meta".into());
    raw_frame(REQ, &body)
}

/// A `CANCEL` of request `id` (captured).
pub(crate) fn cancel_frame(p: &Peer, id: u32) -> Vec<u8> {
    let f =
        frame::encode(FrameKind::Cancel, &Cancel { id: RequestId(id) }, u32::MAX).expect("encodes");
    p.capture(FrameKind::Cancel, &f[HEADER_LEN..], "sent CANCEL".into());
    f
}

/// A `CHUNK` of request `id`: `data`, or the end of its stream (captured).
pub(crate) fn chunk_frame(p: &Peer, id: u32, data: Option<&[u8]>) -> Vec<u8> {
    let mut f = Vec::new();
    ext::encode_chunk_into(RequestId(id), data, &mut f).expect("encodes");
    p.capture(FrameKind::Chunk, &f[HEADER_LEN..], "sent CHUNK".into());
    f
}

pub(crate) fn stream_meta() -> RequestMeta {
    RequestMeta {
        stream: true,
        ..RequestMeta::default()
    }
}

/// A request stream `[id, {"stream": true}, request]`, its chunks and its
/// end, as one write.
pub(crate) fn stream_frames(p: &Peer, id: u32, request: &[u8], pieces: &[&[u8]]) -> Vec<u8> {
    let mut w = meta_request(p, id, Some(&stream_meta()), request);
    for d in pieces {
        w.extend(chunk_frame(p, id, Some(d)));
    }
    w.extend(chunk_frame(p, id, None));
    w
}

pub(crate) fn hex_digest(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// R-EXT-1, R-EXT-2: the server lists `meta`, `cancel` and `stream`
/// whatever the client lists; a client listing them, and a name nobody
/// knows, gets them on.
pub(crate) fn r_ext_2_the_server_offers_the_extensions(p: &Peer) -> R {
    for ours in [Extensions::NONE, Extensions::ALL] {
        p.hello_offering(DEFAULT_MAX_BODY, ours)
            .map_err(|e| format!("offering {ours:?}: {e}"))?
            .goodbye()?;
    }
    let mut hello = Hello::new::<ServiceVm>(DEFAULT_MAX_BODY).with_ext(Extensions::ALL);
    hello.ext.insert(0, "x-not-yet-invented".into());
    let mut c = p.connect()?;
    c.send_msg(FrameKind::Hello, &hello)?;
    c.expect_hello()?;
    let timing = RequestMeta {
        timing: true,
        ..RequestMeta::default()
    };
    c.send(&meta_request(p, 1, Some(&timing), &rev(b"ext")))?;
    let meta = c.expect_answer(1, &reversed(b"ext"))?;
    ensure(meta.is_some(), || "no response meta: meta is not on".into())?;
    c.goodbye()
}

/// R-EXT-1 (R-HELLO-7 step 6): an `ext` that is not an array of text
/// strings is a malformed `HELLO`, fatal code 3; in a `HELLO` of another
/// version it is not read (code 6, R-HELLO-4).
pub(crate) fn r_ext_1_a_bad_ext_is_a_bad_hello(p: &Peer) -> R {
    let with_ext = |version: u32, ext: &[u8]| {
        let mut b = hello_body("svmc", version, DEFAULT_MAX_BODY);
        b[0] = 0xa4;
        cbor_text(&mut b, "ext");
        b.extend_from_slice(ext);
        b
    };
    let bad: &[(&str, &[u8])] = &[
        ("a number", b"\x05"),
        ("a text string", b"\x64meta"),
        ("an array with a number", b"\x82\x64meta\x01"),
    ];
    for (what, ext) in bad {
        let mut c = p.connect()?;
        c.send_raw(FrameKind::Hello as u8, &with_ext(ServiceVm::VERSION, ext))?;
        c.expect_hello()?;
        c.expect_error(CODE_BAD, true, None)
            .map_err(|e| format!("ext {what}: {e}"))?;
    }
    let mut c = p.connect()?;
    c.send_raw(FrameKind::Hello as u8, &with_ext(1, b"\x05"))?;
    c.expect_hello()?;
    c.expect_error(CODE_VERSION, true, None)
}

/// R-EXT-3, R-CANCEL-4, R-STREAM-6: to a client that offers no
/// extension (or not `meta`, which `stream` needs) the server is plain
/// version 2: a meta body is a malformed three-item array, `CANCEL` and
/// `CHUNK` are unknown kinds; before the handshake too.
pub(crate) fn r_ext_3_a_client_without_extensions_gets_plain_v2(p: &Peer) -> R {
    let all = RequestMeta {
        deadline_ms: Some(0),
        timing: true,
        ..RequestMeta::default()
    };
    let mut c = p.hello()?;
    c.send_raw(REQ, &meta_body(3, Some(&all), &info()))?;
    c.expect_error(CODE_BAD, false, Some(Some(3)))?;
    c.send(&meta_request(p, 4, None, &rev(b"plain")))?;
    let meta = c.expect_answer(4, &reversed(b"plain"))?;
    ensure(meta.is_none(), || format!("a response meta: {meta:?}"))?;
    c.send(&cancel_frame(p, 4))?;
    c.expect_error(CODE_BAD_FRAME, true, None)
        .map_err(|e| format!("CANCEL without the extension: {e}"))?;

    let no_meta = Extensions {
        meta: false,
        ..Extensions::ALL
    };
    let mut c = p.hello_offering(DEFAULT_MAX_BODY, no_meta)?;
    c.send_raw(REQ, &meta_body(5, Some(&all), &info()))?;
    c.expect_error(CODE_BAD, false, Some(Some(5)))
        .map_err(|e| format!("a meta body without meta: {e}"))?;
    c.send(&chunk_frame(p, 6, Some(b"x")))?;
    c.expect_error(CODE_BAD_FRAME, true, None)
        .map_err(|e| format!("CHUNK with stream but not meta: {e}"))?;

    let mut c = p.connect()?;
    c.send(&cancel_frame(p, 1))?;
    c.expect_hello()?;
    c.expect_error(CODE_BAD_FRAME, true, None)
        .map_err(|e| format!("CANCEL before the handshake: {e}"))
}

/// R-EXT-3, R-FRAME-2, R-ERR-8: without its extension, kind 0x06 or 0x07
/// is an unknown kind (fatal code 1) whatever its header's length, as it
/// is for a plain version 2 server: not `Empty` for length 0, not too
/// large for a length over the extension's limit.
pub(crate) fn r_ext_3_unknown_kinds_whatever_their_length(p: &Peer) -> R {
    for header in [
        [CANCEL, 0, 0, 0, 0],
        [CANCEL, 0, 0, 1, 0],
        [CHUNK, 0, 0, 0, 0],
        [CHUNK, 0, 2, 0, 0],
    ] {
        let mut c = p.hello()?;
        c.send(&header)?;
        c.expect_error(CODE_BAD_FRAME, true, None)
            .map_err(|e| format!("header {header:02x?} without the extension: {e}"))?;
    }
    Ok(())
}

/// R-META-1, R-META-2: a meta with an unknown key (and `"stream": false`)
/// is read and the request answered, without a response meta (none was
/// asked); an empty meta asks nothing; `[id, request]` works as ever.
pub(crate) fn r_meta_1_meta_is_read_and_unknown_keys_ignored(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let mut meta = vec![0xa3];
    cbor_text(&mut meta, "deadline_ms");
    cbor_uint(&mut meta, 60_000);
    cbor_text(&mut meta, "x-not-yet-invented");
    meta.extend_from_slice(b"\x82\x01\xa1\x61a\x02");
    cbor_text(&mut meta, "stream");
    meta.push(0xf4);
    let mut body = vec![0x83, 0x01];
    body.extend(meta);
    body.extend(rev(b"meta"));
    c.send_raw(REQ, &body)?;
    let m = c.expect_answer(1, &reversed(b"meta"))?;
    ensure(m.is_none(), || {
        format!("a response meta nobody asked for: {m:?}")
    })?;
    let mut body = vec![0x83, 0x02, 0xa0];
    body.extend(info());
    c.send_raw(REQ, &body)?;
    let m = c.expect_answer(2, &Answer::Info(serde::de::IgnoredAny))?;
    ensure(m.is_none(), || {
        format!("a response meta nobody asked for: {m:?}")
    })?;
    c.expect_usable(3)?;
    c.goodbye()
}

/// R-META-2: a meta that is not a well-formed `request-meta` is a
/// non-fatal code 3 with the request's id; it is read before the request
/// (code 3, not 4, for `[5, 5, "sum"]`).
pub(crate) fn r_meta_2_a_bad_meta_is_code_3_with_the_id(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let cases: &[(&[u8], u32)] = &[
        (b"\x83\x01\x05\x64info", 1),                     // not a map
        (b"\x83\x02\xa1\x6bdeadline_ms\x61x\x64info", 2), // a text deadline
        (
            b"\x83\x03\xa1\x6bdeadline_ms\x1b\x00\x00\x00\x01\x00\x00\x00\x00\x64info",
            3,
        ), // a deadline over u32
        (b"\x83\x04\xa1\x66timing\x01\x64info", 4),       // a number for a bool
        (b"\x83\x05\x05\x63sum", 5),                      // the meta comes first
        (b"\x83\x06\xa2\x66timing\xf5\x66timing\xf5\x64info", 6), // a repeated key
    ];
    for (i, (body, id)) in cases.iter().enumerate() {
        c.send_raw(REQ, body)?;
        c.expect_error(CODE_BAD, false, Some(Some(*id)))
            .map_err(|e| format!("body {body:02x?}: {e}"))?;
        c.expect_usable(100 + i as u32)?;
    }
    c.goodbye()
}

/// R-META-3, R-ERR-2: `deadline_ms` 0 has always passed: code 8 with the
/// id, not fatal, at once (a `spin` of 3 s is not carried out), whatever
/// the request holds; `expired` counts them (R-META-5).
pub(crate) fn r_meta_3_deadline_0_is_code_8_and_not_carried_out(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let zero = RequestMeta {
        deadline_ms: Some(0),
        ..RequestMeta::default()
    };
    let t = Instant::now();
    c.send(&meta_request(p, 1, Some(&zero), &spin(3000)))?;
    c.expect_error(CODE_DEADLINE, false, Some(Some(1)))?;
    ensure(t.elapsed() < PROMPT, || {
        format!("code 8 after {:?}: was it carried out?", t.elapsed())
    })?;
    let mut unknown = Vec::new();
    cbor_text(&mut unknown, "sum");
    c.send_raw(REQ, &meta_body(2, Some(&zero), &unknown))?;
    c.expect_error(CODE_DEADLINE, false, Some(Some(2)))
        .map_err(|e| format!("an unknown variant past its deadline: {e}"))?;
    let stats = RequestMeta {
        stats: true,
        ..RequestMeta::default()
    };
    c.send(&meta_request(p, 3, Some(&stats), &info()))?;
    let m = c.expect_answer(3, &Answer::Info(serde::de::IgnoredAny))?;
    let s = m
        .and_then(|m| m.stats)
        .ok_or("no stats in the answer's meta")?;
    ensure(s.get("expired").is_none_or(|n| *n == 2), || {
        format!("stats after two expired requests: {s:?}")
    })?;
    c.goodbye()
}

/// R-META-3: the deadline counts from when the server read the request,
/// not from when it got round to it: a request written behind a `spin`
/// of 800 ms with a deadline of 200 ms is answered code 8; one with a
/// deadline it meets is carried out.
pub(crate) fn r_meta_3_a_deadline_passed_behind_a_long_request(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let within = |ms| RequestMeta {
        deadline_ms: Some(ms),
        ..RequestMeta::default()
    };
    let mut w = meta_request(p, 1, None, &spin(800));
    w.extend(meta_request(p, 2, Some(&within(200)), &rev(b"late")));
    w.extend(meta_request(p, 3, Some(&within(60_000)), &rev(b"in time")));
    c.send(&w)?;
    expect_spun(&mut c, 1, 800)?;
    c.expect_error(CODE_DEADLINE, false, Some(Some(2)))?;
    c.expect_answer(3, &reversed(b"in time"))?;
    c.goodbye()
}

/// R-META-4, R-META-5: `timing`, `stats` and a `traceparent` get a
/// response meta (with the statistics only for `stats`); a deadline
/// alone, or no meta, gets none.
pub(crate) fn r_meta_4_timing_and_stats_only_when_asked(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let timed = |m: &Option<AnswerMeta>| {
        m.as_ref()
            .is_some_and(|m| m.queued_us.is_some() && m.handled_us.is_some())
    };
    let timing = RequestMeta {
        timing: true,
        ..RequestMeta::default()
    };
    c.send(&meta_request(p, 1, Some(&timing), &rev(b"timing")))?;
    let m = c.expect_answer(1, &reversed(b"timing"))?;
    ensure(timed(&m) && m.as_ref().unwrap().stats.is_none(), || {
        format!("timing: {m:?}")
    })?;

    let stats = RequestMeta {
        stats: true,
        ..RequestMeta::default()
    };
    c.send(&meta_request(p, 2, Some(&stats), &info()))?;
    let m = c.expect_answer(2, &Answer::Info(serde::de::IgnoredAny))?;
    let s = m.as_ref().and_then(|m| m.stats.as_ref());
    ensure(
        timed(&m) && s.is_some_and(|s| s.get("requests").is_none_or(|n| *n == 2)),
        || format!("stats, the connection's second request: {m:?}"),
    )?;

    let traced = RequestMeta {
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        ..RequestMeta::default()
    };
    c.send(&meta_request(p, 3, Some(&traced), &rev(b"traced")))?;
    let m = c.expect_answer(3, &reversed(b"traced"))?;
    ensure(timed(&m), || format!("traceparent: {m:?}"))?;

    let deadline = RequestMeta {
        deadline_ms: Some(60_000),
        ..RequestMeta::default()
    };
    c.send(&meta_request(p, 4, Some(&deadline), &rev(b"deadline")))?;
    let m = c.expect_answer(4, &reversed(b"deadline"))?;
    ensure(m.is_none(), || format!("a deadline alone: {m:?}"))?;
    c.send(&meta_request(p, 5, None, &rev(b"none")))?;
    let m = c.expect_answer(5, &reversed(b"none"))?;
    ensure(m.is_none(), || format!("no meta: {m:?}"))?;
    c.goodbye()
}

/// R-META-4: an answer that fits the client's `max_body` without its
/// meta is sent without it, never refused as too large.
pub(crate) fn r_meta_4_meta_never_makes_an_answer_too_large(p: &Peer) -> R {
    let payload = pattern(100);
    let plain = envelope::body_len(RequestId(1), &Response::Reverse(payload.clone()))
        .map_err(|e| e.to_string())? as u32;
    let mut c = p.hello_offering(plain, Extensions::ALL)?;
    let timing = RequestMeta {
        timing: true,
        ..RequestMeta::default()
    };
    c.send(&meta_request(p, 1, Some(&timing), &rev(&payload)))?;
    c.expect_answer(1, &reversed(&payload))
        .map_err(|e| format!("max_body {plain}, the answer's body without meta: {e}"))?;
    c.goodbye()
}

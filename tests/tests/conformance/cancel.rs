//! §10 `CANCEL`.

use super::*;

/// R-CANCEL-1, R-CANCEL-3, R-CANCEL-5: a `CANCEL` of an answered request
/// or of an id never sent gets no answer and the connection goes on (a
/// later request with that id is carried out); a bad `CANCEL` body is a
/// non-fatal code 3 without an id, an empty one too (R-FRAME-6); one over
/// 64 bytes is fatal code 2.
pub(crate) fn r_cancel_3_cancels_of_answered_ids_are_ignored(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    c.expect_usable(1)?;
    let mut w = cancel_frame(p, 1);
    w.extend(cancel_frame(p, 77));
    c.send(&w)?;
    c.expect_nothing()?;
    c.expect_usable(77)?;
    c.send_raw(CANCEL, b"\xa1\x62id\x61x")?;
    c.expect_error(CODE_BAD, false, Some(None))
        .map_err(|e| format!("a CANCEL with a text id: {e}"))?;
    c.send_raw(CANCEL, &[])?;
    c.expect_error(CODE_BAD, false, Some(None))
        .map_err(|e| format!("an empty CANCEL: {e}"))?;
    c.expect_usable(2)?;
    c.send(&[CANCEL, 0, 0, 0, 65])?;
    c.expect_error(CODE_TOO_LARGE, true, None)
}

/// R-CANCEL-2, R-ERR-2: a `CANCEL` of a running `spin` of 5 s gets code
/// 9 with its id at once, not fatal; the connection goes on.
pub(crate) fn r_cancel_2_cancel_stops_a_running_spin(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    c.send(&meta_request(p, 1, None, &spin(5000)))?;
    thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    c.send(&cancel_frame(p, 1))?;
    c.expect_error(CODE_CANCELLED, false, Some(Some(1)))?;
    ensure(t.elapsed() < PROMPT, || {
        format!("code 9 came {:?} after the CANCEL", t.elapsed())
    })?;
    c.expect_usable(2)?;
    c.goodbye()
}

/// R-CANCEL-2: a `CANCEL` written right behind its request (one write)
/// is read before the request starts or while it runs: code 9 at once,
/// not the `spin`'s answer 3 s later.
pub(crate) fn r_cancel_2_cancel_right_behind_its_request(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let mut w = meta_request(p, 1, None, &spin(3000));
    w.extend(cancel_frame(p, 1));
    let t = Instant::now();
    c.send(&w)?;
    c.expect_error(CODE_CANCELLED, false, Some(Some(1)))?;
    ensure(t.elapsed() < PROMPT, || {
        format!("code 9 came after {:?}", t.elapsed())
    })?;
    c.expect_usable(2)?;
    c.goodbye()
}

/// R-CANCEL-2, R-ID-3: a request pipelined behind a `spin` and cancelled
/// before it started gets exactly one answer: code 9 (or its response,
/// had the server started it first); nothing more comes.
pub(crate) fn r_cancel_2_a_pipelined_request_cancelled_before_it_starts(p: &Peer) -> R {
    let mut c = p.hello_ext()?;
    let mut w = meta_request(p, 1, None, &spin(500));
    w.extend(meta_request(p, 2, None, &rev(b"queued")));
    w.extend(cancel_frame(p, 2));
    c.send(&w)?;
    expect_spun(&mut c, 1, 500)?;
    match c.answer()? {
        Got::Error(pe) if pe.code == CODE_CANCELLED && !pe.fatal && pe.id == Some(RequestId(2)) => {
        }
        Got::Response { id: 2, answer, .. } if answer == reversed(b"queued") => {
            println!("    (the server started request 2 before it read the CANCEL)");
        }
        other => return Err(format!("the answer to the cancelled request 2: {other:?}")),
    }
    c.expect_nothing()?;
    c.expect_usable(3)?;
    c.goodbye()
}

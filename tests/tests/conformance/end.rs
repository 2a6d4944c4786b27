//! §3.5 the end: `GOODBYE`, the close, the power-off.

use super::*;

pub(crate) fn r_end_1_goodbye_closes(p: &Peer) -> R {
    let mut c = p.hello()?;
    c.expect_usable(1)?;
    c.goodbye()
}

/// R-END-2: requests followed at once by `GOODBYE` are all answered.
pub(crate) fn r_end_2_answers_after_goodbye(p: &Peer) -> R {
    let mut c = p.hello()?;
    let mut batch = Vec::new();
    for id in 1..=3 {
        batch.extend(request_frame(
            p,
            id,
            &Request::Reverse(pattern(id as usize * 10)),
        ));
    }
    batch.extend(frame::goodbye());
    c.send(&batch)?;
    for id in 1..=3 {
        expect_reversed(c.expect_response(id)?, &pattern(id as usize * 10))?;
    }
    c.expect_close()
}

/// R-END-2: after a shutdown of our sending side without `GOODBYE` the
/// server closes; what it sends before (it MAY answer) are the answers
/// due, in order.
pub(crate) fn r_end_2_closes_after_shutdown(p: &Peer) -> R {
    let mut c = p.hello()?;
    let mut batch = request_frame(p, 1, &Request::Reverse(b"one".to_vec()));
    batch.extend(request_frame(p, 2, &Request::Reverse(b"two".to_vec())));
    c.send(&batch)?;
    c.shutdown(Shutdown::Write)?;
    let mut answered = 0;
    for (id, sent) in [(1, &b"one"[..]), (2, &b"two"[..])] {
        match c.frame() {
            Ok(f) => {
                ensure(f.kind == FrameKind::Response as u8, || {
                    format!("frame kind {:#04x} after the shutdown", f.kind)
                })?;
                let (got, r) = envelope::decode::<Response>(&f.body);
                ensure(got == Some(RequestId(id)), || {
                    format!("id {got:?}, expected {id}")
                })?;
                expect_reversed(r.map_err(|e| e.to_string())?, sent)?;
                answered += 1;
            }
            Err(e) if e.contains("closed") => break,
            Err(e) => return Err(e),
        }
    }
    if answered == 2 {
        c.expect_close()?;
    }
    println!("    {answered} of 2 answers before the close");
    Ok(())
}

/// R-END-3: `PowerOff` is answered with its id, the server closes, and a
/// launched VM exits with status 0.
pub(crate) fn r_end_3_power_off(p: &Peer) -> R {
    let mut c = p.hello()?;
    c.send_request(77, &Request::PowerOff)?;
    let r = c.expect_response(77)?;
    ensure(r == Response::PowerOff, || format!("{r:?}"))?;
    c.expect_close()?;
    let mut guard = p.session.lock().unwrap();
    if let Some(s) = guard.as_mut() {
        let vm = s.vm().ok_or("no VM")?;
        let status = vm
            .wait_exit(Duration::from_secs(20))
            .map_err(|e| format!("waiting for the power-off: {e}"))?;
        ensure(status.code() == Some(0), || {
            format!("QEMU exit status {status}")
        })?;
    }
    Ok(())
}

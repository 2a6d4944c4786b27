//! §4 Concurrency and §4.1 flow control: connections served side by side, the
//! connection limit, and a server that keeps reading while answers are due.

use super::*;

/// R-CONN-2, R-CONN-3: the boot connection is served (the guest is its
/// server) and counts as one connection: with it open, a host-initiated
/// connection gets its `HELLO` at once and is served, and the boot
/// connection still is afterwards.
pub(crate) fn r_conn_3_boot_connection_is_served_alongside(p: &Peer) -> R {
    ensure(p.boot_open.load(Ordering::SeqCst), || {
        "the boot connection is already closed (run this case first)".into()
    })?;
    let mut c = p.connect_keeping_boot()?;
    c.send_msg(FrameKind::Hello, &Hello::new::<ServiceVm>(DEFAULT_MAX_BODY))?;
    c.expect_hello_within(PROMPT)
        .map_err(|e| format!("with the boot connection open: {e}"))?;
    c.send_request(1, &Request::Reverse(b"beside boot".to_vec()))?;
    expect_reversed(c.expect_response_within(1, PROMPT)?, b"beside boot")?;
    let mut guard = p.session.lock().unwrap();
    let s = guard.as_mut().ok_or("no session")?;
    let info = s
        .info()
        .map_err(|e| format!("the boot connection after another was served: {e}"))?;
    ensure(info.protocol_version == ServiceVm::VERSION, || {
        format!("{info:?}")
    })?;
    drop(guard);
    c.goodbye()
}

/// How long a server at its limit may hold a new connection before it
/// answers `HELLO` or `busy` (R-CONN-5, R-CONN-7).
pub(crate) const HOLD: Duration = Duration::from_secs(1);

/// A connection that got its `HELLO` within [`HOLD`] and [`PROMPT`], with
/// no wait and no retry: the connections this case closed, however it
/// closed them, no longer count (R-CONN-7).
pub(crate) fn hello_now<'a>(p: &'a Peer, what: &str) -> Result<Raw<'a>, String> {
    let mut c = p.connect()?;
    c.send_msg(FrameKind::Hello, &Hello::new::<ServiceVm>(DEFAULT_MAX_BODY))?;
    c.expect_hello_within(HOLD + PROMPT)
        .map_err(|e| format!("{what}: {e}"))?;
    Ok(c)
}

/// How long a slot may stay taken by a connection an earlier case closed
/// when the server never learns of that close (WIRE.md R-CONN-7's note:
/// vhost-device-vsock 0.3.0 can lose track of a host socket and then
/// reports nothing): until the server displaces it as idle (R-CONN-6, the
/// firmware's 5 s idle timeout), plus a hold and an answer.
pub(crate) const STALE_SLOT: Duration = Duration::from_secs(5)
    .saturating_add(HOLD)
    .saturating_add(PROMPT);

/// A connection that got its `HELLO`, for a case that needs the table
/// free before it checks something else: a `busy` refusal is retried
/// every 300 ms for up to [`STALE_SLOT`] (a refused connection is closed
/// by the server, so retrying holds no slot), and each retry is counted
/// in `retried`. R-CONN-7 itself is checked strictly, on closes the case
/// makes ([`hello_now`]).
pub(crate) fn hello_when_free<'a>(
    p: &'a Peer,
    what: &str,
    retried: &mut u32,
) -> Result<Raw<'a>, String> {
    let start = Instant::now();
    loop {
        let mut c = p.connect()?;
        c.send_msg(FrameKind::Hello, &Hello::new::<ServiceVm>(DEFAULT_MAX_BODY))?;
        match c.expect_hello_within(HOLD + PROMPT) {
            Ok(_) => return Ok(c),
            Err(e) if e.contains("Busy") && start.elapsed() < STALE_SLOT => {
                *retried += 1;
                thread::sleep(Duration::from_millis(300));
            }
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
}

/// Fills the table: `max_conns` connections with their `HELLO`
/// ([`hello_when_free`]); says on stderr if stale slots made it retry.
pub(crate) fn fill_table<'a>(p: &'a Peer, what: &str) -> Result<Vec<Raw<'a>>, String> {
    let mut retried = 0;
    let mut conns = Vec::new();
    for i in 0..p.max_conns {
        conns.push(hello_when_free(
            p,
            &format!("{what} {i} of {}", p.max_conns),
            &mut retried,
        )?);
    }
    if retried > 0 {
        eprintln!(
            "  note: filling the table took {retried} busy retries (a slot of an earlier case's \
             closed connection the server had not learned of)"
        );
    }
    Ok(conns)
}

/// R-CONN-3: `max_conns` connections at once, each served.
pub(crate) fn r_conn_3_eight_connections_at_once(p: &Peer) -> R {
    let mut conns = fill_table(p, "connection")?;
    // Answered in any order of connections.
    for (i, c) in conns.iter_mut().enumerate().rev() {
        let payload = format!("connection {i}").into_bytes();
        c.send_request(i as u32, &Request::Reverse(payload.clone()))?;
        let r = c
            .expect_response_within(i as u32, PROMPT)
            .map_err(|e| format!("connection {i}: {e}"))?;
        expect_reversed(r, &payload)?;
    }
    for c in conns {
        c.goodbye()?;
    }
    Ok(())
}

/// R-CONN-4: a client stalled inside a frame, and one that sends nothing
/// at all, do not hold up another connection.
pub(crate) fn r_conn_4_stalled_client_does_not_block_another(p: &Peer) -> R {
    let mut stalled = p.hello()?;
    let f = request_frame(p, 1, &Request::Reverse(b"stalled".to_vec()));
    stalled.send(&f[..HEADER_LEN + 3])?;
    let _silent = p.connect()?;
    let mut c = p.connect()?;
    c.send_msg(FrameKind::Hello, &Hello::new::<ServiceVm>(DEFAULT_MAX_BODY))?;
    c.expect_hello_within(PROMPT)
        .map_err(|e| format!("while another client is stalled: {e}"))?;
    for id in 0..3 {
        c.send_request(id, &Request::Reverse(b"not blocked".to_vec()))?;
        expect_reversed(c.expect_response_within(id, PROMPT)?, b"not blocked")?;
    }
    // The stalled client finishes its frame and is answered.
    stalled.send(&f[HEADER_LEN + 3..])?;
    expect_reversed(stalled.expect_response(1)?, b"stalled")?;
    c.goodbye()?;
    stalled.goodbye()
}

/// R-CONN-5: over the limit, `ERROR` busy (7, fatal) instead of `HELLO`,
/// then the close; a freed slot serves again at once.
pub(crate) fn r_conn_5_busy_over_the_limit(p: &Peer) -> R {
    let mut conns = fill_table(p, "connection")?;
    let mut over = p.connect()?;
    over.send_msg(FrameKind::Hello, &Hello::new::<ServiceVm>(DEFAULT_MAX_BODY))?;
    over.expect_error(ProtocolErrorCode::Busy, true, Some(None))
        .map_err(|e| format!("connection {} over the limit: {e}", p.max_conns + 1))?;
    conns.pop().ok_or("none")?.goodbye()?;
    // The freed slot serves a new connection at once (R-CONN-7).
    let mut c = hello_now(p, "after a slot was freed")?;
    c.expect_usable(5)?;
    c.goodbye()?;
    for c in conns {
        c.goodbye()?;
    }
    Ok(())
}

/// R-CONN-7: `max_conns` connections closed without `GOODBYE` (dropped
/// between frames, dropped in the middle of a frame, their sending side
/// shut down) stop counting: `max_conns` new ones opened at once, right
/// after the closes, each get `HELLO` within [`HOLD`] and [`PROMPT`]
/// (not `busy`) and are served; the half-closed ones are closed by the
/// server (R-END-2).
pub(crate) fn r_conn_7_closed_connections_stop_counting(p: &Peer) -> R {
    let mut old = fill_table(p, "old connection")?;
    for c in &mut old {
        c.expect_usable(1)?;
    }
    let mut half_closed = Vec::new();
    for (i, mut c) in old.into_iter().enumerate() {
        match i % 3 {
            0 => drop(c),
            1 => {
                let f = request_frame(p, 2, &Request::Reverse(vec![7; 1000]));
                c.send(&f[..HEADER_LEN + 10])?;
                drop(c);
            }
            _ => {
                c.shutdown(Shutdown::Write)?;
                half_closed.push(c);
            }
        }
    }
    let mut new = Vec::new();
    for _ in 0..p.max_conns {
        let mut c = p.connect()?;
        c.send_msg(FrameKind::Hello, &Hello::new::<ServiceVm>(DEFAULT_MAX_BODY))?;
        new.push(c);
    }
    for (i, c) in new.iter_mut().enumerate() {
        c.expect_hello_within(HOLD + PROMPT).map_err(|e| {
            format!(
                "new connection {i} of {}, right after the old ones closed: {e}",
                p.max_conns
            )
        })?;
    }
    for (i, c) in half_closed.iter_mut().enumerate() {
        c.expect_close()
            .map_err(|e| format!("half-closed connection {i}: {e}"))?;
    }
    for (i, mut c) in new.into_iter().enumerate() {
        c.expect_usable(10 + i as u32)?;
        c.goodbye()?;
    }
    Ok(())
}

/// R-CONN-6: an idle connection is not closed while the server has room
/// (here for 6 s, longer than the firmware's idle timeout and than v1's
/// 2 s reset), even while another connection is served.
pub(crate) fn r_conn_6_idle_connection_is_kept(p: &Peer) -> R {
    let mut idle = p.hello()?;
    idle.expect_usable(1)?;
    let mut other = p.hello()?;
    let start = Instant::now();
    let mut id = 0;
    while start.elapsed() < Duration::from_secs(6) {
        other.send_request(id, &Request::Reverse(b"busy".to_vec()))?;
        expect_reversed(other.expect_response_within(id, PROMPT)?, b"busy")?;
        id += 1;
        thread::sleep(Duration::from_millis(500));
    }
    other.goodbye()?;
    idle.expect_usable(2)
        .map_err(|e| format!("after 6 s idle: {e}"))?;
    idle.goodbye()
}

/// How long the write of a pipelined burst may take while nothing is read
/// (megabytes through the emulated device).
pub(crate) const BURST_WRITE: Duration = Duration::from_secs(30);

/// Sends `sizes.len()` reverse requests (ids from 1), then `GOODBYE` if
/// `goodbye`, all written before a byte is read: the write has to complete
/// (R-FLOW-1: the server keeps reading). Then every request gets its
/// answer, in order: the reversed bytes or `out_of_memory` (R-FLOW-2).
/// Returns how many were refused.
pub(crate) fn burst_without_reading(
    p: &Peer,
    sizes: &[usize],
    goodbye: bool,
) -> Result<usize, String> {
    let (mut c, max) = p.hello_with(DEFAULT_MAX_BODY)?;
    let payloads: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let mut v = pattern(n.min(max as usize - 64));
            v[0] = i as u8;
            v
        })
        .collect();
    let mut batch = Vec::new();
    for (i, b) in payloads.iter().enumerate() {
        batch.extend(request_frame(p, i as u32 + 1, &Request::Reverse(b.clone())));
    }
    if goodbye {
        batch.extend(frame::goodbye());
    }
    let total = batch.len();
    let mut w = c.stream().try_clone().map_err(|e| e.to_string())?;
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(w.write_all(&batch));
    });
    match rx.recv_timeout(BURST_WRITE) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("writing {total} bytes of requests: {e}")),
        Err(_) => {
            return Err(format!(
                "the server stopped reading: {total} bytes of pipelined requests not \
                 written within {BURST_WRITE:?}"
            ));
        }
    }
    let mut refused = 0;
    for (i, b) in payloads.iter().enumerate() {
        let id = i as u32 + 1;
        let r = c
            .expect_response_within(id, Duration::from_secs(30))
            .map_err(|e| format!("answer {id} of {}: {e}", sizes.len()))?;
        match r {
            Response::Err(ServiceError::OutOfMemory { requested }) => {
                ensure(requested > 0, || "out_of_memory of 0 bytes".into())?;
                refused += 1;
            }
            r => expect_reversed(r, b).map_err(|e| format!("answer {id}: {e}"))?,
        }
    }
    if goodbye {
        c.expect_close()?;
    } else {
        c.expect_usable(1000)?;
        c.goodbye()?;
    }
    Ok(refused)
}

/// R-ID-5, R-FLOW-1, R-FLOW-2: 8 pipelined requests of 128 KiB, then of
/// 1 MiB, written before anything is read: the writes complete and every
/// request gets its answer or `out_of_memory`; the 128 KiB ones (1 MiB in
/// all, R-FLOW-2's guarantee) are all answered.
pub(crate) fn r_flow_1_large_pipelined_requests_without_reading(p: &Peer) -> R {
    let refused = burst_without_reading(p, &[128 << 10; 8], false)?;
    ensure(refused == 0, || {
        format!("{refused} of 8 requests of 128 KiB refused")
    })?;
    let refused = burst_without_reading(p, &[1 << 20; 8], false)?;
    println!(
        "    8 x 1 MiB: {} answered, {refused} out_of_memory",
        8 - refused
    );
    Ok(())
}

/// R-FLOW-2: 600 small requests written before anything is read: each
/// gets one answer, reversed or `out_of_memory`, and the connection goes on.
pub(crate) fn r_flow_2_many_small_requests_without_reading(p: &Peer) -> R {
    let refused = burst_without_reading(p, &[2000; 600], false)?;
    println!(
        "    600 x 2000 B: {} answered, {refused} out_of_memory",
        600 - refused
    );
    ensure(refused < 600 - 16, || "fewer than 16 answered".into())
}

/// R-END-2, R-FLOW-1: 4 MiB of requests and `GOODBYE` in one write: all
/// answered (or refused), then the close.
pub(crate) fn r_end_2_answers_after_goodbye_with_megabytes_due(p: &Peer) -> R {
    let refused = burst_without_reading(p, &[300_000, 300_000, 300_000, 300_000], true)?;
    ensure(refused == 0, || format!("{refused} of 4 x 300 KB refused"))?;
    burst_without_reading(p, &[1 << 20; 4], true).map(drop)
}

/// R-CONN-7, R-FLOW-4: connections closed by their client with megabytes
/// of answers due (8 requests of 128 KiB written from a thread, nothing
/// read) stop counting: the client then opens as many new connections as
/// the limit allows, and each gets `HELLO`.
pub(crate) fn r_conn_7_closed_with_answers_due_stop_counting(p: &Peer) -> R {
    for round in 0..2 {
        let mut gone = Vec::new();
        let mut writers = Vec::new();
        for _ in 0..p.max_conns {
            let c = p.hello()?;
            let mut batch = Vec::new();
            for id in 1..=8 {
                batch.extend(request_frame(p, id, &Request::Reverse(pattern(128 << 10))));
            }
            let mut w = c.stream().try_clone().map_err(|e| e.to_string())?;
            // The write may block (a server that stops reading); the
            // close below ends it.
            writers.push(thread::spawn(move || {
                let _ = w.write_all(&batch);
            }));
            gone.push(c);
        }
        // Some of the answers are under way; the client goes away.
        thread::sleep(Duration::from_millis(500));
        for c in &gone {
            let _ = c.shutdown(Shutdown::Both);
        }
        drop(gone);
        for w in writers {
            let _ = w.join();
        }
        let mut fresh = Vec::new();
        for _ in 0..p.max_conns {
            let mut c = p.connect()?;
            c.send_msg(FrameKind::Hello, &Hello::new::<ServiceVm>(DEFAULT_MAX_BODY))?;
            fresh.push(c);
        }
        for (i, c) in fresh.iter_mut().enumerate() {
            c.expect_hello_within(Duration::from_secs(1) + PROMPT)
                .map_err(|e| format!("round {round}: new connection {i} after the closes: {e}"))?;
        }
        for (i, mut c) in fresh.into_iter().enumerate() {
            c.expect_usable(i as u32)?;
            c.goodbye()?;
        }
    }
    Ok(())
}

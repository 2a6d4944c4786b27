//! End-to-end cases of the guest's concurrency (protocol v2): several
//! clients at once, interleaved; the connection limit and its busy
//! refusal; the idle policy; pipelining; the heap after many connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use svmc::{Request, Response, SERVICE_PORT, ServiceVm};
use svmc_comm::Hello;
use svmc_comm::envelope::{self, RequestId};
use svmc_comm::frame::{self, FrameKind, ProtocolError, ProtocolErrorCode};
use tests::{Ctx, ensure};
use vsock_transport::hybrid::{self, HybridStream};
use vsock_transport::rpc::Client;
use vsock_transport::{Connection, Error as TError};

use super::{R, ServiceClient, attach, expect_clean_exit, frame_goodbye, pattern, power_off_via};

/// A session whose guest gets `words` on its command line.
fn session_with(ctx: &Ctx, words: &[&str]) -> Result<svmc_host::Session, String> {
    let mut c = ctx.vm_config();
    c.cmdline.extend(words.iter().map(|w| w.to_string()));
    ctx.session_with(c)
}

fn uds(s: &mut svmc_host::Session) -> Result<std::path::PathBuf, String> {
    Ok(s.vm().ok_or("no vm")?.uds_path().to_path_buf())
}

fn raw(uds: &std::path::Path, ctx: &Ctx) -> Result<HybridStream, String> {
    hybrid::connect(uds, SERVICE_PORT, &ctx.timeouts()).map_err(|e| format!("connect: {e}"))
}

/// Calls `check` every 10 ms until it returns `Some`, for at most
/// `limit`; then fails saying what was awaited.
fn poll<T>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<Option<T>, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("{what}: not within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the guest has closed `c` (after a `GOODBYE`): frames read
/// meanwhile are dropped; each read is bounded by the connection's
/// timeouts.
fn wait_closed<C: Connection + ?Sized>(c: &mut C) -> R {
    poll(
        Duration::from_secs(10),
        "the guest closing the connection",
        || Ok(read_frame(c)?.is_none().then_some(())),
    )
}

/// Reads one frame; `None` when the guest closed the connection.
fn read_frame<C: Connection + ?Sized>(c: &mut C) -> Result<Option<(FrameKind, Vec<u8>)>, String> {
    let mut body = Vec::new();
    match vsock_transport::framed::recv_frame(c, frame::DEFAULT_MAX_BODY, &mut body) {
        Ok(h) => Ok(Some((h.kind, body))),
        Err(TError::Closed | TError::Reset) => Ok(None),
        Err(e) => Err(format!("reading: {e}")),
    }
}

/// Our HELLO on a raw connection, and the guest's checked.
fn raw_hello(c: &mut HybridStream) -> R {
    let f = frame::encode(
        FrameKind::Hello,
        &Hello::new::<ServiceVm>(frame::DEFAULT_MAX_BODY),
        frame::HELLO_MAX_BODY,
    )
    .map_err(|e| e.to_string())?;
    c.send(&f).map_err(|e| e.to_string())?;
    match read_frame(c)? {
        Some((FrameKind::Hello, b)) => Hello::decode_checked::<ServiceVm>(&b)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        other => Err(format!("expected HELLO, got {other:?}")),
    }
}

fn request(id: u32, r: &Request) -> Vec<u8> {
    let mut f = Vec::new();
    envelope::encode_request_into(RequestId(id), r, frame::DEFAULT_MAX_BODY, &mut f)
        .expect("request");
    f
}

fn expect_response<C: Connection>(c: &mut C, id: u32, want: &Response) -> R {
    match read_frame(c)? {
        Some((FrameKind::Response, b)) => {
            let (got_id, r) = envelope::decode::<Response>(&b);
            let r = r.map_err(|e| e.to_string())?;
            ensure(got_id == Some(RequestId(id)) && &r == want, || {
                format!("expected {id} {want:?}, got {got_id:?} {r:?}")
            })
        }
        other => Err(format!("expected RESPONSE {id}, got {other:?}")),
    }
}

fn reverse_call(c: &mut ServiceClient, payload: &[u8]) -> R {
    let r = c
        .call(&Request::Reverse(payload.to_vec()))
        .map_err(|e| e.to_string())?;
    let mut want = payload.to_vec();
    want.reverse();
    ensure(r == Response::Reverse(want), || format!("{r:?}"))
}

/// A client that is idle after its HELLO and one stalled in the middle of
/// a frame do not hold up a third: it is served at once. Then the stalled
/// one completes its frame and gets its answer, the idle one and the boot
/// connection still work.
pub fn idle_and_stalled_clients_do_not_block(ctx: &Ctx) -> R {
    let mut s = ctx.session()?;
    let uds = uds(&mut s)?;
    let mut idle = attach(&uds, ctx)?;
    let mut stalled = raw(&uds, ctx)?;
    raw_hello(&mut stalled)?;
    let f = request(77, &Request::Reverse(b"stalled".to_vec()));
    stalled.send(&f[..7]).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut third = attach(&uds, ctx)?;
    for i in 0..5u8 {
        reverse_call(&mut third, &[i, 1, 2, 3])?;
    }
    let took = start.elapsed();
    ensure(took < Duration::from_secs(1), || {
        format!("the third client took {took:?} for HELLO and 5 requests")
    })?;
    stalled.send(&f[7..]).map_err(|e| e.to_string())?;
    expect_response(&mut stalled, 77, &Response::Reverse(b"dellats".to_vec()))?;
    reverse_call(&mut idle, b"idle")?;
    ensure(
        s.reverse(b"boot".to_vec()).map_err(|e| e.to_string())? == b"toob",
        || "boot connection".into(),
    )?;
    println!("  third client: HELLO and 5 requests in {took:?}");
    power_off_via(&mut third, &mut s)
}

/// A client that keeps the guest busy with 1 MiB requests does not starve
/// another: each of its small requests waits for at most about one large
/// request.
pub fn busy_client_does_not_starve_another(ctx: &Ctx) -> R {
    let mut s = ctx.session()?;
    let uds = uds(&mut s)?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU32::new(0));
    let mut heavy = attach(&uds, ctx)?;
    let worker = {
        let (stop, done) = (stop.clone(), done.clone());
        std::thread::spawn(move || -> R {
            let big = pattern(1 << 20);
            while !stop.load(Ordering::Relaxed) {
                reverse_call(&mut heavy, &big)?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            heavy.close().map_err(|e| e.to_string())
        })
    };
    // Let the heavy client get going.
    poll(
        Duration::from_secs(20),
        "the heavy client's first answer",
        || Ok((done.load(Ordering::Relaxed) > 0 || worker.is_finished()).then_some(())),
    )?;
    let mut light = attach(&uds, ctx)?;
    let mut worst = Duration::ZERO;
    let before = done.load(Ordering::Relaxed);
    for i in 0..20u8 {
        let t = Instant::now();
        reverse_call(&mut light, &[i; 16])?;
        worst = worst.max(t.elapsed());
    }
    let during = done.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    worker.join().map_err(|_| "heavy client panicked")??;
    println!("  worst small request {worst:?}; {during} large requests meanwhile");
    ensure(during > 0, || "the heavy client made no progress".into())?;
    ensure(worst < Duration::from_secs(2), || {
        format!("a small request took {worst:?} next to a busy client")
    })?;
    power_off_via(&mut light, &mut s)
}

/// With `svmc.max_conns=8`, the boot connection and 7 host connections
/// fill the table; a 9th gets a fatal ERROR busy instead of HELLO and is
/// closed; once one closes, a new one is served at once.
pub fn ninth_connection_gets_busy(ctx: &Ctx) -> R {
    let mut s = session_with(ctx, &["svmc.max_conns=8", "svmc.idle_timeout_ms=600000"])?;
    let uds = uds(&mut s)?;
    let mut held = Vec::new();
    for i in 0..7 {
        held.push(attach(&uds, ctx).map_err(|e| format!("connection {}: {e}", i + 2))?);
    }
    let mut ninth = raw(&uds, ctx)?;
    let pe = match read_frame(&mut ninth)? {
        Some((FrameKind::Error, b)) => {
            frame::decode_body::<ProtocolError>(&b).map_err(|e| e.to_string())?
        }
        other => return Err(format!("expected ERROR busy, got {other:?}")),
    };
    ensure(pe.code == ProtocolErrorCode::Busy && pe.fatal, || {
        format!("{pe:?}")
    })?;
    ensure(read_frame(&mut ninth)?.is_none(), || {
        "the guest did not close the refused connection".into()
    })?;
    // The client library reports it as a typed error.
    match Client::<_, ServiceVm>::hello(raw(&uds, ctx)?, frame::DEFAULT_MAX_BODY) {
        Err(TError::Protocol(svmc_comm::Error::Remote(pe)))
            if pe.code == ProtocolErrorCode::Busy => {}
        Err(e) => return Err(format!("expected a busy error, got {e}")),
        Ok(_) => return Err("a 10th connection was served".into()),
    }
    // Everyone in the table is still served.
    for c in held.iter_mut() {
        reverse_call(c, b"held")?;
    }
    ensure(
        s.reverse(b"boot".to_vec()).map_err(|e| e.to_string())? == b"toob",
        || "boot connection".into(),
    )?;
    held.pop()
        .ok_or("none")?
        .close()
        .map_err(|e| e.to_string())?;
    // The freed slot serves the next one at once (R-CONN-7).
    let mut next = attach(&uds, ctx).map_err(|e| format!("after one closed: {e}"))?;
    reverse_call(&mut next, b"next")?;
    power_off_via(&mut next, &mut s)
}

/// When the table is full, a connection silent for `svmc.idle_timeout_ms`
/// gives way to a new one; a recently active one does not.
pub fn idle_connection_gives_way_when_full(ctx: &Ctx) -> R {
    let mut s = session_with(ctx, &["svmc.max_conns=2", "svmc.idle_timeout_ms=300"])?;
    let uds = uds(&mut s)?;
    let boot = s.client().ok_or("no client")?.connection();
    frame_goodbye(boot)?;
    // Its slot is free once the guest has closed it.
    wait_closed(boot)?;
    let mut old = attach(&uds, ctx)?;
    let mut active = attach(&uds, ctx)?;
    // Not synchronisation: the time under test. Both connections stay
    // silent for twice the idle timeout; then one becomes active again.
    std::thread::sleep(Duration::from_millis(600));
    reverse_call(&mut active, b"active")?;
    let mut new = attach(&uds, ctx).map_err(|e| format!("the new connection: {e}"))?;
    reverse_call(&mut new, b"new")?;
    reverse_call(&mut active, b"still")?;
    match old.call(&Request::Info) {
        Err(_) => {}
        Ok(r) => return Err(format!("the idle connection still served: {r:?}")),
    }
    power_off_via(&mut new, &mut s)
}

/// 64 requests sent back to back on one connection before any answer is
/// read: all answered, in order, with their ids.
pub fn pipelined_burst(ctx: &Ctx) -> R {
    let mut s = ctx.session()?;
    let uds = uds(&mut s)?;
    let mut c = raw(&uds, ctx)?;
    raw_hello(&mut c)?;
    let mut burst = Vec::new();
    let payloads: Vec<Vec<u8>> = (0..64usize).map(|i| pattern(1 + i * 97)).collect();
    for (i, p) in payloads.iter().enumerate() {
        burst.extend(request(1000 + i as u32, &Request::Reverse(p.clone())));
    }
    c.send(&burst).map_err(|e| e.to_string())?;
    for (i, p) in payloads.iter().enumerate() {
        let mut want = p.clone();
        want.reverse();
        expect_response(&mut c, 1000 + i as u32, &Response::Reverse(want))?;
    }
    c.send(&request(1, &Request::PowerOff))
        .map_err(|e| e.to_string())?;
    expect_response(&mut c, 1, &Response::PowerOff)?;
    expect_clean_exit(&mut s)
}

/// 8 MiB round trip while other clients hold connections open.
pub fn reverse_8mib_next_to_others(ctx: &Ctx) -> R {
    let mut s = ctx.session()?;
    let uds = uds(&mut s)?;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(attach(&uds, ctx)?);
    }
    let mut c = attach(&uds, ctx)?;
    reverse_call(&mut c, &pattern(8 << 20))?;
    for o in others.iter_mut() {
        reverse_call(o, b"other")?;
    }
    power_off_via(&mut c, &mut s)
}

/// Bytes the heap in use may differ by between two `Info` requests on
/// fresh connections in the same state.
const HEAP_NOISE: u64 = 1024;

/// How long the guest may take to let go of closed connections.
const HEAP_SETTLE: Duration = Duration::from_secs(10);

fn heap_used(uds: &std::path::Path, ctx: &Ctx) -> Result<u64, String> {
    let mut c = attach(uds, ctx)?;
    let r = c.call(&Request::Info).map_err(|e| e.to_string())?;
    c.close().map_err(|e| e.to_string())?;
    match r {
        Response::Info(i) => Ok(i.heap.ok_or("no heap figures")?.used),
        other => Err(format!("{other:?}")),
    }
}

/// After many connections (served at once, ended by GOODBYE, by a close,
/// mid-frame, refused as busy) the heap in use is back where it was.
pub fn heap_back_after_many_connections(ctx: &Ctx) -> R {
    if ctx.guest == svmc_host::Guest::Linux {
        println!("  (the Linux service reports no heap figures: connections only)");
    }
    let mut s = session_with(ctx, &["svmc.max_conns=8", "svmc.idle_timeout_ms=600000"])?;
    let uds = uds(&mut s)?;
    frame_goodbye(s.client().ok_or("no client")?.connection())?;
    let round = |n: usize| -> R {
        let mut conns = Vec::new();
        for _ in 0..n {
            // The previous round's closes no longer count (R-CONN-7).
            conns.push(attach(&uds, ctx)?);
        }
        for (i, c) in conns.iter_mut().enumerate() {
            reverse_call(c, &pattern(100 + i * 10_000))?;
        }
        // One over the limit, refused.
        let _ = read_frame(&mut raw(&uds, ctx)?);
        // One dropped in the middle of a large frame.
        let mut mid = raw(&uds, ctx)?;
        let _ = raw_hello(&mut mid);
        let f = request(5, &Request::Reverse(pattern(300_000)));
        let _ = mid.send(&f[..f.len() / 2]);
        drop(mid);
        for (i, c) in conns.into_iter().enumerate() {
            if i % 2 == 0 {
                c.close().map_err(|e| e.to_string())?;
            } else {
                drop(c);
            }
        }
        Ok(())
    };
    // Warm up (the tables reach their size), then measure once the guest
    // has let go of the round's connections: two readings in a row agree.
    round(8)?;
    let base = if ctx.guest == svmc_host::Guest::Firmware {
        let mut last = heap_used(&uds, ctx)?;
        Some(poll(
            HEAP_SETTLE,
            "the heap settling after the warm-up",
            || {
                let now = heap_used(&uds, ctx)?;
                let settled = now.abs_diff(last) <= HEAP_NOISE;
                last = now;
                Ok(settled.then_some(now))
            },
        )?)
    } else {
        None
    };
    for _ in 0..10 {
        round(8)?;
    }
    if let Some(base) = base {
        // Back where it was once the guest has let go of the connections;
        // the last reading if it never is.
        let mut after = heap_used(&uds, ctx)?;
        let _ = poll(HEAP_SETTLE, "the heap back at its base", || {
            after = heap_used(&uds, ctx)?;
            Ok((after.abs_diff(base) <= HEAP_NOISE).then_some(()))
        });
        println!("  heap in use {base} before, {after} after 10 rounds of 10 connections");
        // A few bytes either way: the receive ring of the connection that
        // asks grows with how its bytes were cut into packets. A leak of
        // anything per connection would be over 100 connections' worth.
        ensure(after.abs_diff(base) <= HEAP_NOISE, || {
            format!("heap in use {base} before, {after} after")
        })?;
    }
    let mut c = attach(&uds, ctx)?;
    power_off_via(&mut c, &mut s)
}

/// How long, at most, the whole refill of [`refill_after_closes`] may take
/// from the moment the old clients closed: the longest a server may hold
/// a new connection (WIRE.md R-CONN-5, R-CONN-7: 1 s) and time for 8
/// HELLOs under TCG on a loaded machine.
const REFILL: Duration = Duration::from_secs(4);

/// Fills the table (boot connection ended, `max_conns` host connections
/// with HELLO done), lets `close` end every one of them without a
/// `GOODBYE`, then at once opens `max_conns` new ones: each must get
/// `HELLO`, not `busy`, although the guest may not have seen the closes
/// yet when they arrive (WIRE.md R-CONN-7). `close` gets each old
/// connection's socket and returns what the test keeps of it.
fn refill_after_closes(
    ctx: &Ctx,
    close: impl Fn(std::os::unix::net::UnixStream) -> Option<std::os::unix::net::UnixStream>,
) -> R {
    const MAX: usize = 8;
    let mut s = session_with(ctx, &["svmc.max_conns=8", "svmc.idle_timeout_ms=600000"])?;
    let uds = uds(&mut s)?;
    frame_goodbye(s.client().ok_or("no client")?.connection())?;
    let mut old = Vec::new();
    for i in 0..MAX {
        let c = attach(&uds, ctx).map_err(|e| format!("old connection {i}: {e}"))?;
        old.push(c.into_inner());
    }
    // One more is refused: the table is full.
    match Client::<_, ServiceVm>::hello(raw(&uds, ctx)?, frame::DEFAULT_MAX_BODY) {
        Err(TError::Protocol(svmc_comm::Error::Remote(pe)))
            if pe.code == ProtocolErrorCode::Busy => {}
        Err(e) => return Err(format!("expected busy over a full table, got {e}")),
        Ok(_) => return Err("a connection over the limit was served".into()),
    }
    let start = Instant::now();
    let kept: Vec<_> = old
        .into_iter()
        .filter_map(|c| close(c.into_inner()))
        .collect();
    let mut new = Vec::new();
    let hello = frame::encode(
        FrameKind::Hello,
        &Hello::new::<ServiceVm>(frame::DEFAULT_MAX_BODY),
        frame::HELLO_MAX_BODY,
    )
    .map_err(|e| e.to_string())?;
    for i in 0..MAX {
        let mut c = raw(&uds, ctx).map_err(|e| format!("new connection {i}: {e}"))?;
        c.send(&hello)
            .map_err(|e| format!("new connection {i}: sending HELLO: {e}"))?;
        new.push(c);
    }
    for (i, c) in new.iter_mut().enumerate() {
        let got = read_frame(c).map_err(|e| format!("new connection {i}: {e}"))?;
        match got {
            Some((FrameKind::Hello, _)) => {}
            Some((FrameKind::Error, b)) => {
                let pe = frame::decode_body::<ProtocolError>(&b).map_err(|e| e.to_string())?;
                return Err(format!(
                    "new connection {i} of {MAX} refused {:?} {:?} after {:?}, \
                     although the {MAX} old ones were closed",
                    pe.code,
                    pe.detail,
                    start.elapsed()
                ));
            }
            other => return Err(format!("new connection {i}: expected HELLO, got {other:?}")),
        }
    }
    let took = start.elapsed();
    println!("  {MAX} closed, {MAX} new ones served in {took:?}");
    ensure(took < REFILL, || {
        format!("{MAX} new connections took {took:?} to be served")
    })?;
    // A half-closed old connection was closed by the server (R-END-2).
    for (i, mut k) in kept.into_iter().enumerate() {
        use std::io::{ErrorKind, Read};
        k.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut b = [0u8; 64];
        match k.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Ok(n) => return Err(format!("old connection {i}: {n} bytes after its shutdown")),
            Err(e) => return Err(format!("old connection {i} not closed by the guest: {e}")),
        }
    }
    // Every new one is served.
    for (i, c) in new.iter_mut().enumerate() {
        let p = pattern(10 + i);
        c.send(&request(i as u32, &Request::Reverse(p.clone())))
            .map_err(|e| e.to_string())?;
        let mut want = p;
        want.reverse();
        expect_response(c, i as u32, &Response::Reverse(want))?;
    }
    let mut last = new.pop().ok_or("none")?;
    last.send(&request(99, &Request::PowerOff))
        .map_err(|e| e.to_string())?;
    expect_response(&mut last, 99, &Response::PowerOff)?;
    expect_clean_exit(&mut s)
}

/// [`refill_after_closes`] with clients that drop their sockets.
pub fn dropped_connections_free_their_slots(ctx: &Ctx) -> R {
    refill_after_closes(ctx, |c| {
        drop(c);
        None
    })
}

/// [`refill_after_closes`] with clients that shut down their sending side
/// (no `GOODBYE`) and wait for the server's close.
pub fn half_closed_connections_free_their_slots(ctx: &Ctx) -> R {
    refill_after_closes(ctx, |c| {
        let _ = c.shutdown(std::net::Shutdown::Write);
        Some(c)
    })
}

/// [`refill_after_closes`] with clients that drop their sockets right
/// after sending a 1 MiB request, whose answer the guest can then never
/// deliver.
pub fn dropped_with_answers_due_free_their_slots(ctx: &Ctx) -> R {
    refill_after_closes(ctx, |mut c| {
        use std::io::Write;
        let _ = c.write_all(&request(7, &Request::Reverse(pattern(1 << 20))));
        drop(c);
        None
    })
}

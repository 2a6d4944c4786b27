//! The cost of the extensions' envelope (`svmc_comm::ext`) on 16-byte
//! round trips: the default client (a deadline in every request), the
//! same asking for timings (a traced call), and plain version 2, taking
//! turns on one VM.

use std::path::Path;
use std::time::Instant;

use vsock_transport::Timeouts;

use super::stats::Pair;
use super::{PAIRS_PER_REP, RT_REQUESTS, STEP, payload};

/// [`RT_REQUESTS`] 16-byte reverses on three connections to the same VM,
/// in turn: the default client (a deadline in each request), the same
/// asking for timings (what a traced call sends and gets), and a client
/// that offers no extension (plain version 2). Returns (deadline vs plain,
/// timings vs plain), requests/s.
pub fn cost(uds: &Path, port: u32, reps: usize) -> std::result::Result<(Pair, Pair), String> {
    use svmc::{Request, Response, ServiceVm};
    use svmc_comm::ext::{Extensions, RequestMeta};
    use vsock_transport::rpc::Client;
    let t = Timeouts::uniform(STEP);
    let connect = |ext| {
        let conn = vsock_transport::hybrid::connect(uds, port, &t)
            .map_err(|e| format!("envelope figure: connect: {e}"))?;
        Client::<_, ServiceVm>::hello_with(conn, svmc_comm::frame::DEFAULT_MAX_BODY, ext)
            .map_err(|e| format!("envelope figure: HELLO: {e}"))
    };
    let mut with = connect(Extensions::ALL)?;
    let mut plain = connect(Extensions::NONE)?;
    if !with.extensions().meta || plain.extensions() != Extensions::NONE {
        return Err(format!(
            "envelope figure: extensions {:?} and {:?}",
            with.extensions(),
            plain.extensions()
        ));
    }
    let small = payload(16);
    let mut expect = small.clone();
    expect.reverse();
    let request = Request::Reverse(small);
    let timed = RequestMeta {
        deadline_ms: Some(STEP.as_millis() as u32),
        timing: true,
        ..RequestMeta::default()
    };
    // 0: the default client, 1: with timings, 2: plain.
    let mut run = |which: usize| -> std::result::Result<f64, String> {
        let start = Instant::now();
        for _ in 0..RT_REQUESTS {
            let r = match which {
                0 => with.call(&request),
                1 => with.call_with(&request, &timed).map(|(r, _)| r),
                _ => plain.call(&request),
            };
            match r {
                Ok(Response::Reverse(b)) if b == expect => {}
                other => return Err(format!("envelope figure: {other:?}")),
            }
        }
        Ok(RT_REQUESTS as f64 / start.elapsed().as_secs_f64())
    };
    for w in 0..3 {
        run(w)?;
    }
    let (mut d, mut tm, mut p) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps * PAIRS_PER_REP {
        // The order turns every repetition: no side always goes first.
        for k in 0..3 {
            let which = (rep + k) % 3;
            let rate = run(which)?;
            [&mut d, &mut tm, &mut p][which].push(rate);
        }
    }
    let _ = with.close();
    let _ = plain.close();
    Ok((Pair::of(d, p.clone()), Pair::of(tm, p)))
}

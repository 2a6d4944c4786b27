//! The guest's raw echo (`svmc.mode=echo`): a stream that overlaps
//! receiving and sending, which no reverse can (its first byte out needs
//! its last byte in). Its figures are printed without a target.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use svmc_host::VmConfig;
use vsock_transport::hybrid::HybridStream;
use vsock_transport::{Connection, Step, Timeouts};

use super::floors::recv_exact;
use super::service::launch_for_service_port;
use super::stats::Stat;
use super::{RT_REQUESTS, SIZES, STEP, payload};
use crate::util::Result;

/// The echo stream's writes, and how far they may run ahead of the echo.
const ECHO_CHUNK: usize = 64 * 1024;
const ECHO_IN_FLIGHT: usize = 128 * 1024;

pub struct EchoFigures {
    /// 16-byte round trips, requests/s.
    pub rt: Stat,
    /// [`SIZES`], MB/s each way.
    pub tp: [Stat; 2],
}

/// Like [`recv_exact`], publishing how much has arrived.
fn recv_exact_counting<C: Connection>(
    c: &mut C,
    buf: &mut [u8],
    received: &AtomicUsize,
) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match c.recv(&mut buf[got..]) {
            Ok(0) => return Err("echo VM: closed early".into()),
            Ok(n) => {
                got += n;
                received.store(got, Ordering::Release);
            }
            Err(e) => return Err(format!("echo VM: {e}")),
        }
    }
    Ok(())
}

/// 16-byte round trips and [`SIZES`] through the raw echo of a VM of the
/// floors' image (`base`).
pub fn measure(base: &VmConfig, reps: usize) -> Result<EchoFigures> {
    let mut cfg = base.clone();
    cfg.cmdline.push("svmc.mode=echo".into());
    let vm = launch_for_service_port(&cfg).map_err(|e| format!("echo VM: {e}"))?;
    let mut conn = vm
        .connect(cfg.service_port, Timeouts::uniform(STEP))
        .map_err(|e| format!("echo VM: {e}"))?;
    let small = payload(16);
    let mut back = vec![0u8; 16];
    let mut one = |conn: &mut HybridStream| -> Result<()> {
        conn.begin(Step::Write);
        conn.send(&small).map_err(|e| format!("echo VM: {e}"))?;
        conn.begin(Step::Read);
        recv_exact(conn, &mut back)?;
        if back != small {
            return Err("echo VM: wrong echo".into());
        }
        Ok(())
    };
    for _ in 0..20 {
        one(&mut conn)?;
    }
    let mut rt = Vec::new();
    for _ in 0..reps {
        let start = Instant::now();
        for _ in 0..RT_REQUESTS {
            one(&mut conn)?;
        }
        rt.push(RT_REQUESTS as f64 / start.elapsed().as_secs_f64());
    }
    let mut tp = Vec::new();
    for (n, _, _) in SIZES {
        let data = payload(n);
        let mut back = vec![0u8; n];
        let mut v = Vec::new();
        for i in 0..=reps {
            let writer: UnixStream = conn
                .get_ref()
                .try_clone()
                .map_err(|e| format!("echo VM: {e}"))?;
            let start = Instant::now();
            let received = AtomicUsize::new(0);
            let t = std::thread::scope(|sc| -> Result<Duration> {
                let (data, received) = (&data, &received);
                let w = sc.spawn(move || {
                    let mut writer = writer;
                    // At most ECHO_IN_FLIGHT bytes ahead of what came back:
                    // vhost-device-vsock 0.3.0 stalls a connection for good
                    // when the host writes several MiB while the guest
                    // already answers ("Failed to re-enable EPOLLOUT").
                    let mut sent = 0;
                    for chunk in data.chunks(ECHO_CHUNK) {
                        while sent - received.load(Ordering::Acquire) > ECHO_IN_FLIGHT {
                            std::thread::yield_now();
                        }
                        writer.write_all(chunk)?;
                        sent += chunk.len();
                    }
                    Ok::<(), std::io::Error>(())
                });
                conn.begin(Step::Read);
                recv_exact_counting(&mut conn, &mut back, received)?;
                let t = start.elapsed();
                w.join()
                    .map_err(|_| "echo writer panicked".to_string())?
                    .map_err(|e| format!("echo VM: writing: {e}"))?;
                Ok(t)
            })?;
            if back != data {
                return Err("echo VM: wrong echo of a large message".into());
            }
            // The first run warms up.
            if i > 0 {
                v.push(n as f64 / 1e6 / t.as_secs_f64());
            }
        }
        tp.push(Stat::of(v));
    }
    drop(conn);
    drop(vm);
    Ok(EchoFigures {
        rt: Stat::of(rt),
        tp: [tp[0], tp[1]],
    })
}

//! The protocol against the guest's raw store-and-forward reverse
//! (`svmc.mode=raw-reverse`, the floor a reverse can reach): both VMs run,
//! each figure is measured on one and then on the other, the VM not
//! measured paused ([`Pausable`]).

use std::process::Command;
use std::time::Instant;

use svmc_host::{Session, Vm, VmConfig};
use vsock_transport::hybrid::HybridStream;
use vsock_transport::{Connection, Step, Timeouts};

use super::service::{launch_for_service_port, service_rt, service_session, service_tp};
use super::stats::Pair;
use super::{PAIRS_PER_REP, RT_REQUESTS, SIZES, STEP, payload};
use crate::util::{self, Result};

/// The protocol against the raw reverse, each figure measured on both
/// VMs alternately (one repetition on one, then on the other, the order
/// swapped every repetition), the VM not measured paused: `a` is ours,
/// `b` the raw reverse, `ratio` per pair (rate ours / rate raw for round
/// trips, time ours / time raw for throughput).
pub struct Against {
    /// 16-byte round trips, requests/s.
    pub rt: Pair,
    /// [`SIZES`], MB/s each way.
    pub tp: [Pair; 2],
}

/// A VM that can be paused while another VM is measured: an idle guest
/// polls its device, and would take a CPU from the one measured.
///
/// It is paused with `SIGSTOP` to its QEMU process, not QMP `stop`: a VM
/// stop also stops the vhost-user device (`GET_VRING_BASE`, then the rings
/// set up again on `cont`), and vhost-device-vsock 0.3.0 then stops taking
/// TX buffers (seen here: "the device has not taken a TX buffer for 1000
/// ms" after the first `cont`). A stopped process changes nothing in the
/// device's state; the guest only sees its clock jump.
struct Pausable {
    vm: Vm,
    pid: u32,
}

impl Pausable {
    fn launch(cfg: &VmConfig, name: &str) -> Result<Self> {
        let vm = launch_for_service_port(cfg).map_err(|e| format!("{name} VM: {e}"))?;
        let pid = vm.pids().0.ok_or(format!("{name} VM: no QEMU process"))?;
        Ok(Self { vm, pid })
    }

    fn signal(&mut self, sig: &str) -> Result<()> {
        // Our own child, alive (Vm reaps it only when dropped or killed).
        self.vm
            .check_running()
            .map_err(|e| format!("QEMU {}: {e}", self.pid))?;
        util::run_quiet(Command::new("kill").arg(sig).arg(self.pid.to_string()))
    }

    fn pause(&mut self) -> Result<()> {
        self.signal("-STOP")
    }

    fn resume(&mut self) -> Result<()> {
        self.signal("-CONT")
    }
}

impl Drop for Pausable {
    fn drop(&mut self) {
        // A stopped QEMU would not see the SIGTERM of the launcher's cleanup
        // until continued.
        let _ = self.resume();
    }
}

/// [`Against`], with the protocol on `base` and the raw reverse on
/// `floors` (the floors' image).
pub fn measure_against_raw(base: &VmConfig, floors: &VmConfig, reps: usize) -> Result<Against> {
    let mut ours = Pausable::launch(base, "protocol")?;
    let mut s = service_session(&ours.vm, base.service_port)?;
    ours.pause()?;
    let mut cfg = floors.clone();
    cfg.cmdline.push("svmc.mode=raw-reverse".into());
    let mut raw = Pausable::launch(&cfg, "raw-reverse")?;
    let mut conn = raw
        .vm
        .connect(cfg.service_port, Timeouts::uniform(STEP))
        .map_err(|e| format!("raw reverse VM: {e}"))?;
    raw.pause()?;

    let small = payload(16);
    let raw_small = raw_message(&small);
    let raw_expect = |d: &[u8]| {
        let mut d = d.to_vec();
        d.reverse();
        raw_message(&d)
    };
    let raw_small_expect = raw_expect(&small);
    let mut back = vec![0u8; raw_small.len()];
    // Per size: the payload, its reverse, the raw message and its answer.
    type Case = (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);
    let sizes: Vec<Case> = SIZES
        .iter()
        .map(|&(n, _, _)| {
            let data = payload(n);
            let mut expect = data.clone();
            expect.reverse();
            let msg = raw_message(&data);
            let raw_back = raw_expect(&data);
            (data, expect, msg, raw_back)
        })
        .collect();
    let mut big_back = vec![0u8; sizes[1].2.len()];

    // One repetition of figure `f` (0: round trip, 1.. : throughput) on
    // one side, after one untimed 16-byte round trip (the side has just
    // been resumed).
    let mut run =
        |side: usize, f: usize, s: &mut Session, conn: &mut HybridStream| -> Result<f64> {
            if side == 0 {
                s.reverse(small.clone())
                    .map_err(|e| format!("protocol VM: {e}"))?;
            } else {
                raw_reverse_once(conn, &raw_small, &mut back, &raw_small_expect)?;
            }
            match (side, f) {
                (0, 0) => service_rt(s),
                (0, f) => {
                    let (data, expect, _, _) = &sizes[f - 1];
                    service_tp(s, data, expect, SIZES[f - 1].2)
                }
                (_, 0) => {
                    let start = Instant::now();
                    for _ in 0..RT_REQUESTS {
                        raw_reverse_once(conn, &raw_small, &mut back, &raw_small_expect)?;
                    }
                    Ok(RT_REQUESTS as f64 / start.elapsed().as_secs_f64())
                }
                (_, f) => {
                    let (data, _, msg, expect) = &sizes[f - 1];
                    let times = SIZES[f - 1].2;
                    let back = &mut big_back[..msg.len()];
                    let start = Instant::now();
                    for _ in 0..times {
                        raw_reverse_once(conn, msg, back, expect)?;
                    }
                    Ok((data.len() * times) as f64 / 1e6 / start.elapsed().as_secs_f64())
                }
            }
        };
    let mut samples = vec![(Vec::new(), Vec::new()); 1 + SIZES.len()];
    for (f, sample) in samples.iter_mut().enumerate() {
        for rep in 0..=reps * PAIRS_PER_REP {
            let order = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
            let mut got = [0f64; 2];
            for side in order {
                let vm = if side == 0 { &mut ours } else { &mut raw };
                vm.resume()?;
                let r = run(side, f, &mut s, &mut conn);
                let vm = if side == 0 { &mut ours } else { &mut raw };
                vm.pause()?;
                got[side] = r?;
            }
            // Repetition 0 warms both up.
            if rep > 0 {
                sample.0.push(got[0]);
                sample.1.push(got[1]);
            }
        }
    }
    ours.resume()?;
    raw.resume()?;
    drop(conn);
    let _ = s.power_off(STEP);
    drop(ours);
    drop(raw);
    let mut it = samples.into_iter();
    let (a, b) = it.next().expect("round trips");
    let rt = Pair::of(a, b);
    let mut tp = it.map(|(a, b)| Pair::inverse_ratio(a, b));
    Ok(Against {
        rt,
        tp: [tp.next().expect("1 MiB"), tp.next().expect("8 MiB")],
    })
}

/// A raw reverse message: the big-endian `u32` length, then `data`.
fn raw_message(data: &[u8]) -> Vec<u8> {
    let len = u32::try_from(data.len()).expect("a bench payload fits a u32");
    let mut m = len.to_be_bytes().to_vec();
    m.extend_from_slice(data);
    m
}

/// One raw reverse: `msg` ([`raw_message`]) out in one write, the answer
/// (length and reversed bytes) back into `back` (as long as `msg`),
/// checked against `expect` (the answer it should be).
fn raw_reverse_once(
    conn: &mut HybridStream,
    msg: &[u8],
    back: &mut [u8],
    expect: &[u8],
) -> Result<()> {
    conn.begin(Step::Write);
    conn.send(msg).map_err(|e| format!("raw reverse VM: {e}"))?;
    conn.begin(Step::Read);
    recv_exact(conn, back)?;
    if back != expect {
        return Err("raw reverse VM: wrong reverse".into());
    }
    Ok(())
}

/// Fills `buf` from `c`.
pub fn recv_exact<C: Connection>(c: &mut C, buf: &mut [u8]) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match c.recv(&mut buf[got..]) {
            Ok(0) => return Err("echo VM: closed early".into()),
            Ok(n) => got += n,
            Err(e) => return Err(format!("echo VM: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_message_is_length_prefixed() {
        assert_eq!(raw_message(b"abc"), [0, 0, 0, 3, b'a', b'b', b'c']);
    }
}

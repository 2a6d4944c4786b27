//! The service VM on its own: connecting to its service port, 16-byte and
//! large reverses, 1 against [`WINDOW`] requests in flight, several
//! clients at once, and its heap after an 8 MiB reverse; the async client
//! and the envelope figures run on the same VM.

use std::path::Path;
use std::time::Instant;

use svmc_host::{Attach, Session, SessionConfig, Vm, VmConfig};
use vsock_transport::Timeouts;

use super::stats::{Pair, Stat, ms};
use super::{MEM_PAYLOAD, RT_REQUESTS, STEP, async_client, envelope, payload};
use crate::util::Result;

/// Clients of the concurrency figure, and requests each sends per repetition.
pub const CLIENTS: usize = 4;
const CLIENT_REQUESTS: usize = 100;
/// Requests in flight on one connection in the pipelining figure.
pub const WINDOW: usize = 8;

/// Total requests/s and worst per-request latency (ms) of a set of clients.
pub type Clients = (Stat, Stat);

pub struct ServiceFigures {
    /// 16-byte requests with 1 and with [`WINDOW`] in flight, requests/s,
    /// measured alternately.
    pub serial: Pair,
    /// Total requests/s and worst latency (ms) of 1 and of [`CLIENTS`]
    /// clients at once, or why they could not be measured.
    pub clients: std::result::Result<(Clients, Clients), String>,
    /// The async client: bytes/s of its tasks sharing it against one
    /// task, alternately ([`async_client::tasks`]).
    pub tasks: std::result::Result<Pair, String>,
    /// 16-byte round trips, requests/s, with the extensions on (a
    /// deadline in each request: the clients' default) and with timings
    /// asked too (a traced call), each against plain version 2 on the
    /// same VM, alternately ([`envelope::cost`]).
    pub envelope: std::result::Result<(Pair, Pair), String>,
    pub heap_peak: u64,
    pub heap_size: u64,
    pub accel: svmc_host::Accel,
}

/// Launches a VM, lets its boot connection go and returns it: the
/// measurements use a host-initiated connection to the service port.
/// (vhost-device-vsock 0.3.0 stalls a guest-initiated connection for good
/// once a write to the host's Unix socket is partial: it fails to re-enable
/// `EPOLLOUT` on a socket it never registered, "Failed to re-enable
/// EPOLLOUT" in its log. A busy host reader makes that likely at full
/// speed.)
pub fn launch_for_service_port(cfg: &VmConfig) -> Result<Vm> {
    let mut vm = Vm::launch(cfg).map_err(|e| format!("launching: {e}"))?;
    let boot = vm
        .wait_for_guest(STEP, Timeouts::uniform(STEP))
        .map_err(|e| format!("waiting for the guest: {e}"))?;
    drop(boot);
    Ok(vm)
}

/// A session on the service port of `vm`.
pub fn service_session(vm: &Vm, port: u32) -> Result<Session> {
    let mut sc = SessionConfig::new(Attach::Hybrid {
        uds_path: vm.uds_path().to_path_buf(),
        port,
    });
    sc.timeouts = Timeouts::uniform(STEP);
    Session::open(&sc).map_err(|e| format!("protocol VM: {e}"))
}

/// [`RT_REQUESTS`] 16-byte reverses one after the other: requests/s.
pub fn service_rt(s: &mut Session) -> Result<f64> {
    let small = payload(16);
    let mut expect = small.clone();
    expect.reverse();
    let start = Instant::now();
    for _ in 0..RT_REQUESTS {
        let r = s
            .reverse(small.clone())
            .map_err(|e| format!("protocol VM: {e}"))?;
        if r != expect {
            return Err("protocol VM: wrong 16-byte reverse".into());
        }
    }
    Ok(RT_REQUESTS as f64 / start.elapsed().as_secs_f64())
}

/// `times` reverses of `data` (expecting `expect`): MB/s each way.
pub fn service_tp(s: &mut Session, data: &[u8], expect: &[u8], times: usize) -> Result<f64> {
    let copies: Vec<Vec<u8>> = (0..times).map(|_| data.to_vec()).collect();
    let start = Instant::now();
    for d in copies {
        let r = s.reverse(d).map_err(|e| format!("protocol VM: {e}"))?;
        if r != expect {
            return Err(format!("protocol VM: wrong {} B reverse", data.len()));
        }
    }
    Ok((data.len() * times) as f64 / 1e6 / start.elapsed().as_secs_f64())
}

/// The service VM alone: 1 against [`WINDOW`] in flight, several clients,
/// the heap peak after an 8 MiB reverse.
pub fn measure(cfg: &VmConfig, reps: usize) -> Result<ServiceFigures> {
    let err = |e: svmc_host::Error| format!("protocol VM: {e}");
    let vm = launch_for_service_port(cfg).map_err(|e| format!("protocol VM: {e}"))?;
    let accel = vm.accel();
    let mut s = service_session(&vm, cfg.service_port)?;
    let small = payload(16);
    let mut expect = small.clone();
    expect.reverse();
    for _ in 0..20 {
        s.reverse(small.clone()).map_err(err)?;
    }
    // 1 and WINDOW in flight, alternately.
    let batch: Vec<svmc::Request> = (0..RT_REQUESTS)
        .map(|_| svmc::Request::Reverse(small.clone()))
        .collect();
    let (mut one, mut pipelined) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        one.push(service_rt(&mut s)?);
        let c = s.client().ok_or("protocol VM: no client")?;
        let start = Instant::now();
        let answers = c
            .call_many(&batch, WINDOW)
            .map_err(|e| format!("protocol VM, pipelined: {e}"))?;
        pipelined.push(RT_REQUESTS as f64 / start.elapsed().as_secs_f64());
        if answers
            .into_iter()
            .any(|a| a.ok() != Some(svmc::Response::Reverse(expect.clone())))
        {
            return Err("protocol VM: wrong pipelined 16-byte reverse".into());
        }
    }
    let big = payload(MEM_PAYLOAD);
    let mut expect_big = big.clone();
    expect_big.reverse();
    if s.reverse(big).map_err(err)? != expect_big {
        return Err("protocol VM: wrong 8 MiB reverse".into());
    }
    let info = s.info().map_err(err)?;
    let heap = info.heap.ok_or("protocol VM: no heap figures in Info")?;
    // Last, with the session's connection closed: a guest that serves one
    // connection at a time resets an idle one when another waits.
    s.close().map_err(err)?;
    // Several clients at once, each on its own connection, next to one.
    let uds = vm.uds_path().to_path_buf();
    let mut one_client = (Vec::new(), Vec::new());
    let mut many = (Vec::new(), Vec::new());
    let mut clients_failed = None;
    'reps: for _ in 0..reps {
        for (n, out) in [(1, &mut one_client), (CLIENTS, &mut many)] {
            match clients_at_once(&uds, cfg.service_port, n) {
                Ok((rate, worst)) => {
                    out.0.push(rate);
                    out.1.push(worst);
                }
                // A guest that serves one connection at a time: reported
                // in the table, the other figures go on.
                Err(e) => {
                    clients_failed = Some(e);
                    break 'reps;
                }
            }
        }
    }
    let clients = match clients_failed {
        None => Ok((
            (Stat::of(one_client.0), Stat::of(one_client.1)),
            (Stat::of(many.0), Stat::of(many.1)),
        )),
        Some(e) => Err(e),
    };
    let tasks = async_client::tasks(&uds, cfg.service_port, reps);
    let envelope = envelope::cost(&uds, cfg.service_port, reps);
    if let Ok(s) = service_session(&vm, cfg.service_port) {
        let _ = s.power_off(STEP);
    }
    drop(vm);
    Ok(ServiceFigures {
        serial: Pair::of(pipelined, one),
        clients,
        tasks,
        envelope,
        heap_peak: heap.peak,
        heap_size: heap.size,
        accel,
    })
}

/// `n` clients, each on its own connection to the service port, each
/// sending [`CLIENT_REQUESTS`] 16-byte requests one at a time, all started
/// together: the total rate (requests/s, over the time until the last
/// client is done) and the worst latency of one request (ms).
fn clients_at_once(uds: &Path, port: u32, n: usize) -> Result<(f64, f64)> {
    use vsock_transport::rpc::Client;
    let mut clients = Vec::new();
    for _ in 0..n {
        let conn = vsock_transport::hybrid::connect(uds, port, &Timeouts::uniform(STEP))
            .map_err(|e| format!("{n} clients: connect: {e}"))?;
        clients.push(conn);
    }
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n + 1));
    let threads: Vec<_> = clients
        .into_iter()
        .map(|conn| {
            let barrier = barrier.clone();
            std::thread::spawn(move || -> Result<(Instant, f64)> {
                let c =
                    Client::<_, svmc::ServiceVm>::hello(conn, svmc_comm::frame::DEFAULT_MAX_BODY);
                // Everyone reaches the barrier, also after a failed HELLO.
                barrier.wait();
                let mut c = c.map_err(|e| format!("HELLO: {e}"))?;
                let req = svmc::Request::Reverse(payload(16));
                let mut worst = 0f64;
                for _ in 0..CLIENT_REQUESTS {
                    let t = Instant::now();
                    c.call(&req).map_err(|e| format!("request: {e}"))?;
                    worst = worst.max(ms(t.elapsed()));
                }
                let done = Instant::now();
                let _ = c.close();
                Ok((done, worst))
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut last = start;
    let mut worst = 0f64;
    for t in threads {
        let (done, w) = t
            .join()
            .map_err(|_| format!("{n} clients: a client panicked"))?
            .map_err(|e| format!("{n} clients: {e}"))?;
        last = last.max(done);
        worst = worst.max(w);
    }
    let total = (n * CLIENT_REQUESTS) as f64 / (last - start).as_secs_f64();
    Ok((total, worst))
}

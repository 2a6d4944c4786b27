//! Load suite: the concurrent and pipelined traffic the async client and
//! protocol v2 exist for, against one VM, repeated: 200 tasks sharing one
//! async client with payloads from 1 B to 1 MiB, 4 async clients x 50
//! tasks, 8 clients each sending a request of the guest's `max_body` at
//! once, 8 pipelined requests of 1 MiB written before reading, `GOODBYE`
//! after 4 MiB of requests, 300 calls cancelled at once; then every slot
//! of the guest must still be free.
//!
//! Every answer is checked: the reversed payload, or `out_of_memory` (the
//! typed refusal of WIRE.md R-FLOW-2). A call that gets no answer within
//! [`STALL`] is a stall; the target is 0. `SVMC_LOAD_REPS` sets the
//! repetitions (`tests::suites::LOAD_REPS`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use svmc::{REVERSE_OVERHEAD, Request, Response, SERVICE_PORT, ServiceError, ServiceVm};
use svmc_comm::frame::{self, DEFAULT_MAX_BODY};
use svmc_host::Session;
use tests::ensure;
use tests::harness::{Case, Setup, Suite};
use tests::suites::LOAD_REPS;
use vsock_transport::rpc::Client;
use vsock_transport::{Connection, Timeouts, async_host, hybrid};

type R = Result<(), String>;

/// No answer within this long is a stall (answers take milliseconds).
const STALL: Duration = Duration::from_secs(20);

struct Load {
    session: std::sync::Mutex<Option<Session>>,
    uds: PathBuf,
    /// Connections the guest serves besides the boot connection.
    max_conns: usize,
    reps: u64,
}

/// What the calls got, over every case and repetition.
struct Totals {
    answered: AtomicU64,
    refused: AtomicU64,
    stalls: AtomicU64,
}

impl Totals {
    fn print(&self) {
        println!(
            "  so far: {} answered, {} out_of_memory, {} stalls",
            self.answered.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.stalls.load(Ordering::Relaxed)
        );
    }
}

/// A small xorshift generator: payload sizes and bytes (the seed is
/// printed, so a failing run can be replayed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Log-uniform in 1..=max: as many 10-byte payloads as 100 KiB ones.
    fn size(&mut self, max: usize) -> usize {
        let bits = (self.next() % (64 * u64::from(max.ilog2() + 1))) as f64 / 64.0;
        (2f64.powf(bits) as usize).clamp(1, max)
    }

    fn payload(&mut self, max: usize) -> Vec<u8> {
        let n = self.size(max);
        let seed = self.next();
        (0..n)
            .map(|i| (seed.wrapping_add(i as u64 * 0x9e37_79b9) >> 24) as u8)
            .collect()
    }
}

fn seed() -> u64 {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    println!("  seed {s}");
    s
}

/// What an answer to a reverse of `sent` may be; counts it.
fn check(t: &Totals, sent: &[u8], got: vsock_transport::Result<Response>) -> R {
    match got {
        Ok(Response::Reverse(b)) => {
            ensure(
                b.len() == sent.len() && b.iter().eq(sent.iter().rev()),
                || format!("WRONG ANSWER to a reverse of {} bytes", sent.len()),
            )?;
            t.answered.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Ok(Response::Err(ServiceError::OutOfMemory { .. })) => {
            t.refused.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e @ vsock_transport::Error::Timeout(_)) => {
            t.stalls.fetch_add(1, Ordering::Relaxed);
            Err(format!("STALL: {e}"))
        }
        Err(e) => Err(format!("call failed: {e}")),
    }
}

fn timeouts() -> Timeouts {
    Timeouts::uniform(STALL)
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

async fn async_client(l: &Load) -> Result<async_host::Client<ServiceVm>, String> {
    let s = async_host::hybrid::connect(&l.uds, SERVICE_PORT, &timeouts())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    async_host::Client::hello(s, DEFAULT_MAX_BODY, &timeouts())
        .await
        .map_err(|e| format!("hello: {e}"))
}

fn blocking_client(l: &Load) -> Result<Client<hybrid::HybridStream, ServiceVm>, String> {
    let s =
        hybrid::connect(&l.uds, SERVICE_PORT, &timeouts()).map_err(|e| format!("connect: {e}"))?;
    Client::hello(s, DEFAULT_MAX_BODY).map_err(|e| format!("hello: {e}"))
}

/// `clients` async clients, `tasks` tasks on each, `calls` calls per task
/// of payloads up to `max` bytes.
fn tasks_on_clients(l: &Load, clients: usize, tasks: usize, calls: usize, max: usize) -> R {
    let rt = runtime()?;
    let mut rng = Rng(seed());
    rt.block_on(async {
        let mut handles = Vec::new();
        for _ in 0..clients {
            let client = Arc::new(async_client(l).await?);
            for _ in 0..tasks {
                let client = client.clone();
                let mut rng = Rng(rng.next() | 1);
                handles.push(tokio::spawn(async move {
                    for _ in 0..calls {
                        let p = rng.payload(max);
                        let r = client.call(&Request::Reverse(p.clone())).await;
                        check(&TOTALS, &p, r)?;
                    }
                    Ok::<(), String>(())
                }));
            }
        }
        let mut errors = Vec::new();
        for h in handles {
            if let Err(e) = h.await.map_err(|e| e.to_string()).and_then(|r| r) {
                errors.push(e);
            }
        }
        TOTALS.print();
        ensure(errors.is_empty(), || {
            format!("{} of the tasks failed, first: {}", errors.len(), errors[0])
        })
    })
}

static TOTALS: Totals = Totals {
    answered: AtomicU64::new(0),
    refused: AtomicU64::new(0),
    stalls: AtomicU64::new(0),
};

fn repeat(l: &Load, f: impl Fn(&Load) -> R) -> R {
    for rep in 0..l.reps {
        let start = Instant::now();
        f(l).map_err(|e| format!("repetition {} of {}: {e}", rep + 1, l.reps))?;
        println!("  repetition {} in {:.2?}", rep + 1, start.elapsed());
    }
    Ok(())
}

fn async_200_tasks_one_client(l: &Load) -> R {
    repeat(l, |l| tasks_on_clients(l, 1, 200, 3, 1 << 20))
}

fn async_4_clients_50_tasks(l: &Load) -> R {
    repeat(l, |l| tasks_on_clients(l, 4, 50, 3, 1 << 20))
}

/// As many blocking clients as the guest serves besides the boot
/// connection (7) each send one request of the guest's `max_body` at
/// once, and read as they go.
fn eight_clients_max_body_at_once(l: &Load) -> R {
    repeat(l, |l| {
        let results: Vec<R> = thread::scope(|s| {
            let hs: Vec<_> = (0..l.max_conns)
                .map(|i| {
                    s.spawn(move || {
                        let mut c = blocking_client(l)?;
                        let len = (c.peer_max_body() - REVERSE_OVERHEAD) as usize;
                        let p: Vec<u8> = (0..len).map(|j| (j * 31 + i) as u8).collect();
                        let r = c.call(&Request::Reverse(p.clone()));
                        check(&TOTALS, &p, r)?;
                        c.close().map_err(|e| e.to_string())
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or(Err("panicked".into())))
                .collect()
        });
        TOTALS.print();
        let errors: Vec<_> = results.into_iter().filter_map(Result::err).collect();
        ensure(errors.is_empty(), || format!("{errors:?}"))
    })
}

/// 8 requests of 1 MiB sent with `Client::send_request` before any answer
/// is read, then 4 more and `GOODBYE` in one go: every write completes
/// and every request gets its answer.
fn pipelined_megabytes_without_reading(l: &Load) -> R {
    repeat(l, |l| {
        for (n, goodbye) in [(8, false), (4, true)] {
            let mut c = blocking_client(l)?;
            let payloads: Vec<Vec<u8>> = (0..n)
                .map(|i| (0..1 << 20).map(|j: usize| (j + i) as u8).collect())
                .collect();
            let mut ids = Vec::new();
            for p in &payloads {
                ids.push(
                    c.send_request(&Request::Reverse(p.clone()))
                        .map_err(|e| format!("writing a pipelined request: {e}"))?,
                );
            }
            if goodbye {
                c.connection()
                    .send(&frame::goodbye())
                    .map_err(|e| format!("GOODBYE: {e}"))?;
            }
            for p in &payloads {
                let r = c.recv_response().and_then(|(_, r)| r);
                check(&TOTALS, p, r)?;
            }
            if !goodbye {
                c.close().map_err(|e| e.to_string())?;
            }
        }
        TOTALS.print();
        Ok(())
    })
}

/// 300 calls on one async client, each dropped after 1 ms, then ordinary
/// calls on the same client: the connection is still healthy.
fn cancel_300_at_once(l: &Load) -> R {
    repeat(l, |l| {
        let rt = runtime()?;
        rt.block_on(async {
            let client = Arc::new(async_client(l).await?);
            let mut hs = Vec::new();
            for i in 0..300usize {
                let client = client.clone();
                hs.push(tokio::spawn(async move {
                    let p = vec![i as u8; 1 + (i * 997) % 200_000];
                    tokio::time::timeout(
                        Duration::from_millis(1),
                        client.call(&Request::Reverse(p)),
                    )
                    .await
                }));
            }
            let mut finished = 0;
            for h in hs {
                if matches!(h.await, Ok(Ok(_))) {
                    finished += 1;
                }
            }
            println!("  300 calls cancelled after 1 ms ({finished} finished in time)");
            for i in 0..20u8 {
                let p = vec![i; 1000 + usize::from(i)];
                let r = client.call(&Request::Reverse(p.clone())).await;
                check(&TOTALS, &p, r).map_err(|e| format!("a call after the cancels: {e}"))?;
            }
            Ok(())
        })
    })
}

/// After everything above: as many new connections as the guest serves
/// all get `HELLO` (no slot was kept by a stalled or closed connection).
fn every_slot_is_free_afterwards(l: &Load) -> R {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let tried: Result<Vec<_>, String> = (0..l.max_conns).map(|_| blocking_client(l)).collect();
        match tried {
            Ok(clients) => {
                for c in clients {
                    c.close().map_err(|e| e.to_string())?;
                }
                break;
            }
            Err(e) if Instant::now() < deadline => {
                println!("  not yet: {e}");
                thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(format!("{} new connections: {e}", l.max_conns)),
        }
    }
    let stalls = TOTALS.stalls.load(Ordering::Relaxed);
    TOTALS.print();
    ensure(stalls == 0, || format!("{stalls} stalls"))
}

fn power_off(l: &Load) -> R {
    tests::power_off_shared(&l.session)
}

const CASES: &[Case<Load>] = &[
    ("async_200_tasks_one_client", async_200_tasks_one_client),
    ("async_4_clients_50_tasks", async_4_clients_50_tasks),
    (
        "eight_clients_max_body_at_once",
        eight_clients_max_body_at_once,
    ),
    (
        "pipelined_megabytes_without_reading",
        pipelined_megabytes_without_reading,
    ),
    ("cancel_300_at_once", cancel_300_at_once),
    (
        "every_slot_is_free_afterwards",
        every_slot_is_free_afterwards,
    ),
];

fn setup(s: Setup) -> Result<Load, String> {
    let mut session = s.ctx.session()?;
    let uds = session.vm().ok_or("no VM")?.uds_path().to_path_buf();
    let reps = LOAD_REPS.get();
    println!("  {reps} repetitions of each case");
    Ok(Load {
        session: std::sync::Mutex::new(Some(session)),
        uds,
        // The guest's 8, less the boot connection, kept for the power-off.
        max_conns: 7,
        reps,
    })
}

fn main() {
    tests::harness::main(&Suite {
        name: "load",
        private_tmp: false,
        setup,
        cases: CASES,
        last: Some(("power_off", power_off)),
        helpers: &[],
    })
}

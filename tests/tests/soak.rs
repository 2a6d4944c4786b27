//! Soak suite: many launch/request/power-off cycles in a row, many requests
//! over one connection, several VMs served at once by one process, a pool
//! of 8 threads that launch VMs and hand them to each other, and 16 VMs
//! booting at once on a machine kept busy by other threads, with zero
//! failures and no growth in child processes, open file descriptors or
//! runtime directories.
//!
//! Sizes: `tests::suites::SOAK` (CI sizes by default and in `cargo xtask
//! test`, full ones in `cargo xtask soak`; each variable overrides).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use svmc_host::Session;
use tests::harness::{Case, Setup, Suite};
use tests::suites::{
    SOAK_CYCLES, SOAK_LOAD_VMS, SOAK_POOL_REQUESTS, SOAK_POOL_VMS, SOAK_REQUESTS, SOAK_VM_REQUESTS,
    SOAK_VMS,
};
use tests::{Ctx, ensure, procs};

type R = Result<(), String>;

struct Soak {
    ctx: Ctx,
    cycles: u64,
    requests: u64,
    vms: u64,
    vm_requests: u64,
    pool_vms: u64,
    pool_requests: u64,
    load_vms: u64,
}

/// Threads of the pool in [`thread_pool`].
const POOL_THREADS: usize = 8;

/// Child processes and open file descriptors of this process.
fn resources() -> (Vec<u32>, usize) {
    (procs::our_children(), procs::fd_count())
}

/// Fails if children or fds grew since `before` (children may need a
/// moment to be reaped).
fn same_resources(before: &(Vec<u32>, usize)) -> R {
    let after = procs::poll(Duration::from_secs(2), || {
        let now = resources();
        (now.0.len() <= before.0.len() && now.1 <= before.1).then_some(now)
    });
    let now = resources();
    println!(
        "  children {} -> {}, open fds {} -> {}",
        before.0.len(),
        now.0.len(),
        before.1,
        now.1
    );
    ensure(after.is_some(), || {
        format!(
            "resources grew: children {:?} -> {:?}, fds {} -> {}",
            before.0, now.0, before.1, now.1
        )
    })
}

fn power_off(s: Session) -> R {
    let status = s
        .power_off(Duration::from_secs(20))
        .map_err(|e| e.to_string())?
        .ok_or("no exit status")?;
    ensure(status.success(), || format!("QEMU exit status {status}"))
}

fn reverse_checked(s: &mut Session, payload: Vec<u8>) -> R {
    let mut want = payload.clone();
    want.reverse();
    let got = s.reverse(payload).map_err(|e| e.to_string())?;
    ensure(got == want, || "wrong answer".into())
}

fn cycles(s: &Soak) -> R {
    // One cycle first, so that one-time set-up (the accelerator verdict,
    // lazily opened files) does not count as growth.
    let warm = Instant::now();
    let mut first = s.ctx.session()?;
    reverse_checked(&mut first, b"warm-up".to_vec())?;
    power_off(first)?;
    println!("  warm-up cycle {:?}", warm.elapsed());
    let before = resources();
    let start = Instant::now();
    let mut failures = Vec::new();
    for i in 0..s.cycles {
        let r = (|| {
            let mut vm = s.ctx.session()?;
            reverse_checked(&mut vm, format!("cycle {i}").into_bytes())?;
            power_off(vm)
        })();
        if let Err(e) = r {
            println!("  cycle {i}: {e}");
            failures.push(i);
        }
    }
    let took = start.elapsed();
    println!(
        "  {} cycles in {took:.2?}: {:.2} cycles/s, {:.0} ms each, {} failed",
        s.cycles,
        s.cycles as f64 / took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / s.cycles.max(1) as f64,
        failures.len()
    );
    ensure(failures.is_empty(), || {
        format!(
            "{} of {} cycles failed: {failures:?}",
            failures.len(),
            s.cycles
        )
    })?;
    same_resources(&before)
}

fn requests_one_connection(s: &Soak) -> R {
    let mut vm = s.ctx.session()?;
    reverse_checked(&mut vm, b"warm-up".to_vec())?;
    let before = resources();
    let start = Instant::now();
    let mut bytes = 0u64;
    for i in 0..s.requests {
        // Sizes from 0 to a few KiB, contents tied to the request number.
        let len = (i.wrapping_mul(2654435761) % 4096) as usize;
        let payload: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
        bytes += len as u64;
        reverse_checked(&mut vm, payload).map_err(|e| format!("request {i}: {e}"))?;
    }
    let took = start.elapsed();
    println!(
        "  {} requests in {took:.2?}: {:.0} requests/s, {:.1} MiB/s each way",
        s.requests,
        s.requests as f64 / took.as_secs_f64(),
        bytes as f64 / took.as_secs_f64() / (1 << 20) as f64
    );
    same_resources(&before)?;
    power_off(vm)
}

fn several_vms_at_once(s: &Soak) -> R {
    let before = resources();
    let start = Instant::now();
    let results: Vec<Result<u64, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..s.vms)
            .map(|n| {
                let ctx = &s.ctx;
                let count = s.vm_requests;
                scope.spawn(move || -> Result<u64, String> {
                    let mut vm = ctx.session().map_err(|e| format!("vm {n}: {e}"))?;
                    for i in 0..count {
                        // Distinct per VM: a reply from another VM would differ.
                        let payload = format!("vm {n} request {i} {}", "#".repeat(n as usize * 7));
                        reverse_checked(&mut vm, payload.into_bytes())
                            .map_err(|e| format!("vm {n} request {i}: {e}"))?;
                    }
                    power_off(vm).map_err(|e| format!("vm {n}: {e}"))?;
                    Ok(count)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    let took = start.elapsed();
    let total: u64 = results.iter().filter_map(|r| r.as_ref().ok()).sum();
    println!(
        "  {} VMs, {total} requests in {took:.2?} (boot and power-off included): {:.0} requests/s",
        s.vms,
        total as f64 / took.as_secs_f64()
    );
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    ensure(errors.is_empty(), || format!("{errors:?}"))?;
    same_resources(&before)
}

/// This process's runtime directories (`$TMPDIR/svmc-<pid>-*`).
fn runtime_dirs() -> usize {
    let prefix = format!("svmc-{}-", std::process::id());
    std::fs::read_dir(std::env::temp_dir())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .count()
        })
        .unwrap_or(0)
}

/// Children, open fds and runtime directories, as counts.
fn counts() -> (usize, usize, usize) {
    (
        procs::our_children().len(),
        procs::fd_count(),
        runtime_dirs(),
    )
}

/// A VM handed from one pool thread to the next, or why there is none.
type Handoff = Result<(u64, Session), String>;

/// Sends `n` distinct requests numbered from `from` on VM `k`.
fn pool_requests(s: &mut Session, k: u64, from: u64, n: u64) -> R {
    for i in from..from + n {
        let payload = format!("pool vm {k} request {i} {}", "+".repeat((k % 13) as usize));
        reverse_checked(s, payload.into_bytes()).map_err(|e| format!("vm {k} request {i}: {e}"))?;
    }
    Ok(())
}

/// One pool thread: in each round it launches its VM of that round, sends
/// half of the requests, hands it to the next thread, then takes the
/// previous thread's VM of the round, sends the other half and drops it
/// (its `Vm` kills QEMU and the daemon). A thread never finishes a VM it
/// launched, and a VM outlives the thread that launched it only as far as
/// that thread keeps running.
fn pool_thread(
    s: &Soak,
    me: usize,
    next: mpsc::Sender<Handoff>,
    inbox: mpsc::Receiver<Handoff>,
) -> (u64, Vec<String>) {
    let n = POOL_THREADS as u64;
    let half = s.pool_requests / 2;
    let rest = s.pool_requests - half;
    let prev = (me + POOL_THREADS - 1) % POOL_THREADS;
    let mut served = 0;
    let mut errors = Vec::new();
    for round in 0..s.pool_vms.div_ceil(n) {
        let k = round * n + me as u64;
        if k < s.pool_vms {
            let launched = s.ctx.session().and_then(|mut vm| {
                pool_requests(&mut vm, k, 0, half)?;
                Ok((k, vm))
            });
            let _ = next.send(launched.map_err(|e| format!("vm {k} (thread {me}): {e}")));
        }
        if round * n + (prev as u64) < s.pool_vms {
            match inbox.recv_timeout(Duration::from_secs(120)) {
                Ok(Ok((k, mut vm))) => match pool_requests(&mut vm, k, half, rest) {
                    Ok(()) => served += 1,
                    Err(e) => errors.push(format!("{e} (thread {me}, handed over)")),
                },
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(format!("thread {me}: no VM from thread {prev}: {e}")),
            }
        }
    }
    (served, errors)
}

fn thread_pool(s: &Soak) -> R {
    // Warm-up (accelerator verdict, lazily opened files), not counted.
    power_off(s.ctx.session()?)?;
    let before = counts();
    let start = Instant::now();
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..POOL_THREADS).map(|_| mpsc::channel()).unzip();
    let results: Vec<(u64, Vec<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = rxs
            .into_iter()
            .enumerate()
            .map(|(me, inbox)| {
                let next = txs[(me + 1) % POOL_THREADS].clone();
                scope.spawn(move || pool_thread(s, me, next, inbox))
            })
            .collect();
        drop(txs);
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| (0, vec!["a pool thread panicked".into()]))
            })
            .collect()
    });
    let took = start.elapsed();
    let served: u64 = results.iter().map(|r| r.0).sum();
    let errors: Vec<&String> = results.iter().flat_map(|r| &r.1).collect();
    println!(
        "  {POOL_THREADS} threads, {served} of {} VMs served ({} requests each, handed between \
         threads) in {took:.2?}, {} errors",
        s.pool_vms,
        s.pool_requests,
        errors.len()
    );
    let after = procs::poll(Duration::from_secs(5), || {
        let now = counts();
        (now.0 <= before.0 && now.1 <= before.1 && now.2 <= before.2).then_some(now)
    });
    let now = counts();
    println!(
        "  children {} -> {}, open fds {} -> {}, runtime directories {} -> {}",
        before.0, now.0, before.1, now.1, before.2, now.2
    );
    ensure(errors.is_empty(), || format!("{errors:?}"))?;
    ensure(served == s.pool_vms, || {
        format!("{served} of {} VMs served", s.pool_vms)
    })?;
    ensure(after.is_some(), || {
        format!("resources grew: (children, fds, runtime dirs) {before:?} -> {now:?}")
    })
}

/// Busy threads per core in [`boots_under_load`].
const HOGS_PER_CORE: usize = 12;

/// `load_vms` VMs booting at once while `HOGS_PER_CORE` spinning threads
/// per core keep the machine busy (a user's oversubscribed host, or CI
/// with other builds): every boot is slow, none is stuck, so all must come
/// up without a relaunch (a relaunch would add load and lose time).
fn boots_under_load(s: &Soak) -> R {
    // Warm-up (accelerator verdict, lazily opened files), not counted.
    power_off(s.ctx.session()?)?;
    let before = resources();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hogs = cores * HOGS_PER_CORE;
    let relaunches = svmc_host::launcher::relaunches();
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let results: Vec<Result<Duration, String>> = std::thread::scope(|scope| {
        for _ in 0..hogs {
            scope.spawn(|| {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            });
        }
        let booted: Vec<_> = (0..s.load_vms)
            .map(|n| {
                let ctx = &s.ctx;
                scope.spawn(move || {
                    let mut vm = ctx.session().map_err(|e| format!("vm {n}: {e}"))?;
                    let took = start.elapsed();
                    reverse_checked(&mut vm, format!("loaded vm {n}").into_bytes())
                        .map_err(|e| format!("vm {n}: {e}"))?;
                    Ok((took, vm))
                })
            })
            .collect();
        let booted: Vec<Result<(Duration, Session), String>> = booted
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect();
        stop.store(true, Ordering::Relaxed);
        booted
            .into_iter()
            .map(|r| {
                let (took, vm) = r?;
                power_off(vm)?;
                Ok(took)
            })
            .collect()
    });
    let mut times: Vec<Duration> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    times.sort();
    let relaunched = svmc_host::launcher::relaunches() - relaunches;
    println!(
        "  {} VMs booting at once with {hogs} busy threads on {cores} cores: {} up, slowest \
         after {:.2?}, {relaunched} relaunched",
        s.load_vms,
        times.len(),
        times.last().copied().unwrap_or_default()
    );
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    ensure(errors.is_empty(), || format!("{errors:?}"))?;
    ensure(relaunched == 0, || {
        format!("{relaunched} slow boots were taken for stuck and relaunched")
    })?;
    same_resources(&before)
}

const CASES: &[Case<Soak>] = &[
    ("cycles", cycles),
    ("requests_one_connection", requests_one_connection),
    ("several_vms_at_once", several_vms_at_once),
    ("thread_pool", thread_pool),
    ("boots_under_load", boots_under_load),
];

fn setup(s: Setup) -> Result<Soak, String> {
    let soak = Soak {
        ctx: s.ctx,
        cycles: SOAK_CYCLES.get(),
        requests: SOAK_REQUESTS.get(),
        vms: SOAK_VMS.get(),
        vm_requests: SOAK_VM_REQUESTS.get(),
        pool_vms: SOAK_POOL_VMS.get(),
        pool_requests: SOAK_POOL_REQUESTS.get(),
        load_vms: SOAK_LOAD_VMS.get(),
    };
    println!(
        "  {} cycles, {} requests, {} VMs x {} requests, a pool of {POOL_THREADS} threads: {} VMs \
         x {} requests, {} VMs booting under load",
        soak.cycles,
        soak.requests,
        soak.vms,
        soak.vm_requests,
        soak.pool_vms,
        soak.pool_requests,
        soak.load_vms
    );
    Ok(soak)
}

fn main() {
    tests::harness::main(&Suite {
        name: "soak",
        private_tmp: false,
        setup,
        cases: CASES,
        last: None,
        helpers: &[],
    })
}

//! Soak suite: many launch/request/power-off cycles in a row, many requests
//! over one connection, and several VMs served at once by one process, with
//! zero failures and no growth in child processes or open file descriptors.
//!
//! Sizes: `tests::suites::SOAK` (CI sizes by default and in `cargo xtask
//! test`, full ones in `cargo xtask soak`; each variable overrides).

use std::time::{Duration, Instant};

use host::Session;
use tests::harness::{Case, Setup, Suite};
use tests::suites::{SOAK_CYCLES, SOAK_REQUESTS, SOAK_VM_REQUESTS, SOAK_VMS};
use tests::{Ctx, ensure, procs};

type R = Result<(), String>;

struct Soak {
    ctx: Ctx,
    cycles: u64,
    requests: u64,
    vms: u64,
    vm_requests: u64,
}

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

const CASES: &[Case<Soak>] = &[
    ("cycles", cycles),
    ("requests_one_connection", requests_one_connection),
    ("several_vms_at_once", several_vms_at_once),
];

fn setup(s: Setup) -> Result<Soak, String> {
    let soak = Soak {
        ctx: s.ctx,
        cycles: SOAK_CYCLES.get(),
        requests: SOAK_REQUESTS.get(),
        vms: SOAK_VMS.get(),
        vm_requests: SOAK_VM_REQUESTS.get(),
    };
    println!(
        "  {} cycles, {} requests, {} VMs x {} requests",
        soak.cycles, soak.requests, soak.vms, soak.vm_requests
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

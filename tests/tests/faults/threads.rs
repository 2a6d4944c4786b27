//! VMs and the threads that launch them.

use super::*;

/// A VM launched on a worker thread (as a thread pool or tokio's
/// `spawn_blocking` would) outlives that thread: `PR_SET_PDEATHSIG` fires
/// when the *thread* that spawned a child exits.
pub(super) fn vm_outlives_the_thread_that_launched_it(f: &Faults) -> R {
    f.checked(|| {
        let cfg = f.session_config(f.config(), Duration::from_secs(30));
        let worker = std::thread::spawn(move || Session::open(&cfg).map_err(|e| e.to_string()));
        let mut s = worker.join().map_err(|_| "the worker panicked")??;
        // The thread that launched the VM is gone.
        std::thread::sleep(Duration::from_millis(600));
        let (qemu, daemon) = s.vm().ok_or("no vm")?.pids();
        let pids: Vec<u32> = [qemu, daemon].into_iter().flatten().collect();
        ensure(
            pids.len() == 2 && pids.iter().all(|&p| procs::alive(p)),
            || format!("QEMU or the daemon died with the launching thread: {pids:?}"),
        )?;
        let got = s
            .reverse(b"outlived".to_vec())
            .map_err(|e| format!("after the launching thread exited: {e}"))?;
        ensure(got == b"deviltuo", || format!("{got:?}"))?;
        let status = s
            .power_off(Duration::from_secs(20))
            .map_err(|e| e.to_string())?
            .ok_or("no exit status")?;
        ensure(status.success(), || format!("QEMU exit status {status}"))
    })
}

/// Helper process of [`sigkill_of_a_host_whose_worker_launched_the_vm`]:
/// opens a session on a worker thread, keeps it on the main thread, prints
/// `pids <qemu> <daemon>` and waits to be killed.
pub(super) fn helper_worker_thread_vm(ctx: &Ctx) -> i32 {
    let mut vm = ctx.vm_config();
    vm.accel = Accel::Tcg;
    let mut sc = SessionConfig::new(Attach::Launch(Box::new(vm)));
    sc.timeouts = ctx.timeouts();
    let worker = std::thread::spawn(move || Session::open(&sc));
    let mut s = match worker.join() {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            eprintln!("helper: {e}");
            return 1;
        }
        Err(_) => return 1,
    };
    let Some((Some(qemu), Some(daemon))) = s.vm().map(|v| v.pids()) else {
        return 1;
    };
    println!("pids {qemu} {daemon}");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A host process whose VM a worker thread launched is killed with
/// `SIGKILL`: QEMU and the daemon must die with it (and not before).
pub(super) fn sigkill_of_a_host_whose_worker_launched_the_vm(f: &Faults) -> R {
    use std::io::BufRead;
    let leaks = LeakCheck::start(&f.tmp);
    let mut child = tests::harness::helper_command(&f.ctx, "worker_thread_vm")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(30));
    let pids: Vec<u32> = line
        .as_deref()
        .unwrap_or("")
        .strip_prefix("pids ")
        .map(|p| {
            p.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let r = (|| {
        ensure(pids.len() == 2, || format!("the helper said {line:?}"))?;
        std::thread::sleep(Duration::from_millis(600));
        ensure(pids.iter().all(|&p| procs::alive(p)), || {
            format!("the VM died with the worker thread: {pids:?} gone before the kill")
        })
    })();
    signal(&child, Signal::SIGKILL);
    let _ = child.wait();
    r?;
    let killed_at = Instant::now();
    let left = procs::wait_gone(&pids, GRACE);
    ensure(left.is_empty(), || {
        format!(
            "still running {:?} after the host was killed: {left:?}",
            killed_at.elapsed()
        )
    })?;
    println!(
        "  QEMU and daemon gone {:?} after the SIGKILL",
        killed_at.elapsed()
    );
    // A SIGKILLed process cannot remove its runtime directory; the next
    // launch does (here: the same function).
    svmc_host::launcher::remove_stale_runtime_dirs(f.tmp.path());
    leaks.finish(GRACE)
}

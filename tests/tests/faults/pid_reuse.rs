//! The Ctrl-C cleanup and a pid reused after QEMU exited.

use super::*;

/// A new `sleep` of ours that holds `pid` (through `ns_last_pid`), or
/// `None` if another process holds it now and does not let it go (on a
/// busy machine another process, or a thread, may take a freed pid
/// first).
pub(super) fn spawn_with_pid(pid: u32) -> Result<Option<Child>, String> {
    for _ in 0..200 {
        if procs::alive(pid) {
            // Taken: wait a little for a short-lived holder to end.
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).map_err(|e| {
            format!("writing /proc/sys/kernel/ns_last_pid (this test needs root): {e}")
        })?;
        let mut c = Command::new("sleep")
            .arg("30")
            .spawn()
            .map_err(|e| format!("sleep: {e}"))?;
        if c.id() == pid {
            return Ok(Some(c));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
    Ok(None)
}

/// QEMU has exited and been reaped while its `Vm` is still alive, and an
/// unrelated process now has QEMU's old pid: the Ctrl-C cleanup
/// (`launcher::kill_all`, what the handler runs) must not kill it. The
/// unrelated process is always one of ours; if another process takes the
/// pid first, the case starts over with a new VM (a few times).
pub(super) fn ctrl_c_cleanup_never_kills_a_reused_pid(f: &Faults) -> R {
    f.checked(|| {
        for _ in 0..3 {
            let mut s = Session::open(&f.session_config(f.config(), Duration::from_secs(30)))
                .map_err(|e| e.to_string())?;
            let qemu = s.vm().ok_or("no vm")?.pids().0.ok_or("no QEMU pid")?;
            // The guest powers off; QEMU exits and is reaped, the Vm stays.
            s.call(&svmc::Request::PowerOff)
                .map_err(|e| e.to_string())?;
            let status = s
                .vm()
                .ok_or("no vm")?
                .wait_exit(Duration::from_secs(20))
                .map_err(|e| e.to_string())?;
            ensure(!procs::alive(qemu), || format!("QEMU {qemu} still runs"))?;
            let Some(mut impostor) = spawn_with_pid(qemu)? else {
                eprintln!("  pid {qemu} was taken by another process: again with a new VM");
                continue;
            };
            svmc_host::launcher::kill_all();
            // A SIGKILL sent by kill_all is delivered before it returns;
            // the pause lets the kernel finish the kill before we look.
            std::thread::sleep(Duration::from_millis(200));
            let alive = impostor.try_wait().map_err(|e| e.to_string())?.is_none();
            let _ = impostor.kill();
            let _ = impostor.wait();
            ensure(alive, || {
                format!(
                    "kill_all killed pid {qemu}, reused by an unrelated process after QEMU \
                     ({status}) was reaped"
                )
            })?;
            drop(s);
            return Ok(());
        }
        Err("QEMU's old pid was taken by another process three times".into())
    })
}

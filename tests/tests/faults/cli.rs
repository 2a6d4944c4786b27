//! The `host-cli` process: killed, interrupted, run twice, attached to nothing.

use super::*;

/// Waits until `child` has started QEMU (a process naming the private
/// `TMPDIR` whose name is QEMU's) and returns the pids mentioning `TMPDIR`.
pub(super) fn wait_for_vm_of(f: &Faults, child: &mut Child) -> Result<Vec<u32>, String> {
    let qemu = svmc_host::tools::qemu_binary(f.ctx.arch);
    let found = procs::poll(Duration::from_secs(20), || {
        if let Ok(Some(_)) = child.try_wait() {
            return Some(Vec::new());
        }
        let pids = procs::mentioning_dir(f.tmp.path());
        let has_qemu = pids.iter().any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| qemu.starts_with(c.trim()))
        });
        (has_qemu && pids.len() >= 2).then_some(pids)
    })
    .ok_or("QEMU did not start within 20 s")?;
    ensure(!found.is_empty(), || {
        "host-cli exited before QEMU started".into()
    })?;
    Ok(found)
}

pub(super) fn signal(child: &Child, sig: Signal) {
    // Our own unreaped child.
    let _ = kill(Pid::from_raw(child.id() as i32), sig);
}

/// A long text argument, so that the request takes a little while.
pub(super) fn long_text() -> String {
    "svmc".repeat(16 * 1024)
}

pub(super) fn cli_sigkill_leaves_no_children(f: &Faults) -> R {
    let leaks = LeakCheck::start(&f.tmp);
    let mut child = f
        .host_cli()
        .args(["reverse", &long_text()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let pids = wait_for_vm_of(f, &mut child)?;
    signal(&child, Signal::SIGKILL);
    let status = child.wait().map_err(|e| e.to_string())?;
    let killed_at = Instant::now();
    let left = procs::wait_gone(&pids, GRACE);
    ensure(left.is_empty(), || {
        format!(
            "still running {:?} after host-cli was killed: {left:?}",
            killed_at.elapsed()
        )
    })?;
    println!(
        "  host-cli {status}; its {} children gone after {:?}; left behind: {:?}",
        pids.len(),
        killed_at.elapsed(),
        f.tmp.entries()
    );
    // A SIGKILLed process cannot remove its runtime directory; the next
    // launch removes directories whose owner is gone.
    let out = f
        .host_cli()
        .args(["reverse", "next"])
        .output()
        .map_err(|e| e.to_string())?;
    ensure(out.status.success(), || stderr_of(&out))?;
    ensure(out.stdout == b"txen\n", || format!("{:?}", out.stdout))?;
    leaks.finish(GRACE)
}

pub(super) fn cli_normal_run_leaves_nothing(f: &Faults) -> R {
    f.checked(|| {
        let out = f
            .host_cli()
            .args(["reverse", "abc"])
            .output()
            .map_err(|e| e.to_string())?;
        ensure(out.status.success(), || stderr_of(&out))?;
        ensure(out.stdout == b"cba\n", || format!("{:?}", out.stdout))
    })
}

pub(super) fn cli_ctrl_c(f: &Faults) -> R {
    f.checked(|| {
        let mut child = f
            .host_cli()
            .args(["reverse", &long_text()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let pids = wait_for_vm_of(f, &mut child)?;
        signal(&child, Signal::SIGINT);
        let start = Instant::now();
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        ensure(start.elapsed() < Duration::from_secs(3), || {
            format!("host-cli took {:?} to stop", start.elapsed())
        })?;
        let stderr = stderr_of(&out);
        ensure(out.status.code() == Some(130), || {
            format!("exit status {} (want 130): {stderr}", out.status)
        })?;
        ensure(stderr.contains("interrupted"), || format!("{stderr:?}"))?;
        let left = procs::wait_gone(&pids, GRACE);
        ensure(left.is_empty(), || format!("still running: {left:?}"))
    })
}

pub(super) fn cli_two_at_once(f: &Faults) -> R {
    f.checked(|| {
        let spawn = |text: &str| {
            f.host_cli()
                .args(["reverse", text])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())
        };
        let a = spawn("first-run")?;
        let b = spawn("second-run")?;
        let a = a.wait_with_output().map_err(|e| e.to_string())?;
        let b = b.wait_with_output().map_err(|e| e.to_string())?;
        ensure(a.status.success(), || format!("first: {}", stderr_of(&a)))?;
        ensure(b.status.success(), || format!("second: {}", stderr_of(&b)))?;
        ensure(a.stdout == b"nur-tsrif\n", || format!("{:?}", a.stdout))?;
        ensure(b.stdout == b"nur-dnoces\n", || format!("{:?}", b.stdout))
    })
}

pub(super) fn cli_attach_to_nothing(f: &Faults) -> R {
    f.checked(|| {
        let sock = f.scratch.path().join("nobody.vsock");
        let start = Instant::now();
        let out = f
            .host_cli()
            .arg("--attach-uds")
            .arg(&sock)
            .arg("info")
            .output()
            .map_err(|e| e.to_string())?;
        ensure(start.elapsed() < Duration::from_secs(5), || {
            format!("took {:?}", start.elapsed())
        })?;
        ensure(out.status.code() == Some(1), || format!("{}", out.status))?;
        one_line_mentioning(&stderr_of(&out), &[&sock.display().to_string()])
    })
}

//! Fault suite: missing and failing tools, bad images, guests that hang or
//! crash, QEMU or the daemon killed mid-request, `host-cli` killed or
//! interrupted. Every case checks the error (typed, one line, naming the
//! right log) and that nothing is left behind: no child processes, no
//! runtime directories or sockets (`$TMPDIR/svmc-*`; `TMPDIR` is private to
//! this run). Run with `cargo xtask run-e2e`.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use svmc_host::tools::Tools;
use svmc_host::{Accel, Arch, Attach, Error, Session, SessionConfig, Vm, VmConfig};
use tests::harness::{Case, Setup, Suite};
use tests::{Ctx, LeakCheck, PrivateTmp, ensure, one_line_mentioning, procs};

type R = Result<(), String>;

/// How long children may take to disappear after their parent died.
const GRACE: Duration = Duration::from_secs(2);

struct Faults {
    ctx: Ctx,
    tmp: PrivateTmp,
    /// Scratch files (images, scripts): not in the private `TMPDIR`.
    scratch: tempfile::TempDir,
}

impl Faults {
    fn tools(&self) -> Result<Tools, String> {
        Tools::find(self.ctx.arch).map_err(|e| e.to_string())
    }

    fn config(&self) -> VmConfig {
        let mut c = self.ctx.vm_config();
        c.accel = Accel::Tcg;
        c
    }

    fn session_config(&self, vm: VmConfig, boot: Duration) -> SessionConfig {
        let mut s = SessionConfig::new(Attach::Launch(Box::new(vm)));
        s.timeouts = self.ctx.timeouts();
        s.boot_timeout = boot;
        s
    }

    fn write_image(&self, name: &str, bytes: &[u8]) -> Result<PathBuf, String> {
        let p = self.scratch.path().join(name);
        std::fs::write(&p, bytes).map_err(|e| e.to_string())?;
        Ok(p)
    }

    /// `host-cli` with the suite's image and log directory.
    fn host_cli(&self) -> Command {
        let mut c = Command::new(&self.ctx.host_cli);
        c.arg("--arch")
            .arg(self.ctx.arch.name())
            .arg("--image")
            .arg(&self.ctx.image)
            .arg("--log-dir")
            .arg(&self.ctx.log_dir)
            .arg("--accel")
            .arg("tcg")
            .arg("--timeout")
            .arg("30");
        if let Some(m) = &self.ctx.machine {
            c.arg("--machine").arg(m);
        }
        c
    }

    /// Runs `f` and then checks for leftovers.
    fn checked(&self, f: impl FnOnce() -> R) -> R {
        let leaks = LeakCheck::start(&self.tmp);
        let r = f();
        let l = leaks.finish(GRACE);
        r.and(l)
    }
}

/// Expects `Session::open` to fail, returns the error.
fn open_err(cfg: &SessionConfig) -> Result<Error, String> {
    match Session::open(cfg) {
        Ok(_) => Err("the session opened".into()),
        Err(e) => Ok(e),
    }
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ---- tools ------------------------------------------------------------------

fn qemu_missing(f: &Faults) -> R {
    f.checked(|| {
        let mut cfg = f.config();
        let mut tools = f.tools()?;
        let qemu = format!("/nonexistent/{}", svmc_host::tools::qemu_binary(f.ctx.arch));
        tools.qemu = qemu.clone().into();
        cfg.tools = Some(tools);
        let e = Vm::launch(&cfg).err().ok_or("launched without QEMU")?;
        ensure(matches!(e, Error::Spawn { .. }), || format!("{e:?}"))?;
        one_line_mentioning(&e.to_string(), &[&qemu])?;
        // Through the CLI and `$SVMC_QEMU`.
        let out = f
            .host_cli()
            .env(svmc_host::env::QEMU, "/nonexistent/qemu")
            .args(["reverse", "abc"])
            .output()
            .map_err(|e| e.to_string())?;
        ensure(out.status.code() == Some(1), || format!("{}", out.status))?;
        one_line_mentioning(
            &stderr_of(&out),
            &[
                &format!("{} not found", svmc_host::tools::qemu_binary(f.ctx.arch)),
                &format!("{}=/nonexistent/qemu", svmc_host::env::QEMU),
            ],
        )
    })
}

fn daemon_missing(f: &Faults) -> R {
    f.checked(|| {
        let mut cfg = f.config();
        let mut tools = f.tools()?;
        tools.daemon = "/nonexistent/vhost-device-vsock".into();
        cfg.tools = Some(tools);
        let e = Vm::launch(&cfg)
            .err()
            .ok_or("launched without the daemon")?;
        ensure(matches!(e, Error::Spawn { .. }), || format!("{e:?}"))?;
        one_line_mentioning(&e.to_string(), &["/nonexistent/vhost-device-vsock"])?;
        let out = f
            .host_cli()
            .env(svmc_host::env::DAEMON, "/nonexistent/daemon")
            .args(["reverse", "abc"])
            .output()
            .map_err(|e| e.to_string())?;
        ensure(out.status.code() == Some(1), || format!("{}", out.status))?;
        one_line_mentioning(&stderr_of(&out), &["vhost-device-vsock not found"])
    })
}

fn daemon_fails_to_start(f: &Faults) -> R {
    f.checked(|| {
        let mut cfg = f.config();
        let mut tools = f.tools()?;
        tools.daemon = "/bin/false".into();
        cfg.tools = Some(tools);
        let start = Instant::now();
        let e = Vm::launch(&cfg).err().ok_or("launched with /bin/false")?;
        let Error::DaemonFailed { log, .. } = &e else {
            return Err(format!("expected DaemonFailed, got {e:?}"));
        };
        ensure(start.elapsed() < Duration::from_secs(5), || {
            format!("took {:?}", start.elapsed())
        })?;
        ensure(log.exists(), || format!("{} missing", log.display()))?;
        one_line_mentioning(&e.to_string(), &["exited", &log.display().to_string()])
    })
}

fn daemon_never_creates_socket(f: &Faults) -> R {
    f.checked(|| {
        // A "daemon" that runs but never creates its socket.
        let script = f.scratch.path().join("silent-daemon");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 60\n").map_err(|e| e.to_string())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        let mut cfg = f.config();
        let mut tools = f.tools()?;
        tools.daemon = script;
        cfg.tools = Some(tools);
        cfg.daemon_timeout = Duration::from_millis(500);
        let start = Instant::now();
        let e = Vm::launch(&cfg)
            .err()
            .ok_or("launched with a silent daemon")?;
        ensure(start.elapsed() < Duration::from_secs(3), || {
            format!("took {:?}", start.elapsed())
        })?;
        let Error::DaemonFailed { log, .. } = &e else {
            return Err(format!("expected DaemonFailed, got {e:?}"));
        };
        one_line_mentioning(
            &e.to_string(),
            &["did not create", &log.display().to_string()],
        )
    })
}

fn qemu_fails_to_start(f: &Faults) -> R {
    f.checked(|| {
        let mut cfg = f.config();
        cfg.extra_qemu_args = vec!["-no-such-option".into()];
        let start = Instant::now();
        let e = open_err(&f.session_config(cfg, Duration::from_secs(20)))?;
        let Error::QemuExited {
            serial_log,
            qemu_log,
            ..
        } = &e
        else {
            return Err(format!("expected QemuExited, got {e:?}"));
        };
        ensure(start.elapsed() < Duration::from_secs(5), || {
            format!("took {:?}", start.elapsed())
        })?;
        let log = std::fs::read_to_string(qemu_log).unwrap_or_default();
        ensure(log.contains("no-such-option"), || {
            format!("QEMU log {}: {log:?}", qemu_log.display())
        })?;
        one_line_mentioning(
            &e.to_string(),
            &[
                "QEMU exited",
                &serial_log.display().to_string(),
                &qemu_log.display().to_string(),
            ],
        )
    })
}

// ---- images and guests that never answer -------------------------------------

fn image_missing(f: &Faults) -> R {
    f.checked(|| {
        let mut cfg = f.config();
        cfg.image = f.scratch.path().join("no-such-image");
        let e = Vm::launch(&cfg).err().ok_or("launched without an image")?;
        ensure(matches!(e, Error::Image { .. }), || format!("{e:?}"))?;
        one_line_mentioning(&e.to_string(), &["no-such-image", "cannot open"])
    })
}

fn image_not_elf(f: &Faults) -> R {
    f.checked(|| {
        let mut cfg = f.config();
        cfg.image = f.write_image("not-elf", b"#!/bin/sh\necho this is not a guest\n")?;
        let e = Vm::launch(&cfg).err().ok_or("launched a shell script")?;
        ensure(matches!(e, Error::Image { .. }), || format!("{e:?}"))?;
        one_line_mentioning(&e.to_string(), &["not-elf", "not an ELF"])?;
        // An ELF for another machine.
        let arch = f.ctx.arch;
        let other = Arch::ALL
            .into_iter()
            .find(|a| *a != arch)
            .ok_or("one arch")?;
        let name = format!("{other}.elf");
        cfg.image = f.write_image(&name, &svmc_host::image::tiny_elf(other))?;
        let e = Vm::launch(&cfg)
            .err()
            .ok_or_else(|| format!("launched an {other} ELF on {arch}"))?;
        ensure(matches!(e, Error::Image { .. }), || format!("{e:?}"))?;
        one_line_mentioning(&e.to_string(), &[&name, &format!("is not {arch}")])
    })
}

fn guest_hangs_before_connecting(f: &Faults) -> R {
    f.checked(|| {
        let mut cfg = f.config();
        cfg.image = f.write_image("hang.elf", &tests::images::hanging_elf(f.ctx.arch))?;
        let boot = Duration::from_secs(2);
        let start = Instant::now();
        let e = open_err(&f.session_config(cfg, boot))?;
        let took = start.elapsed();
        let Error::GuestTimeout { serial_log, .. } = &e else {
            return Err(format!("expected GuestTimeout, got {e:?}"));
        };
        ensure(took >= boot && took < boot + Duration::from_secs(2), || {
            format!("took {took:?} for a {boot:?} boot timeout")
        })?;
        one_line_mentioning(
            &e.to_string(),
            &["connect to the host", &serial_log.display().to_string()],
        )
    })
}

fn guest_crashes_before_connecting(f: &Faults) -> R {
    f.checked(|| {
        let mut cfg = f.config();
        cfg.image = f.write_image("exit.elf", &svmc_host::image::tiny_elf(f.ctx.arch))?;
        let start = Instant::now();
        let e = open_err(&f.session_config(cfg, Duration::from_secs(20)))?;
        let took = start.elapsed();
        let Error::QemuExited {
            status,
            serial_log,
            qemu_log,
        } = &e
        else {
            return Err(format!("expected QemuExited, got {e:?}"));
        };
        ensure(took < Duration::from_secs(5), || format!("took {took:?}"))?;
        ensure(
            status.code() == Some(svmc_host::image::tiny_exit_status(f.ctx.arch)),
            || format!("status {status}"),
        )?;
        one_line_mentioning(
            &e.to_string(),
            &[
                &serial_log.display().to_string(),
                &qemu_log.display().to_string(),
            ],
        )
    })
}

/// The firmware's panic handler ends the VM with a failure status: 3 on
/// x86_64 (`isa-debug-exit`, on q35 and microvm alike), 1 on aarch64
/// (pvpanic, which the firmware looks for only on this path), and the
/// panic message is in the serial log.
fn firmware_panic_exits_with_failure_status(f: &Faults) -> R {
    f.checked(|| {
        let mut cfg = f.config();
        cfg.cmdline.push("svmc.test_panic=1".into());
        let e = open_err(&f.session_config(cfg, Duration::from_secs(20)))?;
        let Error::QemuExited {
            status, serial_log, ..
        } = &e
        else {
            return Err(format!("expected QemuExited, got {e:?}"));
        };
        let expected = match f.ctx.arch {
            Arch::X86_64 => 3,
            Arch::Aarch64 => 1,
        };
        ensure(status.code() == Some(expected), || {
            format!("status {status}, expected {expected}")
        })?;
        let log = std::fs::read_to_string(serial_log).map_err(|e| e.to_string())?;
        ensure(
            log.contains("[PANIC]") && log.contains("svmc.test_panic=1"),
            || format!("no panic message in the serial log:\n{log}"),
        )
    })
}

// ---- processes killed mid-request ---------------------------------------------

/// Opens a session, then sends 8 MiB requests in a loop while another
/// thread kills the child chosen by `pick` (QEMU or the daemon) during the
/// second request. The request in flight must fail with a typed error
/// within a few seconds.
fn killed_mid_request(f: &Faults, which: &str) -> R {
    f.checked(|| {
        let mut s = Session::open(&f.session_config(f.config(), Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let (qemu, daemon) = s.vm().ok_or("no vm")?.pids();
        let victim = match which {
            "qemu" => qemu,
            _ => daemon,
        }
        .ok_or("no pid")?;
        let payload = vec![0x5a; 8 << 20];
        s.reverse(payload.clone())
            .map_err(|e| format!("first request: {e}"))?;
        let (tx, rx) = mpsc::channel::<()>();
        let killer = std::thread::spawn(move || {
            let _ = rx.recv();
            std::thread::sleep(Duration::from_millis(5));
            // A child we still own (not reaped, so the pid cannot have been
            // reused).
            let _ = kill(Pid::from_raw(victim as i32), Signal::SIGKILL);
            Instant::now()
        });
        let mut tx = Some(tx);
        let mut result = Ok(());
        for _ in 0..50 {
            if let Some(tx) = tx.take() {
                let _ = tx.send(());
            }
            match s.reverse(payload.clone()) {
                Ok(_) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let killed_at = killer.join().map_err(|_| "killer thread panicked")?;
        let e = match result {
            Ok(()) => return Err(format!("50 requests succeeded after killing {which}")),
            Err(e) => e,
        };
        let took = killed_at.elapsed();
        ensure(took < Duration::from_secs(3), || {
            format!("the error came {took:?} after the kill: {e}")
        })?;
        println!("  {which} killed: {e} (after {took:?})");
        ensure(
            matches!(
                e,
                Error::Guest { .. } | Error::QemuExited { .. } | Error::DaemonFailed { .. }
            ),
            || format!("{e:?}"),
        )?;
        one_line_mentioning(&e.to_string(), &["serial log"])?;
        // Further calls fail at once too.
        let start = Instant::now();
        ensure(s.reverse(b"x".to_vec()).is_err(), || {
            "a request succeeded after the kill".into()
        })?;
        ensure(start.elapsed() < Duration::from_secs(3), || {
            format!("second failure took {:?}", start.elapsed())
        })?;
        drop(s);
        Ok(())
    })
}

fn qemu_killed_mid_request(f: &Faults) -> R {
    killed_mid_request(f, "qemu")
}

fn daemon_killed_mid_request(f: &Faults) -> R {
    killed_mid_request(f, "daemon")
}

// ---- VMs and the threads that launch them -------------------------------------

/// A VM launched on a worker thread (as a thread pool or tokio's
/// `spawn_blocking` would) outlives that thread: `PR_SET_PDEATHSIG` fires
/// when the *thread* that spawned a child exits.
fn vm_outlives_the_thread_that_launched_it(f: &Faults) -> R {
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
fn helper_worker_thread_vm(ctx: &Ctx) -> i32 {
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
fn sigkill_of_a_host_whose_worker_launched_the_vm(f: &Faults) -> R {
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

// ---- the Ctrl-C cleanup and pid reuse -------------------------------------------

/// A new `sleep` of ours that holds `pid` (through `ns_last_pid`), or
/// `None` if another process holds it now and does not let it go (on a
/// busy machine another process, or a thread, may take a freed pid
/// first).
fn spawn_with_pid(pid: u32) -> Result<Option<Child>, String> {
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
fn ctrl_c_cleanup_never_kills_a_reused_pid(f: &Faults) -> R {
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

// ---- the host-cli process ------------------------------------------------------

/// Waits until `child` has started QEMU (a process naming the private
/// `TMPDIR` whose name is QEMU's) and returns the pids mentioning `TMPDIR`.
fn wait_for_vm_of(f: &Faults, child: &mut Child) -> Result<Vec<u32>, String> {
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

fn signal(child: &Child, sig: Signal) {
    // Our own unreaped child.
    let _ = kill(Pid::from_raw(child.id() as i32), sig);
}

/// A long text argument, so that the request takes a little while.
fn long_text() -> String {
    "svmc".repeat(16 * 1024)
}

fn cli_sigkill_leaves_no_children(f: &Faults) -> R {
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

fn cli_normal_run_leaves_nothing(f: &Faults) -> R {
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

fn cli_ctrl_c(f: &Faults) -> R {
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

fn cli_two_at_once(f: &Faults) -> R {
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

fn cli_attach_to_nothing(f: &Faults) -> R {
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

const CASES: &[Case<Faults>] = &[
    ("qemu_missing", qemu_missing),
    ("daemon_missing", daemon_missing),
    ("daemon_fails_to_start", daemon_fails_to_start),
    ("daemon_never_creates_socket", daemon_never_creates_socket),
    ("qemu_fails_to_start", qemu_fails_to_start),
    ("image_missing", image_missing),
    ("image_not_elf", image_not_elf),
    (
        "guest_hangs_before_connecting",
        guest_hangs_before_connecting,
    ),
    (
        "guest_crashes_before_connecting",
        guest_crashes_before_connecting,
    ),
    (
        "firmware_panic_exits_with_failure_status",
        firmware_panic_exits_with_failure_status,
    ),
    ("qemu_killed_mid_request", qemu_killed_mid_request),
    ("daemon_killed_mid_request", daemon_killed_mid_request),
    (
        "vm_outlives_the_thread_that_launched_it",
        vm_outlives_the_thread_that_launched_it,
    ),
    (
        "sigkill_of_a_host_whose_worker_launched_the_vm",
        sigkill_of_a_host_whose_worker_launched_the_vm,
    ),
    (
        "ctrl_c_cleanup_never_kills_a_reused_pid",
        ctrl_c_cleanup_never_kills_a_reused_pid,
    ),
    (
        "cli_normal_run_leaves_nothing",
        cli_normal_run_leaves_nothing,
    ),
    (
        "cli_sigkill_leaves_no_children",
        cli_sigkill_leaves_no_children,
    ),
    ("cli_ctrl_c", cli_ctrl_c),
    ("cli_two_at_once", cli_two_at_once),
    ("cli_attach_to_nothing", cli_attach_to_nothing),
];

fn setup(s: Setup) -> Result<Faults, String> {
    let scratch = tempfile::Builder::new()
        .prefix("svmc-faults-scratch-")
        .tempdir_in(&s.logs)
        .map_err(|e| format!("scratch dir: {e}"))?;
    Ok(Faults {
        ctx: s.ctx,
        tmp: s.tmp.ok_or("no private TMPDIR")?,
        scratch,
    })
}

fn main() {
    tests::harness::main(&Suite {
        name: "faults",
        private_tmp: true,
        setup,
        cases: CASES,
        last: None,
        helpers: &[("worker_thread_vm", helper_worker_thread_vm)],
    })
}

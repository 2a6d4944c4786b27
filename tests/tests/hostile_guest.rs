//! Hostile-guest suite: the guest firmware built with the `hostile` feature
//! (`SVMC_E2E_HOSTILE_IMAGE`) misbehaves on purpose in the mode named by
//! `svmc.hostile=<mode>` on its command line (see `guest/src/hostile.rs`).
//! For each mode, both the library (`svmc_host::Session`) and the `host-cli`
//! binary must fail with the right typed error within their timeouts, and
//! leave nothing behind: no QEMU or daemon process (their pids, taken from
//! `Vm::pids` before the drop, are gone from `/proc`), no socket and no
//! runtime directory (`TMPDIR` is private to this run). Run with
//! `cargo xtask run-e2e`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use svmc::{Request, Response, ServiceVm};
use svmc_comm::frame::{DEFAULT_MAX_BODY, FrameKind};
use svmc_host::launcher::{DEFAULT_BOOT_ATTEMPT, launch_ready};
use svmc_host::session::BoxConnection;
use svmc_host::{Accel, Attach, Error, Session, SessionConfig, VmConfig};
use tests::harness::{Case, Setup, Suite};
use tests::suites::vars;
use tests::{Ctx, LeakCheck, PrivateTmp, ensure, one_line_mentioning, procs};
use vsock_transport::rpc::Client;
use vsock_transport::{Error as TError, Step, Timeouts};

type R = Result<(), String>;

/// Read, hello and write timeout of every case: short, so that the modes
/// that stall fail fast.
const READ: Duration = Duration::from_secs(2);

/// How long a guest may take to boot and connect (TCG).
const BOOT: Duration = Duration::from_secs(20);

/// Scheduling slack allowed on top of a timeout.
const SLACK: Duration = Duration::from_millis(500);

/// How long children may take to disappear after a kill.
const GRACE: Duration = Duration::from_secs(2);

/// Time between two bytes of the `trickle` mode (`TRICKLE_INTERVAL_US`).
const TRICKLE_INTERVAL: Duration = Duration::from_secs(1);

struct Hostile {
    ctx: Ctx,
    image: PathBuf,
    tmp: PrivateTmp,
}

/// At which step a mode makes the host fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Exchanging `HELLO` frames (`Session::open`).
    Hello,
    /// Waiting for the first response (`Session::reverse`).
    Response,
}

/// What one mode must produce.
struct Expect {
    mode: &'static str,
    stage: Stage,
    /// Whether the host must wait for its whole read timeout (the guest
    /// stalls), rather than fail as soon as the bad bytes arrive.
    times_out: bool,
    /// The typed error.
    check: fn(&TError) -> bool,
    /// What `host-cli`'s one-line reason must say.
    cli_says: &'static str,
}

const EXPECT: &[Expect] = &[
    Expect {
        mode: "garbage",
        stage: Stage::Hello,
        times_out: false,
        // The guest's first random byte is 0xfd (fixed seed).
        check: |e| {
            matches!(
                e,
                TError::Protocol(svmc_comm::Error::UnknownFrameKind(0xfd))
            )
        },
        cli_says: "unknown frame kind 0xfd",
    },
    Expect {
        mode: "garbage-response",
        stage: Stage::Response,
        times_out: false,
        check: |e| {
            matches!(
                e,
                TError::Protocol(svmc_comm::Error::InvalidCbor { offset: 0 })
            )
        },
        cli_says: "invalid CBOR",
    },
    Expect {
        mode: "too-large",
        stage: Stage::Response,
        times_out: false,
        check: |e| {
            matches!(e, TError::Protocol(svmc_comm::Error::TooLarge { len, max })
                if *len == u64::from(DEFAULT_MAX_BODY) + 1 && *max == DEFAULT_MAX_BODY)
        },
        cli_says: "frame too large",
    },
    Expect {
        mode: "truncated",
        stage: Stage::Response,
        times_out: true,
        check: |e| {
            matches!(
                e,
                TError::TimeoutInFrame {
                    step: Step::Read,
                    ..
                }
            )
        },
        cli_says: "timed out during read",
    },
    Expect {
        mode: "wrong-version",
        stage: Stage::Hello,
        times_out: false,
        check: |e| {
            matches!(
                e,
                TError::Protocol(svmc_comm::Error::VersionMismatch { ours, theirs })
                    if *ours == <ServiceVm as svmc_comm::Protocol>::VERSION && *theirs == ours + 1
            )
        },
        cli_says: "version mismatch",
    },
    Expect {
        mode: "wrong-protocol",
        stage: Stage::Hello,
        times_out: false,
        check: |e| {
            matches!(e, TError::Protocol(svmc_comm::Error::ProtocolMismatch { theirs, .. })
                if theirs == "svmc-hostile")
        },
        cli_says: "protocol mismatch",
    },
    Expect {
        mode: "wrong-type",
        stage: Stage::Response,
        times_out: false,
        check: |e| {
            matches!(
                e,
                TError::Protocol(svmc_comm::Error::UnexpectedFrame {
                    expected: FrameKind::Response,
                    got: FrameKind::Request
                })
            )
        },
        cli_says: "unexpected REQUEST frame, expected RESPONSE",
    },
    Expect {
        mode: "trickle",
        stage: Stage::Response,
        times_out: true,
        check: |e| {
            matches!(
                e,
                TError::TimeoutInFrame {
                    step: Step::Read,
                    ..
                }
            )
        },
        cli_says: "timed out during read",
    },
    Expect {
        mode: "disconnect",
        stage: Stage::Response,
        times_out: false,
        check: |e| matches!(e, TError::Protocol(svmc_comm::Error::Truncated { .. })),
        cli_says: "truncated frame",
    },
];

fn expect(mode: &str) -> &'static Expect {
    EXPECT
        .iter()
        .find(|e| e.mode == mode)
        .expect("a mode of the table")
}

impl Hostile {
    fn vm_config(&self, mode: &str) -> VmConfig {
        let mut c = VmConfig::new(self.ctx.arch, &self.image);
        c.log_dir = Some(self.ctx.log_dir.clone());
        c.machine = self.ctx.machine.clone();
        c.accel = Accel::Tcg;
        c.cmdline.push(format!("svmc.hostile={mode}"));
        c
    }

    fn timeouts() -> Timeouts {
        Timeouts {
            accept: Some(BOOT),
            ..Timeouts::uniform(READ)
        }
    }

    /// Runs `f` and then checks for leftovers.
    fn checked(&self, f: impl FnOnce() -> R) -> R {
        let leaks = LeakCheck::start(&self.tmp);
        let r = f();
        let l = leaks.finish(GRACE);
        r.and(l)
    }
}

/// The transport error inside a library error.
fn transport(e: &Error) -> Option<&TError> {
    match e {
        Error::Guest { source, .. } | Error::Transport(source) => Some(source),
        _ => None,
    }
}

/// Checks the error `e` that took `took` against `x`.
fn check_error(x: &Expect, what: &str, e: &TError, took: Duration) -> R {
    ensure((x.check)(e), || {
        format!("{what}: wrong error for mode {}: {e:?}", x.mode)
    })?;
    ensure(took <= READ + SLACK, || {
        format!("{what}: failed after {took:?}, the timeout is {READ:?}")
    })?;
    if x.times_out {
        ensure(took + SLACK >= READ, || {
            format!("{what}: timed out after {took:?}, before the timeout of {READ:?}")
        })?;
    }
    Ok(())
}

/// The pids are gone from `/proc`, and the runtime directory too.
fn check_gone(pids: (Option<u32>, Option<u32>), runtime: &Path) -> R {
    let (qemu, daemon) = pids;
    let pids: Vec<u32> = [qemu, daemon].into_iter().flatten().collect();
    ensure(pids.len() == 2, || {
        format!("QEMU and daemon pids: {pids:?}")
    })?;
    let left = procs::wait_gone(&pids, GRACE);
    ensure(left.is_empty(), || {
        format!("still running after the drop: {left:?} (QEMU, daemon: {pids:?})")
    })?;
    ensure(!runtime.exists(), || {
        format!("runtime directory left: {}", runtime.display())
    })
}

/// The library: `Session::open` then a `reverse` request, and the same
/// steps by hand on a `Vm` (so that its pids can be checked after the
/// drop).
fn library(h: &Hostile, mode: &str) -> R {
    let x = expect(mode);
    h.checked(|| {
        // Through `Session`.
        let mut cfg = SessionConfig::new(Attach::Launch(Box::new(h.vm_config(mode))));
        cfg.timeouts = Hostile::timeouts();
        cfg.boot_timeout = BOOT;
        let start = Instant::now();
        match (Session::open(&cfg), x.stage) {
            (Err(e), Stage::Hello) => {
                let te = transport(&e).ok_or_else(|| format!("Session::open: {e}"))?;
                // Boot included: only the hello stage is bounded by READ.
                check_error(x, "Session::open", te, Duration::ZERO)?;
                ensure(start.elapsed() <= BOOT, || "Session::open too slow".into())?;
            }
            (Ok(_), Stage::Hello) => return Err("Session::open succeeded".into()),
            (Err(e), Stage::Response) => return Err(format!("Session::open: {e}")),
            (Ok(mut s), Stage::Response) => {
                let vm = s.vm().ok_or("no vm")?;
                let pids = vm.pids();
                let runtime = vm.runtime_dir().to_path_buf();
                let start = Instant::now();
                let r = s.reverse(b"abc".to_vec());
                let took = start.elapsed();
                let e = match r {
                    Ok(v) => return Err(format!("reverse succeeded: {v:?}")),
                    Err(e) => e,
                };
                let te = transport(&e).ok_or_else(|| format!("reverse: {e}"))?;
                check_error(x, "Session::reverse", te, took)?;
                let msg = e.to_string();
                ensure(msg.contains("serial log"), || {
                    format!("error does not name the serial log: {msg}")
                })?;
                drop(s);
                check_gone(pids, &runtime)?;
            }
        }

        // By hand, with the pids before the drop.
        let (vm, stream) = launch_ready(&h.vm_config(mode), BOOT, Hostile::timeouts())
            .map_err(|e| format!("launch_ready: {e}"))?;
        let pids = vm.pids();
        let runtime = vm.runtime_dir().to_path_buf();
        let conn: BoxConnection = Box::new(stream);
        let start = Instant::now();
        let (e, took) = match Client::<_, ServiceVm>::hello(conn, DEFAULT_MAX_BODY) {
            Err(e) if x.stage == Stage::Hello => (e, start.elapsed()),
            Err(e) => return Err(format!("handshake: {e}")),
            Ok(_) if x.stage == Stage::Hello => return Err("the handshake succeeded".into()),
            Ok(mut c) => {
                let start = Instant::now();
                match c.call(&Request::Reverse(b"abc".to_vec())) {
                    Ok(r) => return Err(format!("the call succeeded: {r:?}")),
                    Err(e) => (e, start.elapsed()),
                }
            }
        };
        check_error(x, "Client (by hand)", &e, took)?;
        println!("    {mode}: {:?} stage: {e:?} after {took:?}", x.stage);
        drop(vm);
        check_gone(pids, &runtime)
    })
}

/// The `host-cli` binary with `--append svmc.hostile=<mode>`: non-zero exit
/// with a one-line reason, within boot time plus its timeout.
fn binary(h: &Hostile, mode: &str) -> R {
    let x = expect(mode);
    h.checked(|| {
        let start = Instant::now();
        let out = Command::new(&h.ctx.host_cli)
            .arg("--arch")
            .arg(h.ctx.arch.name())
            .arg("--image")
            .arg(&h.image)
            .arg("--log-dir")
            .arg(&h.ctx.log_dir)
            .arg("--accel")
            .arg("tcg")
            .arg("--timeout")
            .arg(READ.as_secs_f64().to_string())
            .arg("--append")
            .arg(format!("svmc.hostile={mode}"))
            .args(["reverse", "abc"])
            .output()
            .map_err(|e| format!("running host-cli: {e}"))?;
        let took = start.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure(out.status.code() == Some(1), || {
            format!("host-cli exited with {}; stderr: {stderr}", out.status)
        })?;
        ensure(out.stdout.is_empty(), || {
            format!(
                "host-cli printed on stdout: {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        one_line_mentioning(&stderr, &["host-cli: error:", x.cli_says, "serial log"])?;
        // Boot plus one timed step; a boot may take one relaunch
        // (`--boot-timeout`, see svmc_host::launcher::launch_ready).
        ensure(took <= READ * 2 + SLACK * 2 + DEFAULT_BOOT_ATTEMPT, || {
            format!("host-cli took {took:?} with --timeout {READ:?}")
        })?;
        if x.times_out {
            ensure(took + SLACK >= READ, || {
                format!("host-cli gave up after {took:?}, before its timeout of {READ:?}")
            })?;
        }
        println!(
            "    {mode}: host-cli {} in {took:?}: {}",
            out.status,
            stderr.trim_end()
        );
        Ok(())
    })
}

/// The trickle mode proves the per-frame deadline: bytes keep arriving
/// every second (more often than the read timeout), so a timeout per
/// `recv` would never fire and the 14-byte response would arrive after
/// about 14 s; the frame's single deadline ends the read after `READ`.
fn trickle_per_frame_deadline(h: &Hostile) -> R {
    ensure(TRICKLE_INTERVAL < READ, || {
        "the trickle interval must be shorter than the read timeout".into()
    })?;
    h.checked(|| {
        let (_vm, stream) = launch_ready(&h.vm_config("trickle"), BOOT, Hostile::timeouts())
            .map_err(|e| format!("launch_ready: {e}"))?;
        let mut c = Client::<_, ServiceVm>::hello(stream, DEFAULT_MAX_BODY)
            .map_err(|e| format!("handshake: {e}"))?;
        // Count the bytes that arrive within the deadline, through the
        // same framed reader.
        let counting = Counting {
            inner: c.connection(),
            got: 0,
        };
        let mut counting = counting;
        let frame = svmc_comm::frame::encode(
            FrameKind::Request,
            &Request::Reverse(b"abc".to_vec()),
            DEFAULT_MAX_BODY,
        )
        .map_err(|e| e.to_string())?;
        vsock_transport::framed::send_frame(&mut counting, &frame).map_err(|e| e.to_string())?;
        let start = Instant::now();
        let mut body = Vec::new();
        let r = vsock_transport::framed::recv_frame(&mut counting, DEFAULT_MAX_BODY, &mut body);
        let took = start.elapsed();
        ensure(
            matches!(
                r,
                Err(TError::TimeoutInFrame {
                    step: Step::Read,
                    ..
                })
            ),
            || format!("expected a read timeout, got {r:?}"),
        )?;
        ensure(took + SLACK >= READ && took <= READ + SLACK, || {
            format!("timed out after {took:?}, the read timeout is {READ:?}")
        })?;
        // At one byte per second the guest sent about READ/interval bytes:
        // more than one, so the deadline did not restart with each.
        ensure(counting.got >= 2, || {
            format!(
                "only {} bytes trickled in before the deadline",
                counting.got
            )
        })?;
        println!(
            "    trickle: {} bytes in {took:?}, then Timeout(Read)",
            counting.got
        );
        Ok(())
    })
}

/// The `lost-kick` mode drops the guest's first TX notification, as
/// vhost-device-vsock 0.3.0 can when it arrives before the queue is
/// enabled (`guest/runtime/src/kick.rs`). With a single boot attempt (no relaunch
/// to hide a hang) the guest must still connect, answer and power off, and
/// say in its serial log that it notified again.
fn lost_first_kick(h: &Hostile) -> R {
    h.checked(|| {
        let mut c = h.vm_config("lost-kick");
        c.boot_attempt = BOOT;
        let relaunches = svmc_host::launcher::relaunches();
        let start = Instant::now();
        let (mut vm, stream) = launch_ready(&c, BOOT, Hostile::timeouts())
            .map_err(|e| format!("launch_ready: {e}"))?;
        let booted = start.elapsed();
        let conn: BoxConnection = Box::new(stream);
        let mut client = Client::<_, ServiceVm>::hello(conn, DEFAULT_MAX_BODY)
            .map_err(|e| format!("handshake: {e}"))?;
        let r = client
            .call(&Request::Reverse(b"abc".to_vec()))
            .map_err(|e| format!("reverse: {e}"))?;
        ensure(r == Response::Reverse(b"cba".to_vec()), || {
            format!("reverse answered {r:?}")
        })?;
        let r = client
            .call(&Request::PowerOff)
            .map_err(|e| format!("power-off: {e}"))?;
        ensure(r == Response::PowerOff, || {
            format!("power-off answered {r:?}")
        })?;
        drop(client);
        let status = vm.wait_exit(BOOT).map_err(|e| format!("exit: {e}"))?;
        ensure(status.success(), || format!("QEMU exited with {status}"))?;
        ensure(svmc_host::launcher::relaunches() == relaunches, || {
            "the VM was relaunched".into()
        })?;
        // Whether the guest had to notify again is not asserted: the device
        // may take the buffer anyway when it processes another queue first
        // (seen on aarch64). What the test holds to is above: connected,
        // answered and powered off within one boot attempt, no relaunch.
        let log = std::fs::read_to_string(vm.serial_log()).map_err(|e| e.to_string())?;
        let renotified = log.contains("re-notified #1");
        println!(
            "    lost-kick: connected after {booted:?}, answered, powered off (re-notified: {renotified})"
        );
        Ok(())
    })
}

/// A connection that counts the bytes received.
struct Counting<'a, C: vsock_transport::Connection> {
    inner: &'a mut C,
    got: usize,
}

impl<C: vsock_transport::Connection> vsock_transport::Connection for Counting<'_, C> {
    fn send(&mut self, buf: &[u8]) -> vsock_transport::Result<()> {
        self.inner.send(buf)
    }
    fn recv(&mut self, buf: &mut [u8]) -> vsock_transport::Result<usize> {
        let n = self.inner.recv(buf)?;
        self.got += n;
        Ok(n)
    }
    fn shutdown(&mut self) -> vsock_transport::Result<()> {
        self.inner.shutdown()
    }
    fn begin(&mut self, step: Step) {
        self.inner.begin(step)
    }
}

macro_rules! cases {
    ($($name:ident => $mode:literal),* $(,)?) => {
        mod lib_cases {
            $(pub fn $name(h: &super::Hostile) -> super::R { super::library(h, $mode) })*
        }
        mod cli_cases {
            $(pub fn $name(h: &super::Hostile) -> super::R { super::binary(h, $mode) })*
        }
        const CASES: &[Case<Hostile>] = &[
            $((concat!("lib_", $mode), lib_cases::$name),)*
            $((concat!("cli_", $mode), cli_cases::$name),)*
            ("trickle_per_frame_deadline", trickle_per_frame_deadline),
            ("lost_first_kick", lost_first_kick),
        ];
    };
}

cases! {
    garbage => "garbage",
    garbage_response => "garbage-response",
    too_large => "too-large",
    truncated => "truncated",
    wrong_version => "wrong-version",
    wrong_protocol => "wrong-protocol",
    wrong_type => "wrong-type",
    trickle => "trickle",
    disconnect => "disconnect",
}

fn setup(s: Setup) -> Result<Hostile, String> {
    let image = std::env::var_os(vars::HOSTILE_IMAGE)
        .map(PathBuf::from)
        .ok_or_else(|| {
            format!(
                "{} is not set: run the suite with `cargo xtask run-e2e`",
                vars::HOSTILE_IMAGE
            )
        })?;
    println!("  hostile image {}", image.display());
    Ok(Hostile {
        ctx: s.ctx,
        image,
        tmp: s.tmp.ok_or("no private TMPDIR")?,
    })
}

fn main() {
    tests::harness::main(&Suite {
        name: "hostile_guest",
        private_tmp: true,
        setup,
        cases: CASES,
        last: None,
        helpers: &[],
    })
}

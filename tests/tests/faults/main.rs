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

mod cli;
mod guests;
mod kills;
mod pid_reuse;
mod threads;
mod tools;

use cli::*;
use guests::*;
use kills::*;
use pid_reuse::*;
use threads::*;
use tools::*;

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

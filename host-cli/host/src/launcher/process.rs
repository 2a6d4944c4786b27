//! The child processes of a VM: how they are started, and how every live
//! VM is torn down on Ctrl-C or `SIGTERM`.
//!
//! # Lifetime of the children
//!
//! A VM's QEMU and daemon must outlive the thread that launched them (a
//! thread pool's worker, tokio's `spawn_blocking`) and die with the process
//! or with their [`Vm`](super::Vm)'s drop, on whatever thread that happens:
//!
//! - Every child is forked by one dedicated *launcher thread* (`spawn`),
//!   started on first use and never ending while the process lives (the
//!   sending end of its queue is in a `static`, so its loop never sees the
//!   queue close).
//! - Each child sets `PR_SET_PDEATHSIG` to `SIGKILL` between fork and exec.
//!   The kernel sends it when the *thread* that forked the child exits
//!   (prctl(2)); here that thread is the launcher thread, which exits only
//!   when the whole process does: a normal exit, a panic that ends the
//!   process, or `SIGKILL` (the kernel then ends every thread). A child
//!   that started after its parent was already gone (re-parented before
//!   `prctl` took effect) sees a different parent pid and kills itself.
//! - `Vm`'s `Drop` (on any thread) kills and reaps the children through
//!   their `Child` handles; `Child` is not tied to the thread that spawned
//!   it (`waitpid` works from every thread of the process).

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use crate::{Error, Result};

/// The child processes of one VM, shared by its [`Vm`](super::Vm) and the
/// registry of live VMs that the Ctrl-C handler walks.
///
/// The children are `Child` handles behind one mutex, never bare pids:
/// reaping (`try_wait`, `wait`) and killing both go through the mutex, and
/// `Child::kill` never signals a child it has already reaped. So the
/// handler cannot kill a pid that the kernel has handed to an unrelated
/// process after QEMU exited and was reaped.
#[derive(Debug)]
pub(super) struct Procs {
    dir: PathBuf,
    children: Mutex<Children>,
}

/// QEMU and the daemon of one VM.
#[derive(Debug, Default)]
pub(super) struct Children {
    /// QEMU, once started (kept after it is reaped: its status is cached).
    pub qemu: Option<Child>,
    /// The device daemon, once started.
    pub daemon: Option<Child>,
}

impl Children {
    /// Kills and reaps both (a no-op for one already reaped); returns
    /// QEMU's exit status if it has one.
    pub fn kill(&mut self) -> Option<std::process::ExitStatus> {
        let mut status = None;
        if let Some(mut q) = self.qemu.take() {
            let _ = q.kill();
            status = q.wait().ok();
        }
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        status
    }
}

/// Live VMs, for [`install_signal_cleanup`]. Weak: a VM's drop removes it.
static LIVE: Mutex<Vec<Weak<Procs>>> = Mutex::new(Vec::new());

impl Procs {
    /// A VM with runtime directory `dir`, known to the Ctrl-C handler from
    /// now on (before any child starts, so that a Ctrl-C during the launch
    /// removes the directory too).
    pub fn register(dir: &Path) -> Arc<Self> {
        let p = Arc::new(Self {
            dir: dir.to_path_buf(),
            children: Mutex::new(Children::default()),
        });
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&p));
        p
    }

    /// The children, locked.
    pub fn lock(&self) -> MutexGuard<'_, Children> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Kills every live VM's processes and removes their runtime directories.
/// Safe to call from a signal-handling thread.
pub fn kill_all() {
    let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    for procs in live.iter().filter_map(Weak::upgrade) {
        procs.lock().kill();
        let _ = fs::remove_dir_all(&procs.dir);
    }
}

/// Installs a Ctrl-C / `SIGTERM` / `SIGHUP` handler that kills all live VMs,
/// removes their runtime directories and exits with status 130.
pub fn install_signal_cleanup() -> Result<()> {
    ctrlc::set_handler(|| {
        kill_all();
        eprintln!("host-cli: interrupted; VM stopped and cleaned up");
        std::process::exit(130);
    })
    .map_err(|e| Error::Io {
        context: "installing the Ctrl-C handler".into(),
        source: std::io::Error::other(e),
    })
}

/// A request to the launcher thread: the command, and where to send the
/// child (or the error).
type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Starts `cmd` (made by [`child_command`]) on the launcher thread and
/// returns the child: see the module docs for why the thread matters.
pub(super) fn spawn(cmd: Command) -> io::Result<Child> {
    static LAUNCHER: OnceLock<io::Result<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let launcher = LAUNCHER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("svmc-launcher".into())
            .spawn(move || {
                // Ends only with the process: `LAUNCHER` holds the sender.
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .map(|_| tx)
    });
    let gone = || io::Error::other("the launcher thread is gone");
    let tx = launcher
        .as_ref()
        .map_err(|e| io::Error::new(e.kind(), format!("starting the launcher thread: {e}")))?;
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.send((cmd, reply_tx)).map_err(|_| gone())?;
    reply_rx.recv().map_err(|_| gone())?
}

/// Makes a child die with the process (see the module docs; start it with
/// [`spawn`]) and keeps it out of our terminal's process group (so Ctrl-C
/// reaches only us, and we stop it in order).
///
/// A `detached` child instead starts a session of its own (`setsid`: no
/// controlling terminal, its own process group) and has no parent-death
/// signal, so it keeps running after this process exits
/// ([`Vm::detach`](super::Vm::detach)).
pub(super) fn child_command(program: &Path, detached: bool) -> Command {
    use nix::sys::prctl::set_pdeathsig;
    use nix::sys::signal::{Signal, raise};
    use nix::unistd::{Pid, getppid, setsid};

    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null());
    if detached {
        let in_child = || {
            setsid()?;
            Ok(())
        };
        // SAFETY: the closure runs in the child between fork and exec and
        // makes one async-signal-safe system call (setsid) without
        // allocating; its error converts with io::Error::from_raw_os_error.
        unsafe { cmd.pre_exec(in_child) };
        return cmd;
    }
    // Its own process group (setpgid(0, 0) in the child, by std).
    cmd.process_group(0);
    let parent = Pid::from_raw(std::process::id() as i32);
    let in_child = move || {
        set_pdeathsig(Signal::SIGKILL)?;
        // The parent may have died before prctl took effect (we would have
        // been re-parented to init or a subreaper).
        if getppid() != parent {
            raise(Signal::SIGKILL)?;
        }
        Ok(())
    };
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes async-signal-safe system calls (prctl, getppid, kill through
    // nix's thin wrappers); it does not allocate, and the `?` conversions
    // of an error to io::Error do not either (io::Error::from_raw_os_error).
    unsafe { cmd.pre_exec(in_child) };
    cmd
}

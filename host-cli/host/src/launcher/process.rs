//! The child processes of a VM: how they are started, and how every live
//! VM is torn down on Ctrl-C or `SIGTERM`.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::{Error, Result};

/// Live VMs, for [`install_signal_cleanup`]: (id, child pids, runtime dir).
static LIVE: Mutex<Vec<(u64, Vec<u32>, PathBuf)>> = Mutex::new(Vec::new());

pub(super) fn register(id: u64, pid: u32, dir: &Path) {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(entry) = live.iter_mut().find(|e| e.0 == id) {
        entry.1.push(pid);
    } else {
        live.push((id, vec![pid], dir.to_path_buf()));
    }
}

pub(super) fn register_dir(id: u64, dir: &Path) {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    if !live.iter().any(|e| e.0 == id) {
        live.push((id, Vec::new(), dir.to_path_buf()));
    }
}

pub(super) fn unregister(id: u64) {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    live.retain(|e| e.0 != id);
}

/// Kills every live VM's processes and removes their runtime directories.
/// Safe to call from a signal-handling thread.
pub fn kill_all() {
    let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    for (_, pids, dir) in live.iter() {
        for &pid in pids {
            // SAFETY: kill(2) with a pid we spawned and SIGKILL has no memory
            // effects; at worst the pid is already gone (ESRCH).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let _ = fs::remove_dir_all(dir);
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

/// Makes a child die with us and keeps it out of our terminal's process
/// group (so Ctrl-C reaches only us, and we stop it in order).
pub(super) fn child_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    let parent = std::process::id() as libc::pid_t;
    let in_child = move || {
        // SAFETY: async-signal-safe system calls on this process only, no
        // memory passed (here and in the blocks below).
        unsafe { libc::setpgid(0, 0) };
        // SAFETY: as above.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The parent may have died before prctl took effect (we would have
        // been re-parented to init or a subreaper).
        // SAFETY: as above.
        if unsafe { libc::getppid() } != parent {
            // SAFETY: as above.
            let me = unsafe { libc::getpid() };
            // SAFETY: as above.
            unsafe { libc::kill(me, libc::SIGKILL) };
        }
        Ok(())
    };
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes async-signal-safe system calls (setpgid, prctl, getppid, kill);
    // it does not allocate.
    unsafe { cmd.pre_exec(in_child) };
    cmd.stdin(Stdio::null());
    cmd
}

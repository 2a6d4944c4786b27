//! Processes of started VMs: a pid with its start time ([`ProcId`]), and
//! finding a VM's QEMU and daemon by their command lines when its record
//! does not name them ([`find`]): a start killed before it recorded them,
//! or a damaged record.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::launcher::args::escape_commas;

/// A process: its pid and when it started, to tell it from a later process
/// with the same pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    /// The pid.
    pub pid: u32,
    /// Its start time in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

/// `(state, start time)` of `pid` from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything.
    let rest = s.get(s.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    // `rest` starts at field 3 (state); field 22 is the start time.
    let state = fields.first()?.chars().next()?;
    let start = fields.get(22 - 3)?.parse().ok()?;
    Some((state, start))
}

impl ProcId {
    /// The process `pid` as it is now, if it exists.
    pub fn of(pid: u32) -> Option<Self> {
        stat(pid).map(|(_, start_time)| Self { pid, start_time })
    }

    /// Whether this very process still runs (exists, same start time, not a
    /// zombie).
    pub fn alive(&self) -> bool {
        stat(self.pid)
            .is_some_and(|(state, start)| start == self.start_time && state != 'Z' && state != 'X')
    }

    /// Sends `sig` if this very process still runs; returns whether it did.
    pub fn signal(&self, sig: Signal) -> bool {
        self.alive() && signal::kill(Pid::from_raw(self.pid as i32), sig).is_ok()
    }

    /// Waits up to `timeout` for the process to be gone; returns whether it is.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        while self.alive() {
            if start.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Ends the process: `SIGTERM`, then `SIGKILL` if it is still there
    /// after `grace`; waits up to 5 s more for it to be gone.
    pub fn end(&self, grace: Duration) {
        if self.signal(Signal::SIGTERM) && !self.wait_gone(grace) {
            self.signal(Signal::SIGKILL);
        }
        self.wait_gone(Duration::from_secs(5));
    }
}

/// Which of a VM's processes it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// QEMU.
    Qemu,
    /// The vsock device daemon.
    Daemon,
}

/// A VM's process found by its command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// QEMU or the daemon.
    pub role: Role,
    /// The process.
    pub id: ProcId,
}

/// The command lines of this user's processes, read once.
#[derive(Debug, Default)]
pub struct Table {
    procs: Vec<(ProcId, Vec<String>)>,
}

/// Longest command line read from `/proc/<pid>/cmdline`.
const MAX_CMDLINE: u64 = 256 * 1024;

impl Table {
    /// This user's live processes (not this one) and their arguments.
    pub fn read() -> Self {
        let uid = nix::unistd::getuid().as_raw();
        let me = std::process::id();
        let mut procs = Vec::new();
        let Ok(rd) = fs::read_dir("/proc") else {
            return Self::default();
        };
        for e in rd.filter_map(|e| e.ok()) {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me || e.metadata().map_or(true, |m| m.uid() != uid) {
                continue;
            }
            let mut raw = Vec::new();
            let read = fs::File::open(e.path().join("cmdline"))
                .and_then(|f| f.take(MAX_CMDLINE).read_to_end(&mut raw));
            let Some(id) = ProcId::of(pid)
                .filter(|_| read.is_ok())
                .filter(ProcId::alive)
            else {
                continue;
            };
            let args = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            procs.push((id, args));
        }
        Self { procs }
    }

    /// The QEMU and daemon whose vhost-user socket is `vhost_socket`: a
    /// QEMU with `-chardev ...,path=<it>` and a daemon with `--vm
    /// ...socket=<it>`, as the launcher starts them. No other process
    /// names that socket so.
    pub fn find(&self, vhost_socket: &Path) -> Vec<Found> {
        let Some(sock) = vhost_socket.to_str() else {
            return Vec::new();
        };
        let qemu_needle = format!("path={}", escape_commas(sock));
        let daemon_needle = format!("socket={sock}");
        let mut v = Vec::new();
        for (id, args) in &self.procs {
            for w in args.windows(2) {
                let role = match w[0].as_str() {
                    "-chardev" if has_option(&w[1], &qemu_needle) => Role::Qemu,
                    "--vm" if has_option(&w[1], &daemon_needle) => Role::Daemon,
                    _ => continue,
                };
                v.push(Found { role, id: *id });
                break;
            }
        }
        v
    }
}

/// Whether the option string `opts` (`k=v,k=v`, QEMU escaping `,,`) has
/// the whole option `needle` (`k=v`): preceded by the start or a single
/// `,`, followed by the end or a single `,`.
fn has_option(opts: &str, needle: &str) -> bool {
    opts.match_indices(needle).any(|(i, _)| {
        let before = &opts[..i];
        let after = &opts[i + needle.len()..];
        // An odd run of commas ends with a separator (`,,` is an escaped
        // comma in the value).
        let odd = |commas: usize| commas % 2 == 1;
        let starts = before.is_empty() || odd(before.len() - before.trim_end_matches(',').len());
        let ends = after.is_empty() || odd(after.len() - after.trim_start_matches(',').len());
        starts && ends
    })
}

/// The processes of the VM whose vhost-user socket is `vhost_socket`
/// ([`Table::find`] on a fresh table).
pub fn find(vhost_socket: &Path) -> Vec<Found> {
    Table::read().find(vhost_socket)
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), empty if unknown.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_ids_tell_reused_pids_apart() {
        let me = ProcId::of(std::process::id()).unwrap();
        assert!(me.alive());
        let other = ProcId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.alive());
        // Never signals a process whose start time differs.
        assert!(!other.signal(Signal::SIGKILL));
    }

    #[test]
    fn options_match_whole() {
        assert!(has_option(
            "socket,id=v,path=/a/run/vhost.sock",
            "path=/a/run/vhost.sock"
        ));
        assert!(has_option(
            "path=/a/run/vhost.sock,x=1",
            "path=/a/run/vhost.sock"
        ));
        assert!(!has_option(
            "path=/a/run/vhost.sock2",
            "path=/a/run/vhost.sock"
        ));
        assert!(!has_option(
            "xpath=/a/run/vhost.sock",
            "path=/a/run/vhost.sock"
        ));
        // Escaped commas belong to the value.
        assert!(!has_option("path=/b,,path=/a", "path=/a"));
        assert!(!has_option("path=/a,,b", "path=/a"));
        assert!(has_option("a=1,path=/x,,y", "path=/x,,y"));
        assert!(has_option("a=x,,,path=/a", "path=/a"));
    }

    #[test]
    fn finds_processes_by_their_vhost_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("run/vhost.sock");
        // Stand-ins with the launcher's argument shapes (`sh -c` ignores
        // the words after its script's own arguments).
        let spawn = |a: &str, b: String| {
            std::process::Command::new("sh")
                .args(["-c", "read x", "sh", a, &b])
                // `read` waits on a pipe that the Child keeps open: no
                // fork, so no second process with these arguments.
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let s = sock.display();
        let mut q = spawn("-chardev", format!("socket,id=vsock0,path={s}"));
        let mut d = spawn("--vm", format!("guest-cid=3,socket={s},uds-path=/u"));
        let mut other = spawn("--vm", format!("guest-cid=3,socket={s}x"));
        let found = procs_poll(&sock, 2);
        for c in [&mut q, &mut d, &mut other] {
            let _ = c.kill();
            let _ = c.wait();
        }
        let roles: Vec<(Role, u32)> = found.iter().map(|f| (f.role, f.id.pid)).collect();
        assert!(roles.contains(&(Role::Qemu, q.id())), "{roles:?}");
        assert!(roles.contains(&(Role::Daemon, d.id())), "{roles:?}");
        assert_eq!(roles.len(), 2, "{roles:?}");
    }

    /// `find` until it sees `n` processes (a child's exec takes a moment).
    fn procs_poll(sock: &Path, n: usize) -> Vec<Found> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let f = find(sock);
            if f.len() >= n || Instant::now() > deadline {
                return f;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

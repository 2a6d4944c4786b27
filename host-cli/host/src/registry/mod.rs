//! The registry of started VMs (`host-cli start`, `list`, `stop`): VMs that
//! outlive the process that launched them.
//!
//! Layout, all owner-only (mode 0700):
//!
//! ```text
//! $XDG_RUNTIME_DIR/svmc/vms/       (or $TMPDIR/svmc-vms-<uid>/)
//!     .lock                        flock(2) held while a name and CID are chosen
//!     <name>/vm.json               the [`Record`]
//!     <name>/run/                  the launcher's runtime directory (sockets)
//! ```
//!
//! A name is taken by creating `<name>/` and its record under the lock, so
//! two starts never share a name, a socket or a CID. Pids are recorded with
//! the start time of their process (`/proc/<pid>/stat`, field 22) and the
//! boot id, and a pid is only signalled while both still match
//! ([`ProcId::signal`]): a pid reused by an unrelated process after QEMU
//! died, or an entry that survived a reboot, is never mistaken for the VM.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::launcher::Detached;
use crate::{Error, Result};

/// The lowest CID a guest can have (0-2 are reserved: hypervisor, local, host).
pub const FIRST_CID: u32 = 3;

/// Longest VM name (the socket paths under the directory must stay below
/// the 108 bytes of `sun_path`).
pub const MAX_NAME_LEN: usize = 32;

const RECORD: &str = "vm.json";
const LOCK: &str = ".lock";

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
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), empty if unknown.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// What the registry knows about one started VM (`<name>/vm.json`).
/// `Default` is an empty record: [`Registry::reserve`] fills in the name,
/// CID, boot id, start time and starter, [`Reservation::commit`] the
/// processes and paths.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The VM's name.
    pub name: String,
    /// Its guest CID.
    pub cid: u32,
    /// The boot id of the host when it started.
    pub boot_id: String,
    /// When it was started (seconds since the Unix epoch).
    pub started: u64,
    /// The process that is starting it (while `qemu` is `None`).
    pub starter: Option<ProcId>,
    /// QEMU, once running.
    pub qemu: Option<ProcId>,
    /// The device daemon, once running.
    pub daemon: Option<ProcId>,
    /// The hybrid vsock socket.
    pub uds_path: Option<PathBuf>,
    /// The guest's service port.
    pub port: u32,
    /// The guest image.
    pub image: PathBuf,
    /// The guest architecture.
    pub arch: String,
    /// The QEMU machine type.
    pub machine: String,
    /// The accelerator.
    pub accel: String,
    /// The guest's serial console log.
    pub serial_log: Option<PathBuf>,
    /// The largest request body the guest accepts (from its `HELLO`).
    pub max_body: u32,
}

/// Whether a registered VM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Being started by a live `host-cli start`.
    Starting,
    /// QEMU runs.
    Running,
    /// QEMU is gone (or the entry is from before a reboot, or its start was
    /// interrupted): `stop` or `prune` removes it.
    Dead,
}

impl State {
    /// `starting`, `running` or `dead`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Dead => "dead",
        }
    }
}

/// A VM in the registry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its directory.
    pub dir: PathBuf,
    /// Its record.
    pub record: Record,
}

impl Entry {
    /// Whether it runs, from its recorded processes.
    pub fn state(&self) -> State {
        let r = &self.record;
        if r.boot_id != boot_id() {
            return State::Dead;
        }
        match (r.qemu, r.starter) {
            (Some(q), _) if q.alive() => State::Running,
            (None, Some(s)) if s.alive() => State::Starting,
            _ => State::Dead,
        }
    }

    /// Seconds since it was started.
    pub fn uptime(&self) -> u64 {
        now_unix().saturating_sub(self.record.started)
    }
}

/// The registry's directory: `$XDG_RUNTIME_DIR/svmc/vms`, or
/// `$TMPDIR/svmc-vms-<uid>` without `XDG_RUNTIME_DIR`.
pub fn default_root() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("svmc").join("vms"),
        None => std::env::temp_dir().join(format!("svmc-vms-{}", nix::unistd::getuid())),
    }
}

/// Checks a VM name: 1 to [`MAX_NAME_LEN`] of `A-Za-z0-9_.-`, not starting
/// with `.` or `-`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::io(
            format!("VM name {name:?}"),
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "use 1 to {MAX_NAME_LEN} letters, digits, '_', '.' or '-' \
                     (not first: '.' or '-')"
                ),
            ),
        ))
    }
}

/// The registry of started VMs in one directory.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

/// A name and CID taken by [`Registry::reserve`]; its directory is removed
/// on drop unless [`Reservation::commit`] was called.
#[derive(Debug)]
pub struct Reservation {
    dir: PathBuf,
    record: Record,
    committed: bool,
}

fn mkdir_private(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(0o700).create(dir)
}

fn write_record(dir: &Path, record: &Record) -> Result<()> {
    let tmp = dir.join(format!("{RECORD}.tmp"));
    let body = serde_json::to_vec_pretty(record)
        .map_err(|e| Error::io("encoding the VM record", io::Error::other(e)))?;
    let write = || -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(RECORD))
    };
    write().map_err(|e| Error::io(format!("writing {}", dir.join(RECORD).display()), e))
}

impl Registry {
    /// The registry in `root`, created (mode 0700) if needed. Fails if
    /// `root` belongs to another user or others may enter it.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
        let meta = fs::symlink_metadata(&root)
            .map_err(|e| Error::io(format!("reading {}", root.display()), e))?;
        let uid = nix::unistd::getuid().as_raw();
        if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
            return Err(Error::io(
                format!("VM registry {}", root.display()),
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "not a directory of this user with mode 0700",
                ),
            ));
        }
        Ok(Self { root })
    }

    /// The registry at [`default_root`].
    pub fn open_default() -> Result<Self> {
        Self::open(default_root())
    }

    /// Its directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Holds the registry's lock until the file is dropped.
    fn lock(&self) -> Result<fs::File> {
        let path = self.root.join(LOCK);
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        f.lock()
            .map_err(|e| Error::io(format!("locking {}", path.display()), e))?;
        Ok(f)
    }

    /// Every VM in the registry, by name. A directory without a readable
    /// record (a start killed before it wrote one) is shown as dead.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let rd = fs::read_dir(&self.root)
            .map_err(|e| Error::io(format!("reading {}", self.root.display()), e))?;
        let mut v: Vec<Entry> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                Some(self.read(&name, e.path()))
            })
            .collect();
        v.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        Ok(v)
    }

    fn read(&self, name: &str, dir: PathBuf) -> Entry {
        let record = fs::read(dir.join(RECORD))
            .ok()
            .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
            .unwrap_or_else(|| Record {
                name: name.to_string(),
                ..Record::default()
            });
        Entry { dir, record }
    }

    /// The VM `name`.
    pub fn get(&self, name: &str) -> Result<Entry> {
        check_name(name)?;
        let dir = self.root.join(name);
        if !dir.is_dir() {
            return Err(Error::io(
                format!("VM {name:?}"),
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "no such VM (`host-cli list` shows the started ones)",
                ),
            ));
        }
        Ok(self.read(name, dir))
    }

    /// Takes `name` (or the first free `vm-<n>`) and the lowest free CID,
    /// and records `template` (name and CID filled in) with this process
    /// as its starter. Fails if `name` is taken.
    pub fn reserve(&self, name: Option<&str>, template: Record) -> Result<Reservation> {
        if let Some(n) = name {
            check_name(n)?;
        }
        let _lock = self.lock()?;
        let entries = self.entries()?;
        let name = match name {
            Some(n) => n.to_string(),
            None => (1..)
                .map(|i| format!("vm-{i}"))
                .find(|n| !self.root.join(n).exists())
                .unwrap_or_default(),
        };
        let cid = (FIRST_CID..)
            .find(|c| !entries.iter().any(|e| e.record.cid == *c))
            .unwrap_or(FIRST_CID);
        let dir = self.root.join(&name);
        mkdir_private(&dir).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Error::io(
                    format!("VM name {name:?}"),
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "already in use (`host-cli list`; `host-cli stop` it first)",
                    ),
                )
            } else {
                Error::io(format!("creating {}", dir.display()), e)
            }
        })?;
        let res = Reservation {
            dir,
            record: Record {
                name,
                cid,
                boot_id: boot_id(),
                started: now_unix(),
                starter: ProcId::of(std::process::id()),
                ..template
            },
            committed: false,
        };
        write_record(&res.dir, &res.record)?;
        Ok(res)
    }

    /// Stops the VM of `entry` and removes it from the registry: a power-off
    /// request through `power_off` if it runs (e.g. a session's), then up
    /// to `timeout` for QEMU to exit, then `SIGKILL` for QEMU and
    /// `SIGTERM`/`SIGKILL` for the daemon (only while their recorded start
    /// times still match). Returns whether QEMU exited by itself.
    pub fn stop(
        &self,
        entry: &Entry,
        timeout: Duration,
        power_off: impl FnOnce(&Record) -> Result<()>,
    ) -> Result<bool> {
        let r = &entry.record;
        let mut clean = false;
        let state = entry.state();
        if state == State::Starting {
            return Err(Error::io(
                format!("stopping VM {:?}", r.name),
                io::Error::other("it is still being started"),
            ));
        }
        if state == State::Running {
            match power_off(r) {
                Ok(()) => clean = r.qemu.is_none_or(|q| q.wait_gone(timeout)),
                Err(e) => tracing::info!("power-off request to {}: {e}", r.name),
            }
        }
        if r.boot_id == boot_id() {
            if let Some(q) = r.qemu
                && q.signal(Signal::SIGKILL)
            {
                q.wait_gone(Duration::from_secs(5));
            }
            if let Some(d) = r.daemon {
                if d.signal(Signal::SIGTERM) && !d.wait_gone(Duration::from_secs(2)) {
                    d.signal(Signal::SIGKILL);
                }
                d.wait_gone(Duration::from_secs(5));
            }
        }
        fs::remove_dir_all(&entry.dir)
            .or_else(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| Error::io(format!("removing {}", entry.dir.display()), e))?;
        Ok(clean)
    }
}

/// Kills a detached VM's QEMU and daemon (e.g. when its record could not
/// be written); they are still this process's unreaped children, so their
/// pids cannot have been reused.
pub fn kill_detached(vm: &Detached) {
    for pid in [vm.qemu_pid, vm.daemon_pid] {
        if let Some(p) = ProcId::of(pid) {
            p.signal(Signal::SIGKILL);
        }
    }
}

impl Reservation {
    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// Its CID.
    pub fn cid(&self) -> u32 {
        self.record.cid
    }

    /// Its directory (the launcher's runtime directory goes in it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records the detached VM and its guest's `max_body`; the entry stays
    /// when the reservation is dropped.
    pub fn commit(mut self, vm: &Detached, max_body: u32, accel: String) -> Result<Entry> {
        self.record.qemu = ProcId::of(vm.qemu_pid);
        self.record.daemon = ProcId::of(vm.daemon_pid);
        self.record.uds_path = Some(vm.uds_path.clone());
        self.record.serial_log = Some(vm.serial_log.clone());
        self.record.max_body = max_body;
        self.record.accel = accel;
        self.record.starter = None;
        write_record(&self.dir, &self.record)?;
        self.committed = true;
        Ok(Entry {
            dir: self.dir.clone(),
            record: self.record.clone(),
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Record {
        Record {
            port: 7001,
            image: PathBuf::from("/img"),
            arch: "x86_64".into(),
            machine: "q35".into(),
            ..Record::default()
        }
    }

    #[test]
    fn names_and_cids_are_never_shared() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = Registry::open(tmp.path().join("vms")).unwrap();
        let a = reg.reserve(None, template()).unwrap();
        let b = reg.reserve(None, template()).unwrap();
        let c = reg.reserve(Some("web"), template()).unwrap();
        assert_eq!((a.name(), b.name(), c.name()), ("vm-1", "vm-2", "web"));
        assert_eq!((a.cid(), b.cid(), c.cid()), (3, 4, 5));
        for f in [a.dir().join(RECORD), reg.root().join(LOCK)] {
            let mode = fs::metadata(&f).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{}", f.display());
        }
        let err = reg.reserve(Some("web"), template()).unwrap_err();
        assert!(err.to_string().contains("already in use"), "{err}");
        // A starting entry of this (live) process.
        assert_eq!(reg.get("web").unwrap().state(), State::Starting);
        drop(b);
        assert!(reg.get("vm-2").is_err());
        assert_eq!(reg.reserve(None, template()).unwrap().cid(), 4);
        assert_eq!(reg.entries().unwrap().len(), 2);
    }

    #[test]
    fn bad_names_are_refused() {
        for n in ["", ".x", "-x", "a/b", "a b", &"x".repeat(MAX_NAME_LEN + 1)] {
            assert!(check_name(n).is_err(), "{n:?}");
        }
        check_name("vm-1.a_b").unwrap();
    }

    #[test]
    fn registry_must_be_private() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("vms");
        Registry::open(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(Registry::open(&root).is_err());
    }

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
    fn dead_entries_are_dead_and_removed_by_stop() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = Registry::open(tmp.path().join("vms")).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let id = ProcId::of(child.id()).unwrap();
        let res = reg.reserve(Some("x"), template()).unwrap();
        let vm = Detached {
            runtime_dir: res.dir().join("run"),
            uds_path: res.dir().join("run/vm.vsock"),
            qemu_pid: id.pid,
            daemon_pid: id.pid,
            serial_log: PathBuf::new(),
            qemu_log: PathBuf::new(),
            daemon_log: PathBuf::new(),
            accel: crate::Accel::Tcg,
        };
        let e = res.commit(&vm, 100, "tcg".into()).unwrap();
        assert_eq!(e.state(), State::Running);
        child.kill().unwrap();
        child.wait().unwrap();
        let e = reg.get("x").unwrap();
        assert_eq!(e.state(), State::Dead);
        reg.stop(&e, Duration::from_secs(1), |_| panic!("not running"))
            .unwrap();
        assert!(reg.entries().unwrap().is_empty());
    }
}

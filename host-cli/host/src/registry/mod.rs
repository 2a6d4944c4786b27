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
//! The directories are opened once, checked and then used through their
//! handles (module `dirs`): `XDG_RUNTIME_DIR` must be an absolute path to a
//! directory of this user that nobody else may write (`$TMPDIR` may also be
//! root's and sticky, as `/tmp` is), and every step below it is an `openat`
//! with `O_NOFOLLOW` of a directory of this user with mode 0700. A record
//! is read only from a regular file and only up to [`MAX_RECORD`] bytes;
//! one that cannot be read or parsed makes its entry
//! [`State::Damaged`], never a VM with made-up values.
//!
//! A name is taken by creating `<name>/` and its record under the lock, so
//! two starts never share a name, a socket or a CID. Pids are recorded with
//! the start time of their process (`/proc/<pid>/stat`, field 22) and the
//! boot id, and a pid is only signalled while both still match
//! ([`ProcId::signal`]): a pid reused by an unrelated process after QEMU
//! died, or an entry that survived a reboot, is never mistaken for the VM.
//!
//! A VM's QEMU and daemon can also be found without its record
//! ([`procs::Table::find`]): they are this user's processes whose command
//! lines name the VM's vhost-user socket, `<name>/run/vhost.sock`. So a
//! `start` killed before it recorded their pids, or a damaged record, still
//! leaves processes that `list` shows and `stop` and `prune` end.

mod dirs;
pub mod procs;

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::launcher::Detached;
use crate::{Error, Result};
use dirs::{ReadError, Trust};
pub use procs::{Found, ProcId, Role, boot_id};

/// The lowest CID a guest can have (0-2 are reserved: hypervisor, local, host).
pub const FIRST_CID: u32 = 3;

/// Longest VM name (the socket paths under the directory must stay below
/// the 108 bytes of `sun_path`).
pub const MAX_NAME_LEN: usize = 32;

/// Largest record read (a record is well under 4 KiB).
pub const MAX_RECORD: u64 = 64 * 1024;

const RECORD: &str = "vm.json";
const RECORD_TMP: &str = "vm.json.tmp";
const LOCK: &str = ".lock";

/// The launcher's runtime directory in a VM's directory, and the vhost-user
/// socket in it (what QEMU and the daemon are found by).
const RUN: &str = "run";
const VHOST_SOCKET: &str = "vhost.sock";

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
    /// QEMU and the device daemon run.
    Running,
    /// Its start was interrupted (the starter is gone before recording
    /// the VM) but its QEMU or daemon still runs: `stop` or `prune` ends
    /// them.
    Orphaned,
    /// Its record cannot be read ([`Entry::damage`] says why); `stop` ends
    /// the processes found by their command lines.
    Damaged,
    /// QEMU or the device daemon is gone (or the entry is from before a
    /// reboot, or its start was interrupted and left nothing running):
    /// `stop` or `prune` removes it.
    Dead,
}

impl State {
    /// `starting`, `running`, `orphaned`, `damaged` or `dead`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Orphaned => "orphaned",
            Self::Damaged => "damaged",
            Self::Dead => "dead",
        }
    }
}

/// A VM in the registry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its directory.
    pub dir: PathBuf,
    /// Its record (for a damaged one, only the name).
    pub record: Record,
    /// Why its record cannot be used, if it cannot.
    pub damage: Option<String>,
    /// Its QEMU and daemon as found by their command lines
    /// ([`procs::Table::find`]), whatever the record says.
    pub found: Vec<Found>,
}

impl Entry {
    /// The directory's name (the VM's name, even if the record is damaged).
    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// Whether it runs, from its record and the processes found.
    pub fn state(&self) -> State {
        let r = &self.record;
        if self.damage.is_some() {
            return State::Damaged;
        }
        if r.boot_id != boot_id() {
            return State::Dead;
        }
        match r.qemu {
            None if r.starter.is_some_and(|s| s.alive()) => State::Starting,
            None if !self.found.is_empty() => State::Orphaned,
            None => State::Dead,
            Some(q) if q.alive() && r.daemon.is_some_and(|d| d.alive()) => State::Running,
            Some(_) => State::Dead,
        }
    }

    /// Why it is not running, in a few words ("its device daemon is gone"),
    /// or `None` if it runs or is starting.
    pub fn why_not_running(&self) -> Option<String> {
        let r = &self.record;
        Some(match self.state() {
            State::Running | State::Starting => return None,
            State::Damaged => format!(
                "its record is damaged ({})",
                self.damage.as_deref().unwrap_or_default()
            ),
            State::Orphaned => "its start was interrupted before it was recorded".into(),
            State::Dead if r.boot_id != boot_id() => "it is from before the host rebooted".into(),
            State::Dead if r.qemu.is_none() => "its start was interrupted".into(),
            State::Dead if r.qemu.is_some_and(|q| q.alive()) => {
                "its device daemon is gone, so the guest cannot be reached".into()
            }
            State::Dead => "its QEMU is gone".into(),
        })
    }

    /// QEMU's process: the recorded one, or else one found.
    pub fn qemu(&self) -> Option<ProcId> {
        self.record.qemu.or_else(|| self.found_of(Role::Qemu))
    }

    /// The daemon's process: the recorded one, or else one found.
    pub fn daemon(&self) -> Option<ProcId> {
        self.record.daemon.or_else(|| self.found_of(Role::Daemon))
    }

    fn found_of(&self, role: Role) -> Option<ProcId> {
        self.found.iter().find(|f| f.role == role).map(|f| f.id)
    }

    /// Seconds since it was started (0 if unknown).
    pub fn uptime(&self) -> u64 {
        match self.record.started {
            0 => 0,
            t => now_unix().saturating_sub(t),
        }
    }

    /// The vhost-user socket its QEMU and daemon were started with.
    fn vhost_socket(&self) -> PathBuf {
        self.dir.join(RUN).join(VHOST_SOCKET)
    }
}

/// The registry's directory: `$XDG_RUNTIME_DIR/svmc/vms`, or
/// `$TMPDIR/svmc-vms-<uid>` without `XDG_RUNTIME_DIR`.
pub fn default_root() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("svmc").join("vms"),
        None => std::env::temp_dir().join(tmp_name()),
    }
}

fn tmp_name() -> String {
    format!("svmc-vms-{}", nix::unistd::getuid())
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

/// The registry of started VMs in one directory, held open.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
    fd: Arc<OwnedFd>,
}

/// A name and CID taken by [`Registry::reserve`]; its directory is removed
/// on drop unless [`Reservation::commit`] was called.
#[derive(Debug)]
pub struct Reservation {
    registry: Arc<OwnedFd>,
    vm: OwnedFd,
    dir: PathBuf,
    record: Record,
    committed: bool,
}

fn write_record(vm: &OwnedFd, dir: &Path, record: &Record) -> Result<()> {
    let body = serde_json::to_vec_pretty(record)
        .map_err(|e| Error::io("encoding the VM record", io::Error::other(e)))?;
    let write = || -> io::Result<()> {
        let mut f = dirs::create_file(vm, RECORD_TMP)?;
        f.write_all(&body)?;
        f.sync_all()?;
        rustix::fs::renameat(vm, RECORD_TMP, vm, RECORD)?;
        Ok(())
    };
    write().map_err(|e| Error::io(format!("writing {}", dir.join(RECORD).display()), e))
}

fn untrusted(what: String, path: &Path, reason: String) -> Error {
    Error::RuntimeDir {
        what,
        path: path.to_path_buf(),
        reason,
    }
}

fn not_found(name: &str) -> Error {
    Error::io(
        format!("VM {name:?}"),
        io::Error::new(
            io::ErrorKind::NotFound,
            "no such VM (`host-cli list` shows the started ones)",
        ),
    )
}

impl Registry {
    /// The registry in `root` (absolute), created (mode 0700) if needed.
    /// Fails if `root` is not this user's with mode 0700, or its parent may
    /// be written by others (unless it is sticky, as `/tmp` is).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let what = || "VM registry".to_string();
        let (Some(parent), Some(name)) = (root.parent(), root.file_name().and_then(|n| n.to_str()))
        else {
            return Err(untrusted(what(), &root, "not a directory path".into()));
        };
        if !root.is_absolute() {
            return Err(untrusted(what(), &root, "not an absolute path".into()));
        }
        let parent_fd = dirs::open_checked(parent, Trust::Shared)
            .map_err(|r| untrusted("the directory of the VM registry".into(), parent, r))?;
        let fd = dirs::private_subdir(&parent_fd, name).map_err(|r| untrusted(what(), &root, r))?;
        Ok(Self {
            root,
            fd: Arc::new(fd),
        })
    }

    /// The registry in `$XDG_RUNTIME_DIR/svmc/vms` if `xdg_runtime_dir` is
    /// given (it must be an absolute path to a directory of this user that
    /// nobody else may write), else in `$TMPDIR/svmc-vms-<uid>`.
    pub fn open_in(xdg_runtime_dir: Option<&Path>) -> Result<Self> {
        let Some(xdg) = xdg_runtime_dir else {
            return Self::open(std::env::temp_dir().join(tmp_name()));
        };
        let what = || "XDG_RUNTIME_DIR".to_string();
        if !xdg.is_absolute() {
            return Err(untrusted(what(), xdg, "not an absolute path".into()));
        }
        let base =
            dirs::open_checked(xdg, Trust::Private).map_err(|r| untrusted(what(), xdg, r))?;
        let svmc_path = xdg.join("svmc");
        let svmc = dirs::private_subdir(&base, "svmc")
            .map_err(|r| untrusted("VM registry".into(), &svmc_path, r))?;
        let root = svmc_path.join("vms");
        let fd = dirs::private_subdir(&svmc, "vms")
            .map_err(|r| untrusted("VM registry".into(), &root, r))?;
        Ok(Self {
            root,
            fd: Arc::new(fd),
        })
    }

    /// The registry at [`default_root`] ([`Registry::open_in`] with
    /// `XDG_RUNTIME_DIR`, if set and not empty).
    pub fn open_default() -> Result<Self> {
        let xdg = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty());
        Self::open_in(xdg.as_deref().map(Path::new))
    }

    /// Its directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Holds the registry's lock until the file is dropped.
    fn lock(&self) -> Result<std::fs::File> {
        let path = self.root.join(LOCK);
        let fd = rustix::fs::openat(
            &*self.fd,
            LOCK,
            rustix::fs::OFlags::RDWR
                | rustix::fs::OFlags::CREATE
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        )
        .map_err(|e| Error::io(format!("opening {}", path.display()), e.into()))?;
        let f = std::fs::File::from(fd);
        f.lock()
            .map_err(|e| Error::io(format!("locking {}", path.display()), e))?;
        Ok(f)
    }

    /// Every VM in the registry, by name: entries whose record cannot be
    /// used are [`State::Damaged`]; the processes of each are looked up by
    /// their command lines ([`Entry::found`]).
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let names = dirs::names(&self.fd)
            .map_err(|e| Error::io(format!("reading {}", self.root.display()), e))?;
        let table = procs::Table::read();
        let mut v: Vec<Entry> = names
            .iter()
            .filter(|n| check_name(n).is_ok())
            .map(|n| self.read(n, &table))
            .collect();
        v.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        Ok(v)
    }

    /// The entry `name` (a valid name that exists in the directory).
    fn read(&self, name: &str, table: &procs::Table) -> Entry {
        let dir = self.root.join(name);
        let record = match dirs::open_dir(&*self.fd, name) {
            Ok(fd) if dirs::is_ours(&fd) => match dirs::read_bounded(&fd, RECORD, MAX_RECORD) {
                Ok(body) => serde_json::from_slice::<Record>(&body)
                    .map_err(|e| format!("{RECORD} is not a valid record: {e}"))
                    .and_then(|r| {
                        if r.name == name {
                            Ok(r)
                        } else {
                            Err(format!("{RECORD} names another VM, {:?}", r.name))
                        }
                    }),
                Err(ReadError::Missing) => Err(format!("it has no {RECORD}")),
                Err(ReadError::Bad(why)) => Err(why),
            },
            Ok(_) => Err("its directory belongs to another user".into()),
            Err(e) => Err(format!("not a directory: {}", io::Error::from(e))),
        };
        let (record, damage) = match record {
            Ok(r) => (r, None),
            Err(why) => (
                Record {
                    name: name.to_string(),
                    ..Record::default()
                },
                Some(why),
            ),
        };
        let mut e = Entry {
            dir,
            record,
            damage,
            found: Vec::new(),
        };
        e.found = table.find(&e.vhost_socket());
        e
    }

    /// The VM `name`.
    pub fn get(&self, name: &str) -> Result<Entry> {
        check_name(name)?;
        match rustix::fs::statat(&*self.fd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(self.read(name, &procs::Table::read())),
            Err(rustix::io::Errno::NOENT) => Err(not_found(name)),
            Err(e) => Err(Error::io(
                format!("reading {}", self.root.join(name).display()),
                e.into(),
            )),
        }
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
        let taken = |n: &str| entries.iter().any(|e| e.record.name == n);
        let name = match name {
            Some(n) => n.to_string(),
            None => (1..)
                .map(|i| format!("vm-{i}"))
                .find(|n| !taken(n))
                .unwrap_or_default(),
        };
        let cid = (FIRST_CID..)
            .find(|c| !entries.iter().any(|e| e.record.cid == *c))
            .unwrap_or(FIRST_CID);
        let dir = self.root.join(&name);
        match rustix::fs::mkdirat(&*self.fd, name.as_str(), rustix::fs::Mode::RWXU) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {
                return Err(Error::io(
                    format!("VM name {name:?}"),
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "already in use (`host-cli list`; `host-cli stop` it first)",
                    ),
                ));
            }
            Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e.into())),
        }
        let vm = dirs::open_dir(&*self.fd, &name)
            .map_err(|e| Error::io(format!("opening {}", dir.display()), e.into()))?;
        let res = Reservation {
            registry: self.fd.clone(),
            vm,
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
        write_record(&res.vm, &res.dir, &res.record)?;
        Ok(res)
    }

    /// Stops the VM of `entry` and removes it from the registry: a power-off
    /// request through `power_off` if it runs (e.g. a session's), then up
    /// to `timeout` for QEMU to exit, then `SIGKILL` for QEMU and
    /// `SIGTERM`/`SIGKILL` for the daemon (only while their recorded start
    /// times still match), and the same for any process found by its
    /// command line ([`procs::Table::find`]), looked up again now. Returns
    /// whether QEMU exited by itself.
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
        let mut qemus: Vec<ProcId> = Vec::new();
        let mut daemons: Vec<ProcId> = Vec::new();
        if r.boot_id == boot_id() {
            qemus.extend(r.qemu);
            daemons.extend(r.daemon);
        }
        for f in procs::find(&entry.vhost_socket()) {
            match f.role {
                Role::Qemu => qemus.push(f.id),
                Role::Daemon => daemons.push(f.id),
            }
        }
        for q in &qemus {
            if q.signal(Signal::SIGKILL) {
                q.wait_gone(Duration::from_secs(5));
            }
        }
        for d in &daemons {
            d.end(Duration::from_secs(2));
        }
        self.remove(entry.name())?;
        Ok(clean)
    }

    /// Removes the entry `name` (and everything in its directory).
    fn remove(&self, name: &str) -> Result<()> {
        dirs::remove_tree(&self.fd, name)
            .map_err(|e| Error::io(format!("removing {}", self.root.join(name).display()), e))
    }

    /// Stops and removes, under the registry's lock, every VM that is dead
    /// or orphaned, and every damaged entry with no process left; returns
    /// their names.
    pub fn prune(&self) -> Result<Vec<String>> {
        let _lock = self.lock()?;
        let mut removed = Vec::new();
        for e in self.entries()? {
            let gone = match e.state() {
                State::Dead | State::Orphaned => true,
                State::Damaged => e.found.is_empty(),
                State::Running | State::Starting => false,
            };
            if gone {
                self.stop(&e, Duration::ZERO, |_| Ok(()))?;
                removed.push(e.record.name);
            }
        }
        Ok(removed)
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
        write_record(&self.vm, &self.dir, &self.record)?;
        self.committed = true;
        Ok(Entry {
            dir: self.dir.clone(),
            record: self.record.clone(),
            damage: None,
            found: Vec::new(),
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.committed {
            let _ = dirs::remove_tree(&self.registry, &self.record.name);
        }
    }
}

#[cfg(test)]
mod tests;

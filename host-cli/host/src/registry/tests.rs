use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command};
use std::time::Instant;

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
    assert!(Registry::open("relative/vms").is_err());
}

/// The one-line error of `Registry::open_in(xdg)`.
fn xdg_error(xdg: &Path) -> String {
    let e = Registry::open_in(Some(xdg)).unwrap_err().to_string();
    assert!(e.starts_with("XDG_RUNTIME_DIR "), "{e}");
    assert!(!e.contains('\n'), "{e}");
    e
}

#[test]
fn xdg_runtime_dir_must_be_absolute_and_this_users_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let xdg = tmp.path().join("xdg");
    fs::create_dir(&xdg).unwrap();
    let reg = Registry::open_in(Some(&xdg)).unwrap();
    assert_eq!(reg.root(), xdg.join("svmc/vms"));
    let e = xdg_error(Path::new("run/user"));
    assert!(e.contains("not an absolute path"), "{e}");
    assert!(!Path::new("run").exists());
    for mode in [0o770, 0o777, 0o1777, 0o702] {
        fs::set_permissions(&xdg, fs::Permissions::from_mode(mode)).unwrap();
        let e = xdg_error(&xdg);
        assert!(e.contains("writable by nobody else"), "{mode:o}: {e}");
    }
    fs::set_permissions(&xdg, fs::Permissions::from_mode(0o700)).unwrap();
    // Owned by another user (root can hand it over; others cannot
    // make one, which is the point).
    if nix::unistd::getuid().is_root() {
        let nobody = nix::unistd::Uid::from_raw(65534);
        nix::unistd::chown(&xdg, Some(nobody), None).unwrap();
        let e = xdg_error(&xdg);
        assert!(e.contains("owner uid 65534"), "{e}");
    }
    // A link in place of `svmc` is not followed.
    let xdg2 = tmp.path().join("xdg2");
    fs::create_dir(&xdg2).unwrap();
    std::os::unix::fs::symlink(tmp.path(), xdg2.join("svmc")).unwrap();
    assert!(Registry::open_in(Some(&xdg2)).is_err());
}

/// A stand-in for a VM's QEMU or daemon: a process whose arguments
/// have the launcher's shape for `dir`'s vhost-user socket.
fn stand_in(dir: &Path, role: Role) -> Child {
    let sock = dir.join(RUN).join(VHOST_SOCKET);
    let (flag, opts) = match role {
        Role::Qemu => (
            "-chardev",
            format!("socket,id=vsock0,path={}", sock.display()),
        ),
        Role::Daemon => (
            "--vm",
            format!("guest-cid=3,socket={},uds-path=/u", sock.display()),
        ),
    };
    Command::new("sh")
        .args(["-c", "read x", "sh", flag, &opts])
        // `read` waits on a pipe that the Child keeps open: no fork,
        // so no second process with these arguments.
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `reg`'s entry `name` to find `n` processes.
fn found(reg: &Registry, name: &str, n: usize) -> Entry {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let e = reg.get(name).unwrap();
        if e.found.len() >= n || Instant::now() > deadline {
            return e;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn gone(child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn detached(dir: &Path, qemu: u32, daemon: u32) -> Detached {
    Detached {
        runtime_dir: dir.join(RUN),
        uds_path: dir.join("run/vm.vsock"),
        qemu_pid: qemu,
        daemon_pid: daemon,
        serial_log: PathBuf::new(),
        qemu_log: PathBuf::new(),
        daemon_log: PathBuf::new(),
        accel: crate::Accel::Tcg,
    }
}

#[test]
fn damaged_records_are_shown_and_their_processes_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(tmp.path().join("vms")).unwrap();
    let res = reg.reserve(Some("x"), template()).unwrap();
    let dir = res.dir().to_path_buf();
    let mut q = stand_in(&dir, Role::Qemu);
    let mut d = stand_in(&dir, Role::Daemon);
    res.commit(&detached(&dir, q.id(), d.id()), 100, "tcg".into())
        .unwrap();
    let record = dir.join(RECORD);
    let good = fs::read(&record).unwrap();
    type Damage<'a> = Box<dyn Fn() + 'a>;
    let damage: Vec<(&str, Damage)> = vec![
        (
            "not a valid record",
            Box::new(|| fs::write(&record, b"{not json").unwrap()),
        ),
        (
            "not a valid record",
            Box::new(|| fs::write(&record, &good[..good.len() / 2]).unwrap()),
        ),
        (
            "not a regular file",
            Box::new(|| nix::unistd::mkfifo(&record, nix::sys::stat::Mode::S_IRWXU).unwrap()),
        ),
        (
            "symbolic link",
            Box::new(|| std::os::unix::fs::symlink("/dev/zero", &record).unwrap()),
        ),
        (
            "larger than",
            Box::new(|| {
                fs::File::create(&record)
                    .unwrap()
                    .set_len(MAX_RECORD + 1)
                    .unwrap()
            }),
        ),
        ("no vm.json", Box::new(|| {})),
    ];
    for (why, damage) in &damage {
        let _ = fs::remove_file(&record);
        damage();
        let e = found(&reg, "x", 2);
        assert_eq!(e.state(), State::Damaged, "{why}");
        assert!(
            e.damage.as_deref().unwrap().contains(why),
            "{why}: {:?}",
            e.damage
        );
        assert_eq!(e.qemu().map(|p| p.pid), Some(q.id()), "{why}");
        assert_eq!(e.daemon().map(|p| p.pid), Some(d.id()), "{why}");
        let listed = reg.entries().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state(), State::Damaged);
        // Not pruned while its processes run.
        assert!(reg.prune().unwrap().is_empty());
    }
    let e = reg.get("x").unwrap();
    reg.stop(&e, Duration::from_secs(1), |_| panic!("not running"))
        .unwrap();
    assert!(gone(&mut q) && gone(&mut d), "not stopped");
    assert!(reg.entries().unwrap().is_empty());
    assert!(!dir.exists());
}

#[test]
fn an_interrupted_start_is_orphaned_and_pruned() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(tmp.path().join("vms")).unwrap();
    let mut res = reg.reserve(Some("o"), template()).unwrap();
    // Its starter is gone (another start time: another process).
    let me = ProcId::of(std::process::id()).unwrap();
    res.record.starter = Some(ProcId {
        start_time: me.start_time + 1,
        ..me
    });
    write_record(&res.vm, &res.dir, &res.record).unwrap();
    let dir = res.dir().to_path_buf();
    // A start killed with SIGKILL drops nothing: keep the entry.
    std::mem::forget(res);
    assert_eq!(reg.get("o").unwrap().state(), State::Dead);
    let mut q = stand_in(&dir, Role::Qemu);
    let e = found(&reg, "o", 1);
    assert_eq!(e.state(), State::Orphaned);
    assert_eq!(e.qemu().map(|p| p.pid), Some(q.id()));
    assert!(e.why_not_running().unwrap().contains("interrupted"));
    assert_eq!(reg.prune().unwrap(), ["o"]);
    assert!(gone(&mut q), "the orphaned QEMU still runs");
    assert!(reg.entries().unwrap().is_empty());
}

#[test]
fn a_dead_daemon_makes_the_vm_dead_and_stop_quick() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(tmp.path().join("vms")).unwrap();
    let res = reg.reserve(Some("d"), template()).unwrap();
    let dir = res.dir().to_path_buf();
    let mut q = Command::new("sleep").arg("60").spawn().unwrap();
    let mut d = Command::new("sleep").arg("60").spawn().unwrap();
    let e = res
        .commit(&detached(&dir, q.id(), d.id()), 100, "tcg".into())
        .unwrap();
    assert_eq!(e.state(), State::Running);
    d.kill().unwrap();
    d.wait().unwrap();
    let e = reg.get("d").unwrap();
    assert_eq!(e.state(), State::Dead);
    assert!(
        e.why_not_running().unwrap().contains("daemon"),
        "{:?}",
        e.why_not_running()
    );
    // No power-off request to a VM that cannot be reached, and no wait.
    let start = Instant::now();
    reg.stop(&e, Duration::from_secs(30), |_| panic!("not reachable"))
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(gone(&mut q), "QEMU still runs");
    assert!(reg.entries().unwrap().is_empty());
}

#[test]
fn dead_entries_are_dead_and_removed_by_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(tmp.path().join("vms")).unwrap();
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let id = ProcId::of(child.id()).unwrap();
    let res = reg.reserve(Some("x"), template()).unwrap();
    let dir = res.dir().to_path_buf();
    let e = res
        .commit(&detached(&dir, id.pid, id.pid), 100, "tcg".into())
        .unwrap();
    assert_eq!(e.state(), State::Running);
    child.kill().unwrap();
    child.wait().unwrap();
    let e = reg.get("x").unwrap();
    assert_eq!(e.state(), State::Dead);
    reg.stop(&e, Duration::from_secs(1), |_| panic!("not running"))
        .unwrap();
    assert!(reg.entries().unwrap().is_empty());
}

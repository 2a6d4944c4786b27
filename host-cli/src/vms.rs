//! Started VMs: `start`, `list`, `stop`, `prune`, and `--vm NAME`
//! ([`svmc_host::registry`] keeps track of them).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use svmc::{SERVICE_PORT, ServiceVm};
use svmc_comm::frame::DEFAULT_MAX_BODY;
use svmc_host::launcher::{kill_all, launch_ready};
use svmc_host::registry::{Entry, Record, Registry, State};
use svmc_host::{Attach, Session, SessionConfig, machine};
use vsock_transport::Timeouts;
use vsock_transport::rpc::Client;

use crate::{Cli, stdout, vm_config};

/// The registry directory of the VM being started, which Ctrl-C (or
/// `SIGTERM`, `SIGHUP`) removes along with the VM; `None` once the VM is
/// handed over to the registry. The main thread holds the lock from
/// detaching to committing, so an interrupt never removes a VM half-way.
static STARTING: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Like the library's `install_signal_cleanup`, and it also removes the
/// reserved registry directory of a VM that is not handed over yet.
fn install_start_cleanup(dir: PathBuf) -> Result<()> {
    *STARTING.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir);
    ctrlc::set_handler(|| {
        let starting = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = starting.as_ref() {
            kill_all();
            let _ = std::fs::remove_dir_all(dir);
            eprintln!("host-cli: interrupted; VM stopped and cleaned up");
        } else {
            eprintln!("host-cli: interrupted; the VM was started");
        }
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")
}

/// `host-cli start`: reserve a name and CID, boot the VM detached, check
/// that the guest answers on its boot connection and on its service port,
/// hand the VM over to the registry and print where it is.
pub fn start(
    cli: &Cli,
    name: Option<&str>,
    timeout: Duration,
    boot_timeout: Duration,
) -> Result<()> {
    let registry = Registry::open_default()?;
    let mut vm = vm_config(cli)?;
    let machine = machine::find(vm.arch, vm.machine.as_deref())?;
    let template = Record {
        port: SERVICE_PORT,
        image: std::fs::canonicalize(&vm.image).unwrap_or_else(|_| vm.image.clone()),
        arch: vm.arch.name().to_string(),
        machine: machine.name.to_string(),
        ..Record::default()
    };
    // Dropped on any failure below: the directory goes, and the VM (still
    // owned by `Vm` until detached) is killed.
    let reservation = registry.reserve(name, template)?;
    vm.detached = true;
    vm.runtime_parent = Some(reservation.dir().to_path_buf());
    vm.cid = reservation.cid();
    install_start_cleanup(reservation.dir().to_path_buf())?;
    let timeouts = Timeouts::uniform(timeout);
    let (vm, stream) =
        launch_ready(&vm, boot_timeout, timeouts).context("could not start the VM")?;
    let guest_err = |e: vsock_transport::Error| {
        anyhow::anyhow!("{e}; guest serial log: {}", vm.serial_log().display())
    };
    let boot: svmc_host::session::BoxConnection = Box::new(stream);
    let client = Client::<_, ServiceVm>::hello(boot, DEFAULT_MAX_BODY).map_err(guest_err)?;
    let max_body = client.peer_max_body();
    client.close().map_err(guest_err)?;
    // What `--vm NAME` will do: connect to the service port.
    let mut probe = SessionConfig::hybrid(vm.uds_path());
    probe.timeouts = timeouts;
    Session::open(&probe)
        .and_then(Session::close)
        .with_context(|| {
            format!(
                "the guest does not answer on its service port; guest serial log: {}",
                vm.serial_log().display()
            )
        })?;
    let accel = vm.accel().to_string();
    let mut starting = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    let detached = vm.detach().context("detaching the VM")?;
    let entry = match reservation.commit(&detached, max_body, accel) {
        Ok(e) => e,
        Err(e) => {
            // Nothing owns the VM any more (the reservation's directory is
            // gone with it): kill it by hand.
            svmc_host::registry::kill_detached(&detached);
            return Err(e.into());
        }
    };
    *starting = None;
    drop(starting);
    let r = &entry.record;
    let uds = r.uds_path.clone().unwrap_or_default();
    if cli.json {
        stdout::println(json(&entry))
    } else {
        stdout::print(&format!(
            "name:   {}\nsocket: {}\ncid:    {}\n",
            r.name,
            uds.display(),
            r.cid
        ))
    }
}

/// The CID and uptime of `e`, unless its record is damaged (then they are
/// unknown, not 0 and 1970).
fn cid_uptime(e: &Entry) -> (Option<u32>, Option<u64>) {
    match e.damage {
        None => (Some(e.record.cid), Some(e.uptime())),
        Some(_) => (None, None),
    }
}

fn json(e: &Entry) -> serde_json::Value {
    let r = &e.record;
    let (cid, uptime_secs) = cid_uptime(e);
    serde_json::json!({
        "name": r.name,
        "state": e.state().name(),
        "cid": cid,
        "socket": r.uds_path,
        "port": r.port,
        "qemu_pid": e.qemu().map(|p| p.pid),
        "daemon_pid": e.daemon().map(|p| p.pid),
        "uptime_secs": uptime_secs,
        "image": r.image,
        "arch": r.arch,
        "machine": r.machine,
        "accel": r.accel,
        "max_body": r.max_body,
        "serial_log": r.serial_log,
        "dir": e.dir,
        "why_not_running": e.why_not_running(),
    })
}

fn uptime(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// `host-cli list`.
pub fn list(cli: &Cli) -> Result<()> {
    let entries = Registry::open_default()?.entries()?;
    if cli.json {
        let v: Vec<_> = entries.iter().map(json).collect();
        return stdout::println(serde_json::Value::Array(v));
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<8} {:>4} {:>8} {:>8} {:>7} {:<8} {:<8} IMAGE",
        "NAME", "STATE", "CID", "QEMU", "DAEMON", "UPTIME", "ARCH", "MACHINE"
    );
    for e in &entries {
        let r = &e.record;
        let pid =
            |p: Option<svmc_host::registry::ProcId>| p.map_or("-".into(), |p| p.pid.to_string());
        let (cid, up) = cid_uptime(e);
        let _ = writeln!(
            out,
            "{:<16} {:<8} {:>4} {:>8} {:>8} {:>7} {:<8} {:<8} {}",
            r.name,
            e.state().name(),
            cid.map_or("-".into(), |c| c.to_string()),
            pid(e.qemu()),
            pid(e.daemon()),
            up.map_or("-".into(), uptime),
            r.arch,
            r.machine,
            r.image.display()
        );
    }
    stdout::print(&out)
}

/// Asks the VM of `r` to power off.
fn power_off(r: &Record, timeout: Duration) -> svmc_host::Result<()> {
    let uds = r.uds_path.clone().unwrap_or_default();
    let mut config = SessionConfig::new(Attach::Hybrid {
        uds_path: uds,
        port: r.port,
    });
    config.timeouts = Timeouts::uniform(timeout);
    Session::open(&config)?.power_off(timeout).map(|_| ())
}

/// `host-cli stop NAME` (and `--vm NAME power-off`).
pub fn stop(cli: &Cli, name: &str, timeout: Duration) -> Result<()> {
    let registry = Registry::open_default()?;
    let entry = registry.get(name)?;
    let was = entry.state();
    let clean = registry.stop(&entry, timeout, |r| power_off(r, timeout))?;
    let how = match (was, clean) {
        (State::Running, true) => "powered off".to_string(),
        (State::Running, false) => "killed (it did not power off in time)".to_string(),
        (State::Orphaned | State::Damaged, _) => format!(
            "{}; stopped what was left of it and removed it",
            entry.why_not_running().unwrap_or_default()
        ),
        _ => "was dead; removed".to_string(),
    };
    if cli.json {
        stdout::println(serde_json::json!({"name": name, "stopped": true, "how": how}))
    } else {
        stdout::println(format!("{name}: {how}"))
    }
}

/// `host-cli prune`.
pub fn prune(cli: &Cli) -> Result<()> {
    let removed = Registry::open_default()?.prune()?;
    if cli.json {
        stdout::println(serde_json::json!({ "removed": removed }))
    } else {
        let lines: String = removed
            .iter()
            .map(|n| format!("{n}: was dead; removed\n"))
            .collect();
        stdout::print(&lines)
    }
}

/// Where `--vm NAME` connects: the VM's hybrid socket, if it runs.
pub fn attach(name: &str) -> Result<Attach> {
    let entry = Registry::open_default()?.get(name)?;
    match entry.state() {
        State::Running => {}
        State::Starting => bail!("VM {name:?} is still starting"),
        State::Dead | State::Orphaned | State::Damaged => bail!(
            "VM {name:?} is {} ({}); `host-cli stop {name}` removes it",
            entry.state().name(),
            entry.why_not_running().unwrap_or_default()
        ),
    }
    let uds_path = entry
        .record
        .uds_path
        .context("the VM's record has no socket")?;
    Ok(Attach::Hybrid {
        uds_path,
        port: entry.record.port,
    })
}

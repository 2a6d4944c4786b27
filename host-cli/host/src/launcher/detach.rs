//! Handing a running VM over to whoever manages it after this process
//! exits (`host-cli start`): [`Vm::detach`].

use std::path::PathBuf;

use super::Vm;
use crate::accel::Accel;
use crate::{Error, Result};

/// What is left of a [`Vm`] after [`Vm::detach`]: its processes keep running
/// and its runtime directory stays; nothing here owns them any more.
#[derive(Debug, Clone)]
pub struct Detached {
    /// The runtime directory (sockets); the caller removes it when the VM
    /// is gone.
    pub runtime_dir: PathBuf,
    /// The hybrid vsock socket (`uds-path` of the daemon).
    pub uds_path: PathBuf,
    /// QEMU's pid.
    pub qemu_pid: u32,
    /// The device daemon's pid.
    pub daemon_pid: u32,
    /// The guest's serial console log.
    pub serial_log: PathBuf,
    /// QEMU's stderr.
    pub qemu_log: PathBuf,
    /// The daemon's stderr.
    pub daemon_log: PathBuf,
    /// The accelerator in use.
    pub accel: Accel,
}

impl Vm {
    /// Lets QEMU and the daemon run on without this `Vm`: they are no longer
    /// killed on drop or by the Ctrl-C handler, and the runtime directory
    /// stays. Only for a VM launched with
    /// [`VmConfig::detached`](super::VmConfig::detached) (its children have
    /// no parent-death signal) whose QEMU and daemon still run; otherwise
    /// the VM is stopped as on drop and the error says why.
    ///
    /// The pids are bare from now on: whoever signals them later must check
    /// that they still name the same processes (e.g. by their start time).
    pub fn detach(mut self) -> Result<Detached> {
        if !self.detached {
            return Err(Error::io(
                "detaching the VM",
                std::io::Error::other("it was not launched with VmConfig::detached"),
            ));
        }
        self.check_running()?;
        let (qemu_pid, daemon_pid) = {
            let mut children = self.procs.lock();
            let (Some(q), Some(d)) = (children.qemu.as_ref(), children.daemon.as_ref()) else {
                return Err(Error::io(
                    "detaching the VM",
                    std::io::Error::other("QEMU or the daemon is not running"),
                ));
            };
            let pids = (q.id(), d.id());
            // Dropping a `Child` neither kills nor waits for it.
            children.qemu.take();
            children.daemon.take();
            pids
        };
        self.listener.take();
        let runtime_dir = match self.runtime.take() {
            Some(d) => d.keep(),
            None => PathBuf::new(),
        };
        Ok(Detached {
            runtime_dir,
            uds_path: self.uds_path.clone(),
            qemu_pid,
            daemon_pid,
            serial_log: self.serial_log.clone(),
            qemu_log: self.qemu_log.clone(),
            daemon_log: self.daemon_log.clone(),
            accel: self.accel,
        })
    }
}

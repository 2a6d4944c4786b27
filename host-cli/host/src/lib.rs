//! The host side of the service VM: launching it ([`launcher`]), finding the
//! tools and image it needs ([`tools`], [`image`]), choosing the accelerator
//! ([`accel`]), talking to it ([`session`]), and keeping track of VMs that
//! outlive the process that started them ([`registry`]).
//!
//! The `host-cli` binary (the folder this crate is nested in) is a thin
//! command-line front end over this library; the workspace's end-to-end
//! tests and `xtask` use the same code. Inside the workspace every crate
//! depends on it under the name `host` (see the root `Cargo.toml`).

// The README's example compiles as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod accel;
pub mod env;
pub mod image;
pub mod launcher;
pub mod machine;
pub mod registry;
pub mod session;
pub mod tools;

use std::fmt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::str::FromStr;
use std::time::Duration;

pub use accel::Accel;
pub use launcher::{Vm, VmConfig};
pub use session::{Attach, Session, SessionConfig};

/// A guest architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// x86-64, booted through PVH on QEMU `microvm` (the default) or `q35`.
    X86_64,
    /// AArch64, booted on QEMU `virt`.
    Aarch64,
}

impl Arch {
    /// Every architecture the guest supports.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The bare-metal Rust target the guest is built for.
    pub fn target_triple(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64-unknown-none",
            Self::Aarch64 => "aarch64-unknown-none",
        }
    }

    /// The architecture of this host.
    pub fn host() -> Self {
        if cfg!(target_arch = "aarch64") {
            Self::Aarch64
        } else {
            Self::X86_64
        }
    }

    /// Rust's name for it (`x86_64`, `aarch64`).
    pub fn name(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "x86_64" | "x86-64" | "amd64" => Ok(Self::X86_64),
            "aarch64" | "arm64" => Ok(Self::Aarch64),
            other => Err(format!("unknown architecture {other:?} (x86_64, aarch64)")),
        }
    }
}

/// What runs in the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Guest {
    /// The bare-metal firmware of this workspace (`guest/`), an ELF image.
    #[default]
    Firmware,
    /// A Linux kernel (bzImage) with an initramfs whose `/init` serves the
    /// same protocol over AF_VSOCK (`vsock-transport`'s `linux_service`
    /// example; `cargo xtask run-e2e --guest linux` builds both).
    Linux,
}

impl Guest {
    /// The name on the command line (`firmware`, `linux`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Firmware => "firmware",
            Self::Linux => "linux",
        }
    }
}

impl fmt::Display for Guest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Guest {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "firmware" => Ok(Self::Firmware),
            "linux" => Ok(Self::Linux),
            other => Err(format!("unknown guest {other:?} (firmware, linux)")),
        }
    }
}

/// Errors of launching and talking to the VM. Every error that involves the
/// guest names its serial log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// QEMU or the device daemon was not found.
    #[error("{tool} not found (searched {searched}); run `cargo xtask setup` to install it")]
    ToolMissing {
        /// The program.
        tool: String,
        /// Where we looked.
        searched: String,
    },
    /// The guest image is missing or not a bootable ELF for the architecture.
    #[error("guest image {}: {reason}", path.display())]
    Image {
        /// The image path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A program could not be started.
    #[error("could not start {}: {source}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The device daemon failed.
    #[error("vhost-device-vsock {reason} (its log: {})", log.display())]
    DaemonFailed {
        /// What happened.
        reason: String,
        /// The daemon's log.
        log: PathBuf,
    },
    /// QEMU exited while we were waiting for the guest.
    #[error("QEMU exited ({status}) before the guest answered; guest serial log: {}, QEMU log: {}", serial_log.display(), qemu_log.display())]
    QemuExited {
        /// QEMU's exit status.
        status: ExitStatus,
        /// The guest's serial log.
        serial_log: PathBuf,
        /// QEMU's stderr.
        qemu_log: PathBuf,
    },
    /// The guest did not do something in time.
    #[error("the guest did not {what} within {timeout:?}; guest serial log: {}", serial_log.display())]
    GuestTimeout {
        /// What it did not do.
        what: String,
        /// How long we waited.
        timeout: Duration,
        /// The guest's serial log.
        serial_log: PathBuf,
    },
    /// A transport or protocol error talking to the guest.
    #[error("{source}; guest serial log: {}", serial_log.display())]
    Guest {
        /// The error.
        source: vsock_transport::Error,
        /// The guest's serial log.
        serial_log: PathBuf,
    },
    /// No row of the machine table ([`machine::MACHINES`]) has this name.
    #[error("unknown {arch} machine {name:?} (known: {known})")]
    UnknownMachine {
        /// The architecture.
        arch: Arch,
        /// The machine asked for.
        name: String,
        /// The machines of `arch`.
        known: String,
    },
    /// The guest's boot connection was already taken.
    #[error("the guest's boot connection was already accepted")]
    AlreadyAccepted,
    /// The guest answered with a response of the wrong kind.
    #[error("unexpected response from the guest: {0}")]
    UnexpectedResponse(String),
    /// The guest could not process the request.
    #[error("the guest could not process the request: {0}")]
    Service(#[from] svmc::ServiceError),
    /// A transport or protocol error (attached VMs: no serial log).
    #[error(transparent)]
    Transport(#[from] vsock_transport::Error),
    /// A directory that VMs' sockets and records would go in: others may
    /// change it, it is not an absolute path, or it has a path that the
    /// tools cannot take.
    #[error("{what} {}: {reason}", path.display())]
    RuntimeDir {
        /// Which directory (`XDG_RUNTIME_DIR`, "VM registry", ...).
        what: String,
        /// Its path.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// An OS error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Error {
    /// An I/O error with what was being attempted.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

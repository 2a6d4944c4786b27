//! The command line of `host-cli`, apart from what it does, so that `cargo
//! xtask dist-docs` can generate shell completions and a man page from the
//! same definition ([`command`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use svmc_host::{Accel, Arch, Guest};

/// Examples at the end of `--help`.
const EXAMPLES: &str = "\
Examples:
  host-cli reverse abc                      boot a VM, print \"cba\", power it off
  host-cli --json info                      what the guest reports, as JSON
  host-cli start --name svc                 boot a VM that keeps running
  host-cli list                             the started VMs and their state
  host-cli --vm svc reverse abc             talk to the started VM
  host-cli --vm svc reverse --file in.bin --output out.bin
  head -c 4M /dev/urandom | host-cli --vm svc reverse --file - --output - > out.bin
  host-cli stop svc                         power it off and remove its runtime directory
  host-cli prune                            remove the entries of VMs that died
  host-cli --attach-uds /run/vm.vsock info  a VM that something else runs (hybrid vsock)";

/// The longest `--timeout` and `--boot-timeout`, in seconds (a week): larger
/// values are refused rather than overflowing a deadline.
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

/// Parses a number of seconds for `--timeout` and `--boot-timeout`: more
/// than 0, at most [`MAX_TIMEOUT_SECS`], fractions allowed.
pub fn secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(v > 0.0 && v <= MAX_TIMEOUT_SECS as f64) {
        return Err(format!(
            "{s} is out of range: give more than 0 and at most {MAX_TIMEOUT_SECS} seconds (a week)"
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

/// The clap command (for completions and the man page).
pub fn command() -> clap::Command {
    Cli::command()
}

/// Talk to the service VM over virtio-vsock.
///
/// By default each command boots a fresh VM (QEMU + vhost-device-vsock), waits
/// for the guest to connect, checks the protocol version, sends the request,
/// prints the answer and powers the VM off. `start` boots a VM that keeps
/// running after host-cli exits; --vm NAME talks to it, `stop` ends it. With
/// --attach-uds or --attach-cid it talks to a VM that something else runs and
/// leaves it running.
#[derive(Parser, Debug)]
#[command(name = "host-cli", version, after_help = EXAMPLES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,

    /// Guest architecture.
    #[arg(long, global = true, default_value = "x86_64")]
    pub arch: Arch,

    /// What the VM runs: `firmware` (the bare-metal guest) or `linux` (a
    /// Linux kernel whose /init serves the same protocol over AF_VSOCK;
    /// `cargo xtask build-image --guest linux` builds it).
    #[arg(long, global = true, default_value = "firmware")]
    pub guest: Guest,

    /// Guest firmware image, or the Linux kernel with --guest linux
    /// [default: the one `cargo xtask build-image` builds].
    #[arg(long, global = true, value_name = "PATH")]
    pub image: Option<PathBuf>,

    /// The initramfs of a Linux guest [default: the one `cargo xtask
    /// build-image --guest linux` builds].
    #[arg(long, global = true, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Talk to the VM that `host-cli start` started under this name.
    #[arg(long, global = true, value_name = "NAME", conflicts_with_all = ["attach_uds", "attach_cid"])]
    pub vm: Option<String>,

    /// Attach to a running VM through its hybrid vsock Unix socket.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        conflicts_with = "attach_cid"
    )]
    pub attach_uds: Option<PathBuf>,

    /// Attach to a running VM through AF_VSOCK at this CID.
    #[arg(long, global = true, value_name = "CID")]
    pub attach_cid: Option<u32>,

    /// Guest service port when attaching.
    #[arg(long, global = true, default_value_t = svmc::SERVICE_PORT)]
    pub port: u32,

    /// Timeout in seconds for each step after boot (connect, handshake,
    /// each request, power-off).
    #[arg(long, global = true, default_value = "30", value_name = "SECS", value_parser = secs)]
    pub timeout: Duration,

    /// Timeout in seconds for a launched guest to connect. A slow boot (a
    /// busy host) is waited for; only a boot that is stuck (QEMU used 3 s of
    /// CPU time with no new serial output and no connection) is relaunched,
    /// at most 3 attempts while this allows.
    #[arg(long, global = true, default_value = "30", value_name = "SECS", value_parser = secs)]
    pub boot_timeout: Duration,

    /// Print results as JSON. `reverse` prints `bytes` and `result` (the
    /// text) if the result is UTF-8, else `result_base64` (RFC 4648
    /// base64), or `output` with --output PATH; `digest` prints `sha256`,
    /// `bytes` and `file`; `info --stats` adds `connection`.
    #[arg(long, global = true)]
    pub json: bool,

    /// Guest RAM in MiB.
    #[arg(long, global = true, default_value_t = svmc_host::launcher::DEFAULT_MEMORY_MIB)]
    pub memory: u32,

    /// Accelerator: auto (KVM if it works here, else TCG), kvm or tcg.
    #[arg(long, global = true, default_value = "auto")]
    pub accel: Accel,

    /// QEMU machine type [default: microvm on x86_64 (q35 for --guest
    /// linux), virt on aarch64].
    #[arg(long, global = true)]
    pub machine: Option<String>,

    /// Directory for the guest serial log and QEMU/daemon logs
    /// [default: $XDG_STATE_HOME/svmc/logs].
    #[arg(long, global = true, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,

    /// Extra words for the guest's kernel command line, e.g.
    /// `--append "svmc.log=debug"` (repeatable; split at spaces). For
    /// tests and debugging, hence hidden from --help.
    #[arg(long, global = true, hide = true, value_name = "ARGS")]
    pub append: Vec<String>,

    /// More logging on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// What to do.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Reverse TEXT (or a file's bytes) in the guest and print the result.
    #[command(after_help = "\
Examples:
  host-cli reverse abc
  host-cli --vm svc reverse --file photo.jpg --output reversed.jpg
  cat big.bin | host-cli --vm svc reverse --file - --output - | sha256sum")]
    Reverse {
        /// The text to reverse (its UTF-8 bytes are reversed; a newline is
        /// printed after the result).
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        text: Option<String>,
        /// Reverse this file's bytes instead (`-`: standard input), up to
        /// the guest's maximum request body; a larger one is refused before
        /// anything is sent.
        #[arg(long, short, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Write the reversed bytes here, as they are (`-`: standard
        /// output) [default: standard output; a newline after TEXT's result].
        /// A file is replaced only once the result is complete (through a
        /// temporary file beside it); a failure leaves what was there.
        #[arg(long, short, value_name = "PATH")]
        output: Option<PathBuf>,
    },
    /// Print what the guest reports about itself.
    Info {
        /// Also print what the guest counted on this connection (requests,
        /// bytes each way, errors, cancellations, deadlines missed, credit
        /// stalls, answers queued).
        #[arg(long)]
        stats: bool,
    },
    /// Print the SHA-256 of a file computed in the guest (like
    /// `sha256sum`). The file is streamed to the guest in pieces of 64
    /// KiB, so it may be larger than the guest's memory.
    #[command(after_help = "\
On a terminal, a progress line shows the bytes sent so far.

Examples:
  host-cli digest --file disk.img
  head -c 1G /dev/urandom | host-cli --memory 16 digest --file -")]
    Digest {
        /// The file to hash (`-`: standard input).
        #[arg(long, short, value_name = "PATH")]
        file: PathBuf,
    },
    /// Power the guest off (with --vm: as `stop`; useful with --attach-*).
    PowerOff,
    /// Boot a VM that keeps running after host-cli exits, wait until its
    /// guest answers, and print its name, hybrid socket and CID.
    #[command(after_help = "\
The VM's runtime directory is $XDG_RUNTIME_DIR/svmc/vms/NAME (owner-only;
$TMPDIR/svmc-vms-<uid> without XDG_RUNTIME_DIR). Talk to it with --vm NAME,
or with --attach-uds SOCKET from any client of the hybrid vsock protocol.

Examples:
  host-cli start
  host-cli start --name svc --arch aarch64 --json")]
    Start {
        /// Its name [default: the first free vm-N].
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// List the started VMs: name, state (starting, running, orphaned: its
    /// start was interrupted; damaged: its record cannot be read; dead),
    /// CID, pids, uptime, architecture, machine and image.
    List,
    /// Stop a started VM: a power-off request, a kill after --timeout, and
    /// its runtime directory removed. Of a dead, orphaned or damaged VM,
    /// what still runs is killed and the entry removed.
    Stop {
        /// The VM's name (`host-cli list`).
        name: String,
    },
    /// Remove the entries of started VMs that are dead (QEMU or daemon
    /// gone, or from before a reboot) or orphaned (start interrupted), and
    /// damaged ones with nothing running, killing what is left of them.
    Prune,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn the_definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn vm_goes_with_the_guest_commands_and_not_with_attach() {
        let cli = Cli::try_parse_from(["host-cli", "--vm", "a", "reverse", "--file", "-"]).unwrap();
        assert_eq!(cli.vm.as_deref(), Some("a"));
        assert!(
            Cli::try_parse_from(["host-cli", "--vm", "a", "--attach-uds", "/s", "info"]).is_err()
        );
        assert!(Cli::try_parse_from(["host-cli", "reverse", "abc", "--file", "x"]).is_err());
        assert!(Cli::try_parse_from(["host-cli", "reverse"]).is_err());
        let cli = Cli::try_parse_from(["host-cli", "start", "--name", "svc", "--json"]).unwrap();
        assert!(cli.json && matches!(cli.command, Cmd::Start { name: Some(ref n) } if n == "svc"));
    }

    #[test]
    fn timeouts_are_bounded_numbers_of_seconds() {
        let cli = Cli::try_parse_from(["host-cli", "--timeout", "0.5", "list"]).unwrap();
        assert_eq!(cli.timeout, Duration::from_millis(500));
        assert_eq!(cli.boot_timeout, Duration::from_secs(30));
        let week = MAX_TIMEOUT_SECS.to_string();
        let cli = Cli::try_parse_from(["host-cli", "--boot-timeout", &week, "list"]).unwrap();
        assert_eq!(cli.boot_timeout, Duration::from_secs(MAX_TIMEOUT_SECS));
        for bad in ["1e19", "1e300", "inf", "NaN", "0", "-1", "abc", "604801"] {
            for flag in ["--timeout", "--boot-timeout"] {
                let arg = format!("{flag}={bad}");
                let err = Cli::try_parse_from(["host-cli", &arg, "list"])
                    .unwrap_err()
                    .to_string();
                assert!(
                    err.contains(flag) && err.contains(bad),
                    "{flag} {bad}: {err}"
                );
            }
        }
    }
}
